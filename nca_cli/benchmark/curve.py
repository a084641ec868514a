"""Peak memory and time of full passes against input size (the paper's Fig. 6), as CSV and PNG."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable

from ..core.errors import NCAError
from ..core.files import atomic_path
from .geometry import GEOMETRIES
from .measure import make_spec, run_measurement
from .subjects import Subject

CURVE_SIZES = {
    "pathology": [320, 640, 960, 1280, 1920, 2560, 3840, 5120, 7680, 10240],
    "surgery": [8, 16, 32, 64, 128, 256, 512],
    "radiology": [8, 16, 32, 64, 128, 256, 512],
}
CSV_FIELDS = ["task", "model", "impl", "state_dtype", "size", "size_unit", "pixels", "megapixels", "peak_bytes",
              "peak_abs_bytes", "bytes_per_pixel", "seconds", "status"]


def run_curve(task: str, subjects: list[Subject], *, budget: int, device: str, seconds_cap: float = 60.0,
              measure: Callable[[dict, float], dict] = run_measurement, sizes: list[int] | None = None,
              log: Callable[[str], None] | None = None, startup_seconds: float = 300.0) -> list[dict]:
    """Full passes of every subject over growing sizes; a subject stops at the first size whose
    predicted peak exceeds ``budget`` or whose predicted time exceeds ``seconds_cap``."""
    g = GEOMETRIES[task]
    log = log or (lambda text: None)
    points: list[dict] = []
    for s in subjects:
        q = max(1, s.divisor)
        wanted = sorted({max(q, math.ceil(n / q) * q) for n in (sizes or CURVE_SIZES[task])})
        last = None
        for size in wanted:
            base = {"task": task, "model": s.model, "label": s.label, "impl": s.impl, "impl_label": s.impl_label,
                    "state_dtype": s.state_dtype, "size": size, "size_unit": g.size_name, "pixels": g.pixels(size),
                    "megapixels": g.pixels(size) / 1e6, "peak_bytes": None, "peak_abs_bytes": None,
                    "bytes_per_pixel": None, "seconds": None}
            expect = 0.0
            if last is not None:
                scale = g.pixels(size) / last["pixels"]
                expect = last["seconds"] * scale
                if last["peak_bytes"] * scale > budget:
                    points.append({**base, "status": "skipped: over the budget"})
                    break
                if expect > seconds_cap:
                    points.append({**base, "status": f"skipped: about {expect:.0f} s > {seconds_cap:.0f} s"})
                    break
            r = measure(make_spec(task, s, size, probe=False, device=device), 3 * expect + startup_seconds)
            if not r.get("ok"):
                points.append({**base, "status": f"failed: {r.get('error')}"})
                log(f"{s.label} {s.impl_label}: {g.describe(size)} failed: {r.get('error')}")
                break
            point = {**base, "peak_bytes": r["peak_bytes"], "peak_abs_bytes": r["peak_abs_bytes"],
                     "bytes_per_pixel": r["peak_bytes"] / r["pixels"], "seconds": r["seconds"], "status": "ok"}
            points.append(point)
            log(f"{s.label} {s.impl_label}: {g.describe(size)} peak {r['peak_bytes'] / 2 ** 20:.1f} MiB, "
                f"{r['seconds']:.2f} s")
            last = point
    return points


def write_csv(path: Path, points: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            for p in points:
                w.writerow(p)


def write_plot(path: Path, points: list[dict], task: str) -> None:
    """Two panels: peak memory (GiB) and time (s) against megapixels, one line per subject."""
    try:
        import matplotlib
    except ImportError:
        raise NCAError(f"Writing the plot {path} needs matplotlib; install it with pip install 'nca[bench]' "
                       f"or leave out --plot.") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = GEOMETRIES[task]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, list[dict]] = {}
    for p in points:
        if p["status"] == "ok":
            series.setdefault(f"{p['label']} ({p['impl_label']})", []).append(p)
    for name, ps in series.items():
        x = [p["megapixels"] for p in ps]
        left.plot(x, [p["peak_bytes"] / 2 ** 30 for p in ps], marker="o", label=name)
        right.plot(x, [p["seconds"] for p in ps], marker="o", label=name)
    xlabel = "input size (megapixels)" if task == "pathology" else "input size (megavoxels)"
    left.set(xlabel=xlabel, ylabel="peak memory of the pass (GiB)", title=f"memory, {g.task}")
    right.set(xlabel=xlabel, ylabel="time of the pass (s)", title=f"time, {g.task}")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
