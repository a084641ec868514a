"""Fused step against the PyTorch step: time, FLOP rate against a measured FMA peak, memory.

Run as ``python -m nca_cli.kernels.bench [--out FILE.md]``; ``nca benchmark --kernel`` calls
``run_kernel_benchmark``.

Cases: OctreeNCA's backbone (2D RGB, 3D MRI, 3D RGB) and beside it, per task, the
backbones of the baselines Med-NCA (pathology: kernels 3 and 7, BatchNorm, fc1 to all
channels; the VWSL X-ray model: two full 3x3 convolutions, hidden 128) and M3D-NCA (3D,
kernels 3 and 7, BatchNorm), with random weights.

- Time per step: median of ``repeats`` timed calls after one warm-up call, wall clock.
- FLOPs: multiply-adds count 2 (``step_flops``). Perception ``2·C·K^d`` per cell (two full
  convolutions: ``2·2·C·C·K^d``); fc0 ``2·FEAT·hidden`` and fc1 ``2·hidden·(C-IN)`` per cell
  that fires (the fused kernel skips the matrix work of cells that do not fire; the counts
  come from the same fire mask). BatchNorm: the fused step first sweeps every cell once
  more: perception, then on the CPU the features' sums and pairwise products
  (``FEAT·(FEAT+1) + FEAT``), on CUDA fc0 and ``3·hidden`` for the sums of z and z^2; then
  it normalises (``2·hidden``) the cells that fire. Cases that stand for a coarse level
  (``COARSE``) keep the statistics sweep's perception for the update sweep, as the models'
  coarse levels do on the CPU (``inference.octree.keeps_perception``), so they perceive once;
  their time with the perception computed in both sweeps is reported too. "Dense" counts what the PyTorch step
  computes: one perception, fc0, normalisation and its statistics and fc1 (all C outputs
  when fc1 has them) for every cell.
- FMA peak: ``fma_peak`` of the CPU extension, independent float32 FMA chains held in
  registers on every thread, median of 3, measured before and after the fused timing (the
  larger is used). Both are also divided by the process CPU time, which gives a fraction of
  peak that does not depend on other processes sharing the cores.
- Memory (CPU): each measurement runs in a fresh process that allocates the state, resets
  the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs one step and reads
  ``VmHWM``; "extra" is that peak minus the resident size just before the step, so it is
  every byte the step itself needed on top of its input. Where the counter cannot be reset,
  ``ru_maxrss`` is used instead (the method is reported). CUDA: ``max_memory_allocated``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from ..core.firemask import fire_mask
from ..core.machine import cpu_name, load_average, proc_status_bytes, reset_peak_rss
from ..models.backbone import BackboneNCA

CHANNELS = 16
_BN = dict(normalization="batch")
# case -> (label, spatial shape, BackboneNCA settings besides dims, channels and fire rate)
CASES = {
    "pathology": ("OctreeNCA 2D RGB", (2048, 2048), dict(input_channels=3)),
    "radiology": ("OctreeNCA 3D MRI", (64, 256, 256), dict(input_channels=1)),
    "surgery": ("OctreeNCA 3D RGB video", (40, 240, 432), dict(input_channels=3)),
    "mednca_pathology_k3": ("Med-NCA 2D RGB, kernel 3 (fine level)", (2048, 2048),
                            dict(input_channels=3, kernel_size=3, fc1_all_channels=True, **_BN)),
    "mednca_pathology_k7": ("Med-NCA 2D RGB, kernel 7 (coarse level)", (2048, 2048),
                            dict(input_channels=3, kernel_size=7, fc1_all_channels=True, **_BN)),
    "mednca_xray": ("Med-NCA (VWSL) 2D X-ray, two full 3x3 convs, hidden 128", (1024, 1024),
                    dict(input_channels=1, hidden=128, perception="full2", fc1_all_channels=True, **_BN)),
    "m3d_radiology_k3": ("M3D-NCA 3D MRI, kernel 3 (fine level)", (64, 256, 256),
                         dict(input_channels=1, kernel_size=3, fc1_all_channels=True, **_BN)),
    "m3d_radiology_k7": ("M3D-NCA 3D MRI, kernel 7 (coarse level)", (32, 128, 128),
                         dict(input_channels=1, kernel_size=7, fc1_all_channels=True, **_BN)),
    "m3d_surgery_k3": ("M3D-NCA 3D RGB video, kernel 3 (fine level)", (40, 240, 432),
                       dict(input_channels=3, kernel_size=3, fc1_all_channels=True, **_BN)),
    "m3d_surgery_k7": ("M3D-NCA 3D RGB video, kernel 7 (coarse level)", (20, 120, 216),
                       dict(input_channels=3, kernel_size=7, fc1_all_channels=True, **_BN)),
}
# Cases that stand for a coarse level of their model: on the CPU they run as the model runs
# that level, keeping the statistics sweep's perception for the update sweep.
COARSE = frozenset({"mednca_pathology_k7", "m3d_radiology_k7", "m3d_surgery_k7"})
# task -> its cases: OctreeNCA's backbone, then the baselines' of the same task
TASKS = {
    "pathology": ("pathology", "mednca_pathology_k3", "mednca_pathology_k7", "mednca_xray"),
    "radiology": ("radiology", "m3d_radiology_k3", "m3d_radiology_k7"),
    "surgery": ("surgery", "m3d_surgery_k3", "m3d_surgery_k7"),
}
DEFAULT_TASKS = ("pathology", "radiology")


def make_backbone(case: str, fire_rate: float, seed: int = 0) -> BackboneNCA:
    """The case's backbone with random weights, fc1 included (it is zero-initialised)."""
    _, shape, settings = CASES[case]
    torch.manual_seed(seed)
    m = BackboneNCA(len(shape), CHANNELS, fire_rate=fire_rate, **settings)
    torch.nn.init.normal_(m.fc1.weight, std=0.05)
    return m.eval()


def step_flops(m: BackboneNCA) -> dict[str, int]:
    """FLOPs per cell of one step by part (a multiply-add counts 2): ``perception``, ``fc0``,
    ``fc1`` (the C-IN outputs kept), ``fc1_torch`` (what PyTorch computes: C outputs when fc1
    has all channels), and with BatchNorm ``norm`` (normalise), ``statistics`` (sums of z
    and z^2) and ``moments`` (sums and pairwise products of the FEAT features, the CPU
    launcher's statistics sweep instead of fc0 and ``statistics``)."""
    c, h, taps = m.channels, m.hidden, m.kernel_size ** m.dims
    full = m.perception == "full2"
    feat = (3 if full else 2) * c
    flops = {
        "perception": (2 * 2 * c * c if full else 2 * c) * taps,
        "fc0": 2 * feat * h,
        "fc1": 2 * h * (c - m.input_channels),
        "fc1_torch": 2 * h * (c if m.fc1_all_channels else c - m.input_channels),
        "norm": 0,
        "statistics": 0,
        "moments": 0,
    }
    if m.normalization == "batch":
        flops["norm"], flops["statistics"] = 2 * h, 3 * h
        flops["moments"] = feat * (feat + 1) + feat
    return flops


def executed_flops(m: BackboneNCA, fired: float, device: str = "cpu", kept: bool = False) -> float:
    """FLOPs per cell the fused step executes when a share ``fired`` of the cells fires. The
    BatchNorm statistics sweep perceives every cell, then takes the feature moments (CPU) or
    fc0 and the sums of z and z^2 (CUDA); ``kept``: the update sweep reuses that perception."""
    f = step_flops(m)
    statistics_sweep = 0
    if f["statistics"]:
        statistics_sweep = f["perception"] + (f["moments"] if device == "cpu" else f["fc0"] + f["statistics"])
    update_perception = 0 if kept and f["statistics"] else f["perception"]
    return statistics_sweep + update_perception + fired * (f["fc0"] + f["norm"] + f["fc1"])


def dense_flops(m: BackboneNCA) -> int:
    """FLOPs per cell of the PyTorch step (every cell, one sweep)."""
    f = step_flops(m)
    return f["perception"] + f["fc0"] + f["statistics"] + f["norm"] + f["fc1_torch"]


def memory_probe(impl: str, case: str, shape: Sequence[int], fire_rate: float, threads: int,
                 keep: bool = False) -> dict:
    """In this (fresh) process: bytes one step needs above the state, CPU. See module docstring."""
    from . import backbone_shape, fused_run, kernel_module

    torch.set_num_threads(threads)
    m = make_backbone(case, fire_rate)
    if impl == "fused":
        kernel_module("cpu", backbone_shape(m))
        state = torch.empty(1, *shape, CHANNELS).normal_()
    else:
        state = torch.empty(1, CHANNELS, *shape).normal_()
    reset = reset_peak_rss()
    base = proc_status_bytes("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.inference_mode():
        if impl == "fused":
            fused_run(m, state, 1, threads=threads, keep_perception=keep)
        else:
            out = m.step(state)
            del out
    if reset and base is not None:
        peak, method = proc_status_bytes("VmHWM"), "VmHWM after clear_refs"
    else:
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
        base = base if base is not None else maxrss_before
    return {"extra_bytes": max(0, peak - base), "state_bytes": state.numel() * state.element_size(),
            "method": method}


def _measure_memory(impl: str, case: str, shape: Sequence[int], fire_rate: float, threads: int,
                    keep: bool = False) -> dict:
    spec = json.dumps({"impl": impl, "case": case, "shape": list(shape), "fire_rate": fire_rate, "threads": threads,
                       "keep": keep})
    proc = subprocess.run([sys.executable, "-m", "nca_cli.kernels.bench", "--probe", spec],
                          capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"extra_bytes": None, "state_bytes": None, "method": f"failed: {tail}"}
    return json.loads(lines[-1])


def _median_time(fn, repeats: int, sync=None) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds) of ``repeats`` calls after a warm-up call."""
    fn()
    if sync:
        sync()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        if sync:
            sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def fma_peak(threads: int, repeats: int = 3) -> tuple[float, float]:
    """Measured float32 FMA throughput of ``threads`` threads, median of ``repeats``:
    (GFLOP/s of wall time, GFLOP/s per CPU-second, i.e. per core actually running)."""
    from . import kernel_module

    mod = kernel_module("cpu")
    wall, per_core = [], []
    for _ in range(repeats):
        c0 = time.process_time()
        flops, seconds = mod.fma_peak(threads, 50_000_000)
        wall.append(flops / seconds * 1e-9)
        per_core.append(flops / max(time.process_time() - c0, 1e-9) * 1e-9)
    return statistics.median(wall), statistics.median(per_core)


def run_kernel_benchmark(
    sizes: dict[str, Sequence[int]] | None = None,
    steps: int = 1,
    threads: int | None = None,
    *,
    repeats: int = 3,
    fire_rate: float = 0.5,
    memory: bool = True,
    task: str | None = None,
    device: str = "cpu",
) -> dict:
    """Time the fused and the PyTorch step side by side; returns ``{"rows": [...], ...}``.

    ``task`` (``pathology``, ``radiology``, ``surgery``) runs that task's cases (``TASKS``:
    OctreeNCA's backbone, then Med-NCA's or M3D-NCA's), or ``task`` names one case of
    ``CASES``. ``sizes`` maps case names to spatial shapes, overriding their default shapes;
    without ``task`` it also picks the cases. Default: the pathology and radiology tasks
    (2048x2048 2D RGB states; 3D states as volumes are read, slices x height x width: 64 slices
    of 256x256 MRI, M3D-NCA's kernel 7 on 32 x 128x128, video 40 frames of 240x432).
    """
    from . import fused_available

    dev = torch.device(device)
    if not fused_available(dev):
        return {"rows": [], "error": f"the fused kernels cannot be built or loaded on {dev.type}"}
    if task:
        tasks = list(TASKS[task]) if task in TASKS else [task]
    else:
        tasks = list(sizes) if sizes else [c for t in DEFAULT_TASKS for c in TASKS[t]]
    unknown = [t for t in tasks if t not in CASES]
    if unknown:
        raise ValueError(f"unknown kernel benchmark case {unknown[0]!r}; choose a task {sorted(TASKS)} "
                         f"or a case {sorted(CASES)}")
    previous_threads = torch.get_num_threads()
    threads = int(threads) if threads else previous_threads
    torch.set_num_threads(threads)
    try:
        return _run_cases(tasks, sizes or {}, steps, threads, repeats, fire_rate, memory, dev)
    finally:
        torch.set_num_threads(previous_threads)


def _run_cases(tasks: list[str], sizes: dict, steps: int, threads: int, repeats: int, fire_rate: float,
               memory: bool, dev: torch.device) -> dict:
    load_before = load_average()
    rows = []
    for name in tasks:
        label, shape, _ = CASES[name]
        shape = tuple(int(s) for s in sizes.get(name, shape))
        m = make_backbone(name, fire_rate).to(dev)
        kept = dev.type == "cpu" and name in COARSE and m.normalization == "batch"
        timing = _time_case(m, shape, steps, threads, repeats, kept, dev)
        row = _case_row(name, label, shape, m, steps, fire_rate, kept, dev, **timing)
        if memory:
            row.update(_case_memory(m, name, shape, fire_rate, threads, kept, dev))
        rows.append(row)
    return {
        "rows": rows,
        "device": str(dev),
        "threads": threads,
        "steps": steps,
        "repeats": repeats,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "platform": platform.platform(), "loadavg_before": load_before, "loadavg_after": load_average()},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _time_case(m: BackboneNCA, shape: tuple, steps: int, threads: int, repeats: int, kept: bool,
               dev: torch.device) -> dict:
    """Seconds per step of the fused and the PyTorch step (and of the fused step recomputing the
    perception when it is kept), with the FMA peaks measured just before and after the fused timing."""
    from . import fused_run, kept_perception_bytes, to_channels_last

    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    state_cf = torch.randn(1, CHANNELS, *shape, device=dev)
    state_cl = to_channels_last(state_cf)
    # as in a model: the buffer is part of the shared state buffer, its pages already in use
    buffer = torch.zeros(kept_perception_bytes(m, shape) // 4) if kept else None
    peaks = [fma_peak(threads)] if dev.type == "cpu" else []
    fused_s, fused_cpu = _median_time(lambda: fused_run(m, state_cl, steps, threads=threads, keep_perception=kept,
                                                        keep_buffer=buffer), repeats, sync)
    buffer = None
    if dev.type == "cpu":
        peaks.append(fma_peak(threads))
    recompute_s = None
    if kept:
        recompute_s = _median_time(lambda: fused_run(m, state_cl, steps, threads=threads), repeats, sync)[0] / steps
    state_cl = None  # freed before the PyTorch timing
    with torch.inference_mode():
        torch_s, _ = _median_time(lambda: m.run(state_cf, steps), repeats, sync)
    state_cf = None
    return {"fused_s": fused_s / steps, "fused_cpu": fused_cpu / steps, "torch_s": torch_s / steps,
            "recompute_s": recompute_s, "peaks": peaks}


def _case_row(name: str, label: str, shape: tuple, m: BackboneNCA, steps: int, fire_rate: float, kept: bool,
              dev: torch.device, *, fused_s: float, fused_cpu: float, torch_s: float, recompute_s, peaks) -> dict:
    """One case's row: its timings, speed-ups and FLOP rates against the FMA peak."""
    cells = 1
    for s in shape:
        cells *= s
    # The larger of the peaks measured just before and after the fused timing.
    peak = max(p[0] for p in peaks) if peaks else None
    peak_core = max(p[1] for p in peaks) if peaks else None
    firing = sum(int(fire_mask(shape, seed=0, level=0, step=t, fire_rate=fire_rate).sum()) for t in range(steps))
    fired = firing / (steps * cells)
    executed = executed_flops(m, fired, dev.type, kept) * cells
    dense = dense_flops(m) * cells
    return {
        "case": f"{label}{', perception kept' if kept else ''} {'x'.join(map(str, shape))}",
        "case_name": name,
        "kept_perception": kept,
        "fused_recompute_s": recompute_s,
        "speedup_recompute": torch_s / recompute_s if recompute_s else None,
        "cells": cells,
        "fire_rate": fire_rate,
        "fused_s": fused_s,
        "torch_s": torch_s,
        "speedup": torch_s / fused_s,
        "fused_gflops": executed / fused_s * 1e-9,
        "fused_dense_gflops": dense / fused_s * 1e-9,
        "torch_gflops": dense / torch_s * 1e-9,
        "peak_gflops": peak,
        "peak_fraction": executed / fused_s * 1e-9 / peak if peak else None,
        "fused_cpu_s": fused_cpu if dev.type == "cpu" else None,
        "peak_gflops_per_core": peak_core,
        "peak_fraction_cpu_time": (executed / fused_cpu * 1e-9 / peak_core
                                   if peak_core and dev.type == "cpu" else None),
    }


def _case_memory(m: BackboneNCA, name: str, shape: tuple, fire_rate: float, threads: int, kept: bool,
                 dev: torch.device) -> dict:
    """The extra peak memory of one fused and one PyTorch step (and the method), for CPU or CUDA."""
    row: dict = {}
    if dev.type == "cpu":
        for impl in ("fused", "torch"):
            mem = _measure_memory(impl, name, shape, fire_rate, threads, kept and impl == "fused")
            row[f"{impl}_extra_bytes"] = mem["extra_bytes"]
            row[f"{impl}_extra_fraction"] = (mem["extra_bytes"] / mem["state_bytes"]
                                             if mem["extra_bytes"] is not None else None)
            row["memory_method"] = mem["method"]
    elif dev.type == "cuda":
        for impl in ("fused", "torch"):
            row[f"{impl}_extra_bytes"], row[f"{impl}_extra_fraction"] = _cuda_memory(m, impl, shape, dev)
        row["memory_method"] = "torch.cuda.max_memory_allocated"
    return row


def _cuda_memory(m: BackboneNCA, impl: str, shape: Sequence[int], dev: torch.device) -> tuple[int, float]:
    from . import fused_run

    if impl == "fused":
        state = torch.randn(1, *shape, CHANNELS, device=dev)
    else:
        state = torch.randn(1, CHANNELS, *shape, device=dev)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    with torch.inference_mode():
        out = fused_run(m, state, 1) if impl == "fused" else m.step(state)
    torch.cuda.synchronize(dev)
    extra = torch.cuda.max_memory_allocated(dev) - base
    state_bytes = state.numel() * state.element_size()
    del out, state
    return extra, extra / state_bytes


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def format_markdown(result: dict) -> str:
    """The result of ``run_kernel_benchmark`` as a Markdown report."""
    mach = result.get("machine", {})
    lines = [
        "# Fused NCA step vs PyTorch step",
        "",
        f"Machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores; torch {mach.get('torch', '?')}; "
        f"device {result.get('device')}; {result.get('threads')} threads; {result.get('date', '')}; "
        f"1-minute load average {_fmt(mach.get('loadavg_before'), '.1f')} before, "
        f"{_fmt(mach.get('loadavg_after'), '.1f')} after (other processes on the same cores).",
        f"C=16, hidden 64 (VWSL Med-NCA: 128), kernel 3 unless stated, random weights (fc1 non-zero), batch 1; "
        f"time per step = median of {result.get('repeats')} calls of {result.get('steps')} step(s) after a warm-up "
        f"call.",
        "",
        "| case | fire rate | fused s/step | PyTorch s/step | speed-up | fused GFLOP/s executed "
        "| fused GFLOP/s dense-equiv. | PyTorch GFLOP/s | FMA peak GFLOP/s | fused % of peak "
        "| fused % of peak, CPU time | fused extra peak MiB (% of state) | PyTorch extra peak MiB (% of state) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_markdown_row(r) for r in result.get("rows", [])]
    methods = {r.get("memory_method") for r in result.get("rows", []) if r.get("memory_method")}
    lines += _kept_perception_notes(result.get("rows", []))
    lines += [
        "",
        "- FLOPs count a multiply-add as 2: perception 2·C·K^d per cell (two full convolutions "
        "2·2·C·C·K^d), fc0 + fc1 2·(FEAT·hidden + hidden·(C-IN)) per cell that fires. \"Executed\" counts "
        "the matrix work only for the cells that fire (the fused kernel skips the rest) and, for "
        "BatchNorm, the whole statistics sweep over every cell (perception, then on the CPU the "
        "sums and pairwise products of the FEAT features, on CUDA fc0 and the sums of z and z^2) and "
        "the normalisation; \"dense-equiv.\" counts one sweep over every cell, as the "
        "PyTorch step computes it (fc1 with all C outputs where the model has them), divided by the "
        "fused time.",
        "- FMA peak: independent float32 FMA chains in registers on every thread, measured in the "
        "same process just before and just after the fused timing (median of 3 each, the larger "
        "is used). \"% of peak\" divides wall-clock rates; \"% of peak, CPU time\" divides rates per "
        "CPU-second of the process (kernel FLOPs / process CPU time against FMA FLOPs / CPU time), "
        "which stays meaningful when other processes share the cores.",
        f"- Extra peak memory: {', '.join(sorted(methods)) or 'not measured'}; a fresh process per "
        "measurement, peak resident size during one step minus the resident size just before it "
        "(the state itself excluded).",
    ]
    return "\n".join(lines) + "\n"


def _markdown_row(r: dict) -> str:
    """One row of the Markdown table."""
    mem = []
    for impl in ("fused", "torch"):
        b, f = r.get(f"{impl}_extra_bytes"), r.get(f"{impl}_extra_fraction")
        mem.append("-" if b is None else f"{b / 2**20:.1f} ({100 * f:.1f} %)")
    return (
        f"| {r['case']} | {r['fire_rate']} | {_fmt(r['fused_s'], '.3f')} | {_fmt(r['torch_s'], '.3f')} "
        f"| {_fmt(r['speedup'], '.1f')}x | {_fmt(r['fused_gflops'], '.1f')} | {_fmt(r['fused_dense_gflops'], '.1f')} "
        f"| {_fmt(r['torch_gflops'], '.1f')} | {_fmt(r['peak_gflops'], '.1f')} "
        f"| {_fmt(r['peak_fraction'], '.0f', 100)} % | {_fmt(r.get('peak_fraction_cpu_time'), '.0f', 100)} % "
        f"| {mem[0]} | {mem[1]} |")


def _kept_perception_notes(rows: list[dict]) -> list[str]:
    """The report's lines on the cases that keep the perception (none when no case does)."""
    kept = [r for r in rows if r.get("fused_recompute_s")]
    if not kept:
        return []
    lines = [""]
    for r in kept:
        lines.append(f"- {r['case']}: with the perception computed in both sweeps instead, "
                     f"{r['fused_recompute_s']:.3f} s/step ({r['speedup_recompute']:.1f}x), no kept buffer.")
    lines.append(
        "- Perception kept: a coarse level keeps the statistics sweep's conv outputs (float32, C per "
        "cell) for the update sweep, as the models do on the CPU where it fits in the part of the "
        "shared state buffer that the finer level fills later. The extra memory column includes that "
        "buffer; the timing keeps it in a buffer allocated beforehand, as a model does.")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nca_cli.kernels.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fire-rate", type=float, default=0.5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--task", choices=sorted(TASKS) + sorted(CASES), default=None,
                        help="a task (its OctreeNCA, Med-NCA / M3D-NCA cases) or one case")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table to this file")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        spec = json.loads(args.probe)
        print(json.dumps(memory_probe(spec["impl"], spec["case"], spec["shape"], spec["fire_rate"], spec["threads"],
                                      spec.get("keep", False))))
        return 0
    result = run_kernel_benchmark(steps=args.steps, threads=args.threads, repeats=args.repeats,
                                  fire_rate=args.fire_rate, memory=not args.no_memory, task=args.task,
                                  device=args.device)
    from ..core.files import print_text

    print_text(format_markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
