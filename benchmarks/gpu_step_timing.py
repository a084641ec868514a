"""One fused CUDA step, in place and double buffered, against the PyTorch step: time, extra
device memory, agreement. Part of the one-shot device check (benchmarks/gpu_check.sh).

    python benchmarks/gpu_step_timing.py [--out FILE.md] [--repeats 5]

Per case: the median wall time of ``repeats`` synchronised calls after one warm-up call (MP/s
of cells updated per second), the peak device memory the call allocated beyond its input
(``max_memory_allocated``), whether the in-place step gives the very bits of the
double-buffered one, and the largest difference to the PyTorch step (TF32 off).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nca_cli.kernels import from_channels_last, fused_run, to_channels_last  # noqa: E402
from nca_cli.models.backbone import BackboneNCA  # noqa: E402

# label -> (dims, input channels, spatial shape, BackboneNCA keyword arguments)
CASES = {
    "OctreeNCA 2D RGB, k3": (2, 3, (4096, 4096), {}),
    "Med-NCA k7, BatchNorm": (2, 3, (2048, 2048), dict(kernel_size=7, normalization="batch")),
    "OctreeNCA 3D, k3": (3, 1, (64, 256, 256), {}),
    "M3D-NCA k7, BatchNorm": (3, 1, (32, 128, 128), dict(kernel_size=7, normalization="batch")),
}


def backbone(dims: int, inp: int, kwargs: dict) -> BackboneNCA:
    torch.manual_seed(0)
    m = BackboneNCA(dims, 16, 64, inp, kwargs.get("kernel_size", 3), 0.5, kwargs.get("normalization"))
    torch.nn.init.normal_(m.fc1.weight, std=0.1)
    return m.cuda()


def timed(fn, state: torch.Tensor, repeats: int) -> tuple[float, int, torch.Tensor]:
    """Median seconds of fn(state.clone()), the peak bytes one call allocates beyond its input, the last result."""
    out = fn(state.clone())
    times = []
    for _ in range(repeats):
        x = state.clone()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = fn(x)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() - base
        del x
    return statistics.median(times), peak, out


def fused(m, double: bool):
    def run(x):
        os.environ["NCA_CUDA_STEP"] = "double" if double else "in_place"
        try:
            return fused_run(m, x, 1, seed=1)
        finally:
            os.environ.pop("NCA_CUDA_STEP", None)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):      # TF32 off
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    p = torch.cuda.get_device_properties(0)
    lines = [f"# Fused CUDA step against PyTorch ({p.name}, torch {torch.__version__})", "",
             "| case | size | state | PyTorch ms | fused in place ms | fused double-buffered ms | in place MP/s | "
             "extra MiB: PyTorch / in place / double | in place = double | max diff to PyTorch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, (dims, inp, shape, kwargs) in CASES.items():
        m = backbone(dims, inp, kwargs)
        cells = math.prod(shape)
        for dtype in (torch.float32, torch.float16):
            state = torch.randn(1, 16, *shape, device="cuda")
            cl = to_channels_last(state).to(dtype)
            half = None if dtype == torch.float32 else dtype
            with torch.inference_mode():
                t_torch, m_torch, ref = timed(lambda x: m.run(x, 1, seed=1, state_dtype=half),
                                              state.to(dtype).float(), args.repeats)
                t_in, m_in, got_in = timed(fused(m, False), cl, args.repeats)
                t_db, m_db, got_db = timed(fused(m, True), cl, args.repeats)
            same = torch.equal(got_in, got_db)
            diff = (from_channels_last(got_in).float() - ref.float()).abs().max().item()
            size, kind = "x".join(map(str, shape)), str(dtype).split(".")[-1]
            lines.append(f"| {label} | {size} | {kind} | {t_torch * 1e3:.2f} | "
                         f"{t_in * 1e3:.2f} | {t_db * 1e3:.2f} | {cells / t_in / 1e6:.0f} | "
                         f"{m_torch / 2**20:.0f} / {m_in / 2**20:.0f} / {m_db / 2**20:.0f} | {same} | {diff:.2e} |")
            print(lines[-1], flush=True)
            del state, cl, ref, got_in, got_db
            torch.cuda.empty_cache()
    text = "\n".join(lines) + "\n"
    if args.out:
        tmp = args.out.with_suffix(".partial")
        tmp.write_text(text)
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
