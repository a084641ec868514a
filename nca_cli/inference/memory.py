"""Predict the peak memory of a run before it starts, and choose single pass or tiles within a budget.

A run goes through phases that do not overlap in time; its peak is the largest phase, on top
of the process's resident memory when the input starts (``baseline``: libraries, model, the
reader's own decoded copy of an image; videos are decoded a band of frames at a time):

- **fit**: percentiles of the normalisation (``io.normalize.fit_bytes``);
- **pyramid**: the coarse input levels (kept in the state's type) while one band of level 0 is
  read and normalised;
- **levels**: the one state buffer of all levels (on the CPU only its pages written so far),
  the coarse inputs not yet used (all of them when they are kept), the perception a coarse
  BatchNorm level keeps between the sweeps of a step (``octree.keeps_perception``), and the
  largest transient of a level: reading a band of level-0 inputs, upsampling a chunk, the fused
  kernel's per-thread planes, or a PyTorch reference step (its working memory per cell measured
  once per backbone in this process, since it depends on the library's convolution kernels);
- **labels**: the state, the label map and one band of logits turned into labels (ensembles:
  every run's float16 logits, then their median);
- **write**: the label map and what the writer copies (a PNG or NIfTI encoder holds a copy and
  its compressed bytes; a video overlay re-reads the frames band by band).

Sliding-window models measure one window's forward pass once (cold, in this process) and add
the slab of input, the blended logits of a slab and the label map. ``tests/inference/
test_memory.py`` checks every model family against measured peaks; ``benchmarks/memory_model.py``
writes the table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..core.errors import NCAError
from ..core.sizes import format_size
from ..io.normalize import Normalization, band_bytes, fit_bytes
from ..io.video import CHUNK_BYTES as VIDEO_CHUNK
from .octree import buffer_layout, keeps_perception
from .sources import BAND_CELLS
from .tiled import Tile, tile_regions, tile_working_elements

CHUNK = 1 << 23             # bytes per upsampling chunk (inference.octree, inference.tiled)
KERNEL_LANES = 16           # widest SIMD block of the CPU kernel (one row of padding each side)


@dataclass(frozen=True)
class InputCost:
    """What reading the input costs: channels, raw bytes per value, its normalisation, its kind."""

    channels: int
    itemsize: int = 1
    normalization: Normalization = field(default_factory=lambda: Normalization("none", divide_by=255.0))
    kind: str = "image"


@dataclass
class Plan:
    mode: str                 # "single", "tiled" or "sliding-window"
    predicted_bytes: int
    split: int | None = None
    tile: list[int] | None = None
    tiles: int = 0
    phases: dict = field(default_factory=dict)


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# -- measured once per process -------------------------------------------------------------------

_STEP_BYTES: dict[tuple, tuple[float, float]] = {}
_FORWARD_PEAKS: dict[tuple, int] = {}
STEP_PROBE = {2: (256, 256), 3: (16, 64, 64)}


def _measured(fn) -> int:
    """Peak memory above the current resident size while ``fn()`` runs (cold: first call)."""
    from ..core.machine import PeakMeter

    meter = PeakMeter(torch.device("cpu")).start()
    fn()
    return max(0, int(meter.stop()["peak_bytes"]))


def torch_step_cost(backbone) -> tuple[float, float]:
    """(fixed bytes, bytes per cell) of the working memory of one PyTorch reference step of
    ``backbone`` (float32 arithmetic, under ``inference_mode``; the convolution library's own
    buffers included): a one-time cold-call overhead, and the per-cell cost measured once per
    backbone shape on a warm probe state (it is linear in the cells)."""
    key = (backbone.dims, backbone.channels, backbone.hidden, backbone.input_channels, backbone.kernel_size,
           backbone.normalization, backbone.perception, backbone.fc1_all_channels, torch.get_num_threads())
    if key not in _STEP_BYTES:
        shape = STEP_PROBE[backbone.dims]
        state = torch.randn(1, backbone.channels, *shape)
        with torch.inference_mode():
            cold = _measured(lambda: backbone.run(state, 1))
            warm = _measured(lambda: backbone.run(state, 1))
        cells = math.prod(shape)
        _STEP_BYTES[key] = (max(0.0, cold - warm), warm / cells)
    return _STEP_BYTES[key]


def torch_step_bytes(backbone, cells: int) -> float:
    fixed, per_cell = torch_step_cost(backbone)
    return fixed + per_cell * cells


def forward_peak_bytes(model, window: Sequence[int], channels: int, device="cpu") -> int:
    """Peak memory of one forward pass of ``model`` over one window (batch 1) under
    ``inference_mode``, the input included: measured once per model and window, on its first
    (cold) call, so what its kernels allocate outside PyTorch is counted too."""
    key = (id(model), tuple(window), channels, str(device))
    if key not in _FORWARD_PEAKS:
        param = next(model.parameters())
        x = torch.zeros((1, channels, *window), dtype=param.dtype, device=device)
        if torch.device(device).type == "cuda":
            from ..core.machine import PeakMeter

            meter = PeakMeter(torch.device(device)).start()
            with torch.inference_mode():
                model(x)
            peak = meter.stop()["peak_bytes"]
        else:
            with torch.inference_mode():
                peak = _measured(lambda: model(x))
        _FORWARD_PEAKS[key] = int(peak) + x.numel() * x.element_size()
    return _FORWARD_PEAKS[key]


# -- NCAs --------------------------------------------------------------------------------------

def _kernel_thread_bytes(model, shapes, dtype_bytes: int, threads: int) -> int:
    """The fused CPU kernel's planes per thread: 2P+1 float planes of the cells around the one
    being updated (3D: strips of their rows, with P rows each side, and the P original rows per
    plane of the band that a strip saves for the next), and 2P raw planes of the band's
    borders (a plane is a row in 2D); with BatchNorm also the statistics groups' sums and
    moments, and each thread's buffered features and float products."""
    from ..kernels import statistics_groups, strip_rows

    worst = 0
    for level, bb in enumerate(model.backbones):
        shape = shapes[level]
        p = bb.kernel_size // 2
        plane = math.prod(shape[1:-1]) if len(shape) == 3 else 1
        width = -(-shape[-1] // KERNEL_LANES) * KERNEL_LANES + 2 * KERNEL_LANES
        row_bytes = width * bb.channels * 4
        bands = max(1, min(threads, shape[0]))
        band = -(-shape[0] // bands)
        ring_rows, saved = plane, 0
        if len(shape) == 3:
            strip = strip_rows(plane, row_bytes, p)
            ring_rows = min(plane, strip + 2 * p)
            if strip < plane:
                saved = p * band * shape[-1] * bb.channels * dtype_bytes
        per_thread = ((2 * p + 1) * ring_rows * row_bytes + 2 * p * plane * shape[-1] * bb.channels * dtype_bytes
                      + saved)
        sums = 0
        if bb.normalization == "batch":
            # each group's double sums of z and z^2 per hidden unit and its moments (sums,
            # products, reference, two counters); per thread the buffered features (256
            # cells), the float products, W0 in double
            feat = (3 if bb.perception == "full2" else 2) * bb.channels
            featp = -(-feat // 4) * 4
            sums = statistics_groups(shape) * (2 * bb.hidden + 2 * featp + featp * featp + 2) * 8
            per_thread += 256 * featp * 4 + featp * featp * 4 * KERNEL_LANES + feat * bb.hidden * 8
        worst = max(worst, per_thread * bands + sums)
    return worst


def _label_bytes(cells: int, band: int, outputs: int, ensemble: int) -> tuple[int, int]:
    """(kept for the whole run, transient of one band): the label map (and every ensemble run's
    float16 logits); a band of float32 logits and the label temporaries (multi-class: maximum,
    int64 index and the chosen labels)."""
    kept = cells + (ensemble * cells * outputs * 2 if ensemble > 1 else 0)
    per_cell = outputs * 4 + 3 + (20 if outputs > 1 else 0)
    transient = band * per_cell
    if ensemble > 1:   # finishing: a band of all runs in float32, its sigmoid, median, std
        transient = max(transient, ensemble * band * outputs * 4 * 4)
    return kept, transient


def _write_bytes(cells: int, cost: InputCost, ensemble_std: bool) -> int:
    """What writing the outputs holds besides the label map: the encoder's copy and its bytes,
    a float32 uncertainty map, a video overlay's frames."""
    extra = 2 * cells
    if ensemble_std:
        extra += 4 * cells
    if cost.kind == "video":
        # the overlay re-reads the frames a band at a time (the reader keeps one); a preview's
        # planes through time decode a chunk of whole frames at a time
        extra += max(2 * min(cells, BAND_CELLS) * cost.channels, min(cells * cost.channels, VIDEO_CHUNK))
    return extra


def _inputs_bytes(cells0: int, cost: InputCost) -> int:
    band = min(cells0, BAND_CELLS) * cost.channels
    return band_bytes(band, cost.itemsize, cost.normalization)


def _fused_step_bytes(model, shapes, dtype_bytes: int, device_type: str) -> int:
    """The fused step's own memory: per-thread planes on the CPU; on CUDA the side buffers of
    the in-place step or the second state of the double-buffered one (the largest level's)."""
    if device_type == "cuda":
        # cuda/nca_cuda.cu: in place (3P + 1 planes per band of the outer axis, the bands within
        # 1/8 of the state) when that gives 128 bands or more, else a second state.
        side = 3 * (max(bb.kernel_size for bb in model.backbones) // 2) + 1
        return max((math.prod(s) // 8 if s[0] // (8 * side) >= 128 else math.prod(s)) * model.config.channels
                   * dtype_bytes for s in shapes)
    return _kernel_thread_bytes(model, shapes, dtype_bytes, torch.get_num_threads())


def single_pass_phases(model, shape, *, dtype, impl: str, cost: InputCost, ensemble: int = 1,
                       want_std: bool = False, device_type: str = "cpu") -> dict[str, int]:
    """Bytes of every phase of a single pass (see the module docstring)."""
    c = model.config
    shapes = model.level_shapes(shape)
    offsets, _, total = buffer_layout(shapes, c.factors, 1, c.channels)
    b = _bytes(dtype)
    cells0 = math.prod(shapes[0])
    inputs = [math.prod(s) * c.input_channels * b for s in shapes[1:]]   # coarse levels 1, 2, ...
    pyramid = sum(inputs)
    if device_type == "cpu" and ensemble == 1:
        # One pass drops each coarse input once written, and of the state buffer only the pages a
        # level has touched are resident (the OS commits them on first write): while level l runs,
        # the buffer from its offset on and the inputs of levels 1 .. l.
        held = max((total - offsets[level]) * b + sum(inputs[:level])
                   + keeps_perception(model, shapes, level, 0, 1, b, device_type) for level in range(len(shapes)))
    else:
        held = total * b + pyramid + max(keeps_perception(model, shapes, level, 0, 1, b, device_type)
                                         for level in range(len(shapes)))
    read = _inputs_bytes(cells0, cost)
    if impl == "torch":
        largest = max(torch_step_bytes(bb, math.prod(s)) + math.prod(s) * c.channels * 4 * (b != 4)
                      for s, bb in zip(shapes, model.backbones))
    else:
        largest = _fused_step_bytes(model, shapes, b, device_type)
    transient = max(read, 3 * CHUNK, int(largest))
    kept, band = _label_bytes(cells0, min(cells0, BAND_CELLS), c.output_channels, ensemble)
    return {
        "fit": fit_bytes(cells0, cost.channels, cost.itemsize, cost.normalization),
        "pyramid": pyramid + read + (kept if ensemble > 1 else 0),
        "levels": held + transient + (kept if ensemble > 1 else 0),
        "labels": total * b + kept + band,
        "write": kept + _write_bytes(cells0, cost, want_std),
    }


def single_pass_bytes(model, shape, *, dtype, impl: str, cost: InputCost | None = None, ensemble: int = 1,
                      want_std: bool = False, device_type: str = "cpu") -> int:
    cost = cost or InputCost(model.config.input_channels)
    return max(single_pass_phases(model, shape, dtype=dtype, impl=impl, cost=cost, ensemble=ensemble,
                                  want_std=want_std, device_type=device_type).values())


def tiled_phases(model, shape, *, split: int, tile, dtype, impl: str, cost: InputCost, ensemble: int = 1,
                 want_std: bool = False, device_type: str = "cpu") -> tuple[dict[str, int], int]:
    """Bytes of every phase of an exact tiled run, and the number of tiles."""
    c = model.config
    shapes = model.level_shapes(shape)
    offsets, sizes, total = buffer_layout(shapes, c.factors, 1, c.channels)
    b = _bytes(dtype)
    coarse = (total - offsets[split]) * b
    pyramid = sum(math.prod(s) * c.input_channels for s in shapes[1:]) * b
    cells0 = math.prod(shapes[0])
    grid = [math.ceil(n / t) for n, t in zip(shapes[0], tile)]
    sample = []
    for pick in (lambda g: 0, lambda g: g // 2, lambda g: g - 1):   # border, interior, border tiles
        core = [slice(pick(g) * t, min(pick(g) * t + t, n)) for g, t, n in zip(grid, tile, shapes[0])]
        sample.append(Tile(core, tile_regions(core, shapes, c.factors, c.steps, c.kernel_sizes, split)))
    states = max(tile_working_elements(t, 1, c.channels, split) for t in sample) * b
    region0 = max(math.prod(r.stop - r.start for r in t.regions[0]) for t in sample)
    read = _inputs_bytes(region0, cost)
    if impl == "torch":
        step = max(torch_step_bytes(model.backbones[level], math.prod(r.stop - r.start for r in t.regions[level]))
                   for t in sample for level in range(split))
    else:
        tile_shapes = [[r.stop - r.start for r in sample[1].regions[level]] for level in range(split)]
        step = _fused_step_bytes(model, tile_shapes + shapes[split:], b, device_type)
    kept, band = _label_bytes(cells0, math.prod(tile), c.output_channels, ensemble)
    coarse_run = single_pass_phases(model, shape, dtype=dtype, impl=impl, cost=cost, device_type=device_type)
    phases = {
        "fit": coarse_run["fit"],
        "pyramid": pyramid + _inputs_bytes(min(cells0, BAND_CELLS), cost) + kept,
        "levels": coarse + pyramid + kept + states + max(read, 2 * CHUNK, int(step)) + band,
        "write": kept + _write_bytes(cells0, cost, want_std),
    }
    return phases, math.prod(grid)


def tiled_bytes(model, shape, *, split: int, tile, dtype, impl: str, cost: InputCost | None = None,
                ensemble: int = 1, want_std: bool = False, device_type: str = "cpu") -> tuple[int, int]:
    cost = cost or InputCost(model.config.input_channels)
    phases, count = tiled_phases(model, shape, split=split, tile=tile, dtype=dtype, impl=impl, cost=cost,
                                 ensemble=ensemble, want_std=want_std, device_type=device_type)
    return max(phases.values()), count


def largest_fitting_shape(need, shape: Sequence[int], budget: int) -> tuple[int, ...] | None:
    """The largest input of ``shape``'s proportions whose prediction ``need(shape)`` fits ``budget``."""
    lo, hi = 0.0, 1.0
    if need(shape) <= budget:
        return tuple(shape)
    for _ in range(30):
        mid = (lo + hi) / 2
        trial = [max(1, int(n * mid)) for n in shape]
        if need(trial) <= budget:
            lo = mid
        else:
            hi = mid
    best = tuple(max(1, int(n * lo)) for n in shape)
    return best if lo > 0 and need(best) <= budget else None


def _describe(shape: Sequence[int]) -> str:
    return f"{' x '.join(map(str, shape))} ({math.prod(shape) / 1e6:.1f} MP)"


def _fitting(fits: Sequence[int] | None, baseline: int) -> str:
    """``about <shape>``, or why nothing fits."""
    if fits:
        return f"about {_describe(fits)}"
    return f"none (nca itself, its libraries loaded, takes about {format_size(baseline)})"


def plan_run(model, shape, *, dtype, impl: str, budget: int, tiling: str = "auto", tile_size: int | None = None,
             ensemble: int = 1, baseline: int = 0, name: str = "the input", cost: InputCost | None = None,
             want_std: bool = False, device_type: str = "cpu") -> Plan:
    """Single pass when it fits (or ``tiling == "off"``), else the cheapest tiling that fits; a run
    that cannot fit is refused in one sentence naming the size that would."""
    cost = cost or InputCost(model.config.input_channels)
    where = {"cost": cost, "ensemble": ensemble, "want_std": want_std, "device_type": device_type}
    phases = single_pass_phases(model, shape, dtype=dtype, impl=impl, **where)
    single = max(phases.values()) + baseline

    def single_need(s):
        return single_pass_bytes(model, s, dtype=dtype, impl=impl, **where) + baseline

    if tiling == "off" or (tiling == "auto" and single <= budget):
        if single > budget:
            fits = largest_fitting_shape(single_need, shape, budget)
            raise NCAError(f"Segmenting {name} in one pass needs about {format_size(single)} but the budget is "
                           f"{format_size(budget)}; the largest input of its proportions that fits in one pass is "
                           f"{_fitting(fits, baseline)}, so allow tiling (--tiling auto), use --state-dtype "
                           f"float16, or raise --memory-budget.")
        return Plan("single", single, phases=phases)
    c = model.config
    if c.levels < 2 or any(bb.normalization == "batch" for bb in model.backbones):
        fits = largest_fitting_shape(single_need, shape, budget)
        raise NCAError(f"Segmenting {name} needs about {format_size(single)} (budget {format_size(budget)}) and this "
                       f"model cannot be tiled exactly (its BatchNorm uses statistics of whole levels); the largest "
                       f"input of its proportions that fits in one pass is {_fitting(fits, baseline)}, "
                       f"so segment a smaller region or raise --memory-budget.")
    dims = len(shape)
    best = None
    for split in range(1, c.levels):
        sides = [tile_size] if tile_size else [2 ** k for k in range(15, 5, -1)]
        for side in sides:
            tile = [min(side, n) for n in shape]
            if dims == 3 and tile_size is None:
                tile[0] = shape[0] if shape[0] <= side else side
            tphases, count = tiled_phases(model, shape, split=split, tile=tile, dtype=dtype, impl=impl, **where)
            need = max(tphases.values()) + baseline
            if need <= budget:
                cand = Plan("tiled", need, split, tile, count, tphases)
                if best is None or cand.tiles < best.tiles:
                    best = cand
                break
        if best is not None and tiling != "force":
            break
    if best is None:
        smallest = tiled_bytes(model, shape, split=c.levels - 1, tile=[min(64, n) for n in shape], dtype=dtype,
                               impl=impl, **where)[0] + baseline
        raise NCAError(f"The memory budget {format_size(budget)} is too small to segment {name} even in tiles "
                       f"(at least {format_size(smallest)} needed); raise --memory-budget.")
    return best


# -- sliding windows -----------------------------------------------------------------------------

def window_phases(model, shape: Sequence[int], window: Sequence[int], *, cost: InputCost, device="cpu",
                  forward: int | None = None) -> dict[str, int]:
    """Bytes of every phase of a sliding-window pass (see ``inference.windows``): one window's
    forward, one slab of input (raw, normalised) and its blended logits (accumulator, its
    shifted copy, the finished rows, one window row of results); a cascade adds its stage-1 label
    map and the one-hot slab."""
    c = model.config
    cells = math.prod(shape)
    slab = window[0] * math.prod(shape[1:])
    k = c.output_channels
    cascade = hasattr(model, "stage1")
    if forward is None:
        forward = forward_peak_bytes(model, window, c.input_channels, device)
    slab_in = band_bytes(slab * c.input_channels, cost.itemsize, cost.normalization)
    slab_out = slab * k * 4 * 4
    stage1 = (cells + slab * (2 * k + c.input_channels) * 4) if cascade else 0
    return {
        "fit": fit_bytes(cells, cost.channels, cost.itemsize, cost.normalization),
        "windows": cells + forward + slab_in + slab_out + stage1,
        "write": cells + _write_bytes(cells, cost, False),
    }


def window_plan(model, shape: Sequence[int], window: Sequence[int], *, budget: int, baseline: int = 0,
                name: str = "the input", cost: InputCost | None = None, device="cpu") -> Plan:
    """Sliding windows always run band by band; a run whose prediction exceeds ``budget`` is refused."""
    cost = cost or InputCost(model.config.input_channels)
    phases = window_phases(model, shape, window, cost=cost, device=device)
    need = max(phases.values()) + baseline
    if need > budget:
        forward = forward_peak_bytes(model, window, model.config.input_channels, device)
        fits = largest_fitting_shape(lambda s: max(window_phases(model, s, window, cost=cost, forward=forward)
                                                   .values()) + baseline, shape, budget)
        raise NCAError(f"Segmenting {name} with {model.config.architecture} needs about {format_size(need)} "
                       f"(windows of {'x'.join(map(str, window))}) but the budget is {format_size(budget)}; the largest "
                       f"input of its proportions that fits is {_fitting(fits, baseline)}, so raise "
                       f"--memory-budget or segment a smaller region.")
    return Plan("sliding-window", need, phases=phases)
