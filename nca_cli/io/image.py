"""Plain 2D images (PNG, JPEG, BMP via Pillow; TIFF via tifffile), single DICOM files, mask output."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pydicom
import tifffile
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError

from ..core.errors import NCAError
from ..core.files import atomic_path
from .base import InputImage, Region
from .formats import TIFF_SUFFIXES, full_suffix
from .slide import rgba_to_rgb

MASK_SUFFIXES = (".png", ".tif", ".tiff")

Image.MAX_IMAGE_PIXELS = None  # large plain images are expected; memory is the caller's check

_PIL_MODES: dict[str, tuple[int, str]] = {
    "1": (1, "uint8"),
    "L": (1, "uint8"),
    "LA": (1, "uint8"),
    "P": (3, "uint8"),
    "PA": (3, "uint8"),
    "RGB": (3, "uint8"),
    "RGBA": (3, "uint8"),
    "RGBX": (3, "uint8"),
    "CMYK": (3, "uint8"),
    "YCbCr": (3, "uint8"),
    "LAB": (3, "uint8"),
    "HSV": (3, "uint8"),
    "I;16": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "I": (1, "float32"),
    "F": (1, "float32"),
}


def _pil_pixels(img: Image.Image) -> np.ndarray:
    """Decode a Pillow image to ``[h, w, C]`` following ``_PIL_MODES``."""
    mode = img.mode
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"))[..., None]
    if mode in ("LA", "PA", "RGBA", "P"):
        rgba = np.asarray(img.convert("RGBA"))
        rgb = rgba_to_rgb(rgba)
        return rgb[..., :1] if mode == "LA" else rgb
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)[..., None]
    if mode in ("I", "F"):
        return np.asarray(img).astype(np.float32)[..., None]
    return np.asarray(img.convert("RGB"))


def _cached(load: Callable[[], np.ndarray]) -> tuple[Callable[[Region], np.ndarray], Callable[[], None]]:
    """A region reader that decodes the whole image once, and its closer."""
    state: dict[str, np.ndarray] = {}

    def read(region: Region) -> np.ndarray:
        if "a" not in state:
            state["a"] = load()
        return np.array(state["a"][region])

    return read, state.clear


def _open_pil(path: Path) -> InputImage:
    try:
        with Image.open(path) as img:
            mode, (w, h), fmt = img.mode, img.size, img.format
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise NCAError(f"Cannot read image {path} ({exc}); check that it is a complete PNG/JPEG/BMP file.") from None
    if mode not in _PIL_MODES:
        raise NCAError(f"Image {path} uses the unsupported pixel mode {mode}; save it as 8-bit RGB or greyscale.")
    channels, dtype = _PIL_MODES[mode]

    def load() -> np.ndarray:
        try:
            with Image.open(path) as img:
                img.load()
                return _pil_pixels(img)
        except (OSError, ValueError, SyntaxError) as exc:
            raise NCAError(f"Cannot decode image {path} ({exc}); the file is probably truncated or corrupted.") from None

    read, close = _cached(load)
    return InputImage(path, "image", 2, (h, w), channels, dtype, {"format": fmt, "mode": mode}, read, close)


def _tiff_dtype(dtype: np.dtype) -> np.dtype:
    """uint8, uint16 and float32 stay; bool becomes uint8; everything else float32."""
    dtype = np.dtype(dtype)
    if dtype in (np.uint8, np.uint16, np.float32):
        return dtype
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    return np.dtype(np.float32)


def _open_tiff(path: Path) -> InputImage:
    axes, shape, dtype, memmappable, is_palette, colormap, xres = _tiff_header(path)
    core, kept_shape = _tiff_core_axes(path, axes, shape)
    samples = kept_shape[core.index("S")] if "S" in core else 1
    h, w = kept_shape[core.index("Y")], kept_shape[core.index("X")]
    is_palette = is_palette and samples == 1
    out_dtype = np.dtype(np.uint8) if is_palette else _tiff_dtype(dtype)
    channels = 3 if is_palette or samples >= 3 else 1
    read, close = _tiff_reader(path, memmappable, _tiff_channels_last(core, kept_shape),
                               _tiff_converter(is_palette, colormap, out_dtype))
    meta: dict[str, Any] = {"format": "tiff", "axes": axes}
    if xres > 0:
        meta.update(mpp=1e4 / float(xres), mpp_source="file")
    return InputImage(path, "image", 2, (h, w), channels, out_dtype, meta, read, close)


def _tiff_header(path: Path):
    """(axes, shape, dtype, memmappable, is_palette, colormap, x resolution per cm or 0) of a TIFF."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape, dtype = series.axes, tuple(series.shape), series.dtype
            page = tif.pages[0]
            memmappable = bool(page.is_memmappable) and len(tif.pages) == 1
            is_palette = page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None
            colormap = page.colormap
            per_cm = page.resolutionunit == tifffile.RESUNIT.CENTIMETER
            xres = page.get_resolution()[0] if per_cm else 0.0
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
        raise NCAError(f"Cannot read TIFF {path} ({exc}); check that the file is complete.") from None
    return axes, shape, dtype, memmappable, is_palette, colormap, xres


def _tiff_core_axes(path: Path, axes: str, shape: tuple) -> tuple[str, tuple]:
    """The axes and shape left once singleton axes other than Y, X, S are dropped; a 2D image only."""
    keep = [i for i, a in enumerate(axes) if a in "YXS" or shape[i] != 1]
    core = "".join(axes[i] for i in keep)
    if core not in ("YX", "YXS", "SYX"):
        raise NCAError(f"TIFF {path} has axes {axes} {shape}; save a single 2D image (grey or RGB) or convert stacks to NIfTI.")
    return core, tuple(shape[i] for i in keep)


def _tiff_channels_last(core: str, kept_shape: tuple) -> Callable[[np.ndarray], np.ndarray]:
    """A function that puts a TIFF series' pixels as ``[H, W, C]``."""

    def to_channels_last(arr: np.ndarray) -> np.ndarray:
        arr = arr.reshape(kept_shape)
        if core == "SYX":
            return np.moveaxis(arr, 0, -1)
        return arr[..., None] if core == "YX" else arr

    return to_channels_last


def _tiff_converter(is_palette: bool, colormap, out_dtype: np.dtype) -> Callable[[np.ndarray], np.ndarray]:
    """A function that turns ``[h, w, C]`` TIFF pixels into the image's channels and dtype."""

    def convert(arr: np.ndarray) -> np.ndarray:
        if is_palette:
            cmap = np.asarray(colormap)
            lut = (cmap.T // (257 if cmap.max() > 255 else 1)).astype(np.uint8)
            return lut[arr[..., 0]]
        if arr.shape[-1] == 4 and arr.dtype == np.uint8:
            return rgba_to_rgb(arr)
        if arr.shape[-1] not in (1, 3):
            arr = arr[..., :3] if arr.shape[-1] > 3 else arr[..., :1]
        return arr.astype(out_dtype, copy=False)

    return convert


def _tiff_reader(path: Path, memmappable: bool, to_channels_last, convert):
    """(read, close) of a TIFF: regions of a memory map when the file allows, else of the decoded image."""
    mapped = None
    if memmappable:
        try:
            mapped = to_channels_last(tifffile.memmap(path, mode="r"))
        except ValueError:
            mapped = None
    if mapped is not None:
        state = {"a": mapped}

        def read(region: Region) -> np.ndarray:
            return convert(np.array(state["a"][region]))

        return read, state.clear

    def load() -> np.ndarray:
        try:
            return to_channels_last(tifffile.imread(path, series=0))
        except (tifffile.TiffFileError, OSError, ValueError) as exc:
            raise NCAError(f"Cannot decode TIFF {path} ({exc}); the file is probably truncated or corrupted.") from None

    cached, close = _cached(load)

    def read_decoded(region: Region) -> np.ndarray:
        return convert(cached(region))

    return read_decoded, close


def open_image(path: Path) -> InputImage:
    """Open a PNG, JPEG, BMP or plain (untiled) TIFF image.

    Reads return ``[h, w, C]``: C = 1 for grey, 3 for colour (alpha composited on white);
    uint8, uint16 or float32 as stored. TIFF reads map uncompressed files instead of
    decoding them whole.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _open_tiff(path)
    return _open_pil(path)


def read_label_image(path: Path) -> np.ndarray:
    """A 2D label map ``[H, W]`` of class values, as stored.

    Palette PNG/TIFF masks give their indices (not their colours); greyscale images their
    values; an RGB image whose channels are equal its first channel. A colour mask is refused
    (colour-coded masks such as CholecSeg8k's are mapped by their converter)."""
    path = Path(path)
    if full_suffix(path) in TIFF_SUFFIXES:
        try:
            arr = tifffile.imread(path, series=0)
        except Exception as exc:  # tifffile and its codecs raise many types for damaged files
            raise NCAError(f"Cannot read the label image {path} ({exc}); check that the file is complete.") from None
        arr = np.squeeze(arr)
    else:
        try:
            with Image.open(path) as img:
                if img.mode in ("P", "L", "1", "I", "I;16", "I;16L", "I;16B", "F"):
                    arr = np.asarray(img)
                else:
                    arr = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise NCAError(f"Cannot read the label image {path} ({exc}); check that it is a complete PNG file.") from None
    if arr.ndim == 3:
        colour = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
        if (colour != colour[..., :1]).any():
            raise NCAError(f"The label {path} is a colour image; save label maps as single-channel (or palette) images "
                           f"of class values.")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise NCAError(f"The label {path} has shape {arr.shape}; a 2D label map is expected.")
    return np.asarray(arr)


def _dicom_value(ds: pydicom.Dataset, keyword: str, sub: str):
    """``keyword`` from the dataset or from its shared functional group ``sub``."""
    if keyword in ds:
        return ds[keyword].value
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and sub in shared[0] and keyword in shared[0][sub][0]:
        return shared[0][sub][0][keyword].value
    return None


def _dicom_geometry(ds: pydicom.Dataset, frames: int) -> dict[str, Any]:
    """Spacing (and for multi-frame, origin/direction) in SimpleITK order."""
    ps = _dicom_value(ds, "PixelSpacing", "PixelMeasuresSequence") or ds.get("ImagerPixelSpacing")
    sx, sy = (float(ps[1]), float(ps[0])) if ps else (1.0, 1.0)
    if frames == 1:
        return {"spacing": (sx, sy), **({"pixel_spacing_mm": (sx, sy)} if ps else {})}
    sz = _dicom_value(ds, "SpacingBetweenSlices", "PixelMeasuresSequence") or _dicom_value(
        ds, "SliceThickness", "PixelMeasuresSequence"
    )
    geom: dict[str, Any] = {"spacing": (sx, sy, float(sz) if sz else 1.0)}
    iop = _dicom_value(ds, "ImageOrientationPatient", "PlaneOrientationSequence")
    if iop is not None and len(iop) == 6:
        r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        geom["direction"] = tuple(float(v) + 0.0 for v in np.stack([r, c, np.cross(r, c)], axis=1).ravel())
    ipp = _dicom_value(ds, "ImagePositionPatient", "PlanePositionSequence")
    if ipp is not None and len(ipp) == 3:
        geom["origin"] = tuple(float(v) for v in ipp)
    return geom


_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _dicom_header(path: Path) -> pydicom.Dataset:
    try:
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, EOFError) as exc:
        raise NCAError(f"Cannot read DICOM file {path} ({exc}); check that it is a complete DICOM image.") from None


def _frame_rate(ds: pydicom.Dataset) -> float | None:
    """Frames per second of a cine (FrameTime in ms, or CineRate), None for a still volume."""
    if ds.get("FrameTime") not in (None, "") and float(ds.FrameTime) > 0:
        return 1000.0 / float(ds.FrameTime)
    if ds.get("CineRate") not in (None, "") and float(ds.CineRate) > 0:
        return float(ds.CineRate)
    return None


def _dicom_kind(ds: pydicom.Dataset) -> str:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        return "image"
    return "video" if _frame_rate(ds) else "volume"


def dicom_kind(path: Path) -> tuple[str, int]:
    """``(kind, dims)`` of a DICOM file from its header: one frame is an image, frames with a
    frame time or cine rate a video (an ultrasound cine), other multi-frame files a volume."""
    kind = _dicom_kind(_dicom_header(Path(path)))
    return kind, 2 if kind == "image" else 3


def open_dicom(path: Path) -> InputImage:
    """Open one DICOM file. Grey data comes back as float32 after rescale slope/intercept,
    with MONOCHROME1 inverted so that higher means brighter; colour data as uint8 RGB.
    A multi-frame file is ``[F, H, W]``: a video (kind ``"video"``, ``meta["fps"]``) when it
    records a frame time (0018,1063) or cine rate (0018,0040), else a volume. A single image's
    ``meta["mpp"]`` is its PixelSpacing (or ImagerPixelSpacing) in µm."""
    path = Path(path)
    ds = _dicom_header(path)
    layout = _dicom_layout(path, ds)
    read, close = _cached(_dicom_loader(path, layout))
    kind = _dicom_kind(ds)
    spatial = (layout.frames, layout.rows, layout.cols) if layout.frames > 1 else (layout.rows, layout.cols)
    return InputImage(
        path,
        kind,
        len(spatial),
        spatial,
        3 if layout.colour else 1,
        np.uint8 if layout.colour else np.float32,
        _dicom_meta(ds, layout, kind),
        read,
        close,
    )


class _DicomLayout(NamedTuple):
    """How a DICOM file's pixels are laid out and turned into values."""

    rows: int
    cols: int
    frames: int
    samples: int
    photometric: str
    colour: bool
    slope: float
    intercept: float
    bits: int
    signed: bool


def _dicom_layout(path: Path, ds) -> _DicomLayout:
    """The pixel layout recorded in a DICOM header; a file without Rows/Columns holds no image."""
    if "Rows" not in ds or "Columns" not in ds:
        raise NCAError(f"The DICOM file {path} holds no image (no Rows/Columns); pass a DICOM image file.")
    samples = int(ds.get("SamplesPerPixel", 1))
    return _DicomLayout(
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        samples=samples,
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        colour=samples > 1,
        slope=float(_dicom_value(ds, "RescaleSlope", "PixelValueTransformationSequence") or 1.0),
        intercept=float(_dicom_value(ds, "RescaleIntercept", "PixelValueTransformationSequence") or 0.0),
        bits=int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
        signed=int(ds.get("PixelRepresentation", 0)) == 1,
    )


def _dicom_loader(path: Path, layout: _DicomLayout) -> Callable[[], np.ndarray]:
    """A function that reads and decodes a DICOM file's pixels as uint8 RGB or rescaled float32."""
    frames, rows, cols, samples = layout.frames, layout.rows, layout.cols, layout.samples

    def load() -> np.ndarray:
        try:
            full = pydicom.dcmread(path, force=True)
        except Exception as exc:  # the header was read; a failure here is a damaged file
            raise NCAError(f"Cannot read DICOM file {path} ({exc}); check that it is a complete DICOM image.") from None
        if not any(tag in full for tag in _PIXEL_TAGS):
            raise NCAError(f"The DICOM file {path} has no pixel data (no Pixel Data element), so there is no image to "
                           f"segment; pass the DICOM file that holds the image.")
        try:
            arr = full.pixel_array
        except Exception as exc:  # pixel decoding raises many types, all meaning "cannot decode"
            raise NCAError(
                f"Cannot decode the pixels of DICOM file {path} ({exc}); convert it to uncompressed DICOM or install a decoder such as pylibjpeg."
            ) from None
        if layout.colour:
            arr = arr.reshape((frames, rows, cols, samples) if frames > 1 else (rows, cols, samples))
            return np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False)
        arr = arr.reshape((frames, rows, cols) if frames > 1 else (rows, cols)).astype(np.float32)
        if layout.photometric == "MONOCHROME1":
            bits = layout.bits
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if layout.signed else (0, 2**bits - 1)
            arr = np.float32(lo + hi) - arr
        if layout.slope != 1.0 or layout.intercept != 0.0:
            arr = arr * np.float32(layout.slope) + np.float32(layout.intercept)
        return arr[..., None]

    return load


def _dicom_meta(ds, layout: _DicomLayout, kind: str) -> dict:
    """The ``meta`` of a DICOM image: geometry, rescale, and frame rate (video) or µm per pixel (single image)."""
    frames = layout.frames
    meta = {
        **_dicom_geometry(ds, frames),
        "photometric": layout.photometric,
        "rescale": (layout.slope, layout.intercept),
        "modality": str(ds.get("Modality", "")),
        "default_output_suffix": ".nii.gz" if frames > 1 else ".png",
    }
    if kind == "video":
        fps = _frame_rate(ds)
        meta.update(fps=fps, frame_time_ms=1000.0 / fps, start=0.0, duration=frames / fps)
        sx, sy = meta["spacing"][:2]
        meta["spacing"] = (sx, sy, 1.0 / fps)
    elif frames == 1 and meta.get("pixel_spacing_mm"):
        meta.update(mpp=1000.0 * meta["pixel_spacing_mm"][0], mpp_source="file")
    return meta


def write_mask_image(path: str | Path, labels: np.ndarray) -> Path:
    """Write a ``[H, W]`` uint8 label image as PNG or (zlib-compressed) TIFF, atomically.

    A PNG is a palette image (mode "P") with the project palette: the stored values stay
    the class indices (``np.asarray(Image.open(path))`` gives them back) while viewers show
    each class in its colour on black. TIFF masks are plain greyscale.
    """
    from .palette import PALETTE

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MASK_SUFFIXES:
        raise NCAError(f"Cannot write a mask to {path}: use a .png or .tif file name (lossy formats would alter labels).")
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8 [H, W], got {labels.dtype} {labels.shape}")
    with atomic_path(path) as tmp:
        if suffix == ".png":
            picture = Image.fromarray(np.ascontiguousarray(labels))
            picture.putpalette(PALETTE.ravel().tolist())  # "L" becomes "P", values unchanged
            picture.save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack")
    return path
