"""Unsupervised adaptation of a trained NCA to unlabeled images: the Variance-Weighted
Segmentation Loss (VWSL) of the edge-training paper (``loss``), its surrogate targets
(``targets``) and the fine-tuning loop behind `nca finetune-vwsl` (``finetune``)."""
