"""Exact tiled inference: coarse levels whole, the finest levels tile by tile.

Levels ``>= split`` run once on the whole input (``runner.drive`` stops at ``split``). Each
tile's core at level 0 is then grown level by level into the region whose final state
it depends on: at level l the region is what is needed, widened by ``steps[l] * radius[l]``
on each side (the receptive field of that level's steps), clipped to the input. Cells near
a tile's inner edge see a reflected border instead of their neighbours, but that error
travels one cell per step and never reaches the core; at the input's own border the tile
edge is the true border. Fire masks hash absolute coordinates. So every core cell is
computed exactly as in the single pass, with the same seed.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .octree import PyramidSource, drive, step_runner


@dataclass
class Tile:
    core: list[slice]                # level-0 cells this tile produces
    regions: dict[int, list[slice]]  # level -> cells computed (levels < split); split -> nodes read


def tile_regions(core: Sequence[slice], shapes, factors, steps, kernel_sizes, split: int) -> dict[int, list[slice]]:
    need = list(core)
    regions: dict[int, list[slice]] = {}
    for level in range(split):
        r = steps[level] * (kernel_sizes[level] // 2)
        init = [slice(max(0, s.start - r), min(n, s.stop + r)) for s, n in zip(need, shapes[level])]
        regions[level] = init
        need = [slice(s.start // f, (s.stop - 1) // f + 1) for s, f in zip(init, factors[level])]
    regions[split] = need
    return regions


def plan_tiles(shapes, factors, steps, kernel_sizes, split: int, tile: Sequence[int]) -> list[Tile]:
    """Tiles covering level 0 in row-major order; ``tile`` is the core size per axis."""
    starts = [range(0, n, t) for n, t in zip(shapes[0], tile)]
    tiles = []
    for corner in itertools.product(*starts):
        core = [slice(a, min(a + t, n)) for a, t, n in zip(corner, tile, shapes[0])]
        tiles.append(Tile(core, tile_regions(core, shapes, factors, steps, kernel_sizes, split)))
    return tiles


def _upsample_region(prev: torch.Tensor, prev_start: Sequence[int], region: Sequence[slice], factor,
                     chunk_bytes: int = 1 << 23) -> torch.Tensor:
    """Channels-last nearest upsampling of the nodes ``prev`` (starting at ``prev_start``) onto
    the absolute cells ``region``: cell i reads node i // factor. Filled a band of rows at a
    time, so no intermediate larger than a band exists."""
    shape = [s.stop - s.start for s in region]
    out = torch.empty((prev.shape[0], *shape, prev.shape[-1]), dtype=prev.dtype, device=prev.device)
    idx = [torch.div(torch.arange(s.start, s.stop, device=prev.device), f, rounding_mode="floor") - p0
           for s, p0, f in zip(region, prev_start, factor)]
    rows = max(1, chunk_bytes // max(1, out[0, :1].numel() * out.element_size()))
    for b in range(prev.shape[0]):
        for r0 in range(0, shape[0], rows):
            block = prev[b].index_select(0, idx[0][r0:r0 + rows])
            for axis in range(1, len(shape)):
                block = block.index_select(axis, idx[axis])
            out[b, r0:r0 + block.shape[0]] = block
    return out


def tile_working_elements(tile: Tile, batch: int, channels: int, split: int) -> int:
    """Largest state (elements) a tile holds at once: two adjacent levels."""
    sizes = [batch * channels * math.prod(s.stop - s.start for s in tile.regions[level]) for level in range(split + 1)]
    return max(sizes[level] + sizes[level + 1] for level in range(split))


@torch.inference_mode()
def run_tiled(
    model,
    source: PyramidSource,
    *,
    split: int,
    tile: Sequence[int],
    impl: str = "fused",
    seed: int = 0,
    state_dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    on_tile: Callable[[int, int], None] | None = None,
    on_level: Callable[[int, float], None] | None = None,
    keep: Callable[[list[slice]], bool] | None = None,
) -> Iterator[tuple[list[slice], torch.Tensor]]:
    """Yield ``(core, state)`` per tile: the channels-last final level-0 state of the core cells.
    ``keep(core)`` False skips a tile (not computed, not yielded), e.g. one without tissue."""
    c = model.config
    if not 0 < split < c.levels:
        raise ValueError(f"split must lie in 1..{c.levels - 1}, got {split}")
    if any(bb.normalization == "batch" for bb in model.backbones[:split]):
        raise ValueError("levels with BatchNorm use statistics of the whole level and cannot be tiled")
    run = step_runner(impl)
    coarse = drive(model, source, impl=impl, seed=seed, state_dtype=state_dtype, device=device, stop_level=split,
                   on_level=on_level)
    tiles = plan_tiles(source.shapes, c.factors, c.steps, c.kernel_sizes, split, tile)
    for k, t in enumerate(tiles):
        if keep is not None and not keep(t.core):
            if on_tile is not None:
                on_tile(k + 1, len(tiles))
            continue
        prev = coarse[(slice(None), *t.regions[split])]
        prev_start = [s.start for s in t.regions[split]]
        for level in range(split - 1, -1, -1):
            region = t.regions[level]
            state = _upsample_region(prev, prev_start, region, c.factors[level])
            del prev
            source.write_inputs(level, state, region)
            run(model.backbones[level], state, c.steps[level], seed, level, [s.start for s in region])
            prev, prev_start = state, [s.start for s in region]
        local = [slice(cs.start - rs.start, cs.stop - rs.start) for cs, rs in zip(t.core, t.regions[0])]
        del state
        yield t.core, prev[(slice(None), *local)]
        del prev   # the tile's state is gone before the next tile starts
        if on_tile is not None:
            on_tile(k + 1, len(tiles))
