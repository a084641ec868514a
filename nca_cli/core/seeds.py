"""Seeds of the stochastic fire masks during training and fine-tuning.

Every pass of every batch gets its own 32-bit seed, a fixed function of the run's seed, the
epoch, the batch and a stream number (the process rank in distributed training, or the pass
of a pair of passes), so a run is reproducible and resumable from (seed, epoch, batch).
"""
from __future__ import annotations

MASK32 = 0xFFFFFFFF        # every seed, level and step is taken modulo 2^32 (fire masks, kernels)
VWSL_STREAM = 0x5EED      # streams of the two fine-tuning passes: VWSL_STREAM + 7 * k


def fire_seed(seed: int, epoch: int, batch: int, stream: int = 0) -> int:
    """The fire-mask seed of one pass: ``(seed·1000003 + epoch·10007 + batch·101 + stream) mod 2^32``."""
    return (seed * 1_000_003 + epoch * 10_007 + batch * 101 + stream) & MASK32
