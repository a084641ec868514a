"""Any folder of images with label maps to a prepared dataset.

Layouts (checked in this order):

- nnU-Net style: ``imagesTr/<case>_0000.<ext>`` (``_0001``, ... further channels, stacked in
  order; a plain ``<case>.<ext>`` also works) with ``labelsTr/<case>.<ext>``;
- ``images/<name>.<ext>`` with ``masks/<name>.<ext>`` (or ``labels/``), matched by name
  without suffix.

2D files: PNG/JPG/BMP/TIFF/DICOM; 3D files: NIfTI/MHA/NRRD (4D files become channels). Every
label needs its image(s); images without a label are ignored. Sizes are kept unless
``resize`` (spatial shape, storage order) is given.

Classes: with ``classes`` (names) label value k is class k and any value above
``len(classes)`` is an error; without, the non-zero values present become the classes,
renumbered 1..K in value order and named ``class_<value>``. Masks holding only 0 and 255
count as binary (255 = class 1). Labels are stored as an index map.

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
from .dataset import DATASET_KINDS
from .layout import source_dir, visible_files
from .resize import resize_image, resize_labels
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
) -> None:
    """Write every labelled case of a generic image folder into ``writer``."""
    src = source_dir(src, LAYOUT)
    if dataset_kind not in DATASET_KINDS:
        raise NCAError(f"The dataset kind {dataset_kind!r} is unknown; use one of {', '.join(DATASET_KINDS)}.")
    if normalization not in NORMALIZATIONS:
        raise NCAError(f"The normalization {normalization!r} is unknown; use one of {', '.join(NORMALIZATIONS)}.")
    pattern = re.compile(patient_regex) if patient_regex else None
    images_dir, labels_dir = _layout(src)
    labels = [p for p in visible_files(labels_dir) if is_image_file(p) or is_volume_file(p)]
    if not labels:
        raise NCAError(f"{labels_dir} holds no label files; pass a folder laid out as {LAYOUT}.")
    channel_index, plain_index = _image_index(images_dir)
    names = list(classes) if classes else None
    method = None if normalization == "auto" else normalization
    keep_uint8: bool | None = None
    spacing, unit = None, "px"
    present: set[int] = set()
    for label_path in labels:
        stem = strip_suffix(label_path)
        image_paths = [p for _, p in channel_index[stem]] if stem in channel_index else [plain_index[stem]] if stem in plain_index else []
        if not image_paths:
            raise NCAError(f"The label {label_path} has no image named {stem} in {images_dir}; add the image or remove the label.")
        three_d = is_volume_file(label_path)
        if any(is_volume_file(p) != three_d for p in image_paths):
            raise NCAError(f"The image {image_paths[0]} and its label {label_path} are not both 2D or both 3D files; pair like with like.")
        label, _ = io.read_labels(label_path)
        loaded = [_read_image(p, three_d) for p in image_paths]
        parts = [v.array for v in loaded]
        if spacing is None:
            spacing, unit = (loaded[0].spacing, "mm") if three_d and loaded[0].spacing else ([1.0] * label.ndim, "px")
        for path, part in zip(image_paths, parts):
            if part.shape[:-1] != label.shape:
                raise NCAError(
                    f"The image {path} has shape {part.shape[:-1]} but its label {label_path} has {label.shape}; they must match pixel for pixel."
                )
        image = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        label = _integer_labels(label, label_path)

        values = set(np.unique(label).tolist()) - {0}
        if names is not None:
            if values == {255} and len(names) == 1:
                label = (label > 0).astype(np.uint8)
                values = {1}
            unknown = sorted(v for v in values if v > len(names))
            if unknown:
                raise NCAError(
                    f"The label {label_path} contains value {unknown[0]} but only {len(names)} class(es) were named ({', '.join(names)}); name more classes or fix the label."
                )
        present |= values

        if keep_uint8 is None:
            keep_uint8 = image.dtype == np.uint8 and method != "percentile"
            method = method or ("none" if keep_uint8 else "percentile")
        if method == "percentile":
            image = normalize(image, Normalization("percentile", low, high))
        elif keep_uint8 and image.dtype != np.uint8:
            raise NCAError(f"The image {image_paths[0]} is {image.dtype} while earlier images were uint8; convert with normalization='percentile'.")
        elif not keep_uint8:
            image = image.astype(np.float32)
        if resize is not None:
            shape = tuple(int(s) for s in resize)
            if len(shape) != label.ndim:
                raise NCAError(f"The resize shape {shape} has {len(shape)} axes but {label_path} is {label.ndim}D; give one size per axis.")
            image, label = resize_image(image, shape), resize_labels(label, shape)
        case_id = safe_id(stem)
        match = pattern.search(case_id) if pattern else None
        writer.add_case(case_id, match.group(1) if match and match.groups() else case_id, image, label)

    if names is None:
        if present <= {255}:
            mapping = {255: 1}
            names = ["class_1"]
        else:
            mapping = {v: k + 1 for k, v in enumerate(sorted(present))}
            names = [f"class_{v}" for v in sorted(present)]
        if any(v != k for v, k in mapping.items()):
            lut = np.zeros(256, np.uint8)
            for v, k in mapping.items():
                lut[v] = k
            writer.relabel(lut)
    if method == "percentile":
        norm = Normalization("percentile", low, high).entry("float32")
    elif keep_uint8:
        norm = Normalization("none", divide_by=255.0).entry("uint8")
    else:
        norm = Normalization("none", divide_by=1.0).entry("float32")
    writer.set_info(
        name=src.name,
        kind=dataset_kind,
        modality=modality,
        classes=names,
        spacing=spacing,
        spacing_unit=unit,
        normalization=norm,
        source={"format": "generic", "path": str(src)},
    )

