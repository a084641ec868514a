"""Training batches from a prepared dataset, reproducible from a ``torch.Generator``."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import NCAError


def to_input(array: np.ndarray) -> torch.Tensor:
    """Channels-last ``[*spatial, C]`` data → channels-first float32 ``[C, *spatial]`` in model units
    (uint8 divided by 255; float data was normalised when the dataset was prepared)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    return t.movedim(-1, 0).contiguous()


def to_target(label: np.ndarray, classes: int) -> torch.Tensor:
    """Label map (value k = class k, 0 = background) → ``[K, *spatial]`` float one-hot."""
    t = torch.from_numpy(np.ascontiguousarray(label)).long()
    return torch.stack([(t == k + 1) for k in range(classes)]).float()


class BatchSampler:
    """Draws batches of (image, target) tensors: whole cases, or patches when ``patch`` is set."""

    def __init__(self, dataset, batch_size: int, classes: int, patch=None, require_foreground: bool = False):
        if len(dataset) == 0:
            raise NCAError(f"The training split of {dataset.root} is empty; prepare the dataset with more cases.")
        self.dataset = dataset
        self.batch_size = batch_size
        self.classes = classes
        self.patch = list(patch) if patch else None
        self.require_foreground = require_foreground

    def case(self, i: int, g: torch.Generator):
        if self.patch:
            img, lab = self.dataset.sample_patch(i, self.patch, g, require_foreground=self.require_foreground)
        else:
            img, lab = self.dataset.image(i), self.dataset.label(i)
        return to_input(img), to_target(lab, self.classes)

    def batch(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.dataset), (self.batch_size,), generator=g).tolist()
        pairs = [self.case(i, g) for i in idx]
        shapes = {tuple(x.shape) for x, _ in pairs}
        if len(shapes) > 1:
            raise NCAError(f"Cases of {self.dataset.root} differ in shape ({sorted(shapes)[:2]}); "
                           f"set data.patch in the recipe or use data.batch_size=1.")
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


def validation_cases(dataset, classes: int, patch=None, per_case: int = 4, seed: int = 1234):
    """Fixed validation inputs: whole cases, or ``per_case`` foreground patches per case."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(len(dataset)):
        if patch:
            for _ in range(per_case):
                img, lab = dataset.sample_patch(i, list(patch), g, require_foreground=True)
                out.append((to_input(img)[None], to_target(lab, classes)[None]))
        else:
            out.append((to_input(dataset.image(i))[None], to_target(dataset.label(i), classes)[None]))
    return out
