"""A whole NCA forward pass, fused against PyTorch: every level at its size and step count.

The kernel benchmark (``nca_cli.kernels.bench``) times one step of one backbone; a model runs
several levels, each for its own number of steps on its own grid (Med-NCA: 64 steps of
kernel 3 at full resolution and 64 of kernel 7 at 1/16 of the cells; M3D-NCA: 10 steps of
kernel 3 and 40 of kernel 7 at 1/64). This times ``predict_logits`` of a recipe's model (random
weights, fixed seed, fc1 non-zero) on one input with ``impl="fused"`` and with
``impl="torch"`` (the shortest of two passes each, after a warm-up pass of each on a small
input), and reports both times, their ratio and the largest difference of the logits.

    python -m nca_cli.benchmark.forward [--task pathology|radiology|surgery] [--out FILE.md]

``nca benchmark --kernel`` runs it after the step cases of its task.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from ..core.machine import cpu_name, load_average

# task -> (recipe, input shape): the Med-NCA / M3D-NCA models of the papers, on inputs whose
# PyTorch pass takes well under a minute on two CPU cores.
MODELS = {
    "pathology": (("mednca_pathology", (512, 512)), ("mednca_xray_vwsl", (512, 512))),
    "radiology": (("m3d_radiology_2levels", (64, 128, 128)),),
    "surgery": (("m3d_surgery", (16, 240, 432)),),
}
WARMUP = {2: (32, 32), 3: (8, 16, 16)}


def recipe_model(recipe: str, seed: int = 0):
    """The recipe's model with random weights: fc1 (zero-initialised) and BatchNorm's affine
    parameters drawn too, so every level changes the state."""
    from ..models import build_model
    from ..recipes import load_recipe

    torch.manual_seed(seed)
    model = build_model(copy.deepcopy(load_recipe(recipe).model))
    for bb in model.backbones:
        torch.nn.init.normal_(bb.fc1.weight, std=0.02)
        if bb.norm is not None:
            torch.nn.init.normal_(bb.norm.weight, 1.0, 0.1)
            torch.nn.init.normal_(bb.norm.bias, 0.0, 0.1)
    return model.eval()


def _timed(model, image: torch.Tensor, impl: str) -> tuple[float, torch.Tensor]:
    from ..inference.octree import predict_logits

    t0 = time.perf_counter()
    logits = predict_logits(model, image, impl=impl, seed=0)
    if image.device.type == "cuda":
        torch.cuda.synchronize(image.device)
    return time.perf_counter() - t0, logits


def _fastest(model, image: torch.Tensor, impl: str, repeats: int) -> tuple[float, torch.Tensor]:
    """The shortest of ``repeats`` timed passes (other processes only ever add time) and its logits."""
    best, logits = None, None
    for _ in range(repeats):
        seconds, logits = _timed(model, image, impl)
        best = seconds if best is None else min(best, seconds)
    return best, logits


def run_forward_benchmark(task: str = "pathology", *, shapes: dict[str, Sequence[int]] | None = None,
                          threads: int | None = None, device: str = "cpu", repeats: int = 2) -> dict:
    """Fused and PyTorch whole forward passes of the task's Med-NCA / M3D-NCA models.
    ``shapes`` overrides input shapes by recipe name (and then picks the recipes)."""
    from ..kernels import fused_available

    dev = torch.device(device)
    if not fused_available(dev):
        return {"rows": [], "error": f"the fused kernels cannot be built or loaded on {dev.type}"}
    cases = [(r, tuple(shapes[r])) for r in shapes] if shapes else list(MODELS[task])
    previous = torch.get_num_threads()
    threads = int(threads) if threads else previous
    torch.set_num_threads(threads)
    load_before = load_average()
    rows = []
    try:
        for recipe, shape in cases:
            model = recipe_model(recipe).to(dev)
            c = model.config
            gen = torch.Generator().manual_seed(1)
            for impl in ("fused", "torch"):   # warm-up: libraries, threads, kernels
                _timed(model, torch.rand(1, c.input_channels, *WARMUP[c.dims], generator=gen).to(dev), impl)
            image = torch.rand(1, c.input_channels, *shape, generator=gen).to(dev)
            fused_s, fused = _fastest(model, image, "fused", repeats)
            torch_s, ref = _fastest(model, image, "torch", repeats)
            rows.append({
                "recipe": recipe, "architecture": c.architecture, "input": "x".join(map(str, shape)),
                "levels": [list(s) for s in model.level_shapes(shape)], "steps": list(c.steps),
                "kernel_sizes": list(c.kernel_sizes), "fused_s": fused_s, "torch_s": torch_s,
                "speedup": torch_s / fused_s, "max_logit_diff": (fused - ref).abs().max().item(),
                "same_mask": ((fused > 0) == (ref > 0)).float().mean().item(),
            })
            del fused, ref, image
    finally:
        torch.set_num_threads(previous)
    return {"rows": rows, "task": task, "threads": threads, "device": str(dev), "repeats": repeats,
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                        "loadavg_before": load_before, "loadavg_after": load_average()},
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def format_markdown(result: dict) -> str:
    mach = result.get("machine", {})
    lines = [
        "| model (recipe) | input | levels (cells) x steps, kernel | fused s | PyTorch s | speed-up "
        "| max abs logit diff | same mask |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("rows", []):
        levels = ", ".join(f"{'x'.join(map(str, s))} x {n}, k{k}"
                           for s, n, k in zip(r["levels"], r["steps"], r["kernel_sizes"]))
        lines.append(f"| {r['architecture']} ({r['recipe']}) | {r['input']} | {levels} | {r['fused_s']:.2f} "
                     f"| {r['torch_s']:.2f} | {r['speedup']:.1f}x | {r['max_logit_diff']:.1e} "
                     f"| {100 * r['same_mask']:.3f} % |")
    lines += ["", f"{mach.get('cpu', '?')}, {mach.get('cores', '?')} cores, torch {mach.get('torch', '?')}, "
                  f"{result.get('threads')} threads, {result.get('date', '')}; load average "
                  f"{mach.get('loadavg_before', 0):.1f} before, {mach.get('loadavg_after', 0):.1f} after. "
                  f"The shortest of {result.get('repeats', 1)} timed passes each (float32 state, device "
                  f"{result.get('device')}), after a warm-up pass of each on a small input; random weights."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nca_cli.benchmark.forward", description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(MODELS), action="append", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table to this file")
    args = parser.parse_args(argv)
    rows, result = [], {}
    for task in args.task or ["pathology", "radiology", "surgery"]:
        result = run_forward_benchmark(task, threads=args.threads, device=args.device)
        rows += result["rows"]
    result["rows"] = rows
    from ..core.files import print_text

    print_text(format_markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
