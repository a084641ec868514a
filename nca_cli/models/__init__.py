"""Model registry: one name per architecture, one factory (``build_model``)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .backbone import BackboneNCA
from .octree import ARCHITECTURES as NCA_ARCHITECTURES, M3DNCA, MedNCA, NCAConfig, OctreeNCA, count_parameters

_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {}


def register_model(name: str):
    def wrap(fn):
        _BUILDERS[name] = fn
        return fn
    return wrap


for _name, _cls in NCA_ARCHITECTURES.items():
    register_model(_name)(lambda cfg, _cls=_cls: _cls(NCAConfig.from_dict(cfg)))


def _load_baselines() -> None:
    try:
        from .baselines import BASELINES
    except ImportError:
        return
    for name, builder in BASELINES.items():
        _BUILDERS.setdefault(name, builder)


def list_models() -> list[str]:
    _load_baselines()
    return sorted(_BUILDERS)


def build_model(config: dict) -> nn.Module:
    """Build a model from its config dict (the ``model:`` section of a recipe)."""
    cfg = dict(config)
    name = cfg.get("architecture", "octree_nca")
    if name not in _BUILDERS:
        _load_baselines()
    if name not in _BUILDERS:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    if name in NCA_ARCHITECTURES:
        cfg["architecture"] = name
    return _BUILDERS[name](cfg)


def is_nca(model: nn.Module) -> bool:
    return isinstance(model, OctreeNCA)


__all__ = ["BackboneNCA", "OctreeNCA", "MedNCA", "M3DNCA", "NCAConfig", "build_model", "list_models",
           "register_model", "count_parameters", "is_nca"]
