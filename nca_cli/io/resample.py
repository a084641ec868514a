"""Exact-resolution views of 2D inputs: area-average resampling read region by region.

``at_mpp(image, mpp, level0_mpp)`` wraps an opened slide level (or any 2D input) so that it reads
as the same tissue at exactly ``mpp`` µm/px: each output pixel is the area-weighted average of
the source pixels its footprint covers (a box filter with fractional edge weights), so a region
read alone equals the same region cut from a whole read, band by band or tile by tile, and
nothing is ever held at full resolution. Output pixel ``i`` covers level-0 pixels
``[i * d, (i + 1) * d)`` with ``d = mpp / level0_mpp`` (``meta["downsample"]``), so masks,
pyramids and GeoJSON map back to level 0 exactly.
"""
from __future__ import annotations

import math

import numpy as np

from .base import InputImage, Region

CHUNK_CELLS = 1 << 18
"""Output cells resampled at a time: the source rows they need and their float32 sums stay a
few MiB, whatever the band the caller reads."""


def area_taps(start: int, stop: int, scale: float, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights ``[stop - start, K]`` of output pixels ``start..stop`` when each
    covers ``scale`` source pixels (``[i * scale, (i + 1) * scale)``, clipped to ``n_in``)."""
    taps = int(math.ceil(scale)) + 1
    i = np.arange(start, stop, dtype=np.float64)
    lo = np.minimum(i * scale, n_in - 1e-9)
    hi = np.clip((i + 1) * scale, lo + 1e-9, n_in)
    first = np.floor(lo).astype(np.int64)
    index = first[:, None] + np.arange(taps)[None, :]
    overlap = np.clip(np.minimum(index + 1, hi[:, None]) - np.maximum(index, lo[:, None]), 0.0, None)
    weights = overlap / (hi - lo)[:, None]
    return np.minimum(index, n_in - 1), weights.astype(np.float32)


def resample_region(read, region: Region, scale: tuple[float, float], shape_in: tuple[int, int],
                    dtype: np.dtype) -> np.ndarray:
    """Area-average ``region`` (output pixels) of a 2D source read by ``read(region)``."""
    (ys, xs) = region
    iy, wy = area_taps(ys.start, ys.stop, scale[0], shape_in[0])
    ix, wx = area_taps(xs.start, xs.stop, scale[1], shape_in[1])
    if iy.size == 0 or ix.size == 0:
        return np.zeros((len(iy), len(ix), 0), dtype)
    r0, r1 = int(iy.min()), int(iy.max()) + 1
    c0, c1 = int(ix.min()), int(ix.max()) + 1
    src = read((slice(r0, r1), slice(c0, c1)))
    rows = np.zeros((iy.shape[0], c1 - c0, src.shape[-1]), np.float32)
    for k in range(iy.shape[1]):
        rows += wy[:, k, None, None] * src[iy[:, k] - r0]
    del src
    out = np.zeros((iy.shape[0], ix.shape[0], rows.shape[-1]), np.float32)
    for k in range(ix.shape[1]):
        out += wx[None, :, k, None] * rows[:, ix[:, k] - c0]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dtype, copy=False)


def at_mpp(image: InputImage, mpp: float, level0_mpp: float) -> InputImage:
    """``image`` (a slide level or a 2D input of ``meta["downsample"]`` level-0 pixels per pixel,
    default 1) read at exactly ``mpp`` µm/px; the view shares the image's reader and closer."""
    downsample = float(image.meta.get("downsample") or 1.0)
    h0, w0 = image.meta.get("level0_shape") or image.spatial_shape
    target = mpp / level0_mpp                     # level-0 pixels per output pixel
    shape = (max(1, round(h0 / target)), max(1, round(w0 / target)))
    scale = (target / downsample, target / downsample)   # pixels of the read level per output pixel
    meta = dict(image.meta, mpp=float(mpp), mpp_y=float(mpp), downsample=target, level0_mpp=float(level0_mpp),
                resampled_from=list(image.spatial_shape))
    source = image

    def read(region: Region) -> np.ndarray:
        ys, xs = region
        out = np.empty((ys.stop - ys.start, xs.stop - xs.start, image.channels), image.dtype)
        rows = max(1, CHUNK_CELLS // max(1, xs.stop - xs.start))   # float temporaries stay small
        for r0 in range(ys.start, ys.stop, rows):
            r1 = min(ys.stop, r0 + rows)
            out[r0 - ys.start:r1 - ys.start] = resample_region(source.read, (slice(r0, r1), xs), scale,
                                                               source.spatial_shape, source.dtype)
        return out

    return InputImage(image.path, image.kind, 2, shape, image.channels, image.dtype, meta, read, image.close)
