"""Patch-wise inference for the baselines: overlapping windows, band by band.

Windows lie on one global grid and are blended with a centre-weighted Gaussian (overlap
0.5, ``sliding_window_predict``). The input is processed in slabs: one window row along the
first spatial axis at a time, with every window across the other axes. The blending weight
is separable, so a slab's logits are exactly its share of the whole-image result; rows
before the next slab's start are final as soon as a slab is added and leave memory at once.
Only one slab of input and one window row of logits are held, whatever the image size.

Labels: models with one sigmoid logit per class (``unet``) give ``logit > 0``, and with
several classes the largest positive logit (as the NCAs); softmax models give the argmax
(class 0 = background). The meU-net cascade runs in two passes: stage 1 over the whole
image, then stage 2 fed the one-hot stage-1 labels.

Window: the recipe's ``data.patch`` (the training patch), else ``DEFAULT_WINDOW``; rounded
up to a multiple of the model's ``divisor`` and never larger than the image needs.
"""
from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NCAError
from ..models.baselines.sliding_window import gaussian_weight, sliding_window_predict, window_starts
from .labels import logits_to_labels

OVERLAP = 0.5
DEFAULT_WINDOW = {2: 512, 3: 128}
LARGE_BYTES = 1 << 30  # label arrays above this size live in a memory-mapped file

Reader = Callable[[int, int], torch.Tensor]  # rows r0..r1 of the first axis -> [1, C, rows, *rest]


def is_softmax(model: nn.Module) -> bool:
    from ..models import softmax_classes

    return softmax_classes(model.config)


def window_size(model: nn.Module, spatial: Sequence[int], patch: Sequence[int] | None = None) -> tuple[int, ...]:
    """The sliding window for an image of ``spatial`` size (see module docstring)."""
    div = int(model.divisor)
    want = list(patch) if patch else [DEFAULT_WINDOW[len(spatial)]] * len(spatial)
    if len(want) != len(spatial):
        raise NCAError(f"The window {want} has {len(want)} sizes for a {len(spatial)}D input; "
                       f"give one size per axis.")
    return tuple(min(-(-w // div), -(-n // div)) * div for w, n in zip(want, spatial))


def recipe_window(payload: dict) -> list[int] | None:
    """The training patch stored with a model.pt, if any."""
    recipe = payload.get("recipe") or {}
    return (recipe.get("data") or {}).get("patch")


def label_array(shape: Sequence[int], folder: Path | None = None) -> np.ndarray:
    """A zeroed uint8 array; memory-mapped from a temporary file in ``folder`` when large."""
    if math.prod(shape) < LARGE_BYTES or folder is None:
        return np.zeros(tuple(shape), dtype=np.uint8)
    handle = tempfile.NamedTemporaryFile(prefix=".labels-", suffix=".npy", dir=folder)
    array = np.lib.format.open_memmap(handle.name, mode="w+", dtype=np.uint8, shape=tuple(shape))
    array._owner = handle  # the file is deleted once the array is released
    return array


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


class Stage1Mean(nn.Module):
    """A cascade's stage 1 as one network: the mean softmax of its stage-1 networks."""

    def __init__(self, cascade: nn.Module):
        super().__init__()
        self.nets = cascade.stage1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(torch.softmax(net(x), dim=1) for net in self.nets) / len(self.nets)


class Stage2Input(nn.Module):
    """A cascade's stage 2 on ``[image | one-hot stage-1 labels]`` inputs."""

    def __init__(self, cascade: nn.Module, image_channels: int):
        super().__init__()
        self.cascade = cascade
        self.image_channels = image_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.image_channels
        return self.cascade(x[:, :c], stage1_prediction=x[:, c:])


def logit_rows(model: nn.Module, read: Reader, spatial: Sequence[int], window: Sequence[int], *, device=None,
               progress: Callable[[int, int], None] | None = None, folder: Path | None = None):
    """``blended_rows`` of any baseline; a cascade first runs stage 1 over the whole image
    (its labels kept in a uint8 array, memory-mapped in ``folder`` when large)."""
    from ..models.baselines import MeUNetCascade

    if not isinstance(model, MeUNetCascade):
        yield from blended_rows(model, read, spatial, window, device=device, progress=progress)
        return
    stage1 = label_array(spatial, folder)
    for r0, r1, probs in blended_rows(Stage1Mean(model), read, spatial, window, device=device):
        stage1[r0:r1] = probs.argmax(0).numpy()
    k = model.num_classes

    def read2(r0: int, r1: int) -> torch.Tensor:
        onehot = F.one_hot(torch.from_numpy(stage1[r0:r1].astype(np.int64)), k).movedim(-1, 0)[None].float()
        return torch.cat([read(r0, r1), onehot], dim=1)

    yield from blended_rows(Stage2Input(model, model.config["input_channels"]), read2, spatial, window, device=device, progress=progress)


def rows_to_labels(logits: torch.Tensor, softmax: bool) -> np.ndarray:
    """``[K, *band]`` logits -> uint8 labels (0 = background, k = class k)."""
    if softmax:
        return logits.argmax(0).to(torch.uint8).numpy()
    return logits_to_labels(logits.movedim(0, -1)).numpy()


def rows_to_masks(logits: torch.Tensor, softmax: bool) -> torch.Tensor:
    """``[K, *band]`` logits -> boolean foreground masks ``[classes, *band]`` (as the NCAs are
    validated: ``logit > 0`` per class for sigmoid models)."""
    if softmax:
        return F.one_hot(logits.argmax(0), logits.shape[0]).movedim(-1, 0)[1:].bool()
    return logits > 0


def check_compatible(model: nn.Module, image, path: Path) -> None:
    c = model.config
    if image.dims != c["dims"]:
        raise NCAError(f"{path} is {image.dims}D but the {c['architecture']} model is {c['dims']}D; "
                       f"use a {c['dims']}D input or a {image.dims}D model.")
    if image.channels != c["input_channels"]:
        raise NCAError(f"{path} has {image.channels} channel(s) but the model takes {c['input_channels']}; "
                       f"convert the input to {c['input_channels']} channel(s) or use a matching model.")


def nca_only_flags(opts) -> list[str]:
    """The given ``nca segment`` options that only NCA models use."""
    flags = []
    if opts.ensemble > 1:
        flags.append("--ensemble")
    if opts.uncertainty is not None:
        flags.append("--uncertainty")
    if opts.tiling != "auto":
        flags.append("--tiling")
    if opts.tile_size is not None:
        flags.append("--tile-size")
    if opts.impl != "auto":
        flags.append("--impl")
    return flags


def segment_patchwise(in_path: Path, out_path: Path, model: nn.Module, model_file: Path, opts, progress=None,
                      window: Sequence[int] | None = None) -> dict:
    """Segment ``in_path`` into ``out_path`` with a baseline; returns the run metadata."""
    from .. import io
    from ..inference.sources import Normalizer
    from ..training.trainer import resolve_device
    from .pipeline import run_record, write_outputs

    t_start = time.perf_counter()
    device = resolve_device(opts.device)
    model = model.to(device).eval()
    image = io.open_input(in_path, level=opts.level, mpp=opts.mpp, start=opts.start, duration=opts.duration,
                          max_frames=opts.max_frames)
    try:
        check_compatible(model, image, in_path)
        if image.dtype != np.uint8:
            io.check_finite(image.read(), in_path)
        shape = image.spatial_shape
        win = window_size(model, shape, window)
        normalize = Normalizer(image.dtype, lambda: image.read())
        rest = tuple(slice(0, n) for n in shape[1:])

        def read(r0: int, r1: int) -> torch.Tensor:
            return normalize(image.read((slice(r0, r1), *rest))).movedim(-1, 0).unsqueeze(0)

        out_path.parent.mkdir(parents=True, exist_ok=True)
        labels = label_array(shape, out_path.parent)
        softmax = is_softmax(model)
        windows = [0]

        def tick(done: int, total: int) -> None:
            windows[0] = total
            if progress is not None:
                progress.window_done(done, total)

        for r0, r1, logits in logit_rows(model, read, shape, win, device=device, progress=tick,
                                         folder=out_path.parent):
            labels[r0:r1] = rows_to_labels(logits, softmax)
        written = write_outputs(image, labels, out_path, opts)
        return run_record(image, in_path, model_file, opts, device, labels, written, t_start) | {
            "architecture": model.config["architecture"], "impl": "sliding-window", "state_dtype": "float32",
            "mode": "sliding-window", "split_level": None, "tile": list(win), "tiles": windows[0],
            "overlap": OVERLAP, "predicted_peak_bytes": None, "memory_budget_bytes": None,
            "level_seconds": {}, "ensemble": 1, "nqm": None,
        }
    finally:
        image.close()
