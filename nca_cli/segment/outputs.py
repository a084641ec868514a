"""What one ``nca segment`` run writes, named and checked before any work, written safely.

Every output name of a run (masks, previews, uncertainty maps, video overlays, run metadata)
is computed from the inputs and options first; names that collide with each other or with an
input, suffixes a writer cannot produce and folders that cannot be written are refused in one
sentence before anything runs. Each file is written atomically; the run metadata
(``<mask stem>.run_metadata.json``, beside the mask) is written last and lists every output
with its size, so ``--continue`` recognises complete results only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np

from .. import io
from ..core.errors import NCAError
from ..core.files import atomic_path, check_writable, remove_partials, write_json
from ..inference.sources import band_rows
from ..io.formats import (DICOM_SEG_SUFFIXES, GEOJSON_SUFFIXES, OME_ZARR_SUFFIXES, VOLUME_WRITE_SUFFIXES,
                          full_suffix, strip_suffix, volume_output_suffix)

MASK_SUFFIXES = {
    "slide": (".tif", ".tiff", *GEOJSON_SUFFIXES, *OME_ZARR_SUFFIXES),
    "image": (".png", ".tif", ".tiff", *GEOJSON_SUFFIXES, *OME_ZARR_SUFFIXES, *DICOM_SEG_SUFFIXES),
    "volume": (*VOLUME_WRITE_SUFFIXES, *OME_ZARR_SUFFIXES, *DICOM_SEG_SUFFIXES),
    "video": (".nii.gz", ".nii", ".npz", *OME_ZARR_SUFFIXES, *DICOM_SEG_SUFFIXES),
}
DEFAULT_MASK_SUFFIX = {"slide": ".tif", "image": ".png", "video": ".nii.gz"}
METADATA_SUFFIX = ".run_metadata.json"


@dataclass
class Job:
    """One input and every file its segmentation writes."""

    input: Path
    kind: str
    dims: int
    mask: Path
    preview: Path | None = None
    uncertainty: Path | None = None
    overlay: Path | None = None
    geojson: Path | None = None
    dicom_seg: Path | None = None

    @property
    def mask_is_geojson(self) -> bool:
        return self.mask.suffix.lower() in GEOJSON_SUFFIXES

    @property
    def metadata(self) -> Path:
        return self.mask.with_name(strip_suffix(self.mask) + METADATA_SUFFIX)

    @property
    def outputs(self) -> list[Path]:
        return [p for p in (self.mask, self.dicom_seg, self.geojson, self.uncertainty, self.preview, self.overlay)
                if p is not None]

    def complete(self) -> bool:
        """Whether a previous run finished this job: its metadata (written last) lists every
        output of this job with the size it has now."""
        try:
            meta = json.loads(self.metadata.read_text())
            sizes = meta["output_bytes"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        for p in self.outputs:
            if str(p) not in sizes or not p.exists() or output_bytes(p) != sizes[str(p)]:
                return False
        return True

    def clear_partials(self) -> None:
        """Remove what a killed earlier run left half-written for these outputs."""
        for p in [*self.outputs, self.metadata]:
            remove_partials(p)


def output_bytes(path: Path) -> int:
    """The size of an output: a file's, or the total of the files in a folder output (OME-Zarr)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _is_file_name(path: Path) -> bool:
    """Whether ``-o`` names one output (a file, or a folder output such as ``.ome.zarr``)."""
    return bool(path.suffix) and (not path.is_dir() or full_suffix(path) in OME_ZARR_SUFFIXES)


def _check_dicom_seg(job_input: Path, seg: Path | None, what: str) -> None:
    """A DICOM SEG references the DICOM images it segments: asked of another input, one sentence."""
    from ..io.dicom_seg import is_dicom_input, not_dicom_error

    if seg is not None and full_suffix(seg) in DICOM_SEG_SUFFIXES and not is_dicom_input(job_input):
        raise not_dicom_error(job_input, what)


def default_mask_name(path: Path, kind: str) -> str:
    stem = strip_suffix(path) if path.is_file() else path.name
    if kind == "volume":
        src = full_suffix(path) if path.is_file() else ""
        ext = volume_output_suffix(src)
    else:
        ext = DEFAULT_MASK_SUFFIX[kind]
    return f"{stem}_mask{ext}"


def _aux(given: Path | None, mask: Path, single: bool, tag: str, ext: str) -> Path | None:
    """An auxiliary output: used as given for one input when it names a file; otherwise a
    folder, holding ``<mask stem>_<tag><ext>``."""
    if given is None:
        return None
    given = Path(given)
    if single and given.suffix and not given.is_dir():
        return given
    return given / f"{strip_suffix(mask)}_{tag}{ext}"


def _check_suffix(path: Path, allowed, what: str, job_input: Path) -> None:
    if full_suffix(path) not in allowed and path.suffix.lower() not in allowed:
        raise NCAError(f"Cannot write the {what} of {job_input} to {path}: use a "
                       f"{' / '.join(allowed)} file name.")


def plan_jobs(inputs: list[Path], opts) -> list[Job]:
    """The jobs of a run, every name checked (see the module docstring)."""
    output = Path(opts.output)
    single = len(inputs) == 1 and _is_file_name(output)
    if len(inputs) > 1 and _is_file_name(output):
        raise NCAError(f"{len(inputs)} inputs need an output folder, but -o {output} names a file; "
                       f"pass a folder (e.g. -o {output.with_suffix('')}/).")
    jobs = []
    for path in inputs:
        kind, dims = io.probe(path)
        mask = output if single else output / default_mask_name(path, kind)
        _check_dicom_seg(path, mask, f"-o {mask}")
        _check_suffix(mask, MASK_SUFFIXES[kind], "mask", path)
        unc_ext = ".tif" if dims == 2 else full_suffix(mask) if full_suffix(mask) in (*VOLUME_WRITE_SUFFIXES, ".npz") else ".nii.gz"
        if dims == 3 and opts.geojson is not None:
            raise NCAError(f"--geojson writes 2D polygons, but {path} is a 3D volume or video; use it with slides and "
                           f"images, or drop it.")
        job = Job(path, kind, dims, mask,
                  preview=_aux(opts.preview, mask, single, "preview", ".png"),
                  uncertainty=_aux(opts.uncertainty, mask, single, "std", unc_ext),
                  overlay=_aux(opts.overlay, mask, single, "overlay", ".mp4") if kind == "video" else None,
                  geojson=_aux(opts.geojson, mask, single, "polygons", ".geojson") if dims == 2 else None,
                  dicom_seg=_aux(opts.dicom_seg, mask, single, "seg", ".dcm"))
        if job.dicom_seg is not None:
            _check_suffix(job.dicom_seg, DICOM_SEG_SUFFIXES, "DICOM SEG", path)
            _check_dicom_seg(path, job.dicom_seg, "--dicom-seg")
        if job.geojson is not None:
            _check_suffix(job.geojson, GEOJSON_SUFFIXES, "polygons", path)
        if job.preview is not None:
            _check_suffix(job.preview, (".png",), "preview", path)
        if job.uncertainty is not None:
            _check_suffix(job.uncertainty, (".tif", ".tiff") if dims == 2 else (*VOLUME_WRITE_SUFFIXES, ".npz"),
                          "uncertainty map", path)
        if job.overlay is not None:
            _check_suffix(job.overlay, (".mp4",), "overlay video", path)
        jobs.append(job)
    if opts.overlay is not None and not any(j.kind == "video" for j in jobs):
        raise NCAError("--overlay writes an mp4 of a video with its mask blended in, but no input is a video; "
                       "use --preview for images, slides and volumes.")
    _check_collisions(jobs)
    for folder in sorted({p.parent.resolve() for j in jobs for p in [*j.outputs, j.metadata]}):
        check_writable(folder / ".nca-write-check")
    return jobs


def _check_collisions(jobs: list[Job]) -> None:
    inputs = {}
    for j in jobs:
        inputs[j.input.resolve()] = j.input
        if j.input.is_dir():
            for f in j.input.iterdir():
                inputs[f.resolve()] = f
    seen: dict[Path, tuple[Job, str]] = {}
    for j in jobs:
        for what, p in (("mask", j.mask), ("DICOM SEG", j.dicom_seg), ("polygons", j.geojson),
                        ("uncertainty map", j.uncertainty), ("preview", j.preview), ("overlay", j.overlay), ("run metadata", j.metadata)):
            if p is None:
                continue
            key = p.resolve()
            if key in inputs:
                raise NCAError(f"The {what} of {j.input} would overwrite the input {inputs[key]}; choose another "
                               f"output name with -o.")
            if key in seen:
                other, other_what = seen[key]
                if other is j:
                    raise NCAError(f"The {what} and the {other_what} of {j.input} would both be written to {p}; "
                                   f"give them different names.")
                raise NCAError(f"{other.input} and {j.input} would both be written to {p}; rename one of them or "
                               f"segment them into separate output folders.")
            seen[key] = (j, what)


# -- writing ---------------------------------------------------------------------------------

TISSUE_OUTLINE = (0, 160, 0)   # the detected tissue's outline on a slide's preview


@dataclass
class Rendering:
    """How outputs are drawn: class names and colours (GeoJSON), preview style, polygon tolerance,
    and the level-0 pixels per mask pixel (slides at a coarser level, resized images); the
    checkpoint's SHA-256 names the algorithm in a DICOM SEG."""

    classes: list[str]
    preview_style: str = "outline"
    tolerance: float = 1.0
    downsample: float = 1.0
    checkpoint_sha256: str | None = None
    tissue: Any = None   # slides: the TissueMask whose outline the preview shows


def write_geojson(path: Path, labels: np.ndarray, render: Rendering) -> None:
    io.write_geojson(path, labels, ["background", *render.classes], downsample=render.downsample,
                     tolerance=render.tolerance)


def write_mask(job: Job, image, labels: np.ndarray, render: Rendering) -> None:
    suffix = full_suffix(job.mask)
    if job.mask_is_geojson:
        write_geojson(job.mask, labels, render)
    elif suffix in DICOM_SEG_SUFFIXES:
        _write_dicom_seg(job.mask, job, labels, render)
    elif suffix in OME_ZARR_SUFFIXES:
        from ..io.ome_zarr import write_ome_zarr

        write_ome_zarr(job.mask, labels, job.kind, image.meta, render.classes)
    elif job.kind == "slide" or (job.dims == 2 and suffix in (".tif", ".tiff") and labels.size > 4096 ** 2):
        io.write_pyramidal_mask(job.mask, labels, image.meta.get("mpp"))
    elif job.kind == "video" or (job.dims == 3 and suffix == ".npz"):
        io.write_label_volume(job.mask, labels, image.meta)
    elif job.dims == 3:
        io.write_volume(job.mask, labels, image.meta)
    else:
        io.write_mask_image(job.mask, labels)


def write_outputs(job: Job, image, labels: np.ndarray, render: Rendering, std_map: np.ndarray | None = None) -> None:
    """The mask, then the polygons, uncertainty map, preview and overlay asked for (metadata comes last)."""
    write_mask(job, image, labels, render)
    if job.dicom_seg is not None:
        _write_dicom_seg(job.dicom_seg, job, labels, render)
    if job.geojson is not None:
        write_geojson(job.geojson, labels, render)
    if job.uncertainty is not None and std_map is not None:
        if job.dims == 3:
            _write_float_volume(job.uncertainty, std_map, image)
        else:
            _write_float_tiff(job.uncertainty, std_map, image.meta.get("mpp"))
    if job.preview is not None:
        _write_preview(image, labels, job.preview, render.preview_style, render.tissue)
    if job.overlay is not None:
        io.write_overlay_mp4(job.overlay, _frames(image), labels, image.meta.get("fps", 25.0))


def _write_dicom_seg(path: Path, job: Job, labels: np.ndarray, render: Rendering) -> None:
    from ..io.dicom_seg import write_dicom_seg

    write_dicom_seg(path, job.input, labels, render.classes, render.checkpoint_sha256)


def write_metadata(job: Job, record: dict) -> None:
    """The run metadata, last: it lists every output with its size (``--continue`` checks them)."""
    record = dict(record)
    record["outputs"] = [str(p) for p in job.outputs]
    record["output_bytes"] = {str(p): output_bytes(p) for p in job.outputs}
    write_json(job.metadata, record)


def _frames(image):
    """The frames of a video input one at a time, read a band of frames at a time."""
    t, h, w = image.spatial_shape
    step = band_rows(image.spatial_shape)
    for t0 in range(0, t, step):
        yield from _display(image.read((slice(t0, min(t, t0 + step)), slice(0, h), slice(0, w))))


def _display(pixels: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Pixels as uint8 for a picture: 8-bit as they are, others rescaled to their (or the given)
    0.5-99.5 percentiles."""
    if pixels.dtype == np.uint8:
        return pixels
    if lo is None or hi is None:
        lo, hi = np.percentile(pixels, [0.5, 99.5])
    return (np.clip((pixels.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _write_preview(image, labels: np.ndarray, path: Path, style: str, tissue=None) -> None:
    if image.dims == 3:
        d, h, w = image.spatial_shape
        mid = image.read((slice(d // 2, d // 2 + 1), slice(0, h), slice(0, w)))
        lo, hi = (None, None) if mid.dtype == np.uint8 else np.percentile(mid, [0.5, 99.5])

        def read_slice(axis: int, index: int) -> np.ndarray:
            region = [slice(0, d), slice(0, h), slice(0, w)]
            region[axis] = slice(index, index + 1)
            return _display(np.take(image.read(tuple(region)), 0, axis=axis), lo, hi)

        spacing = image.meta.get("spacing")
        names = ("frame", "row", "column") if image.kind == "video" else ("axial", "coronal", "sagittal")
        io.write_volume_preview(path, read_slice, (d, h, w), labels, style=style,
                                spacing=tuple(reversed(spacing)) if spacing and len(spacing) == 3 else None,
                                plane_names=names)
        return
    step = max(1, max(labels.shape) // 2048)
    lab = labels[::step, ::step]
    if image.kind == "slide" and step > 1:
        pixels = image.read_downsampled(step)[: lab.shape[0], : lab.shape[1]]
    else:
        pixels = image.read()[::step, ::step]
    shown = _display(pixels)
    if tissue is not None and shown.ndim == 3 and shown.shape[-1] == 3:
        shown[tissue.outline(shown.shape[:2])] = TISSUE_OUTLINE
    io.write_preview(path, shown, lab, style=style)


def _write_float_tiff(path: Path, data: np.ndarray, mpp: float | None) -> None:
    import tifffile

    kwargs = {}
    if mpp:
        kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, tile=(256, 256) if min(data.shape) >= 256 else None, bigtiff=data.nbytes > 2 ** 31,
                         compression="zlib", **kwargs)


def _write_float_volume(path: Path, data: np.ndarray, image) -> None:
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        if str(path).lower().endswith(".npz"):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, std=data)
            return
        img = sitk.GetImageFromArray(data)
        for key, setter in (("spacing", img.SetSpacing), ("origin", img.SetOrigin), ("direction", img.SetDirection)):
            if image.meta.get(key) is not None:
                setter(tuple(image.meta[key]))
        sitk.WriteImage(img, str(tmp))
