"""The octree: level shapes and the input pyramid.

A level is ``factor`` times coarser than the one below it on each axis (a per-axis factor,
so depth can stop halving). Sizes that do not divide round up: a node covers a block of
``factor`` cells, the last block of an axis may be partial. Downsampling averages, takes the
maximum of, or picks the first cell of each block; upsampling (``models.schedule.upsample``)
copies a node into every cell of its block (nearest). The same block rule is used by every
implementation.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

PYRAMID_MODES = ("average", "nearest", "max")


def level_shapes(shape: Sequence[int], factors: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Spatial shape of every level, finest first; ``factors[l]`` maps level l to level l+1."""
    shapes = [tuple(int(s) for s in shape)]
    for f in factors:
        shapes.append(tuple(max(1, math.ceil(s / k)) for s, k in zip(shapes[-1], f)))
    return shapes


def downsample(x: torch.Tensor, factor: Sequence[int], mode: str) -> torch.Tensor:
    """Block-reduce the spatial axes of a channels-first ``[B, C, *spatial]`` tensor."""
    factor = tuple(int(f) for f in factor)
    if all(f == 1 for f in factor):
        return x
    dims = x.dim() - 2
    if mode == "nearest":
        index = (slice(None), slice(None)) + tuple(slice(None, None, f) for f in factor)
        return x[index]
    # An axis shorter than its factor (a short clip, a thin volume) becomes one node: the
    # window shrinks to the axis, as the partial last window of every other axis does.
    kernel = tuple(min(f, n) for f, n in zip(factor, x.shape[2:]))
    if mode == "average":
        pool = F.avg_pool2d if dims == 2 else F.avg_pool3d
        return pool(x, kernel, stride=factor, ceil_mode=True)
    if mode == "max":
        pool = F.max_pool2d if dims == 2 else F.max_pool3d
        return pool(x, kernel, stride=factor, ceil_mode=True)
    raise ValueError(f"pyramid mode must be one of {PYRAMID_MODES}, got {mode!r}")


def image_pyramid(image: torch.Tensor, factors: Sequence[Sequence[int]], mode: str) -> list[torch.Tensor]:
    """Inputs of every level, finest first (level 0 is ``image`` itself)."""
    levels = [image]
    for f in factors:
        levels.append(downsample(levels[-1], f, mode))
    return levels
