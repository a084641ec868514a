"""Overlapping-window inference with centre-weighted blending, for patch-wise networks.

Windows lie on a grid (per axis: evenly spaced starts from 0 to ``size - window``, at most
``window * (1 - overlap)`` apart); each window's logits are weighted by a separable Gaussian
(sigma = ``sigma_scale * window`` per axis) so the centre of a window, which sees the most
context, counts more than its rim. Because both the grid and the weight are separable, the
total weight at a voxel is the product of per-axis sums, so every window's contribution is
normalised as it is added: the output array holds the final blended logits after one pass and
no weight volume is ever allocated. Axes shorter than the window are zero-padded to it.

The model is run as given (call ``model.eval()`` first) under ``torch.no_grad``.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Evenly spaced window starts covering ``0..size-1`` (``[0]`` when ``size <= window``)."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    count = math.ceil((size - window) / step) + 1
    return [round(i * (size - window) / (count - 1)) for i in range(count)]


def gaussian_weight(window: int, sigma_scale: float = 0.125) -> np.ndarray:
    """1D Gaussian over a window, 1 at the centre."""
    centre = (window - 1) / 2
    sigma = max(sigma_scale * window, 1e-3)
    return np.exp(-0.5 * ((np.arange(window) - centre) / sigma) ** 2)


def sliding_window_predict(
    model: nn.Module,
    image: torch.Tensor,
    window: int | Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    out: np.ndarray | None = None,
    sigma_scale: float = 0.125,
) -> torch.Tensor:
    """Blended logits ``[B, OUT, *spatial]`` (float32) of ``model`` over ``image [B, C, *spatial]``.

    ``window``: one size for every axis or one per axis. ``batch_size`` windows go through the
    model at once. ``device``: where the windows are sent, which must be where the model is
    (default: the device of its parameters); the image and the output stay where they are.
    ``progress(done, total)`` is called after each batch of windows. ``out``: an optional
    float32 array of the output shape (for instance a ``numpy.memmap``) to fill instead of
    allocating one; the returned tensor shares its memory.
    """
    dims = image.dim() - 2
    if dims not in (2, 3):
        raise ValueError(f"Expected an image [B, C, H, W] or [B, C, D, H, W], got shape {tuple(image.shape)}.")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    win = (window,) * dims if isinstance(window, int) else tuple(int(w) for w in window)
    if len(win) != dims or min(win) < 1:
        raise ValueError(f"window needs {dims} positive sizes, got {window}.")
    spatial = tuple(image.shape[2:])
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    padded = tuple(max(s, w) for s, w in zip(spatial, win))
    starts = [window_starts(p, w, overlap) for p, w in zip(padded, win)]
    weights = [gaussian_weight(w, sigma_scale) for w in win]
    totals = []
    for p, w, g, axis_starts in zip(padded, win, weights, starts):
        total = np.zeros(p)
        for s in axis_starts:
            total[s : s + w] += g
        totals.append(total)

    def factor(position: Sequence[int]) -> torch.Tensor:
        """Per-voxel normalised weight of the window at ``position``."""
        f = None
        for axis, (s, w) in enumerate(zip(position, win)):
            a = torch.from_numpy(weights[axis] / totals[axis][s : s + w]).float()
            f = a if f is None else f.unsqueeze(-1) * a
        return f

    tiles = [(b, pos) for b in range(image.shape[0]) for pos in itertools.product(*starts)]
    total_batches = math.ceil(len(tiles) / batch_size)
    result = None
    with torch.no_grad():
        for done, first in enumerate(range(0, len(tiles), batch_size), start=1):
            group = tiles[first : first + batch_size]
            crops = [
                _pad_to(image[(b, slice(None), *(slice(s, s + w) for s, w in zip(pos, win)))], win)
                for b, pos in group
            ]
            logits = model(torch.stack(crops).to(device=device, dtype=dtype)).float().cpu()
            if result is None:
                shape = (image.shape[0], logits.shape[1]) + spatial
                if out is None:
                    out = np.zeros(shape, dtype=np.float32)
                elif tuple(out.shape) != shape or out.dtype != np.float32:
                    raise ValueError(f"out must be a float32 array of shape {shape}, got {out.dtype} {tuple(out.shape)}.")
                else:
                    out[...] = 0
                result = torch.from_numpy(out)
            for (b, pos), tile in zip(group, logits):
                valid = tuple(slice(0, min(w, n - s)) for s, w, n in zip(pos, win, spatial))
                target = (b, slice(None), *(slice(s, s + v.stop) for s, v in zip(pos, valid)))
                result[target] += (tile * factor(pos))[(slice(None), *valid)]
            if progress is not None:
                progress(done, total_batches)
    return result


def _pad_to(crop: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``crop [C, *spatial]`` at the high end of each axis up to ``size``."""
    pad = []
    for have, want in zip(reversed(crop.shape[1:]), reversed(size)):
        pad += [0, want - have]
    return torch.nn.functional.pad(crop, pad) if any(pad) else crop
