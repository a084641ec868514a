"""Reading inputs of every supported kind and writing segmentations in matching formats.

The one reader stack of the package: `segment`, `finetune-vwsl` and the dataset converters
of `prepare` all open files through :func:`open_input` (or the kind-specific openers below),
and bring values to model units with :mod:`nca_cli.io.normalize`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ..core.errors import NCAError
from .base import InputImage
from .checks import check_finite, check_finite_input
from .formats import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    PIL_SUFFIXES,
    SLIDE_SUFFIXES,
    SUPPORTED_SUFFIXES,
    TIFF_SUFFIXES,
    VIDEO_SUFFIXES,
    VOLUME_SUFFIXES,
    full_suffix,
    is_image_file,
    is_volume_file,
    strip_suffix,
)
from .geojson import write_geojson
from .image import open_dicom, open_image, read_label_image, write_mask_image
from .preview import downscale_nearest, write_preview, write_volume_preview
from .slide import open_slide, slide_vendor
from .slide_writer import write_pyramidal_mask
from .video import open_video, write_label_volume, write_overlay_mp4
from .volume import open_volume, write_volume


def has_dicom_magic(path: Path) -> bool:
    """True when ``path`` has the DICOM preamble marker ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_supported(path: str | os.PathLike) -> bool:
    """Whether :func:`open_input` would try ``path``: a known suffix, a DICOM file, or a
    folder holding ``.dcm`` files (a DICOM series)."""
    path = Path(path)
    if path.is_dir():
        return any(p.suffix.lower() in DICOM_SUFFIXES for p in path.iterdir() if p.is_file())
    return full_suffix(path) in SUPPORTED_SUFFIXES or (path.is_file() and has_dicom_magic(path))


def _tiff_is_slide(path: Path) -> bool:
    """A TIFF goes to OpenSlide when OpenSlide knows its vendor format, or when it is a tiled
    8-bit colour image (a generic pyramidal slide); otherwise it is a plain image."""
    vendor = slide_vendor(path)
    if vendor is None:
        return False
    if vendor != "generic-tiff":
        return True
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return page.dtype == "uint8" and page.samplesperpixel >= 3
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return False


def open_input(
    path: str | os.PathLike,
    *,
    level: int | None = None,
    mpp: float | None = None,
    start: float | None = None,
    duration: float | None = None,
    max_frames: int | None = None,
) -> InputImage:
    """Open any supported input, chosen by suffix and content.

    Slides, images and volume files are decoded only when read; videos and DICOM series
    folders are decoded here.

    ``level``/``mpp`` choose the slide level; ``start``/``duration``/``max_frames`` select
    video frames.
    Options that do not apply to the input's kind are ignored, so one set of options can
    serve a folder of mixed inputs.
    """
    path = Path(path)
    if not path.exists():
        raise NCAError(f"The input {path} does not exist; check the path.")
    if path.is_dir():
        return open_volume(path)
    if path.stat().st_size == 0:
        raise NCAError(f"The input {path} is empty; pass a complete image file.")
    suffix = full_suffix(path)
    if suffix in SLIDE_SUFFIXES or (suffix in TIFF_SUFFIXES and _tiff_is_slide(path)):
        return open_slide(path, level=level, mpp=mpp)
    if suffix in VOLUME_SUFFIXES:
        return open_volume(path)
    if suffix in VIDEO_SUFFIXES:
        return open_video(path, start=start, duration=duration, max_frames=max_frames)
    if suffix in DICOM_SUFFIXES or has_dicom_magic(path):
        return open_dicom(path)
    if suffix in PIL_SUFFIXES or suffix in TIFF_SUFFIXES:
        return open_image(path)
    raise NCAError(
        f"Cannot open {path}: the format {suffix or '(no suffix)'} is not supported; "
        f"pass one of {' '.join(SUPPORTED_SUFFIXES)} or a DICOM series folder."
    )


def probe(path: str | os.PathLike) -> tuple[str, int]:
    """``(kind, dims)`` of an input from its name and header, without decoding pixels:
    kind ``slide``, ``image``, ``volume`` or ``video``, as :func:`open_input` would open it."""
    path = Path(path)
    if path.is_dir():
        return "volume", 3
    suffix = full_suffix(path)
    if suffix in SLIDE_SUFFIXES or (suffix in TIFF_SUFFIXES and path.is_file() and _tiff_is_slide(path)):
        return "slide", 2
    if suffix in VOLUME_SUFFIXES:
        return "volume", 3
    if suffix in VIDEO_SUFFIXES:
        return "video", 3
    if suffix in DICOM_SUFFIXES or (path.is_file() and has_dicom_magic(path)):
        from .image import dicom_kind

        return dicom_kind(path)
    return "image", 2


@dataclass
class Loaded:
    """A whole input read into memory: channels-last ``array`` and the reader's ``meta``."""

    array: np.ndarray
    kind: str
    dims: int
    meta: dict

    @property
    def spacing(self) -> list[float] | None:
        """Spacing per array axis ((D, H, W) or (H, W)), from the file's (x, y, z) order."""
        s = self.meta.get("spacing")
        return [float(v) for v in reversed(s)][: self.dims] if s else None


def load(path: str | os.PathLike, **options) -> Loaded:
    """Open ``path`` with :func:`open_input` and read it whole (for datasets of moderate size);
    NaN or Inf values are refused."""
    with open_input(path, **options) as image:
        check_finite_input(image)
        return Loaded(image.read(), image.kind, image.dims, dict(image.meta))


def read_labels(path: str | os.PathLike) -> tuple[np.ndarray, Loaded | None]:
    """A label map ``[*spatial]`` of class values: 2D label images keep palette indices,
    volumes must have one component. Returns it with the volume's ``Loaded`` (None for 2D)."""
    path = Path(path)
    if is_volume_file(path) or path.is_dir():
        vol = load(path)
        if vol.array.shape[-1] != 1:
            raise NCAError(f"Label volume {path} has {vol.array.shape[-1]} components; a label map must be a single "
                           f"3D integer volume.")
        return vol.array[..., 0], vol
    return read_label_image(path), None


__all__ = [
    "DICOM_SUFFIXES", "IMAGE_SUFFIXES", "InputImage", "Loaded", "PIL_SUFFIXES", "SLIDE_SUFFIXES",
    "SUPPORTED_SUFFIXES", "TIFF_SUFFIXES", "VIDEO_SUFFIXES", "VOLUME_SUFFIXES", "check_finite", "check_finite_input", "downscale_nearest",
    "full_suffix", "is_image_file", "is_supported", "is_volume_file", "load", "open_dicom", "open_image",
    "open_input", "open_slide", "probe", "open_video", "open_volume", "read_label_image", "read_labels", "strip_suffix",
    "write_geojson", "write_label_volume", "write_mask_image", "write_overlay_mp4", "write_preview",
    "write_pyramidal_mask", "write_volume_preview",
    "write_volume",
]
