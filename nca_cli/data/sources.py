"""Reading the raw files of source datasets (NIfTI/MHA/NRRD, PNG/JPG/TIFF, DICOM, tiled slides).

Every reader returns channels-last numpy arrays in the file's own dtype and raises
``NCAError`` naming the file when it cannot be read. Spatial order is (H, W) for images and
(D, H, W) for volumes, as SimpleITK's array view gives them (no reorientation).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NCAError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


def full_suffix(path: Path) -> str:
    """The file's format suffix in lower case, ``.nii.gz`` counted as one."""
    name = path.name.lower()
    for suffix in VOLUME_SUFFIXES + IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def strip_suffix(path: Path) -> str:
    """The file name without its format suffix."""
    suffix = full_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def is_volume_file(path: Path) -> bool:
    return full_suffix(path) in VOLUME_SUFFIXES


def is_image_file(path: Path) -> bool:
    return full_suffix(path) in IMAGE_SUFFIXES


@dataclass
class Volume:
    """A volume as ``array`` [D, H, W, C] with ``spacing`` (D, H, W) in mm."""

    array: np.ndarray
    spacing: tuple[float, float, float]


def read_volume(path: Path) -> Volume:
    """Read a 3D (or 4D multi-channel) medical volume with SimpleITK.

    A 4D file (x, y, z, t) and a vector-valued 3D file both become channels-last
    [D, H, W, C]; a scalar 3D file gets C = 1.
    """
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError:
        raise NCAError(f"Cannot read volume {path}: not a readable NIfTI/MHA/NRRD file; re-export it or remove it from the folder.") from None
    arr = sitk.GetArrayFromImage(img)
    spacing = img.GetSpacing()
    if img.GetDimension() == 4:
        arr = np.moveaxis(arr, 0, -1)  # (t, z, y, x) -> (z, y, x, t)
    elif img.GetDimension() == 3:
        if img.GetNumberOfComponentsPerPixel() == 1:
            arr = arr[..., None]
    elif img.GetDimension() == 2:
        raise NCAError(f"Volume {path} is 2D; put 2D images in PNG/TIFF form or stack slices into a 3D file.")
    else:
        raise NCAError(f"Volume {path} has {img.GetDimension()} dimensions; only 3D and 4D files are supported.")
    return Volume(np.ascontiguousarray(arr), (float(spacing[2]), float(spacing[1]), float(spacing[0])))


def read_label_volume(path: Path) -> Volume:
    """Read a 3D label volume; returns ``array`` [D, H, W] (single component)."""
    vol = read_volume(path)
    if vol.array.shape[-1] != 1:
        raise NCAError(f"Label volume {path} has {vol.array.shape[-1]} components; a label map must be a single 3D integer volume.")
    return Volume(vol.array[..., 0], vol.spacing)


def read_image(path: Path) -> np.ndarray:
    """Read a 2D image as [H, W, C] (PNG/JPG/BMP via Pillow, TIFF via tifffile, DICOM via pydicom)."""
    suffix = full_suffix(path)
    if suffix in (".dcm", ".dicom"):
        arr = _read_dicom(path)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(str(path)) as tif:
                page = tif.pages[0]
                arr = page.asarray()
                if arr.ndim == 3 and page.planarconfig == 2:  # separate planes: (C, H, W)
                    arr = np.moveaxis(arr, 0, -1)
        except Exception as exc:
            raise NCAError(f"Cannot read image {path} ({exc}); save it as an uncompressed or deflate TIFF, or as PNG.") from None
    else:
        from PIL import Image

        try:
            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode == "1":
                    im = im.convert("L")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                arr = np.asarray(im)
        except (OSError, ValueError) as exc:
            raise NCAError(f"Cannot read image {path} ({exc}); check that the file is a valid PNG/JPG.") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise NCAError(f"Image {path} has shape {arr.shape}; expected a 2D grey or colour image.")
    return arr


def read_rgb(path: Path) -> np.ndarray:
    """Read a 2D image as uint8 [H, W, 3] (grey replicated, alpha dropped)."""
    arr = read_image(path)
    if arr.dtype != np.uint8:
        raise NCAError(f"Image {path} is {arr.dtype}; an 8-bit RGB image is expected here.")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as exc:
        raise NCAError(f"Cannot read DICOM {path} ({exc}); export the image as PNG instead.") from None
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        raise NCAError(f"DICOM {path} holds {arr.shape[0]} frames; a single 2D image is expected.")
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        arr = arr.max() - arr
    return arr


class SlideSource:
    """A multi-resolution slide (image or mask) read by region.

    Uses OpenSlide where it can open the file; TIFFs that OpenSlide rejects (for example
    untiled or single-level masks) are read through tifffile one tile or strip at a time.
    Level 0 is the finest; ``level_dimensions`` are (width, height) like OpenSlide's.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._slide = None
        self._tiff = None
        try:
            import openslide

            self._slide = openslide.OpenSlide(str(self.path))
        except Exception:
            self._open_tiff()
        if self._slide is not None:
            self.level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
            self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
            mpp = self._slide.properties.get("openslide.mpp-x")
            self.mpp = float(mpp) if mpp else None

    def _open_tiff(self) -> None:
        import tifffile

        try:
            self._tiff = tifffile.TiffFile(str(self.path))
        except Exception:
            raise NCAError(f"Cannot read slide {self.path}: not a supported whole-slide format; convert it to a tiled TIFF.") from None
        pages = [p for p in self._tiff.pages if len(p.shape) in (2, 3)]
        pages.sort(key=lambda p: -p.imagewidth)
        if not pages:
            raise NCAError(f"Slide {self.path} holds no 2D image; convert it to a tiled TIFF.")
        self._pages = pages
        self.level_dimensions = [(int(p.imagewidth), int(p.imagelength)) for p in pages]
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples = [(w0 / w + h0 / h) / 2 for w, h in self.level_dimensions]
        self.mpp = _tiff_mpp(pages[0])

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Region at ``level`` with top-left (x, y) in that level's pixels: uint8 [h, w, C]."""
        if self._slide is not None:
            ds = self.level_downsamples[level]
            region = self._slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (width, height))
            return np.asarray(region)[..., :3]
        return self._read_tiff(level, x, y, width, height)

    def _read_tiff(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        samples = page.samplesperpixel
        out = np.zeros((height, width, samples), dtype=page.dtype)
        ch, cw = page.chunks[-2:] if page.is_tiled else (page.rowsperstrip, page.imagewidth)
        ncols = -(-page.imagewidth // cw)
        fh = self._tiff.filehandle
        for cy in range(y // ch, -(-(y + height) // ch)):
            for cx in range(x // cw, -(-(x + width) // cw)):
                index = cy * ncols + cx
                if index >= len(page.dataoffsets) or page.databytecounts[index] == 0:
                    continue
                fh.seek(page.dataoffsets[index])
                seg, _, _ = page.decode(fh.read(page.databytecounts[index]), index)
                seg = seg.reshape(seg.shape[-3:])
                y0, x0 = cy * ch, cx * cw
                sy0, sx0 = max(y, y0), max(x, x0)
                sy1 = min(y + height, y0 + seg.shape[0], page.imagelength)
                sx1 = min(x + width, x0 + seg.shape[1], page.imagewidth)
                if sy1 > sy0 and sx1 > sx0:
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = seg[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        if out.dtype != np.uint8:
            raise NCAError(f"Slide {self.path} stores {out.dtype} pixels; an 8-bit slide or mask is expected.")
        return out[..., :3]

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
        if self._tiff is not None:
            self._tiff.close()

    def __enter__(self) -> "SlideSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tiff_mpp(page) -> float | None:
    """Microns per pixel from a TIFF page's resolution tags, if set in cm or inch."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not num or not den:
        return None
    per_unit = num / den
    if unit == 3:  # centimetre
        return 1e4 / per_unit
    if unit == 2:  # inch
        return 25400.0 / per_unit
    return None


def source_dir(src, layout: str) -> Path:
    """``src`` as an existing folder; ``layout`` describes what it should hold, for errors."""
    if src is None:
        raise NCAError(f"No source folder was given; pass the folder holding {layout}.")
    path = Path(src).expanduser()
    if not path.exists():
        raise NCAError(f"The source folder {path} does not exist; pass the folder holding {layout}.")
    if not path.is_dir():
        raise NCAError(f"The source {path} is not a folder; pass the folder holding {layout}.")
    return path


def visible_files(folder: Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
    """Regular files matching ``pattern``, sorted, skipping hidden ones (``.x``, macOS ``._x``,
    ``__MACOSX/``)."""
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted(
        p
        for p in found
        if p.is_file() and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts)
    )
