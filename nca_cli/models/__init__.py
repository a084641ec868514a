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


# Options each baseline accepts in ``model.options`` (name -> default): ``num_encoding_blocks``
# and ``out_channels_first_layer`` (UNet size, keywords of the ``unet`` package; None = its
# default configuration, the published parameter counts), ``mode`` (cascade:
# post_concat or input_concat), ``widths``/``blocks_down`` (SegResMamba stages), ``scan_chunk``
# (selective-scan chunk). Options not passed to the network's constructor are read where they
# apply: ``expand`` (meU-net expanded-patch factor) by the training step, ``stage1`` (the
# meU-net model.pt whose weights become the cascade's frozen stage 1) when training starts;
# a cascade's model.pt carries those weights.
BASELINE_OPTIONS: dict[str, dict] = {
    "unet": {"num_encoding_blocks": None, "out_channels_first_layer": None},
    "meunet": {"expand": 1.5},
    "meunet_cascade": {"mode": "post_concat", "stage1": None},
    "segresmamba": {"widths": [48, 96, 192, 384], "blocks_down": [1, 2, 2, 4], "scan_chunk": 64},
    "segresnet": {"widths": [48, 96, 192, 384], "blocks_down": [1, 2, 2, 4]},
}
SIGMOID_BASELINES = ("unet",)  # one logit per class; every other baseline has softmax classes


def baseline_options(name: str, options: dict | None = None) -> dict:
    """``options`` with the defaults of baseline ``name`` filled in; ``ValueError`` names an
    option the baseline does not take."""
    accepted = BASELINE_OPTIONS.get(name, {})
    unknown = [k for k in (options or {}) if k not in accepted]
    if unknown:
        raise ValueError(f"{name} takes no option {unknown[0]!r} (options: {', '.join(accepted) or 'none'})")
    return {**accepted, **(options or {})}


def _baseline_adapter(name: str, builder: Callable[..., nn.Module]) -> Callable[[dict], nn.Module]:
    """Registry entry: a recipe's model section -> the baseline network, with ``config`` set."""

    def build(cfg: dict) -> nn.Module:
        from .baselines import MeUNet, MeUNetCascade, SegResMamba

        opts = baseline_options(name, cfg.get("options"))
        dims, cin, cout = cfg["dims"], cfg["input_channels"], cfg["output_channels"]
        if name == "unet" and any(v is not None for v in opts.values()):
            from .baselines.unet import UNet2DBaseline, UNet3DBaseline

            sizes = {k: v for k, v in opts.items() if v is not None}
            model = (UNet3DBaseline if dims == 3 else UNet2DBaseline)(
                in_channels=cin, out_classes=cout, padding=1, **sizes)
        elif name == "meunet_cascade":
            model = MeUNetCascade(MeUNet(cin, cout, dims=dims), cin, cout, mode=opts["mode"], dims=dims)
        elif name in ("segresmamba", "segresnet"):
            extra = {"scan_chunk": opts["scan_chunk"]} if name == "segresmamba" else {}
            model = SegResMamba(cin, cout, dims=dims, use_mamba=name == "segresmamba", widths=tuple(opts["widths"]),
                                blocks_down=tuple(opts["blocks_down"]), **extra)
        else:
            model = builder(dims, cin, cout)
        model.config = {"architecture": name, "dims": dims, "input_channels": cin, "output_channels": cout,
                        "options": opts}
        return model

    return build


def _load_baselines() -> None:
    try:
        from .baselines import BASELINES
    except ImportError:
        return
    for name, builder in BASELINES.items():
        _BUILDERS.setdefault(name, _baseline_adapter(name, builder))


def baseline_names() -> list[str]:
    """The registered architectures that are not NCAs."""
    return [n for n in list_models() if n not in NCA_ARCHITECTURES]


def softmax_classes(config: dict) -> bool:
    """True when the architecture of a model section predicts softmax classes, background
    included (``output_channels`` = foreground classes + 1)."""
    name = config.get("architecture", "octree_nca")
    return name not in NCA_ARCHITECTURES and name not in SIGMOID_BASELINES


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


__all__ = ["BASELINE_OPTIONS", "BackboneNCA", "OctreeNCA", "MedNCA", "M3DNCA", "NCAConfig", "baseline_names",
           "baseline_options", "build_model", "list_models", "register_model", "count_parameters", "is_nca",
           "softmax_classes"]
