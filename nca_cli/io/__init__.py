"""Reading inputs of every supported kind and writing segmentations in matching formats."""
from __future__ import annotations

import os
from pathlib import Path

import tifffile

from ..errors import NCAError
from .base import InputImage
from .checks import check_finite
from .image import DICOM_SUFFIXES, PIL_SUFFIXES, TIFF_SUFFIXES, open_dicom, open_image, write_mask_image
from .geojson import write_geojson
from .preview import downscale_nearest, write_preview, write_volume_preview
from .slide import open_slide, slide_vendor
from .slide_writer import write_pyramidal_mask
from .video import VIDEO_SUFFIXES, open_video, write_label_volume, write_overlay_mp4
from .volume import VOLUME_SUFFIXES, full_suffix, open_volume, write_volume

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".bif")
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    SLIDE_SUFFIXES + TIFF_SUFFIXES + VOLUME_SUFFIXES + VIDEO_SUFFIXES + PIL_SUFFIXES + DICOM_SUFFIXES
)


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

    ``level``/``mpp`` choose the slide level (``mpp`` is also recorded for plain images
    that lack a resolution); ``start``/``duration``/``max_frames`` select video frames.
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
        image = open_image(path)
        if mpp is not None:
            image.meta["requested_mpp"] = float(mpp)
            if "mpp" not in image.meta:
                image.meta.update(mpp=float(mpp), mpp_source="argument")
        return image
    raise NCAError(
        f"Cannot open {path}: the format {suffix or '(no suffix)'} is not supported; "
        f"pass one of {' '.join(SUPPORTED_SUFFIXES)} or a DICOM series folder."
    )


__all__ = [
    "SUPPORTED_SUFFIXES",
    "InputImage",
    "check_finite",
    "downscale_nearest",
    "is_supported",
    "open_input",
    "write_geojson",
    "write_label_volume",
    "write_mask_image",
    "write_overlay_mp4",
    "write_preview",
    "write_volume_preview",
    "write_pyramidal_mask",
    "write_volume",
]
