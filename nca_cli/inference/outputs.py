"""Prediction outputs: logits to labels and masks, the statistics of a seeded ensemble, Dice,
and the loop that scores labeled cases.

Every prediction of the package ends here: ``nca segment`` (labels, ensemble median, std map,
NQM), validation during training, the demo's held-out Dice, and VWSL (surrogate targets and
the evaluation of an adaptation).

- **Labels** (uint8, 0 = background, k = class k): a sigmoid model's class is the one with
  the largest logit among those > 0 (one class: ``logit > 0``); a softmax model's is the
  arg-max over its channels, channel 0 being the background.
- **Masks** (boolean, one per foreground class): ``logit > 0`` per class for sigmoid models,
  the one-hot arg-max without the background for softmax models.
- **Ensembles** (:class:`Ensemble`): runs with fire-mask seeds ``seed, seed + 1, ..``; each
  run's logits are kept (in the dtype given: float16 halves a full-size ensemble) because the
  median needs all of them. Statistics go band by band along the first axis, at most
  ``BAND_VALUES`` values per run at a time: the median of the logits (torch's, the lower
  middle value), and over the runs' sigmoid probabilities the mean, the population variance
  and standard deviation, and the NQM = Σ std / Σ mean over the foreground of the median
  labels (summed over classes).
- **Dice** (:func:`dice_score`): hard Dice per class of boolean masks, counted over the batch
  and every position; a class absent from both masks scores 1. :class:`DiceCounts` adds the
  counts up band by band, so a case need not be held whole.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

BAND_VALUES = 1 << 22   # values per run in one band of ensemble statistics


def labels_of(logits: torch.Tensor, softmax: bool = False, axis: int = -1) -> torch.Tensor:
    """Logits with classes along ``axis`` → uint8 labels (0 = background, k = class k)."""
    if softmax:
        return logits.argmax(axis).to(torch.uint8)
    logits = logits.movedim(axis, -1)
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).to(torch.uint8)
    # Per cell beside the logits: the maximum (4 bytes), its int64 index (8), the labels (1)
    # and the masks (2); no int64 temporaries beyond the index (the memory model counts 20).
    best, idx = logits.max(dim=-1)
    labels = idx.to(torch.uint8).add_(1)
    del idx
    return labels.masked_fill_(~(best > 0), 0)   # NaN: background


def masks_of(logits: torch.Tensor, softmax: bool = False, axis: int = 1) -> torch.Tensor:
    """Logits with classes along ``axis`` → boolean foreground masks, classes along ``axis``
    (``K`` of them for sigmoid models, ``K - 1`` for softmax models)."""
    if softmax:
        onehot = F.one_hot(logits.argmax(axis), logits.shape[axis]).movedim(-1, axis)
        return onehot.narrow(axis, 1, logits.shape[axis] - 1).bool()
    return logits > 0


class Ensemble:
    """The logits of ``runs`` seeded runs of one prediction, each of ``shape``, and their statistics.

    ``add(run, region, logits)`` stores a run's logits at ``region`` (a tuple of slices, or
    everything); the statistics are read band by band (:meth:`bands`) or for everything at once
    (:meth:`whole`). ``dtype``: the storage (default: the first logits' dtype); ``device``:
    where the runs are kept (default: where the first logits are)."""

    def __init__(self, runs: int, shape: Sequence[int], *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None):
        self.runs, self.shape = int(runs), tuple(shape)
        self.dtype, self.device = dtype, device
        self.data: torch.Tensor | None = None

    def add(self, run: int, region, logits: torch.Tensor) -> None:
        if self.data is None:
            self.data = torch.zeros((self.runs, *self.shape), dtype=self.dtype or logits.dtype,
                                    device=self.device if self.device is not None else logits.device)
        self.data[(run, *region)] = logits.to(self.data.dtype).to(self.data.device)

    def band_rows(self) -> int:
        """Rows of the first axis per band (at most ``BAND_VALUES`` values of a run)."""
        return max(1, BAND_VALUES // max(1, int(np.prod(self.shape[1:]))))

    def bands(self) -> Iterator[tuple[slice, "RunStats"]]:
        """``(rows, statistics of those rows)`` along the first axis, in order."""
        rows = self.band_rows()
        for r0 in range(0, self.shape[0], rows):
            band = slice(r0, min(r0 + rows, self.shape[0]))
            yield band, RunStats(self.data[:, band].float().contiguous())

    def whole(self) -> "RunStats":
        """The statistics of everything at once (small predictions)."""
        return RunStats(self.data.float())


class RunStats:
    """Statistics over the first axis of stacked runs' logits ``[runs, ...]`` (float32)."""

    def __init__(self, runs: torch.Tensor):
        self.runs = runs
        self._prob: torch.Tensor | None = None

    @property
    def prob(self) -> torch.Tensor:
        if self._prob is None:
            self._prob = torch.sigmoid(self.runs)
        return self._prob

    def median(self) -> torch.Tensor:
        """The median logits (torch's median: the lower middle value of an even count)."""
        return self.runs.median(dim=0).values

    def mean(self) -> torch.Tensor:
        return self.prob.mean(dim=0)

    def var(self) -> torch.Tensor:
        return self.prob.var(dim=0, unbiased=False)

    def std(self) -> torch.Tensor:
        return self.prob.std(dim=0, unbiased=False)


def finish_segmentation(ensemble: Ensemble, labels: np.ndarray, want_std: bool) -> tuple[np.ndarray | None, float]:
    """Median labels of a channels-last ensemble ``[*spatial, K]`` written into ``labels``;
    returns (the largest per-class std of the probabilities, or None; the NQM)."""
    std_map = np.zeros(ensemble.shape[:-1], dtype=np.float32) if want_std else None
    sum_std = sum_mean = 0.0
    for rows, stats in ensemble.bands():
        lab = labels_of(stats.median())
        labels[rows] = lab.cpu().numpy()
        std = stats.std()
        fg = lab > 0
        sum_std += float(std.sum(-1)[fg].sum())
        sum_mean += float(stats.mean().sum(-1)[fg].sum())
        if std_map is not None:
            std_map[rows] = std.max(dim=-1).values.cpu().numpy()
    return std_map, (sum_std / sum_mean if sum_mean > 0 else 0.0)


def dice_score(mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard Dice per class of boolean ``[B, K, *spatial]`` masks, counted over the batch.

    A class absent from both prediction and target scores 1."""
    counts = DiceCounts()
    counts.add(mask, target)
    return counts.score()


class DiceCounts:
    """Per-class Dice counts of ``[B, K, *spatial]`` masks, added up part by part."""

    def __init__(self):
        self.inter = self.total = 0

    def add(self, mask: torch.Tensor, target: torch.Tensor) -> None:
        dims = (0,) + tuple(range(2, mask.dim()))
        m, t = mask.bool(), target.bool()
        self.inter = self.inter + (m & t).sum(dims).double()
        self.total = self.total + (m.sum(dims) + t.sum(dims)).double()

    def score(self) -> torch.Tensor:
        total = torch.as_tensor(self.total, dtype=torch.float64)
        return torch.where(total > 0, 2 * self.inter / total.clamp(min=1), torch.ones_like(total))


Parts = Callable[[object], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def mean_dice(cases: Iterable, parts: Parts) -> float:
    """Mean over ``cases`` of the mean per-class Dice; ``parts(case)`` yields the case's
    ``(predicted masks, target masks)`` ``[B, K, *spatial]``, whole or band by band. NaN
    without cases."""
    scores = []
    for case in cases:
        counts = DiceCounts()
        for mask, target in parts(case):
            counts.add(mask, target)
        scores.append(counts.score().mean().item())
    return float(sum(scores) / len(scores)) if scores else float("nan")


def whole(masks: Callable[[torch.Tensor], torch.Tensor]) -> Parts:
    """``parts`` of in-memory cases ``(image, target)``: the masks of the whole image."""
    return lambda case: [(masks(case[0]), case[1])]
