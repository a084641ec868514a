"""Label masks of whole slides as tiled, pyramidal BigTIFF that OpenSlide and QuPath open."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import tifffile

from ..core.errors import NCAError
from ..core.files import atomic_path

PYRAMID_MIN_SIDE = 1024
"""Reduced levels are added (each half the previous) until the longer side is at most this."""


def pyramid_factors(shape: tuple[int, int], min_side: int = PYRAMID_MIN_SIDE) -> list[int]:
    """Downsample factors 1, 2, 4, ... until the level's longer side is ``<= min_side``."""
    factors = [1]
    h, w = shape
    while max(-(-h // factors[-1]), -(-w // factors[-1])) > min_side:
        factors.append(factors[-1] * 2)
    return factors


def _tiles(labels: np.ndarray, factor: int, tile: int) -> Iterator[np.ndarray]:
    """Row-major ``tile x tile`` tiles of ``labels[::factor, ::factor]``, edge tiles zero-padded.

    Each tile is sampled straight from ``labels`` (nearest neighbour by striding), so no
    reduced copy of the whole level is ever held.
    """
    h, w = labels.shape
    lh, lw = -(-h // factor), -(-w // factor)
    span = tile * factor
    for ty in range(0, lh, tile):
        for tx in range(0, lw, tile):
            block = np.asarray(labels[ty * factor : ty * factor + span : factor, tx * factor : tx * factor + span : factor])
            if block.shape != (tile, tile):
                padded = np.zeros((tile, tile), dtype=np.uint8)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            yield block


def write_pyramidal_mask(
    path: str | Path,
    labels: np.ndarray,
    mpp: float | None,
    tile: int = 512,
    palette: np.ndarray | None = None,
) -> Path:
    """Write ``labels`` (``[H, W]`` uint8, may be a memmap) as a tiled pyramidal BigTIFF.

    Level 0 is full resolution; each further level halves it by nearest-neighbour sampling
    (so it holds only label values present at level 0) until the longer side is at most
    1024 px. ``mpp`` is stored as X/YResolution in pixels per centimetre (``1e4 / mpp``),
    which OpenSlide reports as ``openslide.mpp-x``. With ``palette`` (``[256, 3]`` uint8,
    e.g. ``palette.PALETTE``) the file is a palette image: values stay the labels, viewers show
    colours. Tiles are written one at a time; the file appears only when complete.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise NCAError(f"Cannot write a pyramidal mask to {path}: use a .tif or .tiff file name.")
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8 [H, W], got {labels.dtype} {labels.shape}")
    if tile % 16 or tile <= 0:
        raise ValueError("tile must be a positive multiple of 16")
    if mpp is not None and not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    h, w = labels.shape
    options: dict = {"photometric": "minisblack"}
    if palette is not None:
        pal = np.asarray(palette, dtype=np.uint16).reshape(256, 3)
        options = {"photometric": "palette", "colormap": (pal.T * 257).astype(np.uint16)}
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            for i, f in enumerate(pyramid_factors((h, w))):
                shape = (-(-h // f), -(-w // f))
                resolution = {}
                if mpp is not None:
                    per_cm = 1e4 / (mpp * f)
                    resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
                tif.write(
                    _tiles(labels, f, tile),
                    shape=shape,
                    dtype=np.uint8,
                    tile=(tile, tile),
                    compression="zlib",
                    subfiletype=1 if i else 0,
                    metadata=None,
                    description="label mask" if i == 0 else None,
                    **resolution,
                    **options,
                )
    return path

