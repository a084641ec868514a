"""Multi-level NCAs: OctreeNCA, and Med-NCA / M3D-NCA as configurations of the same engine.

Forward (finest level = 0): seed the coarsest level with zeros and the image resized to it,
run that level's NCA, upsample the whole state to the next finer level (nearest), overwrite
its input channels with the image at that level, run, and repeat down to level 0; the levels,
their regions and the upsampling are those of the one level schedule (``models.schedule``). The logits
are channels ``IN .. IN+OUT-1`` of the final state; the mask is ``logit > 0``.

This forward is the differentiable reference used for training. Inference on inputs of any
size, with the fused kernels and one shared state buffer, is ``nca_cli.inference``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import nn

from ..core.schema import check_fields, setting
from .backbone import NORMALIZATIONS, PERCEPTIONS, BackboneNCA
from .config import ModelConfig
from .pyramid import PYRAMID_MODES, image_pyramid, level_shapes
from .registry import register_model
from .schedule import LevelSchedule
from .weights import Randomizable

NCA_ARCHITECTURES = ("octree_nca", "med_nca", "m3d_nca")


@dataclass
class NCAConfig(ModelConfig):
    """Everything that defines a multi-level NCA (levels finest first); saved with every checkpoint."""

    architecture: str = setting("octree_nca", kind="choice", choices=NCA_ARCHITECTURES,
                                help="octree_nca, med_nca or m3d_nca (one engine, different settings)")
    levels: int = setting(5, kind="int", lo=1, hi=12, help="octree levels")
    factors: list | None = setting(None, kind="factors",
                                   help="per level transition l -> l+1: a factor, or one per spatial axis (default 2)")
    steps: list | None = setting(None, kind="ints", lo=0, hi=100000, help="NCA steps per level, finest first (default 10)")
    kernel_sizes: list | None = setting(None, kind="ints", lo=1, hi=15, help="perception kernel per level (odd; default 3)")
    channels: int = setting(16, kind="int", lo=2, hi=256, help="state channels C (inputs, logits, hidden)")
    hidden: int = setting(64, kind="int", lo=1, hi=4096, help="width of the hidden layer")
    fire_rate: float = setting(0.5, kind="float", lo=0.0, hi=1.0, help="probability that a cell updates in a step")
    pyramid: str = setting("average", kind="choice", choices=PYRAMID_MODES, help="how the input pyramid is reduced")
    normalization: str | None = setting(None, kind="choice", choices=(None, "none", *NORMALIZATIONS[1:]),
                                        help="none, or batch (BatchNorm with the current batch's statistics)")
    perception: str = setting("depthwise", kind="choice", choices=PERCEPTIONS,
                              help="depthwise (one depthwise conv) or full2 (two full C->C convs)")
    fc1_all_channels: bool = setting(False, kind="bool", help="fc1 produces all C channels (Med-NCA, 2-level M3D-NCA)")

    def __post_init__(self):
        levels = self.levels
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
            raise ValueError(f"levels must be a positive integer, got {levels!r}")
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims}")
        if not self.factors:
            self.factors = [[2] * self.dims for _ in range(levels - 1)]
        self.factors = [[int(f)] * self.dims if isinstance(f, int) else [int(v) for v in f] for f in self.factors]
        if len(self.factors) != levels - 1:
            raise ValueError(f"factors needs {levels - 1} entries (one per level transition), got {len(self.factors)}")
        for f in self.factors:
            if len(f) != self.dims or min(f) < 1:
                raise ValueError(f"each factor needs {self.dims} positive integers, got {f}")
        self.steps = self._per_level(self.steps, 10, "steps")
        self.kernel_sizes = self._per_level(self.kernel_sizes, 3, "kernel_sizes")
        if any(k % 2 != 1 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd, got {self.kernel_sizes}")
        if self.normalization in ("none", "None"):
            self.normalization = None
        check_fields(self)
        if self.input_channels + self.output_channels > self.channels:
            raise ValueError(f"input_channels + output_channels ({self.input_channels}+{self.output_channels}) "
                             f"exceeds channels ({self.channels})")

    def _per_level(self, value, default: int, name: str) -> list[int]:
        if value is None or (isinstance(value, list) and not value):
            return [default] * self.levels
        if isinstance(value, int):
            return [value] * self.levels
        value = [int(v) for v in value]
        if len(value) != self.levels:
            raise ValueError(f"{name} needs {self.levels} entries (one per level), got {value}")
        return value


class Crop(NamedTuple):
    """A training crop: the ``region`` (slices at ``level``) the levels ``<= level`` run on."""

    level: int
    region: tuple[slice, ...]


class OctreeNCA(Randomizable, nn.Module):
    """A stack of backbone NCAs, one per level, finest first (``backbones[0]`` is full resolution)."""

    def __init__(self, config: NCAConfig | dict):
        super().__init__()
        if isinstance(config, dict):
            config = NCAConfig.from_dict(config)
        self.config = config
        c = config
        self.backbones = nn.ModuleList(
            BackboneNCA(c.dims, c.channels, c.hidden, c.input_channels, k, c.fire_rate,
                        c.normalization, c.perception, c.fc1_all_channels)
            for k in c.kernel_sizes
        )

    @property
    def input_channels(self) -> int:
        return self.config.input_channels

    @property
    def output_channels(self) -> int:
        return self.config.output_channels

    def level_shapes(self, spatial_shape: Sequence[int]) -> list[tuple[int, ...]]:
        return level_shapes(spatial_shape, self.config.factors)

    def schedule(self, spatial_shape: Sequence[int]) -> LevelSchedule:
        """The levels of a pass over an input of ``spatial_shape`` (``models.schedule``)."""
        return LevelSchedule.of(self, spatial_shape)

    def check_image(self, image: torch.Tensor) -> None:
        c = self.config
        if image.dim() != c.dims + 2:
            want = "[B, C, H, W] (2D)" if c.dims == 2 else "[B, C, D, H, W] (3D)"
            raise ValueError(f"this {c.dims}D model takes a {want} image, got shape {tuple(image.shape)}")
        if image.shape[1] != c.input_channels:
            raise ValueError(f"this model takes {c.input_channels} input channel(s), got {image.shape[1]}")

    def random_crop(self, spatial_shape: Sequence[int], patch: Sequence[int] | None, crop_levels: int,
                    generator: torch.Generator | None = None) -> Crop | None:
        """A random crop at level ``crop_levels - 1`` whose level-0 footprint has size ``patch``
        (``None`` without a patch): the ``crop_levels`` finest levels train on it."""
        if not patch or not crop_levels:
            return None
        level = crop_levels - 1
        schedule = self.schedule(spatial_shape)
        region = []
        for n, p, s in zip(schedule.shapes[level], patch, schedule.scale(level)):
            size = min(n, max(1, math.ceil(p / s)))
            hi = n - size
            start = int(torch.randint(0, hi + 1, (1,), generator=generator).item()) if hi > 0 else 0
            region.append(slice(start, start + size))
        return Crop(level, tuple(region))

    def forward(
        self,
        image: torch.Tensor,
        *,
        seed: int = 0,
        crop: Crop | None = None,
        state_dtype: torch.dtype | None = None,
        all_levels: bool = False,
    ):
        """Logits ``[B, OUT, *spatial]`` of a ``[B, IN, *spatial]`` image, and the level-0 region
        they cover (``None`` for the whole image).

        ``crop`` (see :meth:`random_crop`): the levels up to ``crop.level`` run on that region
        only, coarser levels on the whole image; gradients flow through every level.
        ``all_levels``: return the output logits of every level (finest first) instead.
        ``state_dtype``: round the state to that type after every step, as inference stores it.
        """
        self.check_image(image)
        c = self.config
        schedule = self.schedule(image.shape[2:])
        pyramid = image_pyramid(image, c.factors, c.pyramid)
        out_ch = slice(c.input_channels, c.input_channels + c.output_channels)
        regions = schedule.crop_regions(crop.level, crop.region) if crop is not None else None
        outputs: list[torch.Tensor | None] = [None] * c.levels
        state, coarse = None, None
        for level in schedule.walk(regions=regions):
            inp = pyramid[level.index][(slice(None), slice(None), *level.region)]
            if coarse is None:
                state = inp.new_zeros((inp.shape[0], c.channels, *level.size))
            else:
                state = schedule.to_finer(state, coarse, level)
            state = torch.cat([inp.to(state.dtype), state[:, c.input_channels:]], dim=1)
            state = self.backbones[level.index].run(state, level.steps, seed=seed, level=level.index,
                                                    origin=level.origin, state_dtype=state_dtype)
            if all_levels:
                outputs[level.index] = state[:, out_ch]
            coarse = level
            del inp
        covered = coarse.region if crop is not None else None
        return (outputs if all_levels else state[:, out_ch]), covered


class MedNCA(OctreeNCA):
    """Med-NCA: two levels, the coarse one at 1/4 resolution, BatchNorm, 64 steps each."""


class M3DNCA(OctreeNCA):
    """M3D-NCA: levels with kernels 3/7 (or 3/5), max-pool pyramid, BatchNorm."""


PER_LEVEL = ("factors", "steps", "kernel_sizes")


def _variant(data: dict, settings: dict) -> dict:
    """A published variant's ``settings``; its per-level lists only when ``data`` keeps its
    number of levels (other level counts get the configuration's per-level defaults)."""
    if data.get("levels", settings["levels"]) != settings["levels"]:
        return {k: v for k, v in settings.items() if k not in PER_LEVEL and k != "levels"}
    return settings


def _octree_defaults(data: dict) -> dict:
    """OctreeNCA as published: 5 levels, 10 steps (20 on the coarsest), kernel 3; 3D halves
    depth on the two finest transitions only (prostate MRI, Table 5)."""
    factors = [[2, 2]] * 4 if data["dims"] == 2 else [[2, 2, 2]] * 2 + [[1, 2, 2]] * 2
    return _variant(data, {"levels": 5, "factors": factors, "steps": [10, 10, 10, 10, 20], "kernel_sizes": [3] * 5,
                           "channels": 16, "hidden": 64, "fire_rate": 0.5, "pyramid": "average",
                           "normalization": None})


def _med_defaults(data: dict) -> dict:
    """Med-NCA (2D, 7,488 parameters with 3 inputs): 2 levels at 1/4, 64 steps each, kernels 3
    and 7, BatchNorm, fc1 to all channels."""
    return _variant(data, {"levels": 2, "factors": [[4] * data["dims"]], "steps": [64, 64], "kernel_sizes": [3, 7],
                           "channels": 16, "hidden": 64, "fire_rate": 0.5, "pyramid": "average",
                           "normalization": "batch", "fc1_all_channels": True})


def _m3d_defaults(data: dict) -> dict:
    """M3D-NCA's 2-level variant (12,480 parameters in 3D with 1 input): kernels 3 and 7, 10 and
    40 steps, max-pool pyramid, BatchNorm, fc1 to all channels."""
    return _variant(data, {"levels": 2, "factors": [[4] * data["dims"]], "steps": [10, 40], "kernel_sizes": [3, 7],
                           "channels": 16, "hidden": 64, "fire_rate": 0.5, "pyramid": "max",
                           "normalization": "batch", "fc1_all_channels": True})


@register_model("octree_nca", config=NCAConfig, output="sigmoid", predictor="octree", defaults=_octree_defaults)
def build_octree_nca(cfg: NCAConfig) -> OctreeNCA:
    return OctreeNCA(cfg)


@register_model("med_nca", config=NCAConfig, output="sigmoid", predictor="octree", defaults=_med_defaults)
def build_med_nca(cfg: NCAConfig) -> MedNCA:
    return MedNCA(cfg)


@register_model("m3d_nca", config=NCAConfig, output="sigmoid", predictor="octree", defaults=_m3d_defaults)
def build_m3d_nca(cfg: NCAConfig) -> M3DNCA:
    return M3DNCA(cfg)
