"""The CUDA launcher run on the CPU: ``cuda/nca_cuda.cu`` under the emulator of ``cuda/emu``.

The very source nvcc compiles is compiled by g++ with the emulator's stand-ins for the CUDA
headers (``cuda/emu/cuda_emu.h``: one fiber per CUDA thread, ``__syncthreads`` a barrier of
the block, warp shuffles through a per-warp exchange, launch limits checked as a device of
compute capability 9.0 would), with AddressSanitizer and UBSan, into a small driver program
(``cuda/emu/nca_cuda_emu_main.cpp``). Each run is a subprocess (ASan needs a process of its
own): the state and the packed weights go in through a file, the new state comes back. The
binary is cached under ``cache_root()`` by a hash of its sources, flags and shapes.

This is how the tests check the GPU code without a GPU (``tests/kernels/test_cuda_emulated.py``);
it is slow (one fiber switch per barrier per thread) and meant for small states.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from ..core.firemask import MASK32, threshold
from ..models.backbone import BackboneNCA
from .build import SOURCE_DIR, STORAGES, KernelBuildError, Shape, _cuda_instantiations, as_shape, cache_root

EMU_SOURCES = ("nca_cell.h", "nca_cuda.h", "nca_cuda.cu", "emu/cuda_emu.h", "emu/cuda_emu.cpp",
               "emu/nca_cuda_emu_main.cpp", "emu/cuda_runtime_api.h", "emu/cuda_runtime.h", "emu/cuda_fp16.h",
               "emu/cuda_bf16.h")
# -O2: GCC forms fused multiply-adds (-ffp-contract=fast) only from -O2 on, as nvcc does by default.
# NCA_CUDA_STAT_BLOCKS: 8 blocks of the BatchNorm statistics kernel instead of 1024, so that
# states of a few thousand cells already make each block loop over several groups of cells.
EMU_FLAGS = ["-DNCA_CUDA_STAT_BLOCKS=8", "-std=c++17", "-O2", "-g", "-march=native", "-ffp-contract=fast",
             "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-Wall",
             "-Wno-unknown-pragmas"]
SANITIZER_ENV = {
    "ASAN_OPTIONS": "abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}


def build_emulator(shapes: Sequence) -> Path:
    """The driver binary with the CUDA launcher compiled for ``shapes`` (built once, cached)."""
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"no C++ compiler: {compiler!r} is not on PATH (set CXX or install g++)")
    shapes = tuple(as_shape(s) for s in shapes)
    texts = {name: (SOURCE_DIR / name).read_text() for name in EMU_SOURCES}
    generated = _cuda_instantiations(shapes)
    key = hashlib.sha256(json.dumps([texts, generated, EMU_FLAGS, compiler], sort_keys=True).encode()).hexdigest()
    binary = cache_root() / f"emu-{key[:16]}" / "nca_cuda_emu"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent) as tmp:
        for name, text in generated.items():
            (Path(tmp) / name).write_text(text)
        out = Path(tmp) / binary.name
        cmd = [compiler, *EMU_FLAGS, f"-I{SOURCE_DIR / 'emu'}", f"-I{SOURCE_DIR}", "-include", "cuda_emu.h",
               "-x", "c++", str(Path(tmp) / "nca_cuda_inst.cu"), str(SOURCE_DIR / "emu" / "cuda_emu.cpp"),
               str(SOURCE_DIR / "emu" / "nca_cuda_emu_main.cpp"), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelBuildError(f"building the CUDA emulator failed: {proc.stderr.strip()[:2000]}")
        out.replace(binary)      # atomic: a concurrent build leaves one complete binary
    return binary


def run_driver(binary: Path, *args: str, reverse_blocks: bool = False) -> subprocess.CompletedProcess:
    """The driver with ``args`` under the sanitizers' options; stdout and stderr captured as text.
    ``reverse_blocks``: the emulator runs the blocks of every launch last to first."""
    env = {**os.environ, **SANITIZER_ENV, "CUDA_EMU_BLOCK_ORDER": "reverse" if reverse_blocks else "forward"}
    return subprocess.run([str(binary), *args], capture_output=True, text=True, env=env)


def _header(backbone: BackboneNCA, shape: Shape, state: torch.Tensor, steps: int, seed: int, level: int,
            origin: Sequence[int], in_place: bool, band_planes: int) -> str:
    dims = backbone.dims
    size = (1, *state.shape[1:3]) if dims == 2 else tuple(state.shape[1:4])
    org = (0, *origin) if dims == 2 else tuple(origin)
    values = [*shape, STORAGES[state.dtype][1], state.shape[0], *size, *org, int(seed) & MASK32,
              int(level) & MASK32, threshold(backbone.fire_rate), int(steps), int(in_place), int(band_planes)]
    return " ".join(str(int(v)) for v in values) + "\n"


def emulated_run(backbone: BackboneNCA, state: torch.Tensor, steps: int, *, seed: int = 0, level: int = 0,
                 origin: Sequence[int] | None = None, in_place: bool = True, band_planes: int = 0,
                 reverse_blocks: bool = False, binary: Path | None = None) -> tuple[torch.Tensor, dict]:
    """``fused_run`` on a CUDA device, emulated: the new channels-last state (a new CPU tensor)
    and the launch log (per kernel: launches, blocks, largest dynamic shared memory, threads).
    ``in_place``: the in-place step (bands of ``band_planes`` planes, 0: the launcher's choice),
    else the double-buffered one; ``reverse_blocks``: blocks run last to first. Raises
    RuntimeError with the driver's message when the launcher reports an error."""
    from . import backbone_shape, pack_weights

    shape = backbone_shape(backbone)
    binary = binary or build_emulator((shape,))
    origin = [0] * backbone.dims if origin is None else [int(o) for o in origin]
    raw = state.detach().cpu().contiguous()
    bits = raw.view(torch.int16) if raw.element_size() == 2 else raw
    weights = pack_weights(backbone, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        with open(src, "wb") as f:
            f.write(_header(backbone, shape, raw, steps, seed, level, origin, in_place, band_planes).encode())
            f.write(weights.numpy().tobytes())
            f.write(bits.numpy().tobytes())
        proc = run_driver(binary, "RUN", str(src), str(dst), reverse_blocks=reverse_blocks)
        if proc.returncode != 0:
            raise RuntimeError(f"emulated CUDA run failed (exit code {proc.returncode}): {proc.stderr.strip()}")
        data = bytearray(dst.read_bytes())
    out = torch.frombuffer(data, dtype=bits.dtype).view(raw.shape).clone()
    return (out.view(raw.dtype) if raw.element_size() == 2 else out), json.loads(proc.stdout)
