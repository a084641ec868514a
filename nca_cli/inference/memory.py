"""Predict peak memory before a run, and choose single pass or tiles within a budget."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.errors import NCAError
from ..core.sizes import format_size
from .octree import buffer_layout
from .tiled import Tile, tile_regions, tile_working_elements


def torch_step_bytes_per_cell(channels: int, hidden: int, perception: str = "depthwise") -> int:
    """Working memory of one PyTorch reference step per cell (float32): a channels-first copy of
    the state, its padding, the perception, the concatenation, the hidden layer (twice: before
    and after ReLU), the update and the new state."""
    per = 3 if perception == "full2" else 2
    return 4 * (channels * (3 + per + 2) + 2 * hidden)


@dataclass
class Plan:
    mode: str                 # "single" or "tiled"
    predicted_bytes: int
    split: int | None = None
    tile: list[int] | None = None
    tiles: int = 0


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def single_pass_bytes(model, shape, *, dtype, impl: str, ensemble: int = 1, batch: int = 1) -> int:
    c = model.config
    shapes = model.level_shapes(shape)
    _, sizes, total = buffer_layout(shapes, c.factors, batch, c.channels)
    b = _bytes(dtype)
    cells0 = batch * math.prod(shapes[0])
    pyramid = sum(batch * math.prod(s) * c.input_channels for s in shapes[1:]) * b
    out = cells0 * (1 + (ensemble > 1) * ensemble * c.output_channels * 2)
    work = 0
    if impl == "torch":
        work = max(batch * math.prod(s) for s in shapes) * torch_step_bytes_per_cell(c.channels, c.hidden, c.perception)
    return total * b + pyramid + out + work


def tiled_bytes(model, shape, *, split: int, tile, dtype, impl: str, ensemble: int = 1) -> tuple[int, int]:
    c = model.config
    shapes = model.level_shapes(shape)
    offsets, sizes, total = buffer_layout(shapes, c.factors, 1, c.channels)
    b = _bytes(dtype)
    coarse = (total - offsets[split]) * b
    pyramid = sum(math.prod(s) * c.input_channels for s in shapes[1:]) * b
    cells0 = math.prod(shapes[0])
    out = cells0 * (1 + (ensemble > 1) * ensemble * c.output_channels * 2)
    grid = [math.ceil(n / t) for n, t in zip(shapes[0], tile)]
    sample = []
    for pick in (lambda g: 0, lambda g: g // 2, lambda g: g - 1):   # border, interior, border tiles
        core = [slice(pick(g) * t, min(pick(g) * t + t, n)) for g, t, n in zip(grid, tile, shapes[0])]
        sample.append(Tile(core, tile_regions(core, shapes, c.factors, c.steps, c.kernel_sizes, split)))
    work = max(tile_working_elements(t, 1, c.channels, split) for t in sample) * b
    work += math.prod(tile) * (4 * c.output_channels + 2)     # a core's float32 logits and its labels
    if impl == "torch":
        biggest = max(math.prod(r.stop - r.start for r in t.regions[0]) for t in sample)
        work += biggest * torch_step_bytes_per_cell(c.channels, c.hidden, c.perception)
    return coarse + pyramid + out + work, math.prod(grid)


def plan_run(model, shape, *, dtype, impl: str, budget: int, tiling: str = "auto", tile_size: int | None = None,
             ensemble: int = 1, baseline: int = 0, name: str = "the input") -> Plan:
    """Single pass when it fits (or ``tiling == "off"``), else the cheapest tiling that fits."""
    single = single_pass_bytes(model, shape, dtype=dtype, impl=impl, ensemble=ensemble) + baseline
    if tiling == "off" or (tiling == "auto" and single <= budget):
        if single > budget:
            raise NCAError(f"Segmenting {name} in one pass needs about {format_size(single)} but the budget is "
                           f"{format_size(budget)}; allow tiling (--tiling auto), use --state-dtype float16, "
                           f"or raise --memory-budget.")
        return Plan("single", single)
    c = model.config
    if c.levels < 2 or any(bb.normalization == "batch" for bb in model.backbones[:-1]):
        raise NCAError(f"Segmenting {name} needs about {format_size(single)} (budget {format_size(budget)}) and this "
                       f"model cannot be tiled exactly (BatchNorm over whole levels or a single level); "
                       f"raise --memory-budget or use a smaller input.")
    dims = len(shape)
    best = None
    for split in range(1, c.levels):
        sides = [tile_size] if tile_size else [2 ** k for k in range(15, 5, -1)]
        for side in sides:
            tile = [min(side, n) for n in shape]
            if dims == 3 and tile_size is None:
                tile[0] = shape[0] if shape[0] <= side else side
            need, count = tiled_bytes(model, shape, split=split, tile=tile, dtype=dtype, impl=impl, ensemble=ensemble)
            need += baseline
            if need <= budget:
                cand = Plan("tiled", need, split, tile, count)
                if best is None or cand.tiles < best.tiles:
                    best = cand
                break
        if best is not None and tiling != "force":
            break
    if best is None:
        smallest = tiled_bytes(model, shape, split=c.levels - 1, tile=[min(64, n) for n in shape], dtype=dtype,
                               impl=impl, ensemble=ensemble)[0] + baseline
        raise NCAError(f"The memory budget {format_size(budget)} is too small to segment {name} even in tiles "
                       f"(at least {format_size(smallest)} needed); raise --memory-budget.")
    return best


_FORWARD_PEAKS: dict[tuple, int] = {}


def forward_peak_bytes(model, window: Sequence[int], channels: int, device) -> int:
    """Measured peak memory of one forward pass of ``model`` over one window (batch 1), under
    ``torch.inference_mode()``: the network's own working memory, including what its kernels
    allocate outside PyTorch (convolution workspaces). Measured once per model and window."""
    from ..core.machine import PeakMeter

    key = (id(model), tuple(window), channels, str(device))
    if key not in _FORWARD_PEAKS:
        param = next(model.parameters())
        x = torch.zeros((1, channels, *window), dtype=param.dtype, device=device)
        with torch.inference_mode():
            model(x)                      # warm-up: lazy initialisation is not working memory
            meter = PeakMeter(torch.device(device)).start()
            out = model(x)
            del out
            peak = meter.stop()["peak_bytes"]
        _FORWARD_PEAKS[key] = max(0, int(peak)) + x.numel() * x.element_size()
    return _FORWARD_PEAKS[key]


def window_pass_bytes(model, shape: Sequence[int], window: Sequence[int], *, input_itemsize: int = 4,
                      device="cpu") -> int:
    """Peak bytes of a sliding-window pass over an input of ``shape`` (see ``inference.windows``):
    one window forward, one slab of input (raw, float64 while normalised, float32), the blended
    logits of a slab (accumulator, its shifted copy, the finished rows, one window row of
    results) and the uint8 label map; a cascade adds its stage-1 label map and the one-hot slab."""
    c = model.config
    cells = math.prod(shape)
    slab = window[0] * math.prod(shape[1:])
    k = c.output_channels
    inputs = c.input_channels
    cascade = hasattr(model, "stage1")
    forward = forward_peak_bytes(model, window, inputs, device)   # a cascade: both stages on one window
    slab_in = slab * inputs * (input_itemsize + 8 + 4)
    slab_out = slab * k * 4 * 4
    labels = cells
    extra = (cells + slab * (k + inputs + k) * 4) if cascade else 0
    return forward + slab_in + slab_out + labels + extra


def window_plan(model, shape: Sequence[int], window: Sequence[int], *, budget: int, baseline: int = 0,
                name: str = "the input", input_itemsize: int = 4, device="cpu") -> Plan:
    """Sliding windows always run band by band; refuse a run whose prediction exceeds ``budget``."""
    need = window_pass_bytes(model, shape, window, input_itemsize=input_itemsize, device=device) + baseline
    if need > budget:
        raise NCAError(f"Segmenting {name} with {model.config.architecture} needs about {format_size(need)} "
                       f"(windows of {'x'.join(map(str, window))}) but the budget is {format_size(budget)}; raise "
                       f"--memory-budget to at least {format_size(need)} or use a smaller input.")
    return Plan("sliding-window", need)
