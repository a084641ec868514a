"""``nca benchmark``: largest single pass, memory/time curves and the fused step, side by side."""
from __future__ import annotations

import sys
import time

from rich.console import Console

from .. import __version__
from ..core.device import resolve_device
from ..core.errors import NCAError
from ..core.files import write_json
from ..core.machine import available_memory
from ..core.sizes import format_size, parse_size
from .curve import run_curve, write_csv, write_plot
from .options import BenchmarkOptions
from .report import (
    PAPER_BUDGET,
    PAPER_TABLE2,
    WEIGHTS_NOTE,
    machine_info,
    print_results,
)
from .search import MaxSizeResult, SearchSettings, find_max_size
from .subjects import Subject, select_subjects

MACHINE_FRACTION = 0.75     # share of the available memory one measuring process may use


def _fused_ready(subjects: list[Subject], device) -> str | None:
    """Build the fused kernels once in this process (so measuring processes only load them);
    returns why they cannot run, or None."""
    if not any(s.impl == "fused" for s in subjects):
        return None
    from ..kernels import fused_available

    return None if fused_available(device) else f"the fused kernels cannot be built or loaded on {device.type}"


def comparisons(task: str, rows: list[dict], budget: int) -> list[str]:
    """Sentences comparing the fused float16 row with the paper and with our PyTorch row."""
    by_key = {(r["model"], r["impl"], r["state_dtype"]): r for r in rows}
    fused = by_key.get(("octree_nca", "fused", "float16"))
    torch_row = by_key.get(("octree_nca", "torch", "float32"))
    if fused is None or fused["max_value"] is None:
        return []
    out = []
    unit = fused["value_unit"]
    paper = PAPER_TABLE2.get(task, {}).get("OctreeNCA-CUDA")
    if paper:
        scaled = paper[0] * budget / PAPER_BUDGET
        out.append(f"OctreeNCA fused float16: {fused['max_value']:.1f} {unit} = {fused['max_value'] / scaled:.2f}x the "
                   f"paper's CUDA kernel ({paper[0]} {unit} per 24 GiB"
                   + ("" if budget == PAPER_BUDGET else f", {scaled:.1f} {unit} scaled to this budget") + ").")
    if torch_row is not None and torch_row["max_value"]:
        line = (f"OctreeNCA fused float16: {fused['max_value'] / torch_row['max_value']:.2f}x our PyTorch "
                f"OctreeNCA path in the same run ({torch_row['max_value']:.1f} {unit}")
        mem = torch_row.get("memory_limit_value")
        if torch_row["crash"] and mem:
            line += (f", bounded by a crash; {fused['max_value'] / mem:.2f}x the {mem:.1f} {unit} its memory "
                     f"alone would allow")
        out.append(line + ").")
    return out


def run_benchmarks(opts: BenchmarkOptions) -> dict:
    """Run the chosen benchmarks, print tables (unless ``quiet``), write JSON/CSV/PNG.

    ``memory_budget``: the whole process's peak for ``--max-size``, as in ``segment`` (the
    ``--curve`` still bounds the pass alone; default: the device's available memory);
    smaller than the machine simulates a smaller device. ``verify_seconds``: the longest
    pass run to verify a limit; beyond it (or beyond this machine's memory) the limit is
    extrapolated and labelled so.
    """
    _check_options(opts)
    task = opts.task
    dev = resolve_device(opts.device)
    available = available_memory(dev)
    budget = parse_size(opts.memory_budget) if opts.memory_budget else available
    if budget <= 0:
        raise NCAError(f"The memory budget '{opts.memory_budget}' must be positive; write it like 24GiB.")
    console = Console(stderr=True)
    log = (lambda text: None) if opts.quiet else (lambda text: console.print(f"[dim]{text}[/dim]"))
    results: dict = {"tool": "nca", "version": __version__, "weights": WEIGHTS_NOTE, "machine": machine_info(dev)}
    subjects = select_subjects(task, opts.models, opts.impls) if (opts.max_size or opts.curve) else []
    blocked = _fused_ready(subjects, dev)
    if opts.max_size:
        results["max_size"] = _max_size_results(opts, subjects, blocked, dev, budget, available,
                                                results["machine"], log)
    if opts.curve:
        results["curve"] = _curve_results(opts, subjects, blocked, dev, budget, available, log)
    if opts.kernel:
        from ..kernels.bench import run_kernel_benchmark
        from .forward import run_forward_benchmark

        results["kernel"] = run_kernel_benchmark(task=task, device=str(dev))
        results["forward"] = run_forward_benchmark(task, device=str(dev))
    if opts.json_out is not None:
        write_json(opts.json_out, results)
    if not opts.quiet:
        print_results(results, Console() if sys.stdout.isatty() else Console(width=160))
    return results


def _check_options(opts: BenchmarkOptions) -> None:
    """Refuse a run with no benchmark chosen, or --plot/--csv without --curve."""
    if not (opts.max_size or opts.curve or opts.kernel):
        raise NCAError("Choose at least one of --max-size, --curve or --kernel for nca benchmark.")
    if (opts.plot is not None or opts.csv_out is not None) and not opts.curve:
        raise NCAError("--plot and --csv describe the --curve measurements; add --curve.")


def _max_size_results(opts: BenchmarkOptions, subjects: list[Subject], blocked, dev, budget: int,
                      available: int, machine: dict, log) -> dict:
    """The --max-size section: each subject's largest input within ``budget``, with the paper's table."""
    task, verify_seconds = opts.task, opts.verify_seconds
    settings = SearchSettings(budget=budget, machine_bytes=int(MACHINE_FRACTION * available), device=str(dev),
                              verify_seconds=verify_seconds)
    rows = []
    t0 = time.perf_counter()
    for s in subjects:
        if blocked and s.impl == "fused":
            rows.append(_unavailable_row(task, s, budget, blocked))
            continue
        log(f"{s.label} ({s.impl_label}), budget {format_size(budget)}")
        rows.append(find_max_size(task, s, settings, log=lambda text, s=s: log(f"  {text}")).to_dict())
    return {"task": task, "budget_bytes": budget, "machine": machine,
            "available_bytes": available, "verify_seconds": verify_seconds,
            "elapsed_seconds": time.perf_counter() - t0, "rows": rows,
            "paper": {"budget_bytes": PAPER_BUDGET, "device": "Nvidia RTX 4090 (24 GiB)",
                      "table2": PAPER_TABLE2.get(task)},
            "comparisons": comparisons(task, rows, budget)}


def _curve_results(opts: BenchmarkOptions, subjects: list[Subject], blocked, dev, budget: int,
                   available: int, log) -> dict:
    """The --curve section (memory and time against input size), written as CSV/PNG when asked."""
    task = opts.task

    def runnable() -> list[Subject]:
        return [s for s in subjects if not (blocked and s.impl == "fused")]

    cap = min(budget, int(MACHINE_FRACTION * available))
    points = run_curve(task, runnable(), budget=cap, device=str(dev), seconds_cap=opts.curve_seconds, log=log)
    section = {"task": task, "budget_bytes": budget, "points": points,
               "skipped": [s.key for s in subjects if s not in runnable()]}
    if opts.csv_out is not None:
        write_csv(opts.csv_out, points)
    if opts.plot is not None:
        write_plot(opts.plot, points, task)
    return section


def _unavailable_row(task: str, subject: Subject, budget: int, why: str) -> dict:
    row = MaxSizeResult(task, subject, budget, verification="unavailable", verified_text=why)
    return row.to_dict()
