"""PESO whole-slide H&E (prostate epithelium) to a prepared dataset.

Source layout: slides ``pds_XX_HE.tif`` and training masks ``pds_XX_HE_training_mask.tif``
anywhere below the source folder (the download's ``peso_training_wsi_*/`` and
``peso_training_masks/`` sub-folders work as they are). Mask value 2 (epithelium) becomes
foreground 1; 0 and 1 become background. Each slide is read at one pyramid level: ``level``
if given, else the coarsest level still as fine as ``mpp`` (0.48 µm/px; the rule of
``nca segment --mpp``), else level 0 when the slide has no resolution. A mask stored at another size is resampled (nearest) to
that level. Slides are copied in bands of ``band`` rows straight into ``np.lib.format``
memmaps, so memory stays at one band whatever the slide size. Patient = slide name
without ``_HE``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import io
from ..core.errors import NCAError
from ..io.normalize import Normalization
from ..io.resize import nearest_indices
from .layout import source_dir, visible_files
from .writer import DatasetWriter, safe_id

MASK_SUFFIX = "_training_mask"
MASK_VALUES = (0, 1, 2)
EPITHELIUM = 2
LAYOUT = "PESO slides pds_XX_HE.tif with their pds_XX_HE_training_mask.tif masks"


def _mask_level(dims: list[tuple[int, int]], height: int, width: int, mask_path: Path, image_path: Path) -> int:
    """Mask level (``dims``: (height, width) per level) matching (height, width) exactly, else
    the smallest one at least as large."""
    for k, (h, w) in enumerate(dims):
        if (h, w) == (height, width):
            return k
    h0, w0 = dims[0]
    if abs((h0 / height) / (w0 / width) - 1.0) > 0.02:
        raise NCAError(
            f"The slide {image_path} is {width}x{height} at the chosen level but its mask {mask_path} is {w0}x{h0}, "
            f"a different aspect ratio; use the mask made for this slide."
        )
    larger = [k for k, (h, w) in enumerate(dims) if w >= width and h >= height]
    return max(larger) if larger else 0


def fill_peso(src, writer: DatasetWriter, *, level: int | None = None, mpp: float = 0.48, band: int = 512) -> None:
    """Write every slide of a PESO folder that has a training mask into ``writer``."""
    src = source_dir(src, LAYOUT)
    masks = [p for p in visible_files(src, f"*{MASK_SUFFIX}.tif*", recursive=True)]
    if not masks:
        raise NCAError(f"No *{MASK_SUFFIX}.tif files were found under {src}; pass the folder holding {LAYOUT}.")
    slides = {}
    for p in visible_files(src, "*.tif*", recursive=True):
        if MASK_SUFFIX not in p.name:
            slides.setdefault(p.name, p)
    chosen_mpp = []
    for mask_path in masks:
        stem = mask_path.name[: mask_path.name.index(MASK_SUFFIX)]
        image_path = slides.get(stem + ".tif") or slides.get(stem + ".tiff")
        if image_path is None:
            raise NCAError(f"The mask {mask_path} has no slide {stem}.tif under {src}; add the slide or remove the mask.")
        chosen_mpp.append(_add_slide(writer, stem, image_path, mask_path, level, mpp, band))
    known = [m for m in chosen_mpp if m]
    um = float(np.median(known)) if known else None
    writer.set_info(
        name="peso",
        kind="pathology",
        modality="H&E",
        classes=["epithelium"],
        spacing=[round(um, 6)] * 2 if um else [1.0, 1.0],
        spacing_unit="um" if um else "px",
        normalization=Normalization("none", divide_by=255.0).entry("uint8"),
        source={"format": "peso", "path": str(src), "target_mpp": mpp, "level": level},
    )


def _add_slide(writer: DatasetWriter, stem: str, image_path: Path, mask_path: Path,
               level: int | None, mpp: float, band: int) -> float | None:
    """Write one slide and its epithelium label, band by band; return the level's µm/px if the file records it."""
    with io.open_slide(image_path, level=level, mpp=None if level is not None else mpp) as slide:
        with io.open_slide(mask_path) as probe:
            mask_dims = probe.meta["level_dimensions"]
        height, width = slide.spatial_shape
        lvl = slide.meta["level"]
        mlvl = _mask_level(mask_dims, height, width, mask_path, image_path)
        with io.open_slide(mask_path, level=mlvl) as mask:
            mh, mw = mask.spatial_shape
            cols = None if mw == width else nearest_indices(mw, width)
            rows = None if mh == height else nearest_indices(mh, height)
            level_mpp = slide.meta["mpp"] if slide.meta["mpp_source"] == "file" else None
            patient = stem[:-3] if stem.endswith("_HE") else stem
            image, label = writer.create_case(
                safe_id(stem), patient, (height, width), 3, np.uint8, level=lvl,
                mpp=round(level_mpp, 6) if level_mpp else None
            )
            for y0 in range(0, height, band):
                h = min(band, height - y0)
                image[y0 : y0 + h] = slide.read((slice(y0, y0 + h), slice(0, width)))
                label[y0 : y0 + h] = _mask_band(mask, mask_path, y0, h, rows, cols) == EPITHELIUM
    return level_mpp


def _mask_band(mask, mask_path: Path, y0: int, h: int, rows, cols) -> np.ndarray:
    """Rows ``y0:y0+h`` of the mask at the slide's size (nearest rows/cols when they differ); values checked."""
    mw = mask.spatial_shape[1]
    if rows is None:
        values = mask.read((slice(y0, y0 + h), slice(0, mw)))[..., 0]
    else:
        src_rows = rows[y0 : y0 + h]
        r0, r1 = int(src_rows[0]), int(src_rows[-1]) + 1
        values = mask.read((slice(r0, r1), slice(0, mw)))[..., 0][src_rows - r0]
    if cols is not None:
        values = values[:, cols]
    bad = values > max(MASK_VALUES)
    if bad.any():
        raise NCAError(
            f"The mask {mask_path} contains value {int(values[bad][0])}; PESO training masks hold 0, 1 and 2 (2 = epithelium)."
        )
    return values
