"""Multi-level NCAs: OctreeNCA, and Med-NCA / M3D-NCA as configurations of the same engine.

Forward (finest level = 0): seed the coarsest level with zeros and the image resized to it,
run that level's NCA, upsample the whole state to the next finer level (nearest), overwrite
its input channels with the image at that level, run, and repeat down to level 0. The logits
are channels ``IN .. IN+OUT-1`` of the final state; the mask is ``logit > 0``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

import torch
from torch import nn

from .backbone import BackboneNCA
from .pyramid import PYRAMID_MODES, image_pyramid, level_shapes, upsample


@dataclass
class NCAConfig:
    """Everything that defines a multi-level NCA; saved with every checkpoint."""

    dims: int
    input_channels: int
    output_channels: int
    levels: int = 5
    factors: list = field(default_factory=list)   # per transition l -> l+1, per spatial axis
    steps: list = field(default_factory=list)     # per level, finest first
    kernel_sizes: list = field(default_factory=list)
    channels: int = 16
    hidden: int = 64
    fire_rate: float = 0.5
    pyramid: str = "average"
    normalization: str | None = None
    perception: str = "depthwise"
    fc1_all_channels: bool = False
    architecture: str = "octree_nca"

    def __post_init__(self):
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims}")
        if self.levels < 1:
            raise ValueError(f"levels must be at least 1, got {self.levels}")
        if not self.factors:
            self.factors = [[2] * self.dims for _ in range(self.levels - 1)]
        self.factors = [[int(f)] * self.dims if isinstance(f, int) else [int(v) for v in f] for f in self.factors]
        if len(self.factors) != self.levels - 1:
            raise ValueError(f"factors needs {self.levels - 1} entries (one per level transition), got {len(self.factors)}")
        for f in self.factors:
            if len(f) != self.dims or min(f) < 1:
                raise ValueError(f"each factor needs {self.dims} positive integers, got {f}")
        if not self.steps:
            self.steps = [10] * self.levels
        if isinstance(self.steps, int):
            self.steps = [self.steps] * self.levels
        if len(self.steps) != self.levels or min(self.steps) < 0:
            raise ValueError(f"steps needs {self.levels} non-negative integers, got {self.steps}")
        if not self.kernel_sizes:
            self.kernel_sizes = [3] * self.levels
        if isinstance(self.kernel_sizes, int):
            self.kernel_sizes = [self.kernel_sizes] * self.levels
        if len(self.kernel_sizes) != self.levels:
            raise ValueError(f"kernel_sizes needs {self.levels} entries, got {self.kernel_sizes}")
        if self.pyramid not in PYRAMID_MODES:
            raise ValueError(f"pyramid must be one of {PYRAMID_MODES}, got {self.pyramid!r}")
        if self.normalization in ("none", "None"):
            self.normalization = None
        if self.input_channels + self.output_channels > self.channels:
            raise ValueError(f"input_channels + output_channels ({self.input_channels}+{self.output_channels}) "
                             f"exceeds channels ({self.channels})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NCAConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model settings: {', '.join(sorted(unknown))}")
        return cls(**data)


class OctreeNCA(nn.Module):
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

    # -- geometry -------------------------------------------------------------------------
    @property
    def input_channels(self) -> int:
        return self.config.input_channels

    @property
    def output_channels(self) -> int:
        return self.config.output_channels

    def level_shapes(self, spatial_shape: Sequence[int]) -> list[tuple[int, ...]]:
        return level_shapes(spatial_shape, self.config.factors)

    def check_image(self, image: torch.Tensor) -> None:
        c = self.config
        if image.dim() != c.dims + 2:
            want = "[B, C, H, W] (2D)" if c.dims == 2 else "[B, C, D, H, W] (3D)"
            raise ValueError(f"this {c.dims}D model takes a {want} image, got shape {tuple(image.shape)}")
        if image.shape[1] != c.input_channels:
            raise ValueError(f"this model takes {c.input_channels} input channel(s), got {image.shape[1]}")

    # -- forward (differentiable; the reference path) -----------------------------------
    def forward(
        self,
        image: torch.Tensor,
        *,
        seed: int = 0,
        patch: Sequence[int] | None = None,
        crop_levels: int = 0,
        generator: torch.Generator | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, tuple[slice, ...] | None]:
        """Logits ``[B, OUT, *spatial]`` of a ``[B, IN, *spatial]`` image.

        Training on a patch: with ``patch`` (a spatial size at level 0) and ``crop_levels``
        = k, the k finest levels run on a random crop (taken at level k-1 and followed down),
        coarser levels on the whole image; gradients flow through every level. Returns the
        logits and the level-0 region they cover (``None`` for the whole image).
        """
        self.check_image(image)
        c = self.config
        shapes = self.level_shapes(image.shape[2:])
        pyramid = image_pyramid(image, c.factors, c.pyramid)
        top = c.levels - 1
        region: list[slice] | None = None
        state = None
        for level in range(top, -1, -1):
            inp = pyramid[level]
            if level == top:
                state = inp.new_zeros((inp.shape[0], c.channels, *shapes[level]))
            else:
                state = upsample(state, c.factors[level], [s.stop - s.start for s in region] if region else shapes[level])
                if patch is not None and crop_levels and level == crop_levels - 1 and region is None:
                    region = self.random_region(shapes, level, patch, generator)
                    state = state[(slice(None), slice(None), *region)]
            if region is not None:
                inp = inp[(slice(None), slice(None), *region)]
            state = torch.cat([inp.to(state.dtype), state[:, c.input_channels:]], dim=1)
            origin = [s.start for s in region] if region is not None else None
            state = self.backbones[level].run(state, c.steps[level], seed=seed, level=level, origin=origin,
                                              state_dtype=state_dtype)
            if level > 0 and region is not None:
                f = c.factors[level - 1]
                region = [slice(s.start * k, min(s.stop * k, n)) for s, k, n in zip(region, f, shapes[level - 1])]
            del inp
        logits = state[:, c.input_channels:c.input_channels + c.output_channels]
        return logits, (tuple(region) if region is not None else None)

    def random_region(self, shapes, level, patch, generator) -> list[slice]:
        """A random crop at ``level`` whose level-0 footprint has size ``patch``."""
        scale = [1] * self.config.dims
        for f in self.config.factors[:level]:
            scale = [a * b for a, b in zip(scale, f)]
        region = []
        for n, p, s in zip(shapes[level], patch, scale):
            size = min(n, max(1, math.ceil(p / s)))
            hi = n - size
            start = int(torch.randint(0, hi + 1, (1,), generator=generator).item()) if hi > 0 else 0
            region.append(slice(start, start + size))
        return region

    # -- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(
        self,
        image: torch.Tensor,
        *,
        seed: int = 0,
        impl: str = "auto",
        state_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Logits ``[B, OUT, *spatial]`` of a ``[B, IN, *spatial]`` image, on any input size.

        ``impl``: ``"torch"`` (reference), ``"fused"`` (fused kernels) or ``"auto"``.
        """
        from ..inference.runner import run_octree

        self.check_image(image)
        return run_octree(self, image, seed=seed, impl=impl, state_dtype=state_dtype)

    def predict_mask(self, image: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.predict_logits(image, **kwargs) > 0


class MedNCA(OctreeNCA):
    """Med-NCA: two levels, the coarse one at 1/4 resolution, BatchNorm, 64 steps each."""


class M3DNCA(OctreeNCA):
    """M3D-NCA: levels with kernels 3/7 (or 3/5), max-pool pyramid, BatchNorm."""


ARCHITECTURES = {"octree_nca": OctreeNCA, "med_nca": MedNCA, "m3d_nca": M3DNCA}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
