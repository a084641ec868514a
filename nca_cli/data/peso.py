"""PESO whole-slide H&E (prostate epithelium) to a prepared dataset.

Source layout: slides ``pds_XX_HE.tif`` and training masks ``pds_XX_HE_training_mask.tif``
anywhere below the source folder (the download's ``peso_training_wsi_*/`` and
``peso_training_masks/`` sub-folders work as they are). Mask value 2 (epithelium) becomes
foreground 1; 0 and 1 become background. Each slide is read at one pyramid level: ``level``
if given, else the level whose resolution is closest to ``mpp`` (0.48 µm/px), else level 0
when the slide has no resolution. A mask stored at another size is resampled (nearest) to
that level. Slides are copied in bands of ``band`` rows straight into ``np.lib.format``
memmaps, so memory stays at one band whatever the slide size. Patient = slide name
without ``_HE``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import NCAError
from .normalize import UINT8
from .resize import nearest_indices
from .sources import SlideSource, source_dir, visible_files
from .writer import DatasetWriter, safe_id

MASK_SUFFIX = "_training_mask"
MASK_VALUES = (0, 1, 2)
EPITHELIUM = 2
LAYOUT = "PESO slides pds_XX_HE.tif with their pds_XX_HE_training_mask.tif masks"


def choose_level(slide: SlideSource, level: int | None, mpp: float) -> int:
    """The pyramid level to read (see module docstring)."""
    if level is not None:
        if not 0 <= level < len(slide.level_dimensions):
            raise NCAError(f"The slide {slide.path} has levels 0..{len(slide.level_dimensions) - 1}, not {level}; pick an existing level.")
        return level
    if slide.mpp is None:
        return 0
    return int(np.argmin([abs(slide.mpp * ds - mpp) for ds in slide.level_downsamples]))


def _mask_level(mask: SlideSource, width: int, height: int, image_path: Path) -> int:
    """Mask level matching (width, height) exactly, else the smallest one at least as large."""
    dims = mask.level_dimensions
    for k, (w, h) in enumerate(dims):
        if (w, h) == (width, height):
            return k
    w0, h0 = dims[0]
    if abs((h0 / height) / (w0 / width) - 1.0) > 0.02:
        raise NCAError(
            f"The slide {image_path} is {width}x{height} at the chosen level but its mask {mask.path} is {w0}x{h0}, "
            f"a different aspect ratio; use the mask made for this slide."
        )
    larger = [k for k, (w, h) in enumerate(dims) if w >= width and h >= height]
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
        with SlideSource(image_path) as slide, SlideSource(mask_path) as mask:
            lvl = choose_level(slide, level, mpp)
            width, height = slide.level_dimensions[lvl]
            mlvl = _mask_level(mask, width, height, image_path)
            mw, mh = mask.level_dimensions[mlvl]
            cols = None if mw == width else nearest_indices(mw, width)
            rows = None if mh == height else nearest_indices(mh, height)
            level_mpp = slide.mpp * slide.level_downsamples[lvl] if slide.mpp else None
            chosen_mpp.append(level_mpp)
            patient = stem[:-3] if stem.endswith("_HE") else stem
            image, label = writer.create_case(
                safe_id(stem), patient, (height, width), 3, np.uint8, level=lvl, mpp=round(level_mpp, 6) if level_mpp else None
            )
            for y0 in range(0, height, band):
                h = min(band, height - y0)
                image[y0 : y0 + h] = slide.read(lvl, 0, y0, width, h)
                if rows is None:
                    values = mask.read(mlvl, 0, y0, width, h)[..., 0]
                else:
                    src_rows = rows[y0 : y0 + h]
                    r0, r1 = int(src_rows[0]), int(src_rows[-1]) + 1
                    values = mask.read(mlvl, 0, r0, mw, r1 - r0)[..., 0][src_rows - r0]
                    if cols is not None:
                        values = values[:, cols]
                bad = values > max(MASK_VALUES)
                if bad.any():
                    raise NCAError(
                        f"The mask {mask_path} contains value {int(values[bad][0])}; PESO training masks hold 0, 1 and 2 (2 = epithelium)."
                    )
                label[y0 : y0 + h] = values == EPITHELIUM
    known = [m for m in chosen_mpp if m]
    um = float(np.median(known)) if known else None
    writer.set_info(
        name="peso",
        kind="pathology",
        modality="H&E",
        classes=["epithelium"],
        spacing=[round(um, 6)] * 2 if um else [1.0, 1.0],
        spacing_unit="um" if um else "px",
        normalization=dict(UINT8),
        source={"format": "peso", "path": str(src), "target_mpp": mpp, "level": level},
    )


def convert_peso(src, dst, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2, overwrite: bool = False, **options) -> Path:
    """Convert a PESO folder ``src`` into the prepared dataset ``dst``."""
    with DatasetWriter(dst, overwrite=overwrite, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction) as writer:
        fill_peso(src, writer, **options)
    return Path(dst)
