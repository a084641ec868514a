"""Terminal tables, the machine description, and the paper's Table 2 for comparison."""
from __future__ import annotations

import hashlib
import os
import platform

import torch
from rich.console import Console
from rich.table import Table

from ..core.machine import cpu_name
from ..core.resources import kernel_source_dir
from ..core.sizes import format_size

# OctreeNCA paper, Table 2: one pass on an Nvidia RTX 4090 (24 GiB); (max size, throughput).
PAPER_BUDGET = 24 * 2 ** 30
PAPER_TABLE2 = {
    "pathology": {"UNet": (8.3, 9.76), "med/M3D-NCA": (28.7, 7.79), "OctreeNCA": (28.7, 13.93),
                  "OctreeNCA-CUDA": (184.9, 77.36)},
    "surgery": {"UNet": (3.8, 112.0), "med/M3D-NCA": (11.5, 108.0), "OctreeNCA": (11.5, 219.0),
                "OctreeNCA-CUDA": (76.2, 453.0)},
}
WEIGHTS_NOTE = ("Untrained models with random weights (fixed seed): memory and time do not depend on the "
                "weights, the masks are meaningless.")


def kernel_sources_sha256() -> str | None:
    """One hash over the fused kernel sources, to tell which kernel a result was measured with."""
    folder = kernel_source_dir()
    files = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix in (".h", ".cpp", ".cu")) \
        if folder.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def machine_info(device: torch.device) -> dict:
    import psutil

    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_bytes": int(psutil.virtual_memory().total),
            "available_bytes": int(psutil.virtual_memory().available), "device": str(device),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "host": platform.node(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "kernel_sources_sha256": kernel_sources_sha256()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = int(torch.cuda.get_device_properties(device).total_memory)
    return info


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _sig(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def max_size_table(section: dict) -> Table:
    """The max-size rows of one task next to the paper's Table 2."""
    task = section["task"]
    paper = PAPER_TABLE2.get(task, {})
    rows = section["rows"]
    value_unit = rows[0]["value_unit"] if rows else ""
    rate_unit = rows[0]["throughput_unit"] if rows else ""
    t = Table(title=f"Largest single pass, {task}, budget {format_size(section['budget_bytes'])} "
                    f"({section['machine']['device']})", title_justify="left")
    t.add_column("model")
    t.add_column("implementation")
    t.add_column(f"max ({value_unit})", justify="right")
    t.add_column(rate_unit, justify="right")
    t.add_column("B/px", justify="right")
    t.add_column("verified")
    if paper:
        t.add_column(f"paper RTX 4090 ({value_unit}, {rate_unit})", justify="right")
    for r in rows:
        cells = [r["label"], r["impl_label"], _num(r["max_value"]), _sig(r["throughput"]),
                 _num(r["bytes_per_pixel"], 0), r["verified_short"]]
        if paper:
            ref = paper.get(r["paper_row"])
            cells.append(f"{ref[0]:g}, {ref[1]:g}" if ref else "-")
        t.add_row(*cells)
    return t


def curve_table(section: dict) -> Table:
    t = Table(title=f"Peak memory and time against input size, {section['task']}", title_justify="left")
    for name, justify in (("model", "left"), ("implementation", "left"), ("size", "right"), ("MP", "right"),
                          ("peak", "right"), ("B/px", "right"), ("seconds", "right"), ("status", "left")):
        t.add_column(name, justify=justify)
    for p in section["points"]:
        ok = p["status"] == "ok"
        t.add_row(p["label"], p["impl_label"], str(p["size"]), _num(p["megapixels"], 2),
                  format_size(p["peak_bytes"]) if ok else "-",
                  _num(p["peak_bytes"] / p["pixels"], 0) if ok else "-",
                  _num(p["seconds"], 2) if ok else "-", p["status"])
    return t


KERNEL_COLUMNS = (("case", "case"), ("fused_s", "fused s/step"), ("torch_s", "PyTorch s/step"),
                  ("speedup", "speed-up"), ("fused_gflops", "fused GFLOP/s"), ("peak_fraction", "of FMA peak"),
                  ("fused_extra_bytes", "fused extra memory"), ("torch_extra_bytes", "PyTorch extra memory"))


def _kernel_cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key.endswith("_bytes"):
        return format_size(value)
    if key == "peak_fraction":
        return f"{100 * value:.0f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def kernel_table(section: dict) -> Table:
    """The fused-vs-PyTorch step rows of ``nca_cli.kernels.bench.run_kernel_benchmark``."""
    rows = section.get("rows") or []
    t = Table(title=f"Fused step against the PyTorch step ({section.get('device', '?')}, "
                    f"{section.get('threads', '?')} threads)", title_justify="left")
    columns = [(k, name) for k, name in KERNEL_COLUMNS if rows and k in rows[0]]
    for _, name in columns:
        t.add_column(name, justify="left" if name == "case" else "right")
    for r in rows:
        t.add_row(*[_kernel_cell(k, r.get(k)) for k, _ in columns])
    return t


def forward_table(section: dict) -> Table:
    """The whole-forward rows of ``nca_cli.benchmark.forward.run_forward_benchmark``."""
    t = Table(title=f"Whole forward pass, fused against PyTorch ({section.get('device', '?')}, "
                    f"{section.get('threads', '?')} threads)", title_justify="left")
    for name in ("model", "input", "steps per level", "fused s", "PyTorch s", "speed-up", "max logit diff"):
        t.add_column(name, justify="left" if name in ("model", "input") else "right")
    for r in section.get("rows") or []:
        t.add_row(f"{r['architecture']} ({r['recipe']})", r["input"], "/".join(map(str, r["steps"])),
                  f"{r['fused_s']:.2f}", f"{r['torch_s']:.2f}", f"{r['speedup']:.1f}x", f"{r['max_logit_diff']:.1e}")
    return t


def print_results(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    if "max_size" in results:
        section = results["max_size"]
        console.print(max_size_table(section))
        for r in section["rows"]:
            time_note = f"; time {r['time_source']}" if r["time_source"] else ""
            console.print(f"  {r['label']} ({r['impl_label']}, input {r['input']}): {r['verified']}{time_note}")
            for note in r["notes"]:
                console.print(f"    [dim]{note}[/dim]")
        for line in results["max_size"].get("comparisons", []):
            console.print(line)
    if "curve" in results:
        console.print(curve_table(results["curve"]))
    for key, what, table in (("kernel", "fused step", kernel_table), ("forward", "whole forward", forward_table)):
        if key in results:
            section = results[key]
            console.print(f"{what} benchmark: {section['error']}" if section.get("error") else table(section))
    console.print(f"[dim]{WEIGHTS_NOTE}[/dim]")
