"""One measurement in a fresh process: one pass of one model over one synthetic input.

The child builds the model with random weights, runs a tiny warm-up pass (lazy
initialisation of threads, kernels and libraries is not charged to the input), then takes
the baseline, creates the uint8 input, runs one pass and reports:

- CPU: the peak resident memory of the pass minus the resident memory before the input
  existed (``peak_bytes``), and the absolute peak (``peak_abs_bytes``). The kernel's peak
  counter (VmHWM) is reset at the baseline when Linux allows it; otherwise the process
  lifetime peak (``ru_maxrss``) is used.
- CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the input.
- the wall time of the pass: from the uint8 input to the counted mask.

Run as ``python -m nca_cli.benchmark.measure`` with a JSON spec on stdin; the result is
the stdout line that starts with ``RESULT_TAG``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..core.choices import torch_dtype
from ..core.machine import PeakMeter
from .geometry import GEOMETRIES, Geometry
from .subjects import Subject, build_subject_model
from .synthetic import input_image, input_tensor

RESULT_TAG = "nca-benchmark-result "
OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def make_spec(task: str, subject: Subject, size: int, *, probe: bool, device: str, seed: int = 0) -> dict:
    """A JSON-ready description of one measurement."""
    return {"task": task, "subject": subject.to_dict(), "size": int(size), "probe": bool(probe),
            "device": str(device), "seed": int(seed)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pass_torch(model, subject: Subject, geometry: Geometry, shape, device, dtype, seed) -> tuple[float, float]:
    """The whole input as a float tensor through the model; returns (seconds, foreground)."""
    image = input_tensor(geometry, shape, seed)
    t0 = time.perf_counter()
    image = image.to(device).float().div_(255.0)    # the uint8 tensor is dropped here
    with torch.inference_mode():
        logits = model(image, seed=seed)[0] if subject.is_nca else model(image)
        del image
        foreground = (logits > 0).sum().item() / logits.numel()
    del logits
    _sync(device)
    return time.perf_counter() - t0, foreground


def _pass_fused(model, subject: Subject, geometry: Geometry, shape, device, dtype, seed) -> tuple[float, float]:
    """The lean driver over an input read band by band; the mask is counted band by band."""
    from ..inference.octree import drive
    from ..inference.sources import FileSource

    c = model.config
    image = input_image(geometry, shape, seed)
    t0 = time.perf_counter()
    source = FileSource(image, c.factors, c.pyramid, dtype, device, keep=False)   # as `segment`'s single pass
    state = drive(model, source, impl="fused", seed=seed, state_dtype=dtype, device=device)
    del source
    out = slice(c.input_channels, c.input_channels + c.output_channels)
    rows = max(1, (1 << 22) // max(1, state[0, 0].numel() // c.channels))
    positive = 0
    for r0 in range(0, state.shape[1], rows):
        positive += int((state[0, r0:r0 + rows, ..., out] > 0).sum().item())
    total = state[0].numel() // c.channels * c.output_channels
    del state
    _sync(device)
    return time.perf_counter() - t0, positive / total


def measure(spec: dict) -> dict:
    """Run the measurement ``spec`` (see ``make_spec``) in this process."""
    geometry = GEOMETRIES[spec["task"]]
    subject = Subject.from_dict(spec["subject"])
    device = torch.device(spec["device"])
    size, probe, seed = int(spec["size"]), bool(spec["probe"]), int(spec["seed"])
    shape = geometry.spatial_shape(size)
    dtype = torch_dtype(subject.state_dtype)
    model = build_subject_model(subject, probe=probe, seed=seed).to(device)
    if subject.impl == "fused":
        from ..kernels import resolve_impl

        if resolve_impl("fused", list(model.backbones), device) != "fused":
            return {"ok": False, "unavailable": True,
                    "error": f"the fused kernels cannot run on {device.type} here"}
        run = _pass_fused
    else:
        run = _pass_torch
    run(model, subject, geometry, geometry.warmup_shape, device, dtype, seed)
    meter = PeakMeter(device)
    meter.start()
    seconds, foreground = run(model, subject, geometry, shape, device, dtype, seed)
    result = {"ok": True, "size": size, "shape": list(shape), "pixels": geometry.pixels(size), "probe": probe,
              "seconds": seconds, "foreground_fraction": foreground, "threads": torch.get_num_threads()}
    if subject.is_nca:
        result["steps"] = list(model.config.steps)
    result.update(meter.stop())
    return result


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(t in str(exc).lower() for t in OOM_TEXT)


def run_measurement(spec: dict, timeout: float) -> dict:
    """Run ``spec`` in a fresh Python process; never raises for a failed run.

    A failed run returns ``{"ok": False, "error": ...}`` with ``oom`` (out of memory,
    including a kill by the kernel's OOM killer), ``timeout`` or ``unavailable`` set.
    """
    import nca_cli

    root = str(Path(nca_cli.__file__).resolve().parents[1])   # the child imports this very package
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "nca_cli.benchmark.measure"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "timeout": True, "size": spec["size"], "probe": spec["probe"],
                "error": f"did not finish within {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            result["wall_seconds"] = wall
            return result
    if proc.returncode < 0:
        if -proc.returncode == signal.SIGKILL:
            return {"ok": False, "oom": True, "size": spec["size"], "probe": spec["probe"],
                    "error": "killed by SIGKILL (the out-of-memory killer)"}
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return {"ok": False, "size": spec["size"], "probe": spec["probe"], "error": f"crashed with {name}"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "size": spec["size"], "probe": spec["probe"],
            "error": f"exit code {proc.returncode}: {tail}"}


def main() -> None:
    from ..core.machine import return_freed_memory

    return_freed_memory()   # as `nca segment` does
    spec = json.loads(sys.stdin.read())
    try:
        result = measure(spec)
    except Exception as exc:  # reported to the parent as a failed measurement
        result = {"ok": False, "oom": _is_oom(exc), "error": f"{type(exc).__name__}: {exc}"}
    result.setdefault("size", spec["size"])
    result.setdefault("probe", spec["probe"])
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
