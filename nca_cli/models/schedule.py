"""The level schedule of a multi-level NCA: which cells every level computes, and how a state
moves from one level to the next finer one.

A pass runs the levels from the coarsest to ``stop`` (finest = 0). Level ``l`` has the shape
``level_shapes(...)[l]`` and computes a ``region`` of it (the whole level, a training crop,
or a tile grown by its receptive field); ``origin`` is the region's first cell, which the
fire mask hashes. Its state starts as zeros at the coarsest level, or as the coarser level's
state upsampled by ``factor`` (nearest: cell ``i`` reads node ``i // factor``, in absolute
coordinates). Every pass walks this one schedule: the training forward
(``models.octree.OctreeNCA.forward``), the single pass with one shared buffer
(``inference.octree.drive``) and the exact tiles (``inference.tiled.run_tiled``).

A level whose step uses statistics of the whole level (BatchNorm) cannot run on part of it,
so only the levels finer than the first such level may be tiled (:meth:`LevelSchedule.tileable`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch

from .pyramid import level_shapes

Region = Sequence[slice]


@dataclass(frozen=True)
class Level:
    """One level of a pass: its index, whole shape, the cells it computes and its steps."""

    index: int
    shape: tuple[int, ...]
    region: tuple[slice, ...]
    steps: int
    factor: tuple[int, ...] | None   # from the next coarser level to this one; None at the coarsest

    @property
    def origin(self) -> list[int]:
        return [s.start for s in self.region]

    @property
    def size(self) -> list[int]:
        return [s.stop - s.start for s in self.region]

    @property
    def whole(self) -> bool:
        return self.size == list(self.shape)


def whole(shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(0, int(n)) for n in shape)


def upsample(nodes: torch.Tensor, factor: Sequence[int], cells: Region, *, start: Sequence[int] | None = None,
             channels_last: bool = False, out: torch.Tensor | None = None,
             chunk_bytes: int | None = None) -> torch.Tensor:
    """Nearest upsampling: cell ``i`` of the absolute ``cells`` reads node ``i // factor`` of
    ``nodes``, whose first node is the absolute ``start`` (default 0).

    ``nodes`` is ``[B, C, *spatial]`` or, with ``channels_last``, ``[B, *spatial, C]``. Without
    ``out`` and ``chunk_bytes`` the result is one gather (differentiable). With them it is
    written into ``out`` batch item by batch item, a band of whole blocks of rows (``factor[0]``
    output rows each) at a time, each band gathered before it is written: so no intermediate
    exceeds ``chunk_bytes`` (or one block of rows), and ``out`` may share memory with ``nodes``
    when the output of nodes ``[0, k)`` ends before node ``k`` (``inference.octree.buffer_layout``)."""
    start = [0] * len(cells) if start is None else list(start)
    first = 1 if channels_last else 2
    index = [torch.div(torch.arange(s.start, s.stop, device=nodes.device), f, rounding_mode="floor") - p
             for s, f, p in zip(cells, factor, start)]
    if out is None and chunk_bytes is None:
        for k, idx in enumerate(index):
            if not (factor[k] == 1 and start[k] == 0 and nodes.shape[first + k] == len(idx)):
                nodes = nodes.index_select(first + k, idx)
        return nodes
    shape = [s.stop - s.start for s in cells]
    if out is None:
        out = nodes.new_empty((nodes.shape[0], *shape, nodes.shape[-1]) if channels_last
                              else (nodes.shape[0], nodes.shape[1], *shape))
    row_bytes = max(1, math.prod(out.shape[first + 1:]) * (1 if channels_last else out.shape[1]) * out.element_size())
    rows = max(1, (chunk_bytes or (1 << 62)) // (row_bytes * factor[0])) * factor[0]
    axis = first - 1   # the first spatial axis of one batch item
    for b in range(nodes.shape[0]):
        for r0 in range(0, shape[0], rows):
            block = nodes[b].index_select(axis, index[0][r0:r0 + rows])
            for k in range(1, len(shape)):
                block = block.index_select(axis + k, index[k])
            target = out[b, r0:r0 + rows] if channels_last else out[b, :, r0:r0 + rows]
            target.copy_(block)
            del block
    return out


class LevelSchedule:
    """The levels of a model on an input of ``spatial_shape`` (see the module docstring).

    ``factors[l]`` maps level ``l`` to level ``l + 1``; ``steps`` and ``kernel_sizes`` are per
    level, finest first; ``whole_level[l]``: level ``l`` needs statistics of the whole level."""

    def __init__(self, spatial_shape: Sequence[int], factors: Sequence[Sequence[int]], steps: Sequence[int],
                 kernel_sizes: Sequence[int] | None = None, whole_level: Sequence[bool] | None = None):
        self.factors = [tuple(int(v) for v in f) for f in factors]
        self.shapes = level_shapes(spatial_shape, self.factors)
        self.steps = [int(s) for s in steps]
        self.kernel_sizes = [int(k) for k in kernel_sizes] if kernel_sizes is not None else [3] * len(self.shapes)
        self.whole_level = [bool(w) for w in whole_level] if whole_level is not None else [False] * len(self.shapes)
        if not len(self.steps) == len(self.kernel_sizes) == len(self.whole_level) == len(self.shapes):
            raise ValueError(f"one entry per level needed ({len(self.shapes)} levels)")

    @classmethod
    def of(cls, model, spatial_shape: Sequence[int]) -> "LevelSchedule":
        """The schedule of a multi-level NCA (``model.config``, ``model.backbones``)."""
        c = model.config
        return cls(spatial_shape, c.factors, c.steps, c.kernel_sizes,
                   [bb.normalization == "batch" for bb in model.backbones])

    @property
    def levels(self) -> int:
        return len(self.shapes)

    @property
    def top(self) -> int:
        return self.levels - 1

    def level(self, index: int, region: Region | None = None) -> Level:
        return Level(index, self.shapes[index], tuple(region) if region is not None else whole(self.shapes[index]),
                     self.steps[index], self.factors[index] if index < self.top else None)

    def walk(self, *, start: int | None = None, stop: int = 0,
             regions: Mapping[int, Region] | None = None) -> Iterator[Level]:
        """Levels ``start`` (default the coarsest) down to ``stop``; ``regions`` gives the cells
        computed per level (a level without an entry is computed whole)."""
        regions = regions or {}
        for index in range(self.top if start is None else start, stop - 1, -1):
            yield self.level(index, regions.get(index))

    def to_finer(self, state: torch.Tensor, coarse: Level, fine: Level, **kw) -> torch.Tensor:
        """The state of ``fine`` (its region) from the state of the next coarser level ``coarse``
        (its region): nearest upsampling by ``fine.factor`` (see :func:`upsample`)."""
        if fine.factor is None or coarse.index != fine.index + 1:
            raise ValueError(f"level {fine.index} does not follow level {coarse.index}")
        return upsample(state, fine.factor, fine.region, start=coarse.origin, **kw)

    def scale(self, level: int) -> list[int]:
        """Level-0 cells per node of ``level``, per axis (the product of the factors below it)."""
        scale = [1] * len(self.shapes[0])
        for f in self.factors[:level]:
            scale = [a * b for a, b in zip(scale, f)]
        return scale

    def crop_regions(self, level: int, region: Region) -> dict[int, tuple[slice, ...]]:
        """Regions of a training crop: ``region`` at ``level``, and at every finer level the
        cells of its nodes (clipped to the level)."""
        regions = {level: tuple(region)}
        for finer in range(level - 1, -1, -1):
            f, n = self.factors[finer], self.shapes[finer]
            regions[finer] = tuple(slice(s.start * k, min(s.stop * k, m)) for s, k, m in zip(regions[finer + 1], f, n))
        return regions

    def tile_regions(self, core: Region, split: int) -> dict[int, tuple[slice, ...]]:
        """Regions of an exact tile whose level-0 cells are ``core``: at level ``l < split`` what
        the finer level needs, widened by the reach of its steps (``steps * radius`` each side)
        and clipped to the level; at ``split`` the nodes that region reads."""
        need = list(core)
        regions: dict[int, tuple[slice, ...]] = {}
        for level in range(split):
            r = self.steps[level] * (self.kernel_sizes[level] // 2)
            grown = tuple(slice(max(0, s.start - r), min(n, s.stop + r)) for s, n in zip(need, self.shapes[level]))
            regions[level] = grown
            need = [slice(s.start // f, (s.stop - 1) // f + 1) for s, f in zip(grown, self.factors[level])]
        regions[split] = tuple(need)
        return regions

    def tileable(self, split: int) -> bool:
        """Whether levels ``split ..`` can run whole and the finer ones in tiles: ``split`` is a
        level above 0 and no finer level needs statistics of its whole level."""
        return 0 < split < self.levels and not any(self.whole_level[:split])

    def splits(self) -> list[int]:
        """Every level the tiled pass may split at, finest first (empty: the model cannot be tiled)."""
        return [split for split in range(1, self.levels) if self.tileable(split)]


def upsample_bytes(shape: Sequence[int], channels: int, itemsize: int, factor: Sequence[int],
                   chunk_bytes: int) -> int:
    """Largest transient of a banded :func:`upsample` into a state of spatial ``shape``: one band
    of output rows (whole blocks of ``factor[0]`` rows, within ``chunk_bytes``) and the gather
    of the axis before it, at most as large."""
    row = max(1, math.prod(shape[1:]) * channels * itemsize)
    rows = max(1, chunk_bytes // (row * factor[0])) * factor[0]
    return 2 * min(rows, int(shape[0])) * row
