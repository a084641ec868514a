"""The stochastic fire mask: a counter-based hash, identical in every implementation.

Specification (all arithmetic on unsigned 32-bit integers, wrapping)::

    mix(x):   x ^= x >> 16;  x *= 0x7FEB352D;  x ^= x >> 15;  x *= 0x5BD1E995;  x ^= x >> 16
    key(seed, level, step)  = mix(mix(mix(seed ^ 0x9E3779B9) ^ level) ^ step)
    hash(key, z, y, x)      = mix(mix(mix(key ^ z) ^ y) ^ x)          # 2D: z = 0
    fires(...)              = (hash >> 8) < threshold
    threshold(fire_rate)    = round(fire_rate * 2**24)                 # 1.0 -> always, 0.0 -> never

``seed`` is taken modulo 2**32; ``level`` is the octree level (0 = finest), ``step`` the step
index within that level, and ``(z, y, x)`` the cell's absolute coordinate at that level. The
batch index is not hashed, so a batch of images gives the same result as each run alone, and
a tile of an image gives the same mask as the whole image. ``cuda/nca_cell.h`` implements the
same function for the fused kernels; ``tests/test_firemask.py`` pins reference values.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .seeds import MASK32

GOLDEN = 0x9E3779B9
M1 = 0x7FEB352D
M2 = 0x5BD1E995
BITS = 24


def mix_int(x: int) -> int:
    """``mix`` on a Python int (the specification, written out)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * M1) & MASK32
    x ^= x >> 15
    x = (x * M2) & MASK32
    x ^= x >> 16
    return x


def step_key(seed: int, level: int, step: int) -> int:
    """The per-(seed, level, step) key, computed once per step on the host."""
    return mix_int(mix_int(mix_int((seed & MASK32) ^ GOLDEN) ^ (level & MASK32)) ^ (step & MASK32))


def threshold(fire_rate: float) -> int:
    if not 0.0 <= fire_rate <= 1.0:
        raise ValueError(f"fire_rate must lie in [0, 1], got {fire_rate}")
    return int(round(fire_rate * (1 << BITS)))


def fires_int(seed: int, level: int, step: int, coord: Sequence[int], fire_rate: float) -> bool:
    """Scalar reference: does the cell at ``coord`` ((y, x) or (z, y, x)) update?"""
    c = list(coord)
    if len(c) == 2:
        c = [0] + c
    h = step_key(seed, level, step)
    for v in c:
        h = mix_int(h ^ (v & MASK32))
    return (h >> 8) < threshold(fire_rate)


def _mix(x: torch.Tensor) -> torch.Tensor:
    # int64 tensors holding values < 2**32; the multipliers are < 2**31, so no product overflows.
    x = x ^ (x >> 16)
    x = (x * M1) & MASK32
    x = x ^ (x >> 15)
    x = (x * M2) & MASK32
    return x ^ (x >> 16)


def fire_mask(
    shape: Sequence[int],
    *,
    seed: int,
    level: int,
    step: int,
    fire_rate: float,
    origin: Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean mask of shape ``shape`` (spatial only: (H, W) or (D, H, W)).

    ``origin`` is the absolute coordinate of element ``[0, 0(, 0)]``, for tiles.
    """
    shape = list(shape)
    if origin is None:
        origin = [0] * len(shape)
    if fire_rate >= 1.0:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if fire_rate <= 0.0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    axes = [torch.arange(o, o + n, dtype=torch.int64, device=device) & MASK32 for o, n in zip(origin, shape)]
    if len(axes) == 2:
        axes = [torch.zeros(1, dtype=torch.int64, device=device)] + axes
    z, y, x = axes
    key = step_key(seed, level, step)
    hz = _mix(key ^ z)                                  # [D]
    hy = _mix(hz[:, None] ^ y[None, :])                 # [D, H]
    h = _mix(hy[:, :, None] ^ x[None, None, :])         # [D, H, W]
    out = (h >> 8) < threshold(fire_rate)
    return out.reshape(shape)
