"""One entry per architecture: its builder, configuration dataclass, output kind and predictor.

Models register themselves beside their definition (``@register_model``), so adding an
architecture is one file and one registration; :func:`build_model` looks the name up::

    @register_model("unet", config=UNetConfig, output="sigmoid", predictor="window")
    def build_unet(cfg: UNetConfig) -> nn.Module: ...

- ``output``: ``"sigmoid"`` (one logit per class, mask = logit > 0; loss BCE + Dice) or
  ``"softmax"`` (classes including the background as class 0; loss Dice + weighted CE).
- ``predictor``: ``"octree"`` (multi-level NCA: the lean single-pass driver, exact tiles,
  ensembles) or ``"window"`` (overlapping windows of a patch-wise network).
- ``cascade``: for a two-stage window model, the strategy that gives its stages and what
  holding stage 1's labels costs (:class:`Cascade`); None for one stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from torch import nn

from .config import ModelConfig

OUTPUTS = ("sigmoid", "softmax")
PREDICTORS = ("octree", "window")


class Cascade(Protocol):
    """A two-stage window model: stage 1 runs over the whole image first, stage 2 is fed its labels."""

    def first(self, model: nn.Module) -> nn.Module:
        """Stage 1 as one network (class probabilities)."""

    def second(self, model: nn.Module) -> nn.Module:
        """Stage 2 on ``[image | one-hot stage-1 labels]``."""

    def held_bytes(self, model: nn.Module, cells: int, slab: int) -> int:
        """Bytes the two stages hold besides one stage's pass (``cells`` in the image, ``slab``
        per slab)."""


@dataclass(frozen=True)
class Architecture:
    name: str
    config: type
    build: Callable[[ModelConfig], nn.Module]
    output: str
    predictor: str
    cascade: Cascade | None = None
    defaults: Callable[[dict], dict] | None = None   # the published variant for the given keys (dims, levels)

    def defaults_for(self, data: dict) -> dict:
        """The settings this architecture is published with, for the keys ``data`` gives (its
        ``dims``, and ``levels`` where the per-level lists depend on it); ``data`` overrides them."""
        return dict(self.defaults(data)) if self.defaults is not None and "dims" in data else {}

    @property
    def softmax(self) -> bool:
        return self.output == "softmax"

    @property
    def is_nca(self) -> bool:
        return self.predictor == "octree"

    @property
    def loss(self) -> str:
        return "dice_ce" if self.softmax else "bce_dice"

    def classes(self, output_channels: int) -> int:
        """Foreground classes predicted with ``output_channels`` outputs."""
        return output_channels - 1 if self.softmax else output_channels

    def make_config(self, data: dict) -> ModelConfig:
        """The configuration of ``data`` (its keys over the architecture's defaults for its dims)."""
        return self.config.from_dict({**self.defaults_for(data), **data, "architecture": self.name})


_REGISTRY: dict[str, Architecture] = {}


def register_model(name: str, *, config: type, output: str, predictor: str, cascade: Cascade | None = None,
                   defaults: Callable[[dict], dict] | None = None):
    """Decorator registering ``builder(config) -> nn.Module`` under ``name``; ``defaults(keys)``
    gives the published variant's settings for the keys given, which those keys override."""
    if output not in OUTPUTS or predictor not in PREDICTORS:
        raise ValueError(f"output must be one of {OUTPUTS} and predictor one of {PREDICTORS}")

    def wrap(builder):
        _REGISTRY[name] = Architecture(name, config, builder, output, predictor, cascade, defaults)
        return builder

    return wrap


def list_models() -> list[str]:
    """Every registered name (``nca_cli.models`` imports each model module, which registers
    its architectures, before any of its submodules is used)."""
    return sorted(_REGISTRY)


def architecture(name: str) -> Architecture:
    """The registry entry of ``name``; ``ValueError`` for an unknown name."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def architecture_of(model: nn.Module) -> Architecture:
    return architecture(model.config.architecture)


def make_config(data: dict | ModelConfig) -> ModelConfig:
    """A configuration instance from a recipe's ``model:`` mapping (or an instance)."""
    if isinstance(data, ModelConfig):
        return data
    data = dict(data)
    return architecture(data.pop("architecture", "octree_nca")).make_config(data)


def build_model(config: dict | ModelConfig) -> nn.Module:
    """Build a model from its configuration (the ``model:`` section of a recipe); ``model.config``
    is the configuration instance."""
    cfg = make_config(config)
    model = architecture(cfg.architecture).build(cfg)
    model.config = cfg
    return model


def is_nca(model: nn.Module) -> bool:
    return architecture_of(model).is_nca


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
