"""Where the CUDA toolkit is and which GPU architectures to compile for (the CUDA build).

torch's ``cpp_extension`` guesses ``CUDA_HOME`` from ``which nvcc`` at import time; with nvcc
reached through a wrapper script or a symlink outside the toolkit (``/usr/local/bin/nvcc``) it
guesses ``/usr/local`` and the build dies on a missing ``cuda_runtime.h``. ``find_cuda_home``
asks nvcc itself where it lives (``nvcc --dryrun`` prints its real folder as ``_HERE_``),
follows symlinks, and accepts a folder only when ``include/cuda_runtime.h`` is in it.

Architectures: an explicit ``TORCH_CUDA_ARCH_LIST`` is kept, with PTX of its highest
architecture added when it has none (so the library also runs, JIT-compiled by the driver, on
GPUs newer than the list); without one, the visible device's architecture plus its PTX.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Mapping, Sequence

HEADER = Path("include") / "cuda_runtime.h"
DEFAULT_ROOTS = ("/usr/local/cuda",)


def is_toolkit(root: Path | str | None) -> bool:
    """Whether ``root`` holds the CUDA runtime header (``include/cuda_runtime.h``)."""
    return root is not None and (Path(root) / HEADER).is_file()


def _nvcc_folder(nvcc: str) -> Path:
    """The folder of the real nvcc behind ``nvcc`` (a symlink, a wrapper script or nvcc itself)."""
    try:
        proc = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                              capture_output=True, text=True, timeout=60)
        for line in (proc.stdout + proc.stderr).splitlines():
            m = re.match(r"#\$ _HERE_=(.+)$", line.strip())
            if m:
                return Path(m.group(1).strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return Path(nvcc).resolve().parent


def find_cuda_home(env: Mapping[str, str] | None = None, which: Callable[[str], str | None] = shutil.which,
                   defaults: Sequence[str] = DEFAULT_ROOTS) -> Path | None:
    """The CUDA toolkit's folder: ``CUDA_HOME`` / ``CUDA_PATH`` when they hold the runtime
    header, else the toolkit of the nvcc on PATH (symlinks and wrappers followed), else
    ``/usr/local/cuda``; None when none holds ``include/cuda_runtime.h``."""
    env = os.environ if env is None else env
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if is_toolkit(env.get(var)):
            return Path(env[var])
    candidates = []
    nvcc = which("nvcc")
    if nvcc:
        folder = _nvcc_folder(nvcc)
        candidates += [folder.parent, folder.resolve().parent]
    candidates += [Path(d) for d in defaults]
    for root in candidates:
        if is_toolkit(root):
            return root
    return None


def missing_toolkit_message(env: Mapping[str, str] | None = None) -> str:
    """One sentence: what was looked at and what to set."""
    env = os.environ if env is None else env
    given = env.get("CUDA_HOME")
    where = f"CUDA_HOME={given} has no {HEADER}" if given else f"no {HEADER} beside nvcc or in /usr/local/cuda"
    return (f"the CUDA toolkit was not found ({where}); set CUDA_HOME to the toolkit's folder, the one holding "
            f"bin/nvcc and {HEADER}")


def cuda_arch_list(explicit: str | None, capability: tuple[int, int] | None) -> str | None:
    """The ``TORCH_CUDA_ARCH_LIST`` to build with: ``explicit`` with ``+PTX`` on its highest
    architecture when no entry has it; else the device's ``capability`` plus PTX; None when
    neither is known (torch's own default)."""
    if explicit and explicit.strip():
        entries = [e for e in re.split(r"[;\s]+", explicit.strip()) if e]
        if any(e.endswith("+PTX") for e in entries):
            return ";".join(entries)

        def version(e: str) -> tuple[int, ...]:
            return tuple(int(p) for p in re.findall(r"\d+", e)) or (0,)

        top = max(range(len(entries)), key=lambda i: version(entries[i]))
        entries[top] += "+PTX"
        return ";".join(entries)
    if capability is None:
        return None
    return f"{capability[0]}.{capability[1]}+PTX"
