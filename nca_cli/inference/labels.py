"""Logits to label maps, band by band, and ensemble statistics."""
from __future__ import annotations

import numpy as np
import torch


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """Channels-last logits ``[..., K]`` → uint8 labels: 0 = background, k = class k.

    One class: ``logit > 0``. Several: the class with the largest logit among those > 0."""
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).to(torch.uint8)
    # Per cell beside the logits: the maximum (4 bytes), its int64 index (8), the labels (1)
    # and the masks (2); no int64 temporaries beyond the index (the memory model counts 20).
    best, idx = logits.max(dim=-1)
    labels = idx.to(torch.uint8).add_(1)
    del idx
    return labels.masked_fill_(~(best > 0), 0)   # NaN: background, as before


class EnsembleAccumulator:
    """Keeps every run's logits (float16) to take the median and the spread at the end."""

    def __init__(self, runs: int, shape, classes: int):
        self.data = np.zeros((runs, *shape, classes), dtype=np.float16)

    def add(self, run: int, region, logits: torch.Tensor) -> None:
        self.data[(run, *region)] = logits.to(torch.float16).cpu().numpy()

    def finish(self, labels: np.ndarray, want_std: bool) -> tuple[np.ndarray | None, float]:
        """Median logits → ``labels`` (in place); returns (std of probabilities, NQM)."""
        std_map = np.zeros(self.data.shape[1:-1], dtype=np.float32) if want_std else None
        sum_std = sum_mean = 0.0
        rows = max(1, (1 << 22) // max(1, int(np.prod(self.data.shape[2:]))))
        for r0 in range(0, self.data.shape[1], rows):
            band = torch.from_numpy(self.data[:, r0:r0 + rows].astype(np.float32))
            med = band.median(dim=0).values   # torch's median: the lower middle value, as in training
            lab = logits_to_labels(med)
            labels[r0:r0 + rows] = lab.numpy()
            prob = torch.sigmoid(band)
            std = prob.std(dim=0, unbiased=False)
            mean = prob.mean(dim=0)
            fg = (lab > 0)
            sum_std += float(std.sum(-1)[fg].sum())
            sum_mean += float(mean.sum(-1)[fg].sum())
            if std_map is not None:
                std_map[r0:r0 + rows] = std.max(dim=-1).values.numpy()
        nqm = sum_std / sum_mean if sum_mean > 0 else 0.0
        return std_map, nqm
