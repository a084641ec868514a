"""One epoch of gradient steps, shared by `train` and `finetune-vwsl`."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..core.errors import NCAError

Loss = Callable[[int, object], "torch.Tensor | dict[str, torch.Tensor]"]


def optimise_epoch(optimizer: torch.optim.Optimizer, batches: Iterable, loss: Loss, *, diverged: str) -> dict[str, float]:
    """For every batch: ``loss(index, batch)`` (a tensor, or a dict whose ``"loss"`` entry is
    minimised and whose other entries are reported), backward, optimiser step. Returns the mean
    of every entry. A loss that is not finite stops training with ``diverged`` (one sentence
    naming what to change), formatted with ``epoch``-free ``{value}``."""
    sums: dict[str, float] = {}
    count = 0
    for index, batch in enumerate(batches):
        parts = loss(index, batch)
        if isinstance(parts, torch.Tensor):
            parts = {"loss": parts}
        value = parts["loss"]
        if not torch.isfinite(value):
            raise NCAError(diverged.format(value=value.item()))
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.item())
        count += 1
    return {k: v / max(1, count) for k, v in sums.items()}
