"""Colours for label classes and the overlay blend used by previews and overlay videos.

One palette serves palette masks (PNG, pyramidal TIFF), previews, overlay videos and the
class colours in GeoJSON, so a class looks the same everywhere. The first classes get
bright, saturated colours that stand out on H&E tissue (pink and purple) as well as on
grey MRI/CT; previews add a dark halo so that they also show on white glass.
"""
from __future__ import annotations

import numpy as np

_BASE = np.array(
    [
        (0, 0, 0),
        # first the colours that stand out on pink/purple H&E and on grey scans alike
        (0, 255, 64),  # green
        (255, 230, 0),  # yellow
        (0, 220, 255),  # cyan
        (255, 128, 0),  # orange
        (255, 255, 255),  # white
        (255, 64, 170),  # pink
        (64, 110, 255),  # blue
        (190, 255, 120),  # pale lime
        (230, 30, 40),  # red
        (160, 90, 255),  # violet
        (0, 150, 120),  # teal
        (170, 110, 40),  # brown
        (255, 190, 140),  # peach
        (128, 128, 0),  # olive
        (128, 0, 0),  # maroon
    ],
    dtype=np.uint8,
)


def _build_palette() -> np.ndarray:
    """256 RGB colours: class 0 black, the first 15 classes distinct, the rest cycled."""
    pal = np.empty((256, 3), dtype=np.uint8)
    pal[0] = 0
    for i in range(1, 256):
        pal[i] = _BASE[1 + (i - 1) % (len(_BASE) - 1)]
    return pal


PALETTE: np.ndarray = _build_palette()
"""``[256, 3]`` uint8: the colour of each label value (0 = background)."""


def blend(image: np.ndarray, labels: np.ndarray, alpha: float = 0.4, palette: np.ndarray = PALETTE) -> np.ndarray:
    """Blend class colours onto an RGB or grey image where ``labels`` is non-zero.

    ``image`` is ``[h, w, 3]``, ``[h, w, 1]`` or ``[h, w]`` uint8; ``labels`` is ``[h, w]``.
    Returns ``[h, w, 3]`` uint8. Background (label 0) pixels keep the image colour.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    rgb = np.broadcast_to(image, (*labels.shape, 3)) if image.shape[-1] == 1 else image[..., :3]
    out = np.array(rgb, dtype=np.uint8)
    fg = labels != 0
    if fg.any():
        colours = palette[labels[fg]].astype(np.float32)
        out[fg] = np.rint((1.0 - alpha) * out[fg].astype(np.float32) + alpha * colours).astype(np.uint8)
    return out
