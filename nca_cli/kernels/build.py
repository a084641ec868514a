"""Just-in-time builds of the fused NCA kernels (``cuda/``), cached per machine.

A build directory is named after a hash of the kernel sources, the generated instantiation
files, the compiler flags, the torch version and the CPU, so only the first call on a
machine pays for the compilation; later processes just load the library.

Libraries, each compiled for float32 / float16 / bfloat16 storage and built on first use:

- ``octree`` (the default library): OctreeNCA's shapes, C=16, hidden 64, kernel 3, IN 1 or 3,
  2D and 3D, depthwise perception, no normalisation;
- ``mednca``: the Med-NCA recipes, 2D with BatchNorm: pathology (IN=3, kernels 3 and 7) and
  the VWSL chest X-ray model (IN=1, hidden 128, two full 3x3 convolutions);
- ``m3d``: the M3D-NCA recipes, 3D with BatchNorm: IN=1 with kernels 3, 5 and 7, IN=3 with
  kernels 3 and 7.

The families are separate libraries so that the common OctreeNCA path builds quickly. Any
other shape is built on demand, one small library per shape. Whether fc1 has all C outputs
does not change the compiled code (``pack_weights`` keeps the rows that are not discarded),
so it is not part of a shape.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

SOURCE_DIR = Path(__file__).resolve().parents[2] / "cuda"
CPU_SOURCES = ("nca_cell.h", "nca_cpu.h", "nca_cpu.cpp")
CUDA_SOURCES = ("nca_cell.h", "nca_cuda.h", "nca_cuda.cu", "nca_cuda_binding.cpp")

# Codes of nca::Perception and nca::Normalization in cuda/nca_cell.h.
PERCEPTIONS = {"depthwise": 0, "full2": 1}
NORMALIZATIONS = {None: 0, "batch": 1}


class Shape(NamedTuple):
    """What the compiled code of a backbone depends on (the template arguments of nca::Cfg)."""

    dims: int
    channels: int
    hidden: int
    input_channels: int
    kernel_size: int
    perception: int = PERCEPTIONS["depthwise"]
    normalization: int = NORMALIZATIONS[None]


def as_shape(shape) -> Shape:
    """A Shape from a Shape or a plain tuple of 5 or 7 integers."""
    return Shape(*(int(v) for v in shape))


_BN, _FULL2 = NORMALIZATIONS["batch"], PERCEPTIONS["full2"]
LIBRARIES: dict[str, tuple[Shape, ...]] = {
    "octree": tuple(Shape(d, 16, 64, i, 3) for d in (2, 3) for i in (1, 3)),
    "mednca": (Shape(2, 16, 64, 3, 3, 0, _BN), Shape(2, 16, 64, 3, 7, 0, _BN), Shape(2, 16, 128, 1, 3, _FULL2, _BN)),
    "m3d": tuple(Shape(3, 16, 64, i, k, 0, _BN) for i, k in ((1, 3), (1, 5), (1, 7), (3, 3), (3, 7))),
}
DEFAULT_SHAPES: tuple[Shape, ...] = LIBRARIES["octree"]


def library_shapes(shape=None) -> tuple[Shape, ...]:
    """The shapes of the library that holds ``shape`` (None: the default library); a shape in
    no library gets a library of its own."""
    if shape is None:
        return DEFAULT_SHAPES
    shape = as_shape(shape)
    for shapes in LIBRARIES.values():
        if shape in shapes:
            return shapes
    return (shape,)


def cfg_name(shape) -> str:
    """The C++ type of a shape: ``nca::Cfg<dims, C, hidden, IN, K, perception, normalization>``."""
    return f"nca::Cfg<{', '.join(str(v) for v in as_shape(shape))}>"

# storage dtype -> (C++ tag in nca_cell.h, code used by the launchers)
STORAGES: dict[torch.dtype, tuple[str, int]] = {
    torch.float32: ("F32", 0),
    torch.float16: ("F16", 1),
    torch.bfloat16: ("BF16", 2),
}

CPU_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]
CPU_LDFLAGS = ["-fopenmp"]
CUDA_CFLAGS = ["-O3"]
STALE_LOCK_S = 900.0

_lock = threading.Lock()
_modules: dict[tuple[str, tuple[Shape, ...]], ModuleType] = {}


class KernelBuildError(RuntimeError):
    """The fused kernels cannot be compiled or loaded on this machine."""


def cache_root() -> Path:
    """``$NCA_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/nca/kernels``, else ``~/.cache/nca/kernels``."""
    if os.environ.get("NCA_KERNEL_CACHE"):
        return Path(os.environ["NCA_KERNEL_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nca" / "kernels"


def _machine_tag() -> str:
    """CPU model and feature flags: ``-march=native`` code is only valid on the same kind of CPU."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
            if model and flags:
                break
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{model}|{flags}"


def _cpu_instantiations(shapes: tuple[Shape, ...]) -> dict[str, str]:
    """One generated source per storage type, so the compiler can build them in parallel."""
    files = {}
    for tag, _ in STORAGES.values():
        adds = " &&\n    ".join(f"nca_cpu::add<{cfg_name(shape)}, nca::{tag}>()" for shape in shapes)
        files[f"nca_inst_{tag.lower()}.cpp"] = (
            "// Generated by nca_cli/kernels/build.py: model shapes compiled into this library.\n"
            '#include "nca_cpu.h"\n\n'
            "namespace {\n"
            f"const bool registered =\n    {adds};\n"
            "}  // namespace\n")
    return files


def _cuda_instantiations(shapes: tuple[Shape, ...]) -> dict[str, str]:
    body = " ".join(f"X({', '.join(str(v) for v in as_shape(shape))})" for shape in shapes)
    return {"nca_cuda_inst.cu": (
        "// Generated by nca_cli/kernels/build.py: model shapes compiled into this library.\n"
        f"#define NCA_CUDA_SHAPES(X) {body}\n"
        '#include "nca_cuda.cu"\n')}


def _key(kind: str, sources: dict[str, str], generated: dict[str, str], flags: list[str]) -> str:
    """Hash of everything the library depends on: source texts, generated files, flags,
    torch / CUDA versions, the CPU and the compiler."""
    h = hashlib.sha256()
    payload = {
        "kind": kind,
        "sources": sources,
        "generated": generated,
        "flags": flags,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "machine": _machine_tag(),
        "compiler": os.environ.get("CXX", "c++"),
    }
    h.update(json.dumps(payload, sort_keys=True).encode())
    return h.hexdigest()


def _short_cause(exc: BaseException) -> str:
    """First compiler error line of a failed build, else the exception's first line."""
    text = str(exc)
    for line in text.splitlines():
        if re.search(r"\berror\b", line, re.IGNORECASE) and "Error building extension" not in line:
            return line.strip()[:300]
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:300]


def _remove_stale_lock(build_dir: Path) -> None:
    """A build killed half-way leaves torch's lock file behind, which would block every later build."""
    lock = build_dir / "lock"
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
    except OSError:
        pass


def _check_toolchain(kind: str) -> None:
    from torch.utils import cpp_extension

    if not SOURCE_DIR.is_dir():
        raise KernelBuildError(f"kernel sources not found at {SOURCE_DIR}")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"no C++ compiler: {compiler!r} is not on PATH (set CXX or install g++)")
    if not cpp_extension.is_ninja_available():
        raise KernelBuildError("the ninja build tool is missing (pip install ninja)")
    if kind == "cuda":
        if not torch.cuda.is_available() or torch.version.cuda is None:
            raise KernelBuildError("this torch build has no usable CUDA device")
        if cpp_extension.CUDA_HOME is None:
            raise KernelBuildError("the CUDA toolkit (nvcc) was not found; set CUDA_HOME")


def _build(kind: str, shapes: tuple[Shape, ...]) -> ModuleType:
    from torch.utils import cpp_extension

    _check_toolchain(kind)
    if kind == "cpu":
        sources, generated, flags = CPU_SOURCES, _cpu_instantiations(shapes), CPU_CFLAGS + CPU_LDFLAGS
    else:
        sources, generated, flags = CUDA_SOURCES, _cuda_instantiations(shapes), CUDA_CFLAGS
    texts = {name: (SOURCE_DIR / name).read_text() for name in sources}
    key = _key(kind, texts, generated, flags)
    build_dir = cache_root() / f"{kind}-{key[:16]}"
    build_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_lock(build_dir)
    # Compile copies, so the library in this directory is exactly what its key describes.
    for name, text in {**texts, **generated}.items():
        path = build_dir / name
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(path.suffix + ".partial")
            tmp.write_text(text)
            tmp.replace(path)
    gen_paths = [str(build_dir / name) for name in generated]
    try:
        if kind == "cpu":
            return cpp_extension.load(
                name=f"nca_cpu_{key[:12]}",
                sources=[str(build_dir / "nca_cpu.cpp"), *gen_paths],
                extra_cflags=list(CPU_CFLAGS),      # copies: torch appends its own flags to these lists
                extra_ldflags=list(CPU_LDFLAGS),
                extra_include_paths=[str(build_dir)],
                build_directory=str(build_dir),
                verbose=False,
            )
        return cpp_extension.load(
            name=f"nca_cuda_{key[:12]}",
            sources=[str(build_dir / "nca_cuda_binding.cpp"), *gen_paths],
            extra_cflags=["-O3"],
            extra_cuda_cflags=list(CUDA_CFLAGS),
            extra_include_paths=[str(build_dir)],
            build_directory=str(build_dir),
            with_cuda=True,
            verbose=False,
        )
    except Exception as exc:  # compiler errors, missing headers, import failures
        raise KernelBuildError(f"building the {kind} kernels failed: {_short_cause(exc)}") from exc


def kernel_module(kind: str, shape: Shape | None = None) -> ModuleType:
    """The compiled library for device type ``kind`` ("cpu" or "cuda") holding ``shape``.

    ``shape=None`` gives the default library; a shape of a library in ``LIBRARIES`` gives
    that library, any other shape a library of its own. Raises KernelBuildError.
    """
    if kind not in ("cpu", "cuda"):
        raise KernelBuildError(f"no fused kernels for device type {kind!r}")
    shapes = library_shapes(shape)
    with _lock:
        mod = _modules.get((kind, shapes))
        if mod is None:
            mod = _build(kind, shapes)
            _modules[(kind, shapes)] = mod
    return mod
