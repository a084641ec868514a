"""Weights a model draws for itself: reproducible random weights for tests and benchmarks."""
from __future__ import annotations

import torch


class Randomizable:
    """Mixin of ``nn.Module`` models: :meth:`randomize_`."""

    @torch.no_grad()
    def randomize_(self, std: float, seed: int = 0):
        """Every parameter (in ``parameters()`` order) drawn from N(0, ``std``²) by one CPU
        generator seeded ``seed``: the same weights on every machine and device. Returns the model."""
        generator = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
        return self
