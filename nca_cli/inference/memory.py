"""Predict the peak memory of a run before it starts, and choose single pass or tiles within a budget.

A run goes through phases that do not overlap in time; its peak is the largest phase, on top
of the process's resident memory when the input starts (``baseline``: libraries, model, the
reader's own decoded copy of an image; videos are decoded a band of frames at a time). Each
allocating component states its own bytes beside the code that allocates them, and this
module adds them up:

- **fit**: percentiles of the normalisation (``io.normalize.fit_bytes``);
- **pyramid**: the coarse input levels (kept in the state's type: ``sources.pyramid_bytes``)
  while one band of level 0 is read, normalised and pooled (``sources.build_bytes``);
- **levels**: the one state buffer of all levels (``octree.buffer_bytes``; on the CPU only its
  pages written so far), the coarse inputs not yet used (all of them when they are kept), the
  perception a coarse BatchNorm level keeps between the sweeps of a step
  (``octree.keeps_perception``), and the largest transient of a level: reading a band of
  level-0 inputs, a band of an upsample (``models.schedule.upsample_bytes``), the fused kernel's
  workspace (on the CPU what the launcher states: ``kernels.workspace_bytes``; on CUDA
  :func:`cuda_step_bytes`), or a PyTorch reference step (its working memory per cell measured
  once per backbone in this process, since it depends on the library's convolution kernels);
- **labels**: the state, the label map and one band of logits turned into labels (ensembles:
  every run's float16 logits, then their median);
- **write**: the label map and what the writer copies (a PNG or NIfTI encoder holds a copy and
  its compressed bytes; a video's frames are read again: ``io.video.reread_bytes``).

Exact tiles hold the coarse levels' part of the buffer, then per tile two adjacent levels of
its regions (``tiled.Tile.working_elements``). Sliding-window models measure one window's forward
pass once (cold, in this process) and add the slab of input, the blended logits of a slab, the
label map and, for a cascade, what its registry entry's strategy states (``held_bytes``).
``tests/inference/test_memory.py`` checks every model family against measured peaks;
``benchmarks/memory_model.py`` writes the table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..core.errors import NCAError
from ..core.sizes import format_size
from ..io.normalize import Normalization, band_bytes, fit_bytes
from ..io.video import reread_bytes
from ..models.registry import architecture_of
from ..models.schedule import LevelSchedule, upsample_bytes
from .octree import CHUNK_BYTES, buffer_bytes, keeps_perception
from .sources import BAND_CELLS, build_bytes, pyramid_bytes, read_bytes
from .tiled import Tile, tile_at


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
BUDGET_MARGIN = 0.04        # share of a budget held back for what predictions miss,
BUDGET_FLOOR = 32 << 20     # and at least this (a tiled 2 MP image measured 18 MiB above its prediction)


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

def cuda_step_bytes(model, shapes, dtype_bytes: int) -> int:
    """The CUDA launcher's own memory (the largest level's): the side buffers of the in-place
    step, or the second state of the double-buffered one.

    ``cuda/nca_cuda.cu`` steps in place (3P + 1 planes per band of the outer axis, the bands
    within 1/8 of the state) when that gives 128 bands or more, else it keeps a second state."""
    side = 3 * (max(bb.kernel_size for bb in model.backbones) // 2) + 1
    return max((math.prod(s) // 8 if s[0] // (8 * side) >= 128 else math.prod(s)) * model.config.channels
               * dtype_bytes for s in shapes)


def _fused_step_bytes(model, shapes, dtype_bytes: int, device_type: str) -> int:
    """The fused step's own memory over the levels (``shapes`` per backbone): what the CPU
    launcher allocates beside the state (``kernels.workspace_bytes``), or the CUDA term."""
    if device_type == "cuda":
        return cuda_step_bytes(model, shapes, dtype_bytes)
    from ..kernels import workspace_bytes

    return max(workspace_bytes(bb, shape, 1, dtype_bytes) for bb, shape in zip(model.backbones, shapes))


def _step_bytes(model, shapes, dtype_bytes: int, impl: str, device_type: str) -> int:
    """The largest transient of a step over the levels (``shapes`` per backbone): the fused
    launcher's workspace, or a PyTorch reference step with its channels-first float32 copy."""
    if impl != "torch":
        return _fused_step_bytes(model, shapes, dtype_bytes, device_type)
    return int(max(torch_step_bytes(bb, math.prod(s)) + math.prod(s) * model.config.channels * 4 * (dtype_bytes != 4)
                   for s, bb in zip(shapes, model.backbones)))


def _upsample_bytes(schedule: LevelSchedule, sizes, channels: int, dtype_bytes: int) -> int:
    """The largest band an upsample into the levels below the top of ``sizes`` holds."""
    return max((upsample_bytes(sizes[level], channels, dtype_bytes, schedule.factors[level], CHUNK_BYTES)
                for level in range(len(sizes) - 1)), default=0)


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
    """What writing the outputs holds besides the label map: the encoder's copy and its encoded
    bytes, a float32 uncertainty map, a video's frames read again (``io.video.reread_bytes``)."""
    extra = 2 * cells
    if ensemble_std:
        extra += 4 * cells
    if cost.kind == "video":
        extra += reread_bytes(cells, cost.channels, BAND_CELLS)
    return extra


def _read_bytes(cells: int, cost: InputCost) -> int:
    return read_bytes(cells, cost.channels, cost.itemsize, cost.normalization)


def _build_bytes(model, cells0: int, cost: InputCost, dtype_bytes: int) -> int:
    """Building the input pyramid's first coarse level (``sources.build_bytes``)."""
    c = model.config
    if c.levels < 2:
        return _read_bytes(cells0, cost)
    return build_bytes(cells0, cost.channels, cost.itemsize, cost.normalization, c.factors[0], c.pyramid, dtype_bytes)


def _kept_bytes(model, shapes, dtype_bytes: int, impl: str, device_type: str) -> list[int]:
    """Per level, the perception a fused BatchNorm level keeps in the shared buffer (0: none)."""
    if impl == "torch":
        return [0] * len(shapes)
    return [keeps_perception(model, shapes, level, 0, 1, dtype_bytes, device_type) for level in range(len(shapes))]


def single_pass_phases(model, shape, *, dtype, impl: str, cost: InputCost, ensemble: int = 1,
                       want_std: bool = False, device_type: str = "cpu") -> dict[str, int]:
    """Bytes of every phase of a single pass (see the module docstring)."""
    c = model.config
    schedule = LevelSchedule.of(model, shape)
    shapes = schedule.shapes
    b = _bytes(dtype)
    cells0 = math.prod(shapes[0])
    inputs = pyramid_bytes(shapes, c.input_channels, b)   # coarse levels 1, 2, ...
    kept_perception = _kept_bytes(model, shapes, b, impl, device_type)
    if device_type == "cpu" and ensemble == 1:
        # One pass drops each coarse input once written, and of the state buffer only the pages a
        # level has touched are resident: while level l runs, the buffer from its offset on and
        # the inputs of levels 1 .. l.
        held = max(buffer_bytes(shapes, c.factors, c.channels, b, level) + sum(inputs[:level]) + kept_perception[level]
                   for level in range(len(shapes)))
    else:
        held = buffer_bytes(shapes, c.factors, c.channels, b) + sum(inputs) + max(kept_perception)
    transient = max(_read_bytes(cells0, cost), _upsample_bytes(schedule, shapes, c.channels, b),
                    _step_bytes(model, shapes, b, impl, device_type))
    kept, band = _label_bytes(cells0, min(cells0, BAND_CELLS), c.output_channels, ensemble)
    runs = kept if ensemble > 1 else 0
    return {
        "fit": fit_bytes(cells0, cost.channels, cost.itemsize, cost.normalization),
        "pyramid": sum(inputs) + _build_bytes(model, cells0, cost, b),   # before the labels exist
        "levels": held + transient + runs,
        "labels": buffer_bytes(shapes, c.factors, c.channels, b) + kept + band,
        "write": kept + _write_bytes(cells0, cost, want_std),
    }


def single_pass_bytes(model, shape, *, dtype, impl: str, cost: InputCost | None = None, ensemble: int = 1,
                      want_std: bool = False, device_type: str = "cpu") -> int:
    cost = cost or InputCost(model.config.input_channels)
    return max(single_pass_phases(model, shape, dtype=dtype, impl=impl, cost=cost, ensemble=ensemble,
                                  want_std=want_std, device_type=device_type).values())


def _sample_tiles(schedule: LevelSchedule, split: int, tile) -> tuple[list[Tile], int]:
    """The first, a middle and the last tile (the largest regions a tile may have), and the count."""
    grid = [math.ceil(n / t) for n, t in zip(schedule.shapes[0], tile)]
    sample = [tile_at(schedule, [pick(g) * t for g, t in zip(grid, tile)], tile, split)
              for pick in (lambda g: 0, lambda g: g // 2, lambda g: g - 1)]
    return sample, math.prod(grid)


def _tile_transient(model, schedule: LevelSchedule, sample: list[Tile], split: int, b: int, impl: str,
                    cost: InputCost, device_type: str) -> int:
    """The largest transient of a tile: reading its level-0 inputs, an upsample band, a step."""
    c = model.config
    sizes = [[[r.stop - r.start for r in t.regions[level]] for level in range(split + 1)] for t in sample]
    region0 = max(math.prod(s[0]) for s in sizes)
    if impl == "torch":
        step = max(_step_bytes(model, s[:split], b, impl, device_type) for s in sizes)
    else:
        step = _fused_step_bytes(model, sizes[1][:split] + schedule.shapes[split:], b, device_type)
    upsampled = max(_upsample_bytes(schedule, s, c.channels, b) for s in sizes)
    return max(_read_bytes(region0, cost), upsampled, int(step))


def tiled_phases(model, shape, *, split: int, tile, dtype, impl: str, cost: InputCost, ensemble: int = 1,
                 want_std: bool = False, device_type: str = "cpu") -> tuple[dict[str, int], int]:
    """Bytes of every phase of an exact tiled run, and the number of tiles."""
    c = model.config
    schedule = LevelSchedule.of(model, shape)
    shapes = schedule.shapes
    b = _bytes(dtype)
    coarse = buffer_bytes(shapes, c.factors, c.channels, b, split)
    pyramid = sum(pyramid_bytes(shapes, c.input_channels, b))
    cells0 = math.prod(shapes[0])
    sample, count = _sample_tiles(schedule, split, tile)
    states = max(t.working_elements(1, c.channels, split) for t in sample) * b
    transient = _tile_transient(model, schedule, sample, split, b, impl, cost, device_type)
    kept, band = _label_bytes(cells0, math.prod(tile), c.output_channels, ensemble)
    phases = {
        "fit": fit_bytes(cells0, cost.channels, cost.itemsize, cost.normalization),
        "pyramid": pyramid + _build_bytes(model, cells0, cost, b),
        "levels": coarse + pyramid + kept + states + transient + band,
        "write": kept + _write_bytes(cells0, cost, want_std),
    }
    return phases, count


def tiled_bytes(model, shape, *, split: int, tile, dtype, impl: str, cost: InputCost | None = None,
                ensemble: int = 1, want_std: bool = False, device_type: str = "cpu") -> tuple[int, int]:
    cost = cost or InputCost(model.config.input_channels)
    phases, count = tiled_phases(model, shape, split=split, tile=tile, dtype=dtype, impl=impl, cost=cost,
                                 ensemble=ensemble, want_std=want_std, device_type=device_type)
    return max(phases.values()), count


def usable_budget(budget: int) -> int:
    """What predictions may fill of ``budget`` (the whole process's peak): ``BUDGET_MARGIN`` of
    it, at least ``BUDGET_FLOOR``, is held back, so a run predicted to fit stays under the budget
    when measured."""
    return budget - max(int(budget * BUDGET_MARGIN), BUDGET_FLOOR)


def budget_for(need: int) -> int:
    """The smallest budget whose usable part holds ``need`` bytes."""
    return max(math.ceil(need / (1.0 - BUDGET_MARGIN)), need + BUDGET_FLOOR)


def check_budget(budget: int, baseline: int) -> None:
    """Refuse, in the one sentence every command uses, a budget that the process holds already
    before any input (``baseline``: Python, its libraries, the model)."""
    if usable_budget(budget) <= baseline:
        least = budget_for(baseline)
        raise NCAError(f"The memory budget {format_size(budget)} is below what nca itself takes before any input "
                       f"(about {format_size(baseline)}: Python, its libraries and the model) with the memory "
                       f"model's margin; raise --memory-budget above {format_size(least)}.")


def _budget_text(budget: int) -> str:
    return f"{format_size(budget)}, {format_size(usable_budget(budget))} of it for predictions"


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
    """Single pass when it fits (or ``tiling == "off"``), else the cheapest tiling that fits
    (``"force"``: the fewest tiles over every split); a run that cannot fit is refused in one
    sentence naming the size that would."""
    check_budget(budget, baseline)
    given, budget = budget, usable_budget(budget)
    cost = cost or InputCost(model.config.input_channels)
    where = {"dtype": dtype, "impl": impl, "cost": cost, "ensemble": ensemble, "want_std": want_std,
             "device_type": device_type}
    phases = single_pass_phases(model, shape, **where)
    single = max(phases.values()) + baseline

    def one_pass_need(s) -> int:
        return single_pass_bytes(model, s, **where) + baseline

    def fits_in_one_pass() -> str:
        return _fitting(largest_fitting_shape(one_pass_need, shape, budget), baseline)

    if tiling == "off" or (tiling == "auto" and single <= budget):
        if single > budget:
            raise NCAError(f"Segmenting {name} in one pass needs about {format_size(single)} but the budget is "
                           f"{_budget_text(given)}; the largest input of its proportions that fits in one pass is "
                           f"{fits_in_one_pass()}, so allow tiling (--tiling auto), use --state-dtype "
                           f"float16, or raise --memory-budget.")
        return Plan("single", single, phases=phases)
    splits = LevelSchedule.of(model, shape).splits()
    if not splits:
        raise NCAError(f"Segmenting {name} needs about {format_size(single)} (budget {_budget_text(given)}) and this "
                       f"model cannot be tiled exactly (its BatchNorm uses statistics of whole levels); the largest "
                       f"input of its proportions that fits in one pass is {fits_in_one_pass()}, "
                       f"so segment a smaller region or raise --memory-budget.")
    best = _best_tiling(model, shape, splits, tile_size, budget - baseline, fewest=tiling == "force", **where)
    if best is None:
        smallest = tiled_bytes(model, shape, split=splits[-1], tile=[min(64, n) for n in shape], **where)[0] + baseline
        raise NCAError(f"The memory budget {format_size(given)} ({format_size(budget)} of it for predictions) is too "
                       f"small to segment {name} even in tiles "
                       f"(at least {format_size(budget_for(smallest))} needed); raise --memory-budget.")
    best.predicted_bytes += baseline
    return best


def _best_tiling(model, shape, splits: Sequence[int], tile_size: int | None, budget: int, *, fewest: bool,
                 **where) -> Plan | None:
    """Per split (finest first), the largest tile side (``tile_size``, or powers of two from
    32768 down to 64) whose run fits ``budget``; the first split that fits, or with ``fewest`` the
    one with the fewest tiles. None when nothing fits."""
    best = None
    for split in splits:
        for side in [tile_size] if tile_size else [2 ** k for k in range(15, 5, -1)]:
            tile = [min(side, n) for n in shape]
            phases, count = tiled_phases(model, shape, split=split, tile=tile, **where)
            need = max(phases.values())
            if need <= budget:
                if best is None or count < best.tiles:
                    best = Plan("tiled", need, split, tile, count, phases)
                break
        if best is not None and not fewest:
            break
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
    cascade = architecture_of(model).cascade
    if forward is None:
        forward = forward_peak_bytes(model, window, c.input_channels, device)
    slab_in = band_bytes(slab * c.input_channels, cost.itemsize, cost.normalization)
    slab_out = slab * k * 4 * 4
    stage1 = cascade.held_bytes(model, cells, slab) if cascade is not None else 0
    return {
        "fit": fit_bytes(cells, cost.channels, cost.itemsize, cost.normalization),
        "windows": cells + forward + slab_in + slab_out + stage1,
        "write": cells + _write_bytes(cells, cost, False),
    }


def window_plan(model, shape: Sequence[int], window: Sequence[int], *, budget: int, baseline: int = 0,
                name: str = "the input", cost: InputCost | None = None, device="cpu") -> Plan:
    """Sliding windows always run band by band; a run whose prediction exceeds ``budget`` is refused."""
    check_budget(budget, baseline)
    given, budget = budget, usable_budget(budget)
    cost = cost or InputCost(model.config.input_channels)
    phases = window_phases(model, shape, window, cost=cost, device=device)
    need = max(phases.values()) + baseline
    if need > budget:
        forward = forward_peak_bytes(model, window, model.config.input_channels, device)
        fits = largest_fitting_shape(lambda s: max(window_phases(model, s, window, cost=cost, forward=forward)
                                                   .values()) + baseline, shape, budget)
        raise NCAError(f"Segmenting {name} with {model.config.architecture} needs about {format_size(need)} "
                       f"(windows of {'x'.join(map(str, window))}) but the budget is {_budget_text(given)}; the largest "
                       f"input of its proportions that fits is {_fitting(fits, baseline)}, so raise "
                       f"--memory-budget or segment a smaller region.")
    return Plan("sliding-window", need, phases=phases)
