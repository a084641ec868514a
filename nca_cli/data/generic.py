"""Any folder of images with label maps to a prepared dataset.

Layouts (checked in this order):

- nnU-Net style: ``imagesTr/<case>_0000.<ext>`` (``_0001``, ... further channels, stacked in
  order; a plain ``<case>.<ext>`` also works) with ``labelsTr/<case>.<ext>``;
- ``images/<name>.<ext>`` with ``masks/<name>.<ext>`` (or ``labels/``), matched by name
  without suffix.

2D files: PNG/JPG/BMP/TIFF/DICOM; 3D files: NIfTI/MHA/NRRD (4D files become channels). Every
label needs its image(s); images without a label are refused, naming them, unless
``skip_unlabeled`` (then they are left out and a note names them). Sizes are kept unless
``resize`` (spatial shape, storage order) is given.

Classes: with ``classes`` (names) label value k is class k and any value above
``len(classes)`` is an error; without, the non-zero values present become the classes,
renumbered 1..K in value order and named ``class_<value>``. Masks holding only 0 and 255
count as binary (255 = class 1). Labels are stored as an index map.
Instance masks (one id per object, e.g. nucleus instance labels) are recognised (more than
``INSTANCE_IDS`` ids, most of them small) and refused with the advice to pass ``binary``,
which merges every non-zero value into one foreground class.

Normalisation (``normalization``): ``auto`` keeps uint8 images as uint8 (divide by 255)
and applies ``percentile`` otherwise, decided by the first image; ``percentile`` clips each
case and channel to its 0.5-99.5 percentiles and rescales to [0, 1] (float32); ``none``
stores other dtypes as float32 unchanged. Patient = case id, or the first group of
``patient_regex`` matched against the case id.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import io
from ..core.errors import NCAError
from ..io.formats import is_image_file, is_volume_file, strip_suffix
from ..io.normalize import HIGH_PERCENTILE, LOW_PERCENTILE, Normalization, normalize
from ..io.resize import resize_image, resize_labels
from .dataset import DATASET_KINDS
from .layout import source_dir, visible_files
from .writer import DatasetWriter, safe_id

CHANNEL = re.compile(r"(.+)_(\d{4})$")
NORMALIZATIONS = ("auto", "percentile", "none")
LAYOUT = "imagesTr/ + labelsTr/ (nnU-Net style) or images/ + masks/"


def _layout(src: Path) -> tuple[Path, Path]:
    if (src / "imagesTr").is_dir() and (src / "labelsTr").is_dir():
        return src / "imagesTr", src / "labelsTr"
    if (src / "images").is_dir():
        for name in ("masks", "labels"):
            if (src / name).is_dir():
                return src / "images", src / name
    raise NCAError(f"{src} has neither imagesTr/ + labelsTr/ nor images/ + masks/; arrange the data in one of these layouts.")


def _image_index(folder: Path) -> tuple[dict[str, list[tuple[int, Path]]], dict[str, Path]]:
    channels: dict[str, list[tuple[int, Path]]] = {}
    plain: dict[str, Path] = {}
    for path in visible_files(folder):
        if not (is_image_file(path) or is_volume_file(path)):
            continue
        stem = strip_suffix(path)
        plain[stem] = path
        match = CHANNEL.match(stem)
        if match:
            channels.setdefault(match.group(1), []).append((int(match.group(2)), path))
    return {k: sorted(v) for k, v in channels.items()}, plain


def _read_image(path: Path, three_d: bool) -> io.Loaded:
    image = io.load(path)
    if (image.dims == 3) != three_d:
        raise NCAError(f"The image {path} is {image.dims}D but its label is {3 if three_d else 2}D; pair like with like.")
    return image


def _integer_labels(label: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
        raise NCAError(f"The label {path} holds non-integer values; save it as an integer label map.")
    if label.min() < 0 or label.max() > 255:
        raise NCAError(f"The label {path} holds values outside 0..255 (min {label.min():g}, max {label.max():g}); renumber its classes.")
    return label.astype(np.uint8)


INSTANCE_IDS = 16          # more distinct ids than this, most of them small: an instance mask
INSTANCE_AREA = 0.02       # "small": below this fraction of the image


def _check_not_instances(label: np.ndarray, path: Path) -> None:
    counts = np.bincount(label.ravel(), minlength=256)[1:]
    ids = np.flatnonzero(counts)
    if len(ids) > INSTANCE_IDS and np.median(counts[ids]) < INSTANCE_AREA * label.size:
        raise NCAError(f"The label {path} holds {len(ids)} distinct ids, most covering small regions: it looks like an "
                       f"instance mask (one id per object); prepare it with --binary to merge every object into one "
                       f"foreground class, or name its classes with --classes.")


class _Normalise:
    """The dataset's one normalisation: decided by the first image (``auto``), applied to all."""

    def __init__(self, method: str, low: float, high: float):
        self.method = None if method == "auto" else method
        self.low, self.high = low, high
        self.keep_uint8: bool | None = None

    def __call__(self, image: np.ndarray, path: Path) -> np.ndarray:
        if self.keep_uint8 is None:
            self.keep_uint8 = image.dtype == np.uint8 and self.method != "percentile"
            self.method = self.method or ("none" if self.keep_uint8 else "percentile")
        if self.method == "percentile":
            return normalize(image, Normalization("percentile", self.low, self.high))
        if self.keep_uint8 and image.dtype != np.uint8:
            raise NCAError(f"The image {path} is {image.dtype} while earlier images were uint8; convert with "
                           f"normalization='percentile'.")
        return image if self.keep_uint8 else image.astype(np.float32)

    def entry(self) -> dict:
        if self.method == "percentile":
            return Normalization("percentile", self.low, self.high).entry("float32")
        if self.keep_uint8:
            return Normalization("none", divide_by=255.0).entry("uint8")
        return Normalization("none", divide_by=1.0).entry("float32")


def _pairs(images_dir: Path, labels_dir: Path) -> tuple[list[tuple[Path, list[Path]]], list[Path]]:
    """Every label with its image file(s) (several channel files in nnU-Net naming), and the
    image files no label uses."""
    labels = [p for p in visible_files(labels_dir) if is_image_file(p) or is_volume_file(p)]
    if not labels:
        raise NCAError(f"{labels_dir} holds no label files; pass a folder laid out as {LAYOUT}.")
    channel_index, plain_index = _image_index(images_dir)
    pairs = []
    for label_path in labels:
        stem = strip_suffix(label_path)
        images = [p for _, p in channel_index[stem]] if stem in channel_index else \
            [plain_index[stem]] if stem in plain_index else []
        if not images:
            raise NCAError(f"The label {label_path} has no image named {stem} in {images_dir}; add the image or remove "
                           f"the label.")
        if any(is_volume_file(p) != is_volume_file(label_path) for p in images):
            raise NCAError(f"The image {images[0]} and its label {label_path} are not both 2D or both 3D files; pair "
                           f"like with like.")
        pairs.append((label_path, images))
    used = {p for _, images in pairs for p in images}
    return pairs, sorted(set(plain_index.values()) - used)


def _unlabeled(images: list[Path], labels_dir: Path, skip: bool, writer: DatasetWriter) -> None:
    """Refuse images without a label in one sentence naming them, or with ``skip`` note them."""
    if not images:
        return
    shown = ", ".join(p.name for p in images[:5]) + (f" and {len(images) - 5} more" if len(images) > 5 else "")
    if not skip:
        raise NCAError(f"{len(images)} image(s) have no mask in {labels_dir}: {shown}; add their masks or pass "
                       f"--skip-unlabeled to leave them out.")
    writer.notes.append(f"{len(images)} image(s) without a mask in {labels_dir} left out: {shown}")


def _read_case(label_path: Path, image_paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list | None, float | None]:
    """(image [*spatial, C] with the channel files stacked, integer label, spacing of a volume,
    µm per pixel of an image that records it)."""
    label, _ = io.read_labels(label_path)
    loaded = [_read_image(p, is_volume_file(label_path)) for p in image_paths]
    for path, part in zip(image_paths, loaded):
        if part.array.shape[:-1] != label.shape:
            raise NCAError(f"The image {path} has shape {part.array.shape[:-1]} but its label {label_path} has "
                           f"{label.shape}; they must match pixel for pixel.")
    parts = [v.array for v in loaded]
    image = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    spacing = loaded[0].spacing if loaded[0].dims == 3 else None
    return image, _integer_labels(label, label_path), spacing, loaded[0].meta.get("mpp")


def _resolution(volume_spacing, mpp: float | None, dims: int) -> tuple[list[float], str]:
    """(spacing, unit) of the dataset: a volume's own spacing (mm), else ``mpp`` (µm/px: the
    ``--mpp`` option, or the first image's own resolution), else pixels."""
    if volume_spacing:
        return volume_spacing, "mm"
    if mpp and dims == 2:
        return [float(mpp)] * 2, "um"
    return [1.0] * dims, "px"


def _class_values(label: np.ndarray, path: Path, names: list[str] | None, binary: bool) -> np.ndarray:
    """The label with its values checked (and merged with ``binary``)."""
    if binary:
        return (label > 0).astype(np.uint8)
    values = set(np.unique(label).tolist()) - {0}
    if names is None:
        _check_not_instances(label, path)
        return label
    if values == {255} and len(names) == 1:
        return (label > 0).astype(np.uint8)
    unknown = sorted(v for v in values if v > len(names))
    if unknown:
        raise NCAError(f"The label {path} contains value {unknown[0]} but only {len(names)} class(es) were named "
                       f"({', '.join(names)}); name more classes or fix the label.")
    return label


def _name_classes(writer: DatasetWriter, present: set[int]) -> list[str]:
    """Without class names: the values present become classes 1..K (in value order)."""
    if present <= {255}:
        mapping, names = {255: 1}, ["class_1"]
    else:
        mapping = {v: k + 1 for k, v in enumerate(sorted(present))}
        names = [f"class_{v}" for v in sorted(present)]
    if any(v != k for v, k in mapping.items()):
        lut = np.zeros(256, np.uint8)
        for v, k in mapping.items():
            lut[v] = k
        writer.relabel(lut)
    return names


def fill_generic(
    src,
    writer: DatasetWriter,
    *,
    classes: Sequence[str] | None = None,
    resize: Sequence[int] | None = None,
    dataset_kind: str = "generic",
    modality: str = "unknown",
    normalization: str = "auto",
    patient_regex: str | None = None,
    low: float = LOW_PERCENTILE,
    high: float = HIGH_PERCENTILE,
    binary: bool = False,
    skip_unlabeled: bool = False,
    mpp: float | None = None,
) -> None:
    """Write every labelled case of a generic image folder into ``writer`` (images without a
    label are refused unless ``skip_unlabeled``)."""
    src = source_dir(src, LAYOUT)
    _check_options(dataset_kind, normalization, binary, classes)
    pattern = re.compile(patient_regex) if patient_regex else None
    names = list(classes) if classes else (["foreground"] if binary else None)
    norm = _Normalise(normalization, low, high)
    spacing, unit, present = None, "px", set()
    images_dir, labels_dir = _layout(src)
    pairs, unlabeled = _pairs(images_dir, labels_dir)
    _unlabeled(unlabeled, labels_dir, skip_unlabeled, writer)
    for label_path, image_paths in pairs:
        image, label, vol_spacing, own_mpp = _read_case(label_path, image_paths)
        if spacing is None:
            spacing, unit = _resolution(vol_spacing, mpp or own_mpp, label.ndim)
        label = _class_values(label, label_path, names, binary)
        present |= set(np.unique(label).tolist()) - {0}
        image = norm(image, image_paths[0])
        if resize is not None:
            image, label = _resized(image, label, resize, label_path)
        case_id = safe_id(strip_suffix(label_path))
        writer.add_case(case_id, _patient_id(case_id, pattern), image, label)
    if resize is not None:   # resized cases keep no common physical resolution in 2D; 3D records the shape
        spacing, unit = (spacing, unit) if len(resize) == 3 else ([1.0, 1.0], "px")
        writer.set_info(resize_shape=[int(s) for s in resize] if len(resize) == 3 else None)
    writer.set_info(
        name=src.name,
        kind=dataset_kind,
        modality=modality,
        classes=names if names is not None else _name_classes(writer, present),
        spacing=spacing,
        spacing_unit=unit,
        normalization=norm.entry(),
        source={"format": "generic", "path": str(src), "binary": binary},
    )


def _check_options(dataset_kind: str, normalization: str, binary: bool, classes: Sequence[str] | None) -> None:
    """Refuse an unknown dataset kind or normalization, and --binary with several classes."""
    if dataset_kind not in DATASET_KINDS:
        raise NCAError(f"The dataset kind {dataset_kind!r} is unknown; use one of {', '.join(DATASET_KINDS)}.")
    if normalization not in NORMALIZATIONS:
        raise NCAError(f"The normalization {normalization!r} is unknown; use one of {', '.join(NORMALIZATIONS)}.")
    if binary and classes is not None and len(classes) != 1:
        raise NCAError("--binary makes one foreground class; pass at most one class name with it.")


def _resized(image: np.ndarray, label: np.ndarray, resize: Sequence[int], label_path: Path):
    """A case's image and label resized to ``resize`` (one size per axis of the label)."""
    shape = tuple(int(s) for s in resize)
    if len(shape) != label.ndim:
        raise NCAError(f"The resize shape {shape} has {len(shape)} axes but {label_path} is {label.ndim}D; "
                       f"give one size per axis.")
    return resize_image(image, shape), resize_labels(label, shape)


def _patient_id(case_id: str, pattern: re.Pattern | None) -> str:
    """The patient of a case: the first group of ``pattern`` in its id when it matches, else the id."""
    match = pattern.search(case_id) if pattern else None
    return match.group(1) if match and match.groups() else case_id
