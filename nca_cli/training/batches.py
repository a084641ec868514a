"""Training batches from a prepared dataset, reproducible from a ``torch.Generator``."""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import NCAError
from ..data.dataset import as_numpy_generator


def case_tensors(dataset, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored arrays → channels-first float32 image ``[C, *spatial]`` and masks ``[K, *spatial]``."""
    x = torch.from_numpy(dataset.to_float(image)).movedim(-1, 0).contiguous()
    y = torch.from_numpy(np.ascontiguousarray(dataset.to_masks(label), dtype=np.float32)).movedim(-1, 0).contiguous()
    return x, y


class BatchSampler:
    """Draws batches of (image, target) tensors: whole cases, or patches when ``patch`` is set."""

    def __init__(self, dataset, batch_size: int, patch=None, require_foreground: bool = False):
        if len(dataset) == 0:
            raise NCAError(f"The training split of {dataset.root} is empty; prepare the dataset with more cases.")
        self.dataset = dataset
        self.batch_size = batch_size
        self.patch = list(patch) if patch else None
        self.require_foreground = require_foreground

    def case(self, i: int, rng: np.random.Generator):
        if self.patch:
            img, lab = self.dataset.sample_patch(i, self.patch, rng, require_foreground=self.require_foreground)
        else:
            img, lab = self.dataset.image(i), self.dataset.label(i)
        return case_tensors(self.dataset, img, lab)

    def batch(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rng = as_numpy_generator(g)   # one draw from g: saving its state is enough to resume
        idx = torch.randint(0, len(self.dataset), (self.batch_size,), generator=g).tolist()
        pairs = [self.case(i, rng) for i in idx]
        shapes = {tuple(x.shape) for x, _ in pairs}
        if len(shapes) > 1:
            raise NCAError(f"Cases of {self.dataset.root} differ in shape ({sorted(shapes)[:2]}); "
                           f"set data.patch in the recipe or use data.batch_size=1.")
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


def validation_cases(dataset, patch=None, per_case: int = 4, seed: int = 1234):
    """Fixed validation inputs: whole cases, or ``per_case`` foreground patches per case."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(dataset)):
        if patch:
            for _ in range(per_case):
                img, lab = dataset.sample_patch(i, list(patch), rng, require_foreground=True)
                x, y = case_tensors(dataset, img, lab)
                out.append((x[None], y[None]))
        else:
            x, y = case_tensors(dataset, dataset.image(i), dataset.label(i))
            out.append((x[None], y[None]))
    return out
