"""Every option of ``nca benchmark``, declared once (the CLI builds its flags from this class)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.options import device_option, option
from .geometry import GEOMETRIES


@dataclass(kw_only=True)
class BenchmarkOptions:
    max_size: bool = option(False, "--max-size", help="Largest single-pass input per model within the budget.")
    curve: bool = option(False, "--curve", help="Peak memory and time against input size.")
    kernel: bool = option(False, "--kernel", help="Fused vs PyTorch NCA step, and whole Med-NCA / M3D-NCA forward passes.")
    task: str = option("pathology", "--task", choices=tuple(GEOMETRIES),
                       help="pathology (square slides), surgery (video) or radiology (volumes).")
    models: list[str] = option([], "--models", help="Subset of models (repeatable).")
    impls: list[str] = option([], "--impl", help="Subset of implementations (repeatable).")
    memory_budget: str | None = option(None, "--memory-budget", help="e.g. 24GiB (default: available memory).")
    device: str = device_option()
    json_out: Path | None = option(None, "--json", help="Write results as JSON.")
    plot: Path | None = option(None, "--plot", help="With --curve: write a PNG plot.")
    csv_out: Path | None = option(None, "--csv", help="With --curve: write a CSV.")
    quiet: bool = option(False, "-q", "--quiet", help="No tables or progress.")
    verify_seconds: float = option(120.0, "--verify-seconds", min=0.0, hidden=True,
                                   help="Longest pass run to verify a limit; beyond it the limit is extrapolated.")
    curve_seconds: float = option(60.0, "--curve-seconds", min=0.0, hidden=True,
                                  help="Longest pass of a curve point.")
