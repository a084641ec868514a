"""CholecSeg8k (laparoscopic cholecystectomy video) to a prepared dataset of 3D clips.

Source layout: ``videoXX/videoXX_YYYYY/frame_N_endo.png`` with
``frame_N_endo_color_mask.png`` beside it (80 frames per clip). Each clip folder becomes
one case, a volume (D = frames in frame order, H, W, 3) resized frame by frame to
``frame_size`` (H, W) = (240, 432), i.e. 432 x 240; the patient is the video (``videoXX``
from the clip name, else the clip's parent folder).

Colour masks use the dataset's 13 colours (RGB, as published with the dataset and used by
the OctreeNCA research code, which reads them as BGR):

====================  ===============  ====================
class                 RGB              kept as
====================  ===============  ====================
black background      (127, 127, 127)  0
abdominal wall        (210, 140, 140)  1 abdominal wall
liver                 (255, 114, 114)  2 liver
gastrointestinal      (231, 70, 156)   0
fat                   (186, 183, 75)   3 fat
grasper               (170, 255, 0)    4 grasper
connective tissue     (255, 85, 0)     0
blood                 (255, 0, 0)      0
cystic duct           (255, 255, 0)    0
l-hook electrocautery (169, 255, 184)  0
gallbladder           (255, 160, 165)  5 gallbladder
hepatic vein          (0, 50, 128)     0
liver ligament        (111, 74, 0)     0
====================  ===============  ====================

A colour outside the table is an error (``strict_colors=False`` maps it to background).
Labels are stored as an index map (value k = k-th kept class).
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import io
from ..core.errors import NCAError
from ..io.normalize import Normalization
from ..io.resize import resize_image, resize_labels
from .layout import source_dir, visible_files
from .writer import DatasetWriter, safe_id

COLORS = {
    "black background": (127, 127, 127),
    "abdominal wall": (210, 140, 140),
    "liver": (255, 114, 114),
    "gastrointestinal tract": (231, 70, 156),
    "fat": (186, 183, 75),
    "grasper": (170, 255, 0),
    "connective tissue": (255, 85, 0),
    "blood": (255, 0, 0),
    "cystic duct": (255, 255, 0),
    "l-hook electrocautery": (169, 255, 184),
    "gallbladder": (255, 160, 165),
    "hepatic vein": (0, 50, 128),
    "liver ligament": (111, 74, 0),
}
KEPT = ("abdominal wall", "liver", "fat", "grasper", "gallbladder")
DEFAULT_FRAME_SIZE = (240, 432)
FRAME_RATE = 25.0   # Cholec80 videos (the source of CholecSeg8k) are recorded at 25 frames per second
MASK_SUFFIX = "_endo_color_mask.png"
FRAME = re.compile(r"frame_(\d+)_endo_color_mask\.png$")
VIDEO = re.compile(r"(video\d+)_\d+$")
LAYOUT = "CholecSeg8k clip folders videoXX/videoXX_YYYYY/ with frame_N_endo.png and frame_N_endo_color_mask.png"


def _color_keys(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_TABLE_KEYS = _color_keys(np.array(list(COLORS.values()), np.uint8))
_ORDER = np.argsort(_TABLE_KEYS)
_SORTED_KEYS = _TABLE_KEYS[_ORDER]
_SORTED_CLASS = np.array([KEPT.index(name) + 1 if name in KEPT else 0 for name in COLORS], np.uint8)[_ORDER]


def colors_to_labels(mask: np.ndarray, path: Path, strict: bool = True) -> np.ndarray:
    """Map a colour mask [H, W, 3] to kept-class indices [H, W] (uint8)."""
    keys = _color_keys(mask)
    pos = np.clip(np.searchsorted(_SORTED_KEYS, keys), 0, len(_SORTED_KEYS) - 1)
    known = _SORTED_KEYS[pos] == keys
    if strict and not known.all():
        y, x = np.argwhere(~known)[0]
        raise NCAError(
            f"The mask {path} has colour {tuple(int(v) for v in mask[y, x])} at row {y}, column {x}, which is not a CholecSeg8k class colour; "
            f"fix the mask or convert with strict_colors=False to treat unknown colours as background."
        )
    return np.where(known, _SORTED_CLASS[pos], 0).astype(np.uint8)


def _clips(src: Path) -> dict[Path, list[tuple[int, Path]]]:
    clips: dict[Path, list[tuple[int, Path]]] = {}
    for mask in visible_files(src, f"*{MASK_SUFFIX}", recursive=True):
        match = FRAME.search(mask.name)
        if match:
            clips.setdefault(mask.parent, []).append((int(match.group(1)), mask))
    return {k: sorted(v) for k, v in sorted(clips.items())}


def _read_frame(mask_path: Path, size: tuple[int, int], strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """One frame and its colour mask, checked, mapped to classes and resized to ``size``."""
    image_path = mask_path.with_name(mask_path.name.replace(MASK_SUFFIX, "_endo.png"))
    if not image_path.is_file():
        raise NCAError(f"The mask {mask_path} has no frame {image_path}; restore the frame or remove the mask.")
    frame = io.load(image_path).array
    if frame.dtype != np.uint8:
        raise NCAError(f"The frame {image_path} is {frame.dtype}; an 8-bit RGB image is expected here.")
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    colors = io.load(mask_path).array
    if colors.shape[-1] < 3:
        raise NCAError(f"The mask {mask_path} is not an RGB colour mask; use the frame_N_endo_color_mask.png files.")
    if colors.shape[:2] != frame.shape[:2]:
        raise NCAError(
            f"The frame {image_path} is {frame.shape[1]}x{frame.shape[0]} but its mask {mask_path} is "
            f"{colors.shape[1]}x{colors.shape[0]}; they must match pixel for pixel."
        )
    return resize_image(frame, size), resize_labels(colors_to_labels(colors[..., :3], mask_path, strict), size)


def fill_cholecseg8k(src, writer: DatasetWriter, *, frame_size: Sequence[int] = DEFAULT_FRAME_SIZE, strict_colors: bool = True) -> None:
    """Write every clip of a CholecSeg8k folder into ``writer``."""
    src = source_dir(src, LAYOUT)
    clips = _clips(src)
    if not clips:
        raise NCAError(f"No *{MASK_SUFFIX} files were found under {src}; pass the folder holding {LAYOUT}.")
    h, w = (int(s) for s in frame_size)
    for folder, frames in clips.items():
        match = VIDEO.match(folder.name)
        video = match.group(1) if match else folder.parent.name
        image, label = writer.create_case(safe_id(folder.name), video, (len(frames), h, w), 3, np.uint8, frames=[n for n, _ in frames])
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            for k, (frame, labels) in enumerate(pool.map(lambda item: _read_frame(item[1], (h, w), strict_colors), frames)):
                image[k] = frame
                label[k] = labels
    writer.set_info(
        name="cholecseg8k",
        kind="surgery",
        modality="laparoscopic video",
        classes=list(KEPT),
        spacing=[1.0, 1.0, 1.0],
        spacing_unit="px",
        frame_rate=FRAME_RATE,
        normalization=Normalization("none", divide_by=255.0).entry("uint8"),
        source={"format": "cholecseg8k", "path": str(src), "frame_size": [h, w]},
    )

