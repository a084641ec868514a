"""Segmentation losses on logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean soft Dice over samples and classes of ``[B, K, *spatial]`` probabilities."""
    dims = tuple(range(2, prob.dim()))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return ((2 * inter + smooth) / (denom + smooth)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """``(2 - λ)·BCE + λ·(1 - Dice)``, Dice on the sigmoid with smooth 1 (OctreeNCA)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dice = 1.0 - soft_dice(torch.sigmoid(logits), target)
    return (2.0 - dice_weight) * bce + dice_weight * dice
