"""Synthetic uint8 inputs of any size: a fixed random texture repeated over the input.

The texture's periods are primes, so no two rows, frames or slices of a large input are
identical. Inputs are either a whole tensor in memory or an ``InputImage`` whose reader
makes any region on demand (the way a tiled slide file is read band by band).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ..inference.sources import band_rows
from ..io.base import InputImage
from .geometry import Geometry

PERIODS = {2: (509, 509), 3: (7, 251, 439)}
KINDS = {"pathology": "slide", "surgery": "video", "radiology": "volume"}


@functools.lru_cache(maxsize=4)
def texture(dims: int, channels: int, seed: int = 0) -> np.ndarray:
    """Random uint8 texture ``[*period, C]``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*PERIODS[dims], channels), dtype=np.uint8)


def read_region(tex: np.ndarray, region: tuple[slice, ...]) -> np.ndarray:
    """Channels-last uint8 pixels of ``region`` of the infinite periodic input."""
    index = [np.arange(s.start, s.stop) % p for s, p in zip(region, tex.shape[:-1])]
    return tex[np.ix_(*index)]


def input_tensor(geometry: Geometry, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The whole input as a channels-first uint8 tensor ``[1, C, *shape]``."""
    tex = texture(geometry.dims, geometry.channels, seed)
    out = torch.empty((1, geometry.channels, *shape), dtype=torch.uint8)
    rest = tuple(slice(0, n) for n in shape[1:])
    step = band_rows(shape)
    for r0 in range(0, shape[0], step):
        rows = slice(r0, min(r0 + step, shape[0]))
        band = read_region(tex, (rows, *rest))
        out[0, :, rows] = torch.from_numpy(np.ascontiguousarray(np.moveaxis(band, -1, 0)))
    return out


def input_image(geometry: Geometry, shape: tuple[int, ...], seed: int = 0) -> InputImage:
    """An input read on demand: no pixel exists before a region is read."""
    tex = texture(geometry.dims, geometry.channels, seed)
    return InputImage(path=Path(f"synthetic-{geometry.task}"), kind=KINDS[geometry.task], dims=geometry.dims,
                      spatial_shape=shape, channels=geometry.channels, dtype=np.uint8,
                      _reader=lambda region: read_region(tex, region))
