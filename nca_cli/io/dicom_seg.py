"""Label masks as DICOM Segmentation (SEG) objects that a PACS stores beside their source images.

A SEG is written for DICOM inputs only: a CT/MR series folder, a single-frame image (an
X-ray, one slice) or a multi-frame image. Each class of the model is one segment (its name
as the label, a coded category and type, and the algorithm: ``nca``, its version and the
checkpoint's SHA-256). The SEG references the source instances it was segmented from, and
its frame of reference and geometry (positions, orientation, spacing) are copied from them
by ``highdicom``, never recomputed: frame ``i`` of the mask belongs to source instance ``i``
of a series in the order the volume reader stacks it (``volume.dicom_series_files``), or to
frame ``i`` of a multi-frame source. Segments are BINARY; frames without any class are
omitted, as usual for SEG. ``highdicom`` is imported only when a SEG is written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..core.errors import NCAError
from ..core.files import atomic_path
from .formats import DICOM_SEG_SUFFIXES, DICOM_SUFFIXES, full_suffix

_MISSING = 'writing DICOM SEG needs the highdicom package: pip install "nca[formats]"'
_LABEL_LENGTH = 64   # SegmentLabel and CodeMeaning are LO (at most 64 characters)


def is_dicom_input(path: str | Path) -> bool:
    """Whether ``path`` is an input a SEG can reference: a DICOM series folder or a DICOM file."""
    from . import has_dicom_magic

    path = Path(path)
    return path.is_dir() or full_suffix(path) in DICOM_SUFFIXES or (path.is_file() and has_dicom_magic(path))


def not_dicom_error(path: Path, what: str) -> NCAError:
    """The one sentence for a SEG asked of an input that is not DICOM."""
    return NCAError(f"A DICOM SEG ({what}) references DICOM images, but {path} is not DICOM; pass its DICOM series "
                    f"folder or DICOM file, or write the mask as .nii.gz, .png, .tif or .ome.zarr.")


def source_datasets(path: str | Path) -> list:
    """The headers of the source instances, in the order of the mask's first axis."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from .volume import dicom_series_files

    path = Path(path)
    files = dicom_series_files(path) if path.is_dir() else [str(path)]
    if not files:
        raise NCAError(f"The folder {path} contains no DICOM series; a DICOM SEG needs the DICOM images it segments.")
    try:
        return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise NCAError(f"Cannot read the DICOM headers of {path} ({exc}); check that the files are complete.") from None


def _highdicom():
    try:
        import highdicom
    except ImportError:
        raise NCAError(f"Cannot write DICOM SEG: {_MISSING}.") from None
    return highdicom


def segment_descriptions(classes: list[str], checkpoint_sha256: str | None) -> list:
    """One segment per class: its name as the label, category "Tissue" (SCT 85756007) and a
    type coded in the local scheme ``99NCA`` whose meaning is the class name."""
    hd = _highdicom()
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="nca", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        source="nca (Neural Cellular Automata segmentation)",
        parameters={"checkpoint_sha256": checkpoint_sha256} if checkpoint_sha256 else None)
    out = []
    for k, name in enumerate(classes, start=1):
        label = (str(name).strip() or f"class {k}")[:_LABEL_LENGTH]
        out.append(hd.seg.SegmentDescription(
            segment_number=k, segment_label=label,
            segmented_property_category=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
            segmented_property_type=hd.sr.CodedConcept(f"NCA{k}", "99NCA", label),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
    return out


def _frames(labels: np.ndarray, sources: list, path: Path) -> np.ndarray:
    """``labels`` as ``[frames, rows, columns]`` matched against the sources' sizes."""
    frames = labels[None] if labels.ndim == 2 else labels
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    expected = len(sources) if len(sources) > 1 else int(sources[0].get("NumberOfFrames", 1) or 1)
    if expected > 1 and "FrameOfReferenceUID" not in sources[0]:
        raise NCAError(f"A DICOM SEG of the {expected} frames of {path} needs their patient geometry, but it records no "
                       f"frame of reference (0020,0052); write the mask as .nii.gz or .ome.zarr instead.")
    if frames.shape != (expected, rows, cols):
        raise NCAError(f"The mask of {path} has shape {tuple(labels.shape)} but its DICOM images hold {expected} frame(s) "
                       f"of {rows} x {cols}; a DICOM SEG needs the mask at the images' own size.")
    return frames


def build_dicom_seg(source: str | Path, labels: np.ndarray, classes: list[str], checkpoint_sha256: str | None = None):
    """The SEG dataset (``highdicom.seg.Segmentation``) of ``labels`` (uint8, values 0..len(classes))."""
    hd = _highdicom()
    source = Path(source)
    sources = source_datasets(source)
    frames = _frames(labels, sources, source)
    if int(frames.max(initial=0)) > len(classes):
        raise ValueError(f"labels hold class {int(frames.max())} but only {len(classes)} classes are named")
    try:
        return _segmentation(hd, sources, frames, classes, checkpoint_sha256)
    except (AttributeError, ValueError, TypeError, KeyError) as exc:
        raise NCAError(f"Cannot make a DICOM SEG of {source} ({exc}); its DICOM images lack attributes a SEG must "
                       f"copy, so write the mask as .nii.gz instead.") from None


def _segmentation(hd, sources: list, frames: np.ndarray, classes: list[str], checkpoint_sha256: str | None):
    from pydicom.uid import generate_uid

    first = sources[0]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(classes, checkpoint_sha256),
        series_instance_uid=generate_uid(), series_number=int(first.get("SeriesNumber") or 0) + 1000,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="nca",
        manufacturer_model_name="nca segment", software_versions=__version__,
        device_serial_number=(checkpoint_sha256 or "unknown")[:16], content_label="NCA_SEG",
        content_description="Segmentation by nca (Neural Cellular Automata)",
        series_description=f"nca segmentation of {str(first.get('SeriesDescription') or first.get('Modality') or 'images')}"[:64],
        omit_empty_frames=bool(frames.any()))


def write_dicom_seg(path: str | Path, source: str | Path, labels: np.ndarray, classes: list[str],
                    checkpoint_sha256: str | None = None) -> Path:
    """Write the SEG of ``labels`` segmented from the DICOM ``source`` (series folder or file)
    to ``path`` (``*.dcm``); the file appears only when complete."""
    path = Path(path)
    if full_suffix(path) not in DICOM_SEG_SUFFIXES:
        raise NCAError(f"Cannot write a DICOM SEG to {path}: use a .dcm file name.")
    if not is_dicom_input(source):
        raise not_dicom_error(Path(source), str(path))
    seg = build_dicom_seg(source, labels, classes, checkpoint_sha256)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path
