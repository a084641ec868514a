"""File formats by name: the suffix groups every reader and writer uses, in one place."""
from __future__ import annotations

from pathlib import Path

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".bif")
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_SUFFIXES = PIL_SUFFIXES + TIFF_SUFFIXES + DICOM_SUFFIXES
SUPPORTED_SUFFIXES = SLIDE_SUFFIXES + TIFF_SUFFIXES + VOLUME_SUFFIXES + VIDEO_SUFFIXES + PIL_SUFFIXES + DICOM_SUFFIXES
DICOM_SEG_SUFFIXES = (".dcm",)   # masks written as DICOM Segmentation objects (DICOM inputs only)
OME_ZARR_SUFFIXES = (".ome.zarr",)   # masks written as OME-Zarr label images (a folder)

VOLUME_WRITE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".nrrd")          # volumes SimpleITK writes in one file
VOLUME_OUTPUT_FOR = {".mhd": ".mha", ".nhdr": ".nrrd"}                # header + data pairs: written as one file
GEOJSON_SUFFIXES = (".geojson", ".json")

_MULTI_PART = (".nii.gz", ".ome.tiff", ".ome.tif", ".ome.zarr")


def full_suffix(path: str | Path) -> str:
    """The format suffix in lower case, with ``.nii.gz``, ``.ome.tif(f)`` and ``.ome.zarr`` kept whole."""
    path = Path(path)
    name = path.name.lower()
    for suffix in _MULTI_PART:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return path.suffix.lower()


def strip_suffix(path: str | Path) -> str:
    """The file name without its format suffix (``case.nii.gz`` -> ``case``)."""
    path = Path(path)
    suffix = full_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def volume_output_suffix(suffix: str) -> str:
    """The suffix a label volume for an input volume of ``suffix`` is written with: the same format
    where it is written as one file, else its one-file form, else NIfTI."""
    return VOLUME_OUTPUT_FOR.get(suffix, suffix if suffix in VOLUME_WRITE_SUFFIXES else ".nii.gz")


def is_volume_file(path: str | Path) -> bool:
    return full_suffix(path) in VOLUME_SUFFIXES


def is_image_file(path: str | Path) -> bool:
    """A 2D image by name (PNG/JPEG/BMP, TIFF, DICOM)."""
    return full_suffix(path) in IMAGE_SUFFIXES
