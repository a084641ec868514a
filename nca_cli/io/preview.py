"""Small overlay pictures of a segmentation for a quick look."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import NCAError
from ..core.files import atomic_path
from .palette import PALETTE, blend


def downscale_nearest(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[h, w, ...]`` so that the longer side is at most ``max_side``.

    Arrays already small enough come back unchanged; labels keep their exact values.
    """
    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return arr
    scale = max_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = ((np.arange(nh) + 0.5) * h / nh).astype(np.intp)
    cols = ((np.arange(nw) + 0.5) * w / nw).astype(np.intp)
    return np.asarray(arr[rows][:, cols])


def write_preview(
    path: str | Path,
    image: np.ndarray,
    labels: np.ndarray,
    max_side: int = 1024,
    alpha: float = 0.4,
    palette: np.ndarray = PALETTE,
) -> Path:
    """Write a PNG of ``image`` (``[h, w, 3 or 1]`` uint8) with ``labels`` blended in, atomically.

    Both are reduced by nearest neighbour to at most ``max_side`` px; ``labels`` may be at a
    different resolution than ``image`` and is resampled to the preview size. For 3D inputs
    pass the middle slice or frame.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise NCAError(f"Cannot write a preview to {path}: use a .png file name.")
    if image.dtype != np.uint8:
        raise ValueError(f"preview image must be uint8, got {image.dtype}")
    small = downscale_nearest(image, max_side)
    if small.ndim == 2:
        small = small[..., None]
    h, w = small.shape[:2]
    lh, lw = labels.shape
    rows = ((np.arange(h) + 0.5) * lh / h).astype(np.intp)
    cols = ((np.arange(w) + 0.5) * lw / w).astype(np.intp)
    small_labels = np.asarray(labels[rows][:, cols])
    picture = blend(small, small_labels, alpha, palette)
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return path
