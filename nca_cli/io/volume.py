"""3D medical volumes through SimpleITK: NIfTI, MetaImage, NRRD and DICOM series folders.

Reads return float32 channels-last ``[D, H, W, C]`` (rescale slope/intercept applied by
SimpleITK). Geometry is kept in ``meta`` in SimpleITK order: ``spacing`` and ``origin`` as
``(x, y, z)``, ``direction`` as the row-major 3x3 matrix flattened to 9 numbers.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk

from ..core.errors import NCAError
from ..core.files import atomic_path
from .base import InputImage, Region
from .formats import VOLUME_OUTPUT_FOR, VOLUME_WRITE_SUFFIXES, full_suffix, volume_output_suffix



@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def dicom_series_files(folder: Path) -> list[str]:
    """File names of the single DICOM series in ``folder`` (empty if there is none)."""
    with _quiet_itk():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        return []
    if len(ids) > 1:
        raise NCAError(f"The folder {folder} holds {len(ids)} DICOM series; pass a folder containing exactly one series.")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


# NIfTI datatype codes of floating-point voxels -> numpy type (complex: checked per component)
_NIFTI_FLOATS = {16: "f4", 64: "f8", 32: "f4", 1792: "f8"}


def _nifti_header(path: Path, gz: bool) -> tuple[int, int, str, int] | None:
    """``(vox_offset, payload bytes, byte order, datatype)`` of a NIfTI-1/2 file, or None."""
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        head = f.read(540)
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        return None
    n = 1
    for d in dims[1 : 1 + max(0, min(7, dims[0]))]:
        n *= max(1, d)
    return offset, n * bitpix // 8, order, datatype


def _nifti_sizes(path: Path, gz: bool) -> tuple[int, int] | None:
    """``(vox_offset, payload bytes)`` from a NIfTI-1/2 header, or None if unparseable."""
    header = _nifti_header(path, gz)
    return header[:2] if header else None


def nifti_is_finite(path: Path) -> bool:
    """Whether every voxel of a floating-point NIfTI file is finite, read from the file itself
    (ITK's NIfTI reader silently turns NaN and Inf into 0), streamed in chunks."""
    gz = full_suffix(path) == ".nii.gz"
    header = _nifti_header(path, gz)
    if header is None or header[3] not in _NIFTI_FLOATS:
        return True
    offset, size, order, datatype = header
    dtype = np.dtype(order + _NIFTI_FLOATS[datatype])
    chunk = (1 << 24) // dtype.itemsize * dtype.itemsize
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        f.seek(offset)
        left = size
        while left > 0:
            block = f.read(min(chunk, left))
            if not block:
                break
            left -= len(block)
            usable = len(block) // dtype.itemsize * dtype.itemsize
            if not np.isfinite(np.frombuffer(block[:usable], dtype=dtype)).all():
                return False
    return True


def _gzip_length(path: Path) -> int:
    """Uncompressed length of a gzip file, read to the end (raises on a cut stream)."""
    total = 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            total += len(chunk)
    return total


def check_nifti_complete(path: Path) -> None:
    """Raise NCAError if a NIfTI file holds fewer bytes than its header promises.

    ITK fills missing voxels with zeros instead of failing, so this is checked here. For
    ``.nii.gz`` the gzip trailer's length is compared first; only on a mismatch (e.g. a
    multi-member file) is the stream decompressed to be sure.
    """
    gz = full_suffix(path) == ".nii.gz"
    try:
        sizes = _nifti_sizes(path, gz)
        if sizes is None:
            return
        expected = sizes[0] + sizes[1]
        if not gz:
            complete = os.path.getsize(path) >= expected
        else:
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                trailer = struct.unpack("<I", f.read(4))[0]
            complete = trailer == expected % 2**32 or _gzip_length(path) >= expected
    except (OSError, EOFError, zlib.error, struct.error):
        complete = False
    if not complete:
        raise NCAError(f"The NIfTI file {path} is shorter than its header says (truncated or corrupted); copy or export it again.")


def _geometry(dim: int, spacing, origin, direction) -> dict[str, Any]:
    """Spatial part (first ``min(dim, 3)`` axes) of an ITK geometry. A negative spacing (a
    NIfTI ``pixdim`` may hold one) becomes positive with its direction column flipped, the
    same physical grid, as SimpleITK's reader does when it reads the voxels."""
    n = min(dim, 3)
    d = np.asarray(direction, dtype=np.float64).reshape(dim, dim)[:n, :n].copy()
    spacing = np.asarray(spacing[:n], dtype=np.float64)
    d[:, spacing < 0] *= -1
    return {
        "spacing": tuple(float(s) for s in np.abs(spacing)),
        "origin": tuple(float(o) for o in origin[:n]),
        "direction": tuple(float(v) + 0.0 for v in d.ravel()),
    }


def _channels_last(arr: np.ndarray, dim: int, components: int) -> np.ndarray:
    """ITK array (``[t, z, y, x]`` or ``[z, y, x, c]``) to ``[z, y, x, c]``."""
    if components > 1:
        return arr
    if dim == 4:
        return np.moveaxis(arr, 0, -1)
    return arr[..., None]


def _series_header(path: Path, state: dict) -> tuple:
    """A DICOM series folder, read whole (its image kept in ``state``): (dimensions, size,
    components, geometry, source format, default output suffix, pixel type)."""
    files = dicom_series_files(path)
    if not files:
        raise NCAError(f"The folder {path} contains no DICOM series; pass a volume file or a folder of DICOM slices.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise NCAError(f"Cannot read the DICOM series in {path} ({_first_line(exc)}); check that the slices are complete.") from None
    state["image"] = image
    dim, size, comps = image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel()
    geom = _geometry(dim, image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return dim, size, comps, geom, "dicom", ".nii.gz", image.GetPixelIDTypeAsString()


def _file_header(path: Path) -> tuple:
    """A volume file's header only (pixels are read on first use): as :func:`_series_header`."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise NCAError(f"Cannot read volume {path} ({_first_line(exc)}); check that it is a complete NIfTI/MHA/NRRD file.") from None
    dim, size, comps = reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents()
    geom = _geometry(dim, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    suffix = full_suffix(path)
    if suffix in (".nii", ".nii.gz"):
        check_nifti_complete(path)
    return (dim, size, comps, geom, suffix.lstrip("."), volume_output_suffix(suffix),
            sitk.GetPixelIDValueAsString(reader.GetPixelID()))


def open_volume(path: Path) -> InputImage:
    """Open a volume file or a DICOM series folder.

    A 4D scalar file (e.g. T2 and ADC stacked) becomes ``C`` channels; a vector-pixel file
    uses its components as channels; a 2D file comes back as kind ``"image"``. For DICOM
    input ``meta["default_output_suffix"]`` is ``.nii.gz`` (a DICOM SEG is written only when
    asked for, by :mod:`nca_cli.io.dicom_seg`). Detached headers (``.mhd``, ``.nhdr``)
    default to their single-file forms.
    """
    path = Path(path)
    state: dict[str, Any] = {}
    header = _series_header(path, state) if path.is_dir() else _file_header(path)
    dim, size, comps, geom, source, default_suffix, pixel_type = header

    if dim not in (2, 3, 4) or (dim == 4 and comps > 1):
        raise NCAError(f"Volume {path} has {dim} dimensions with {comps} components; save it as a 3D (or 3D + channels) image.")
    spatial = tuple(int(s) for s in reversed(size[: min(dim, 3)]))
    channels = int(size[3]) if dim == 4 else int(comps)

    def load() -> np.ndarray:
        if "array" not in state:
            if "image" not in state:
                try:
                    state["image"] = sitk.ReadImage(str(path))
                except RuntimeError as exc:
                    raise NCAError(f"Cannot read the pixels of {path} ({_first_line(exc)}); the file is probably truncated or corrupted.") from None
            image = state["image"]
            state["array"] = _channels_last(sitk.GetArrayViewFromImage(image), dim, comps)
        return state["array"]

    def read(region: Region) -> np.ndarray:
        return np.array(load()[region], dtype=np.float32)

    meta = {**geom, "source_format": source, "default_output_suffix": default_suffix, "pixel_type": pixel_type}
    return InputImage(
        path=path,
        kind="volume" if len(spatial) == 3 else "image",
        dims=len(spatial),
        spatial_shape=spatial,
        channels=channels,
        dtype=np.float32,
        meta=meta,
        _reader=read,
        _closer=state.clear,
    )


def _first_line(exc: BaseException) -> str:
    """The most informative line of an ITK exception message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


def labels_to_image(labels: np.ndarray, meta: dict[str, Any]) -> sitk.Image:
    """A uint8 SimpleITK image of ``labels`` (``[D, H, W]`` or ``[H, W]``) with ``meta``'s geometry."""
    if labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8, got {labels.dtype}")
    spacing = tuple(meta.get("spacing", (1.0,) * labels.ndim))
    if labels.ndim != len(spacing):
        raise ValueError(f"labels have {labels.ndim} dims but the geometry has {len(spacing)}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels))
    image.SetSpacing(spacing)
    if "origin" in meta:
        image.SetOrigin(tuple(meta["origin"]))
    if "direction" in meta:
        image.SetDirection(tuple(meta["direction"]))
    return image


def write_volume(path: str | Path, labels: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write ``labels`` (uint8 ``[D, H, W]``) with the input's spacing, origin and direction.

    The format follows the suffix: ``.nii``, ``.nii.gz``, ``.mha`` or ``.nrrd``. Writing DICOM
    is not supported here (DICOM SEG: :mod:`nca_cli.io.dicom_seg`); for DICOM input use
    ``meta["default_output_suffix"]`` (``.nii.gz``).
    The file appears only when complete.
    """
    path = Path(path)
    suffix = full_suffix(path)
    if suffix not in VOLUME_WRITE_SUFFIXES:
        hint = VOLUME_OUTPUT_FOR.get(suffix, ".nii.gz")
        raise NCAError(f"Cannot write a label volume to {path}: use a {'/'.join(VOLUME_WRITE_SUFFIXES)} name such as {path.name.split('.')[0]}{hint}.")
    image = labels_to_image(labels, meta)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), True)
        except RuntimeError as exc:
            raise NCAError(f"Cannot write {path} ({_first_line(exc)}); check the free disk space and permissions.") from None
    return path
