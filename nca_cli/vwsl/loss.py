"""The Variance-Weighted Segmentation Loss (VWSL) of the edge-training paper::

    VWSL = w · [(1 − Dice) + Focal] + γ · L1(o1, o2),    w(x, y) = 1 − 2·Var(x, y)

``Var`` is the per-pixel variance of the sigmoid probabilities of the starting model's
stochastic predictions (at most 0.25, so ``w`` lies in [0.5, 1]); the target is their mean.
How the per-pixel ``w`` enters each term:

- Dice: a weighted soft Dice per sample and class,
  ``(2·Σ w·p·t + 1) / (Σ w·p + Σ w·t + 1)`` (smooth 1), averaged; ``w = 1`` gives plain soft Dice.
- Focal (Lin et al., no α balancing): per pixel
  ``FL = −[t·(1−p)^γf·log p + (1−t)·p^γf·log(1−p)]`` (the binary focal loss, written for soft
  targets ``t``; for ``t ∈ {0, 1}`` it is Lin et al.'s ``−(1−p_t)^γf·log p_t``), averaged as
  ``mean(w·FL)`` over all pixels and classes.
- L1: ``o1`` and ``o2`` are two stochastic forward passes of the same input; at every level
  each output map's probabilities are averaged over space, ``⟨σ(o)⟩`` (the segmented
  fraction of the image), and the term is ``|⟨σ(o1)⟩ − ⟨σ(o2)⟩|``, averaged over samples,
  classes and levels.

The γ scale. The paper writes the term as ``γ · L1(o1, o2)`` without its reduction, and
its ablation (γ = 0, 1e2, 1e3, 1e4 on X-rays) improves up to γ = 1e3 and loses "slightly"
at 1e4, "balancing variance influence without overshadowing other loss components": at
γ = 1e3 the term must be of the order of the segmentation term (≈ 0.1 for a trained
model), so the L1 itself of order 1e-4. A per-pixel mean ``mean|σ(o1) − σ(o2)|`` is of
order 1e-2 between two runs of a trained Med-NCA (0.013 to 0.04 measured on the X-ray
model): γ = 1e3 then weighs it 100x the segmentation term, and fine-tuning drives the two
runs together by saturating every logit (measured: −5.3 Dice points at γ = 1e3, −6.4 at
1e4; ``experiments/results/vwsl.md``). The difference of the two outputs' spatial means is
of order 1e-4 (the runs differ at scattered boundary pixels, whose differences cancel in
the mean), which gives the paper's balance: γ = 1e2 a light, 1e3 an equal, 1e4 a dominant
consistency term. Probabilities, not logits, so the term stays bounded (at most 1).

All functions take logits ``[B, K, *spatial]`` and are differentiable.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def variance_weight(variance: torch.Tensor) -> torch.Tensor:
    """Per-pixel weight ``w = 1 − 2·Var``."""
    return 1.0 - 2.0 * variance


def weighted_dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                       smooth: float = 1.0) -> torch.Tensor:
    """``1 −`` the mean over samples and classes of the weighted soft Dice of ``sigmoid(logits)``."""
    prob = torch.sigmoid(logits)
    dims = tuple(range(2, prob.dim()))
    inter = (weight * prob * target).sum(dims)
    denom = (weight * prob).sum(dims) + (weight * target).sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


def weighted_focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                        gamma: float = 2.0) -> torch.Tensor:
    """``mean(w · FL)`` with the binary focal loss ``FL`` of Lin et al. (soft targets allowed)."""
    prob = torch.sigmoid(logits)
    log_p = F.logsigmoid(logits)
    log_q = F.logsigmoid(-logits)
    focal = -(target * (1.0 - prob).pow(gamma) * log_p + (1.0 - target) * prob.pow(gamma) * log_q)
    return (weight * focal).mean()


def consistency_l1(levels_a: Sequence[torch.Tensor], levels_b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over levels, samples and classes of ``|⟨σ(a)⟩ − ⟨σ(b)⟩|`` between two passes'
    per-level output logits ``[B, K, *spatial]``, ``⟨·⟩`` the spatial mean (see the module
    docstring for why the spatial mean)."""
    if len(levels_a) != len(levels_b) or not levels_a:
        raise ValueError(f"need the same non-zero number of levels, got {len(levels_a)} and {len(levels_b)}")
    terms = []
    for a, b in zip(levels_a, levels_b):
        dims = tuple(range(2, a.dim()))
        terms.append((torch.sigmoid(a).mean(dims) - torch.sigmoid(b).mean(dims)).abs().mean())
    return torch.stack(terms).mean()


def vwsl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    variance: torch.Tensor,
    levels_a: Sequence[torch.Tensor],
    levels_b: Sequence[torch.Tensor],
    *,
    gamma: float = 1e3,
    focal_gamma: float = 2.0,
) -> dict[str, torch.Tensor]:
    """VWSL of ``logits`` (the first pass's finest output) against the surrogate ``target``.

    Returns ``loss`` (the total) and its parts ``dice`` (weighted 1 − Dice), ``focal``
    (weighted focal) and ``l1`` (the consistency term before multiplying by ``gamma``).
    """
    w = variance_weight(variance)
    dice = weighted_dice_loss(logits, target, w)
    focal = weighted_focal_loss(logits, target, w, focal_gamma)
    l1 = consistency_l1(levels_a, levels_b)
    return {"loss": dice + focal + gamma * l1, "dice": dice, "focal": focal, "l1": l1}
