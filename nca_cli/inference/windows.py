"""Overlapping-window inference with centre-weighted blending, for patch-wise networks.

Windows lie on a grid (per axis: evenly spaced starts from 0 to ``size - window``, at most
``window * (1 - overlap)`` apart); each window's logits are weighted by a separable Gaussian
(sigma = ``sigma_scale * window`` per axis) so the centre of a window, which sees the most
context, counts more than its rim. Because both the grid and the weight are separable, the
total weight at a voxel is the product of per-axis sums, so every window's contribution is
normalised as it is added: the output array holds the final blended logits after one pass and
no weight volume is ever allocated. Axes shorter than the window are zero-padded to it.

The model is run as given (call ``model.eval()`` first) under ``torch.inference_mode``.

Whole inputs of any size are processed in slabs (``blended_rows``): one window row along the
first spatial axis at a time, with every window across the other axes. The blending weight is
separable, so a slab's logits are exactly its share of the whole-image result; rows before the
next slab's start are final as soon as a slab is added and leave memory at once. Only one slab
of input and one window row of logits are held, whatever the image size. The meU-net cascade
runs in two passes (``logit_rows``): stage 1 over the whole image, then stage 2 fed the
one-hot stage-1 labels.
"""
from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import NCAError
from ..models.baselines.meunet import Stage1Mean, Stage2Input  # noqa: F401 (the cascade's stages)
from ..models.registry import architecture_of

OVERLAP = 0.5
DEFAULT_WINDOW = {2: 512, 3: 128}
LARGE_BYTES = 1 << 30  # label arrays above this size live in a memory-mapped file

Reader = Callable[[int, int], torch.Tensor]  # rows r0..r1 of the first axis -> [1, C, rows, *rest]


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
    win = _check_windows(image, window, overlap, batch_size)
    spatial = tuple(image.shape[2:])
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    starts, factor = _window_grid(spatial, win, overlap, sigma_scale)
    tiles = [(b, pos) for b in range(image.shape[0]) for pos in itertools.product(*starts)]
    total_batches = math.ceil(len(tiles) / batch_size)
    result = None
    with torch.inference_mode():
        for done, first in enumerate(range(0, len(tiles), batch_size), start=1):
            group = tiles[first : first + batch_size]
            crops = [
                _pad_to(image[(b, slice(None), *(slice(s, s + w) for s, w in zip(pos, win)))], win)
                for b, pos in group
            ]
            logits = model(torch.stack(crops).to(device=device, dtype=dtype)).float().cpu()
            if result is None:
                result = _zeroed_output((image.shape[0], logits.shape[1]) + spatial, out)
            for (b, pos), tile in zip(group, logits):
                valid = tuple(slice(0, min(w, n - s)) for s, w, n in zip(pos, win, spatial))
                target = (b, slice(None), *(slice(s, s + v.stop) for s, v in zip(pos, valid)))
                result[target] += (tile * factor(pos))[(slice(None), *valid)]
            if progress is not None:
                progress(done, total_batches)
    return result


def _check_windows(image: torch.Tensor, window: int | Sequence[int], overlap: float,
                   batch_size: int) -> tuple[int, ...]:
    """The window per axis, after checking the image, the window, the overlap and the batch size."""
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
    return win


def _window_grid(spatial: Sequence[int], win: Sequence[int], overlap: float, sigma_scale: float):
    """The window starts per axis, and ``factor(position)``: the normalised weight of every cell
    of the window at ``position`` (its Gaussian over the sum of all windows' at each cell)."""
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
        f = None
        for axis, (s, w) in enumerate(zip(position, win)):
            a = torch.from_numpy(weights[axis] / totals[axis][s : s + w]).float()
            f = a if f is None else f.unsqueeze(-1) * a
        return f

    return starts, factor


def _zeroed_output(shape: tuple[int, ...], out: np.ndarray | None) -> torch.Tensor:
    """The float32 output of ``shape``: ``out`` zeroed (checked), or a new array."""
    if out is None:
        out = np.zeros(shape, dtype=np.float32)
    elif tuple(out.shape) != shape or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 array of shape {shape}, got {out.dtype} {tuple(out.shape)}.")
    else:
        out[...] = 0
    return torch.from_numpy(out)


def _pad_to(crop: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``crop [C, *spatial]`` at the high end of each axis up to ``size``."""
    pad = []
    for have, want in zip(reversed(crop.shape[1:]), reversed(size)):
        pad += [0, want - have]
    return torch.nn.functional.pad(crop, pad) if any(pad) else crop


def window_size(model: nn.Module, spatial: Sequence[int], patch: Sequence[int] | None = None) -> tuple[int, ...]:
    """The sliding window for an image of ``spatial`` size (see module docstring)."""
    div = int(model.divisor)
    want = list(patch) if patch else [DEFAULT_WINDOW[len(spatial)]] * len(spatial)
    if len(want) != len(spatial):
        raise NCAError(f"The window {want} has {len(want)} sizes for a {len(spatial)}D input; "
                       f"give one size per axis.")
    return tuple(min(-(-w // div), -(-n // div)) * div for w, n in zip(want, spatial))


def label_array(shape: Sequence[int], folder: Path | None = None) -> np.ndarray:
    """A zeroed uint8 array; memory-mapped from a temporary file in ``folder`` when large."""
    if math.prod(shape) < LARGE_BYTES or folder is None:
        return np.zeros(tuple(shape), dtype=np.uint8)
    handle = tempfile.NamedTemporaryFile(prefix=".labels-", suffix=".npy", dir=folder)
    array = np.lib.format.open_memmap(handle.name, mode="w+", dtype=np.uint8, shape=tuple(shape))
    array._owner = handle  # the file is deleted once the array is released
    return array


@torch.inference_mode()
def blended_rows(model: nn.Module, read: Reader, spatial: Sequence[int], window: Sequence[int], *,
                 overlap: float = OVERLAP, device=None,
                 progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Final blended logits, first-axis rows in order: yields ``(r0, r1, logits [K, r1-r0, *rest])``.

    Equal (to float rounding) to ``sliding_window_predict`` over the whole image."""
    spatial, window = tuple(spatial), tuple(window)
    n0, w0 = spatial[0], window[0]
    padded0 = max(n0, w0)
    starts0 = window_starts(padded0, w0, overlap)
    g0 = gaussian_weight(w0)
    total0 = np.zeros(padded0)
    for s in starts0:
        total0[s : s + w0] += g0
    inner = math.prod(len(window_starts(max(n, w), w, overlap)) for n, w in zip(spatial[1:], window[1:]))
    total = inner * len(starts0)
    shape_rest = (1,) * (len(spatial) - 1)
    buffer, done = None, 0
    for i, s in enumerate(starts0):
        slab = read(s, min(s + w0, n0))

        def tick(d, _t, i=i):
            if progress is not None:
                progress(i * inner + d, total)

        logits = sliding_window_predict(model, slab, window, overlap=overlap, device=device, progress=tick)[0]
        rows = logits.shape[1]
        weight = torch.from_numpy(g0[:rows] / total0[s : s + rows]).float().reshape(rows, *shape_rest)
        if buffer is None:
            buffer = torch.zeros((logits.shape[0], w0, *spatial[1:]))
        buffer[:, s - done : s - done + rows] += logits * weight
        stop = min(starts0[i + 1] if i + 1 < len(starts0) else n0, n0)
        if stop > done:
            k = stop - done
            yield done, stop, buffer[:, :k].clone()
            buffer = torch.cat([buffer[:, k:], torch.zeros_like(buffer[:, :k])], dim=1)
            done = stop


@torch.inference_mode()
def logit_rows(model: nn.Module, read: Reader, spatial: Sequence[int], window: Sequence[int], *, device=None,
               progress: Callable[[int, int], None] | None = None, folder: Path | None = None):
    """``blended_rows`` of any baseline; a cascade (its registry entry's ``cascade`` strategy)
    first runs stage 1 over the whole image (its labels kept in a uint8 array, memory-mapped in
    ``folder`` when large), then stage 2 fed them one-hot."""
    cascade = architecture_of(model).cascade
    if cascade is None:
        yield from blended_rows(model, read, spatial, window, device=device, progress=progress)
        return
    stage1 = label_array(spatial, folder)
    for r0, r1, probs in blended_rows(cascade.first(model), read, spatial, window, device=device):
        stage1[r0:r1] = probs.argmax(0).numpy()
    k = model.config.output_channels

    def read2(r0: int, r1: int) -> torch.Tensor:
        onehot = F.one_hot(torch.from_numpy(stage1[r0:r1].astype(np.int64)), k).movedim(-1, 0)[None].float()
        return torch.cat([read(r0, r1), onehot], dim=1)

    yield from blended_rows(cascade.second(model), read2, spatial, window, device=device, progress=progress)

