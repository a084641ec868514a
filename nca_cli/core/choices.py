"""The names every layer shares, defined once: inference paths, state types, tiling modes,
preview styles. Commands take their choices from here and the core package checks against the
same tuples."""
from __future__ import annotations

IMPLS = ("auto", "fused", "torch")                  # NCA step: pick, the fused kernel, the PyTorch reference
STATE_DTYPES = ("float32", "float16", "bfloat16")   # storage type of the NCA state
TILINGS = ("auto", "off", "force")                  # auto: tile only when one pass does not fit
PREVIEW_STYLES = ("outline", "fill", "side-by-side")


def torch_dtype(name: str):
    """The torch dtype of a state type named in ``STATE_DTYPES``."""
    if name not in STATE_DTYPES:
        raise ValueError(f"state dtype must be one of {', '.join(STATE_DTYPES)}, got {name!r}")
    import torch

    return getattr(torch, name)
