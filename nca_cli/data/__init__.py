"""Datasets: converting sources into the prepared format, reading it back, synthetic data."""
from .dataset import PreparedDataset, label_masks, load_manifest
from .prepare import KINDS, prepare
from .synthetic import SYNTHETIC_KINDS, make_synthetic
from .synthetic_slide import make_synthetic_slide

__all__ = [
    "KINDS",
    "SYNTHETIC_KINDS",
    "PreparedDataset",
    "label_masks",
    "load_manifest",
    "make_synthetic",
    "make_synthetic_slide",
    "prepare",
]
