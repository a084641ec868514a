"""Unsupervised adaptation of a trained NCA to unlabeled images: the Variance-Weighted
Segmentation Loss (VWSL) of the edge-training paper, its surrogate targets and the
fine-tuning loop behind `nca finetune-vwsl`."""
from .loss import consistency_l1, variance_weight, vwsl_loss, weighted_dice_loss, weighted_focal_loss

__all__ = ["consistency_l1", "variance_weight", "vwsl_loss", "weighted_dice_loss", "weighted_focal_loss"]
