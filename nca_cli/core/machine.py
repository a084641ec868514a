"""What machine this is, and how much memory a stretch of work took.

``cpu_name``/``cpu_flags`` read ``/proc/cpuinfo`` (speed claims name the CPU; ``-march=native``
code is only valid on the same kind of CPU). ``PeakMeter`` measures the peak memory of a
stretch of code relative to its start: on the CPU the kernel's high-water mark (``VmHWM``),
reset at the start through ``/proc/self/clear_refs`` where Linux allows it (else the process
lifetime peak ``ru_maxrss``); on CUDA ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import resource
import sys
from pathlib import Path


def _cpuinfo_field(name: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    """The CPU model, e.g. ``AMD EPYC 9R14``."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The CPU feature flags (``avx512f fma ...``), empty where unknown."""
    return _cpuinfo_field("flags")


def machine_tag() -> str:
    """Architecture, CPU model and feature flags in one string (a build-cache key part)."""
    return f"{platform.machine()}|{platform.processor()}|{cpu_name()}|{cpu_flags()}"


def proc_status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes, None where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """Resident memory of this process now."""
    rss = proc_status_bytes("VmRSS")
    if rss is None:
        import psutil

        rss = int(psutil.Process().memory_info().rss)
    return rss


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (since its start, or the last ``PeakMeter.start``)."""
    hwm = proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def available_memory(device) -> int:
    """Bytes a run may still allocate on ``device`` (CUDA: free device memory; CPU: available RAM)."""
    if getattr(device, "type", device) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def total_memory(device) -> int:
    """All memory of ``device`` (CUDA: the device's; CPU: physical RAM)."""
    if getattr(device, "type", device) == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    import psutil

    return int(psutil.virtual_memory().total)


def trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc), so memory an earlier stretch freed is
    not resident at a baseline and silently reused by the stretch being measured."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3


def return_freed_memory() -> bool:
    """Make the C library hand every allocation of ``MMAP_THRESHOLD`` bytes or more back to the
    system as soon as it is freed (glibc ``mallopt(M_MMAP_THRESHOLD)``; by default it keeps raising
    that threshold and holds freed blocks). The resident size then follows the live tensors, so a
    run peaks where the memory model predicts. Returns False where this is not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMeter:
    """Peak memory of a stretch of code, relative to its start (see the module docstring)."""

    def __init__(self, device):
        self.device = device
        self.method = ""
        self.baseline = 0

    @property
    def _cuda(self) -> bool:
        return getattr(self.device, "type", self.device) == "cuda"

    def start(self) -> "PeakMeter":
        gc.collect()
        trim_heap()
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        self.method = "VmHWM (reset at the baseline)" if reset_peak_rss() else "ru_maxrss (process lifetime)"
        self.baseline = current_rss_bytes()
        return self

    def stop(self) -> dict:
        """``peak_bytes`` (above the baseline), ``peak_abs_bytes``, ``baseline_bytes``, ``meter``."""
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"peak_bytes": peak - self.baseline, "peak_abs_bytes": peak, "baseline_bytes": self.baseline,
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device), "meter": self.method}
        if self.method.startswith("VmHWM"):
            hwm = proc_status_bytes("VmHWM")
        else:
            hwm = None
        if hwm is None:
            scale = 1 if sys.platform == "darwin" else 1024
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return {"peak_bytes": hwm - self.baseline, "peak_abs_bytes": hwm, "baseline_bytes": self.baseline,
                "meter": self.method}


def load_average() -> float | None:
    """1-minute load average: other processes sharing the cores slow every measurement."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
