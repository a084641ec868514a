"""Intensity augmentation (noise, blur, brightness, contrast, low resolution), reproducible from a
``torch.Generator``. Geometry is never changed, so labels need no transform."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _chance(p: float, g: torch.Generator) -> bool:
    return p > 0 and float(torch.rand((), generator=g)) < p


def _uniform(lo: float, hi: float, g: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def augment(x: torch.Tensor, probs: dict, g: torch.Generator) -> torch.Tensor:
    """Augment a ``[B, C, *spatial]`` float image batch (values roughly in [0, 1])."""
    dims = x.dim() - 2
    if _chance(probs.get("brightness", 0), g):
        x = x + _uniform(-0.1, 0.1, g)
    if _chance(probs.get("contrast", 0), g):
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        x = (x - mean) * _uniform(0.75, 1.25, g) + mean
    if _chance(probs.get("blur", 0), g):
        sigma = _uniform(0.5, 1.0, g)
        r = torch.arange(-2, 3, dtype=x.dtype)
        k = torch.exp(-(r ** 2) / (2 * sigma ** 2))
        k = k / k.sum()
        c = x.shape[1]
        for axis in range(dims):
            shape = [1] * dims
            shape[axis] = 5
            w = k.reshape(1, 1, *shape).repeat(c, 1, *([1] * dims))
            pad = [0, 0] * dims
            pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = 2
            conv = F.conv2d if dims == 2 else F.conv3d
            x = conv(F.pad(x, pad, mode="replicate"), w, groups=c)
    if _chance(probs.get("low_resolution", 0), g):
        size = x.shape[2:]
        scale = _uniform(0.5, 0.9, g)
        small = [max(1, int(s * scale)) for s in size]
        mode = "bilinear" if dims == 2 else "trilinear"
        x = F.interpolate(F.interpolate(x, size=small, mode=mode, align_corners=False), size=size, mode=mode,
                          align_corners=False)
    if _chance(probs.get("noise", 0), g):
        x = x + torch.randn(x.shape, generator=g, dtype=x.dtype) * _uniform(0.0, 0.05, g)
    return x
