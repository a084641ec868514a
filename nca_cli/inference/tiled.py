"""Exact tiled inference: coarse levels whole, the finest levels tile by tile.

Levels ``>= split`` run once on the whole input (``runner.drive`` stops at ``split``). Each
tile's core at level 0 is then grown level by level into the region whose final state
it depends on: at level l the region is what is needed, widened by ``steps[l] * radius[l]``
on each side (the receptive field of that level's steps), clipped to the input. Cells near
a tile's inner edge see a reflected border instead of their neighbours, but that error
travels one cell per step and never reaches the core; at the input's own border the tile
edge is the true border. Fire masks hash absolute coordinates. So every core cell is
computed exactly as in the single pass, with the same seed. The tiles' regions, and which
levels may be tiled, are the model's ``models.schedule.LevelSchedule``'s.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from ..models.schedule import LevelSchedule
from .octree import CHUNK_BYTES, PyramidSource, drive, step_runner


@dataclass
class Tile:
    core: list[slice]                       # level-0 cells this tile produces
    regions: dict[int, tuple[slice, ...]]   # level -> cells computed (levels < split); split -> nodes read

    def working_elements(self, batch: int, channels: int, split: int) -> int:
        """Largest state (elements) the tile holds at once: two adjacent levels."""
        sizes = [batch * channels * math.prod(s.stop - s.start for s in self.regions[level])
                 for level in range(split + 1)]
        return max(sizes[level] + sizes[level + 1] for level in range(split))


def tile_at(schedule: LevelSchedule, corner: Sequence[int], tile: Sequence[int], split: int) -> Tile:
    """The tile whose core starts at level-0 cell ``corner`` and has (at most) ``tile`` cells."""
    core = [slice(a, min(a + t, n)) for a, t, n in zip(corner, tile, schedule.shapes[0])]
    return Tile(core, schedule.tile_regions(core, split))


def plan_tiles(schedule: LevelSchedule, split: int, tile: Sequence[int]) -> list[Tile]:
    """Tiles covering level 0 in row-major order; ``tile`` is the core size per axis."""
    starts = [range(0, n, t) for n, t in zip(schedule.shapes[0], tile)]
    return [tile_at(schedule, corner, tile, split) for corner in itertools.product(*starts)]


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
    schedule = LevelSchedule.of(model, source.shapes[0])
    if not schedule.tileable(split):
        raise ValueError(f"this model can be split only at levels {schedule.splits()} (levels with BatchNorm use "
                         f"statistics of the whole level and cannot be tiled), got {split}")
    run = step_runner(impl)
    coarse = drive(model, source, impl=impl, seed=seed, state_dtype=state_dtype, device=device, stop_level=split,
                   on_level=on_level)
    tiles = plan_tiles(schedule, split, tile)
    for k, t in enumerate(tiles):
        if keep is not None and not keep(t.core):
            if on_tile is not None:
                on_tile(k + 1, len(tiles))
            continue
        yield t.core, grow_tile(model, source, schedule, coarse, t, split, run=run, seed=seed)
        if on_tile is not None:
            on_tile(k + 1, len(tiles))


def grow_tile(model, source: PyramidSource, schedule: LevelSchedule, coarse: torch.Tensor, t: Tile, split: int, *,
              run: Callable, seed: int) -> torch.Tensor:
    """One tile: its region of the coarse state at ``split`` grown level by level down to level 0;
    returns the channels-last final state of its core cells (the tile's other cells are freed)."""
    prev, above = coarse[(slice(None), *t.regions[split])], schedule.level(split, t.regions[split])
    for level in schedule.walk(start=split - 1, regions=t.regions):
        state = schedule.to_finer(prev, above, level, channels_last=True, chunk_bytes=CHUNK_BYTES)
        del prev
        source.write_inputs(level.index, state, level.region)
        run(model.backbones[level.index], state, level.steps, seed, level.index, level.origin)
        prev, above = state, level
    local = [slice(cs.start - rs.start, cs.stop - rs.start) for cs, rs in zip(t.core, t.regions[0])]
    del state
    return prev[(slice(None), *local)]
