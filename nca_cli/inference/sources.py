"""Pyramid sources that read an input file lazily.

Level 0 is read from the file whenever a level-0 state (or tile) needs it, band by band, and
never kept. Coarser levels are built once from the raw (uint8) data, band by band, and kept
in the state's dtype (the inputs are rounded to that type inside the state anyway), so a
slide never exists as a float copy at full resolution.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from ..models.pyramid import downsample, level_shapes

BAND_CELLS = 1 << 22  # cells per band read from the file (~4 M)


class Normalizer:
    """Raw values → model units: uint8 / 255; other types clipped to their 0.5–99.5 percentiles
    and rescaled to [0, 1] (as `nca prepare` stores volumes)."""

    def __init__(self, dtype, sample: Callable[[], np.ndarray] | None = None):
        self.scale, self.offset, self.clip = 1.0 / 255.0, 0.0, None
        if np.dtype(dtype) != np.uint8:
            data = np.asarray(sample(), dtype=np.float64)
            lo, hi = np.percentile(data, [0.5, 99.5]) if data.size else (0.0, 1.0)
            hi = hi if hi > lo else lo + 1.0
            self.scale, self.offset, self.clip = 1.0 / (hi - lo), -lo / (hi - lo), (lo, hi)

    def __call__(self, raw: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(raw)).float()
        if self.clip is not None:
            t = t.clamp_(*self.clip)
        return t.mul_(self.scale).add_(self.offset)


class FileSource:
    """Pyramid source over an opened ``nca_cli.io`` input (batch 1)."""

    def __init__(self, image, factors: Sequence[Sequence[int]], mode: str, dtype: torch.dtype,
                 device: torch.device | str = "cpu", keep: bool = True):
        self.image = image
        self.keep = keep  # False: each coarse level is dropped once written (one single pass)
        self.batch = 1
        self.shapes = level_shapes(image.spatial_shape, factors)
        self.dtype = dtype
        self.device = device
        self.normalize = Normalizer(image.dtype, lambda: image.read())
        self.levels: list[torch.Tensor | None] = [None]
        for level, f in enumerate(factors):
            self.levels.append(self._build(level, f, mode))

    def _band_rows(self, shape, factor0) -> int:
        per_row = max(1, math.prod(shape[1:]))
        rows = max(1, BAND_CELLS // per_row)
        return max(factor0, rows - rows % factor0)

    def _read(self, level: int, rows: slice) -> torch.Tensor:
        """Channels-first float32 ``[1, C, *band]`` of ``rows`` (first spatial axis) of a level."""
        if level == 0:
            region = (rows,) + tuple(slice(0, n) for n in self.shapes[0][1:])
            return self.normalize(self.image.read(region)).movedim(-1, 0).unsqueeze(0)
        return self.levels[level][(slice(None), slice(None), rows)].float()

    def _build(self, level: int, factor, mode: str) -> torch.Tensor:
        src_shape, dst_shape = self.shapes[level], self.shapes[level + 1]
        out = torch.empty((1, self.image.channels, *dst_shape), dtype=self.dtype, device=self.device)
        step = self._band_rows(src_shape, factor[0])
        for r0 in range(0, src_shape[0], step):
            band = self._read(level, slice(r0, min(r0 + step, src_shape[0])))
            small = downsample(band, factor, mode)
            d0 = r0 // factor[0]
            out[:, :, d0:d0 + small.shape[2]] = small.to(self.dtype)
        return out

    def write_inputs(self, level: int, state: torch.Tensor, region=None) -> None:
        shape = self.shapes[level]
        region = list(region) if region is not None else [slice(0, n) for n in shape]
        inp = self.image.channels
        if level > 0:
            src = self.levels[level][(slice(None), slice(None), *region)]
            state[..., :inp].copy_(src.movedim(1, -1))
            if not self.keep:
                self.levels[level] = None
            return
        step = self._band_rows([r.stop - r.start for r in region], 1)
        for r0 in range(region[0].start, region[0].stop, step):
            rows = slice(r0, min(r0 + step, region[0].stop))
            raw = self.image.read((rows, *region[1:]))
            local = slice(r0 - region[0].start, rows.stop - region[0].start)
            state[0, local, ..., :inp].copy_(self.normalize(raw).to(state.device))

    def pyramid_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.levels[1:] if t is not None)
