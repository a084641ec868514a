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
  the sigmoid of the output (logit) channels are compared, ``mean|σ(o1) − σ(o2)|`` (the usual
  L1 loss, a mean over pixels), and the levels' values are averaged. Probabilities, not
  logits, so the term stays bounded.

The γ scale. The paper writes the loss per pixel, ``w(x, y) · [(1 − DSC) + FocalLoss]``, plus
one ``γ · L1(o1, o2)``: summed over the N pixels of the output, the segmentation part is N
times its mean while the L1 loss is a mean. Written with means, as here, that is

    loss = mean(w)-weighted (1 − Dice) + mean(w · FL) + (γ / N) · L1

with N the pixels (voxels) of one sample's finest output (the crop, when fine-tuning on
crops). With the per-pixel means alone, γ = 1e3 would weigh the L1 term (1e-2 between two
runs of a trained Med-NCA) about 100x the segmentation term (0.1 to 0.3), and fine-tuning
would drive the two runs together by saturating every logit (measured that way on a
synthetic X-ray shift: −1.1 / −5.3 / −6.4 Dice points at γ = 1e2 / 1e3 / 1e4); the paper's ablation instead changes the Dice by less than its standard
deviation across γ = 0 … 1e4, with 1e3 best. On 256x256 images (or a 64x64 crop) γ = 1e3
gives the L1 term a weight of 0.015 (0.24): a light regulariser, as there.

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
    """Mean over levels of ``mean|σ(a) − σ(b)|`` between two passes' per-level output logits."""
    if len(levels_a) != len(levels_b) or not levels_a:
        raise ValueError(f"need the same non-zero number of levels, got {len(levels_a)} and {len(levels_b)}")
    terms = [(torch.sigmoid(a) - torch.sigmoid(b)).abs().mean() for a, b in zip(levels_a, levels_b)]
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
    (weighted focal) and ``l1`` (the consistency term before multiplying by ``gamma / N``,
    N the pixels of one sample of ``logits``).
    """
    w = variance_weight(variance)
    dice = weighted_dice_loss(logits, target, w)
    focal = weighted_focal_loss(logits, target, w, focal_gamma)
    l1 = consistency_l1(levels_a, levels_b)
    pixels = logits[0, 0].numel()
    return {"loss": dice + focal + (gamma / pixels) * l1, "dice": dice, "focal": focal, "l1": l1}
