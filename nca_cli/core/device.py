"""``--device`` values to ``torch.device``."""
from __future__ import annotations

import torch

from .errors import NCAError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (CUDA when usable, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NCAError(f"--device {device} was requested but this machine has no usable CUDA GPU; use --device cpu.")
    if device != "cpu" and not device.startswith("cuda"):
        raise NCAError(f"Unknown device '{device}'; use auto, cpu or cuda.")
    try:
        return torch.device(device)
    except RuntimeError:
        raise NCAError(f"Unknown device '{device}'; use auto, cpu, cuda or cuda:N.") from None
