"""Pyramid sources that read an input file lazily.

Level 0 is read from the file whenever a level-0 state (or tile) needs it, band by band, and
never kept. Coarser levels are built once from the raw data, band by band, and kept in the
state's dtype (the inputs are rounded to that type inside the state anyway), so a slide never
exists as a float copy at full resolution. Raw values become model units through the
normaliser the model was trained with (``nca_cli.io.normalize``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..io.normalize import Normalization, Normalizer, band_bytes
from ..models.pyramid import downsample, level_shapes

BAND_CELLS = 1 << 22  # cells per band read from the file (~4 M)


def band_rows(shape: Sequence[int], multiple: int = 1, cells: int = BAND_CELLS) -> int:
    """Rows of the first axis per band of about ``cells`` cells, a multiple of ``multiple``."""
    per_row = max(1, math.prod(shape[1:]))
    rows = max(1, cells // per_row)
    return max(multiple, rows - rows % multiple)


def read_bytes(cells: int, channels: int, itemsize: int, normalization: Normalization) -> int:
    """Peak working memory of reading ``cells`` level-0 cells: one band at a time, raw and
    normalised (``io.normalize.band_bytes``)."""
    return band_bytes(min(cells, BAND_CELLS) * channels, itemsize, normalization)


def pyramid_bytes(shapes: Sequence[Sequence[int]], channels: int, itemsize: int) -> list[int]:
    """Bytes of every coarse input level a source keeps (levels 1, 2, ...; in the state's type)."""
    return [math.prod(s) * channels * itemsize for s in shapes[1:]]


def build_bytes(cells: int, channels: int, itemsize: int, normalization: Normalization, factor: Sequence[int],
                mode: str, state_itemsize: int) -> int:
    """Peak working memory of building level 1 from a level 0 of ``cells`` (``FileSource._build``),
    besides the levels kept, the largest of its steps: one band read and normalised
    (:func:`read_bytes`); the float32 band, the contiguous copy a pooling makes of it when it is
    channels-last with several channels, and the pooled band; the pooled band cast to the
    state's type (coarser levels are built from far smaller bands)."""
    band = min(cells, BAND_CELLS) * channels
    copy = band * 4 if mode != "nearest" and channels > 1 else 0
    pooled = -(-band // math.prod(factor))
    return max(read_bytes(cells, channels, itemsize, normalization),     # raw and normalised
               band * 4 + copy + pooled * 4,                              # the pooling
               band * 4 + pooled * (4 + state_itemsize))                  # its cast to the state's type


class FileSource:
    """Pyramid source over an opened ``nca_cli.io`` input (batch 1).

    ``normalization``: how the model's training data was normalised (default: by dtype).
    ``keep``: False drops each coarse level once it has been written (one single pass)."""

    def __init__(self, image, factors: Sequence[Sequence[int]], mode: str, dtype: torch.dtype,
                 device: torch.device | str = "cpu", keep: bool = True, normalization: Normalization | None = None,
                 normalizer: Normalizer | None = None):
        self.image = image
        self.keep = keep
        self.batch = 1
        self.shapes = level_shapes(image.spatial_shape, factors)
        self.dtype = dtype
        self.device = device
        norm = normalization or Normalization.for_dtype(image.dtype)
        self.normalize = normalizer or Normalizer.fit_image(norm, image)
        self.levels: list[torch.Tensor | None] = [None]
        for level, f in enumerate(factors):
            self.levels.append(self._build(level, f, mode))

    def read(self, region) -> torch.Tensor:
        """Model-unit float32 ``[*region, C]`` of level 0."""
        return torch.from_numpy(self.normalize(self.image.read(tuple(region))))

    def _read_level(self, level: int, rows: slice) -> torch.Tensor:
        """Channels-first float32 ``[1, C, *band]`` of ``rows`` (first spatial axis) of a level."""
        if level == 0:
            region = (rows,) + tuple(slice(0, n) for n in self.shapes[0][1:])
            return self.read(region).movedim(-1, 0).unsqueeze(0)
        return self.levels[level][(slice(None), slice(None), rows)].float()

    def _build(self, level: int, factor, mode: str) -> torch.Tensor:
        src_shape, dst_shape = self.shapes[level], self.shapes[level + 1]
        out = torch.empty((1, self.image.channels, *dst_shape), dtype=self.dtype, device=self.device)
        step = band_rows(src_shape, factor[0])
        for r0 in range(0, src_shape[0], step):
            band = self._read_level(level, slice(r0, min(r0 + step, src_shape[0])))
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
        step = band_rows([r.stop - r.start for r in region])
        for r0 in range(region[0].start, region[0].stop, step):
            rows = slice(r0, min(r0 + step, region[0].stop))
            local = slice(r0 - region[0].start, rows.stop - region[0].start)
            state[0, local, ..., :inp].copy_(self.read((rows, *region[1:])).to(state.device))
