"""Chest X-rays with CheXmask annotations to a prepared dataset.

Source: the X-ray images (PNG/JPG/DICOM, any sub-folders) and a CheXmask CSV (``.csv`` or
``.csv.gz``). CheXmask CSV columns: an image-id column (its name varies by source dataset:
``image_id``, ``dicom_id``, ``Path``, ...; it is the first column), ``Dice RCA (Mean)``,
``Dice RCA (Max)``, ``Landmarks``, ``Left Lung``, ``Right Lung``, ``Heart``, ``Height``,
``Width``. Each mask is run-length encoded as space-separated ``start length`` pairs, starts
1-based, over the mask flattened row-major (C order) at ``Height`` x ``Width``; an empty
cell is an empty mask. The mask size must equal the image size (use CheXmask's
OriginalResolution tables with original images).

Classes: ``lungs`` (left | right); with ``heart=True`` also ``heart`` (which overlaps the
lungs, so labels are then stored as a bitmask). Images become 8-bit grey (colour averaged,
16-bit and DICOM rescaled between their 0.5 and 99.5 percentiles, MONOCHROME1 inverted) and
are resized to ``image_size`` (H, W) = (256, 256); masks with nearest neighbour.

Patients come from ``patient_column``, else a ``subject_id``/``patient_id``/``Patient ID``
column, else a ``patientNNNN`` or MIMIC ``pNN/pNNNNNNNN`` part of the image id, else the
image id itself.
"""
from __future__ import annotations

import csv
import gzip
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import io
from ..core.errors import NCAError
from ..io.formats import IMAGE_SUFFIXES, full_suffix, strip_suffix
from ..io.normalize import Normalization, normalize
from ..io.resize import resize_image, resize_labels
from .layout import source_dir, visible_files
from .writer import DatasetWriter, safe_id

MASK_COLUMNS = ("Left Lung", "Right Lung", "Heart")
KNOWN_COLUMNS = ("Dice RCA (Mean)", "Dice RCA (Max)", "Landmarks", *MASK_COLUMNS, "Height", "Width")
PATIENT_COLUMNS = ("subject_id", "patient_id", "Patient ID", "PatientID", "patient")
PATIENT_IN_ID = (re.compile(r"(patient\d+)"), re.compile(r"(?:^|/)p\d{2}/(p\d+)/"))
DEFAULT_IMAGE_SIZE = (256, 256)
LAYOUT = "chest X-ray images and a CheXmask .csv/.csv.gz file"


def decode_rle(rle: str, height: int, width: int) -> np.ndarray:
    """Decode a CheXmask run-length string into a uint8 [height, width] mask of 0/1.

    Raises ``ValueError`` for an odd count, a start below 1 or a run past the end.
    """
    mask = np.zeros(height * width, np.uint8)
    text = (rle or "").strip()
    if not text or text.lower() == "nan":
        return mask.reshape(height, width)
    runs = np.asarray(text.split(), dtype=np.int64)
    if runs.size % 2:
        raise ValueError("an odd number of values")
    starts, lengths = runs[0::2] - 1, runs[1::2]
    if (starts < 0).any() or (lengths < 0).any() or (starts + lengths > height * width).any():
        raise ValueError(f"a run outside the {height}x{width} mask")
    edges = np.zeros(height * width + 1, np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + lengths, -1)
    mask[:] = np.cumsum(edges[:-1]) > 0
    return mask.reshape(height, width)


def encode_rle(mask: np.ndarray) -> str:
    """CheXmask run-length string of a 2D mask (non-zero = inside); inverse of ``decode_rle``."""
    flat = np.concatenate([[0], (np.asarray(mask).ravel() != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts.tolist(), ends.tolist()))


def _open_csv(path: Path):
    return gzip.open(path, "rt", newline="") if path.name.lower().endswith(".gz") else open(path, newline="")


def _find_csv(src: Path, csv_path) -> Path:
    if csv_path is not None:
        path = Path(csv_path)
        if not path.is_file():
            raise NCAError(f"The CheXmask table {path} does not exist; pass the .csv or .csv.gz file.")
        return path
    found = [p for p in visible_files(src) if p.name.lower().endswith((".csv", ".csv.gz"))]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise NCAError(f"{src} holds {what} .csv/.csv.gz files; pass the CheXmask table explicitly with the csv option.")
    return found[0]


class _ImageIndex:
    """Image files below a folder, found by relative path (with or without suffix) or stem."""

    def __init__(self, folder: Path):
        self.by_key: dict[str, list[Path]] = {}
        for path in visible_files(folder, recursive=True):
            if full_suffix(path) not in IMAGE_SUFFIXES:
                continue
            rel = path.relative_to(folder).as_posix()
            for key in {rel, rel[: len(rel) - len(full_suffix(path))], path.name, strip_suffix(path)}:
                self.by_key.setdefault(key, []).append(path)

    def find(self, image_id: str) -> list[Path]:
        ident = _without_suffix(image_id.strip().removeprefix("./"))
        name = ident.rsplit("/", 1)[-1]
        for key in (image_id.strip().removeprefix("./"), ident, name):
            if key in self.by_key:
                return sorted(set(self.by_key[key]))
        return []


def _without_suffix(image_id: str) -> str:
    """The id without an image-format suffix, folders kept."""
    suffix = full_suffix(Path(image_id))
    return image_id[: len(image_id) - len(suffix)] if suffix in IMAGE_SUFFIXES else image_id


def _patient(row: dict, image_id: str, column: str | None) -> str:
    if column:
        return str(row[column])
    for name in PATIENT_COLUMNS:
        if row.get(name):
            return str(row[name])
    for pattern in PATIENT_IN_ID:
        match = pattern.search(image_id)
        if match:
            return match.group(1)
    return image_id


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit kept; other types percentile-rescaled (the package's normalisation) to 0..255."""
    if image.dtype == np.uint8:
        return image
    return np.rint(normalize(image, Normalization("percentile")) * 255.0).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    """[H, W, C] of any dtype to uint8 [H, W, 1]."""
    if image.shape[-1] >= 3:
        image = image[..., :3].astype(np.float32).mean(axis=-1, keepdims=True)
        return np.rint(image).astype(np.uint8) if image.max() <= 255 else _to_uint8(image)
    return _to_uint8(image[..., :1])


def fill_chexmask(
    src,
    writer: DatasetWriter,
    *,
    csv_path=None,
    images=None,
    image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
    heart: bool = False,
    id_column: str | None = None,
    patient_column: str | None = None,
    skip_missing: bool = False,
    max_cases: int | None = None,
) -> None:
    """Write every CheXmask row whose image is present into ``writer`` (see module docstring).

    A row whose image is missing is an error unless ``skip_missing``; ``max_cases`` stops
    after that many cases (in table order).
    """
    src = source_dir(src, LAYOUT)
    table = _find_csv(src, csv_path)
    image_root = source_dir(images, "the chest X-ray images") if images is not None else src
    index = _ImageIndex(image_root)
    size = tuple(int(s) for s in image_size)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _open_csv(table) as f:
        reader = csv.DictReader(f)
        id_col = _check_columns(table, reader.fieldnames or [], heart, id_column, patient_column)
        count = 0
        for line, row in enumerate(reader, start=2):
            if max_cases is not None and count >= max_cases:
                break
            image_id = (row[id_col] or "").strip()
            where = f"{table} line {line} ({image_id})"
            found = _row_image(index, image_id, where, image_root, skip_missing)
            if found is None:
                continue
            label = _row_label(row, heart, where)
            image = _load_image(found, label.shape, where)
            writer.add_case(
                safe_id(_without_suffix(image_id)),
                _patient(row, image_id, patient_column),
                resize_image(_grey(image), size),
                resize_labels(label, size),
                source_id=image_id,
            )
            count += 1
    writer.set_info(
        name="chexmask",
        kind="xray",
        modality="X-ray",
        classes=["lungs", "heart"] if heart else ["lungs"],
        label_encoding="bitmask" if heart else "index",
        spacing=[1.0, 1.0],
        spacing_unit="px",
        normalization=Normalization("none", divide_by=255.0).entry("uint8"),
        source={"format": "chexmask", "path": str(src), "table": str(table), "image_size": list(size)},
    )


def _check_columns(table: Path, columns: list[str], heart: bool, id_column: str | None,
                   patient_column: str | None) -> str:
    """Check that ``table`` has the mask, size, id and patient columns; return the id column."""
    needed = ["Left Lung", "Right Lung", "Height", "Width"] + (["Heart"] if heart else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise NCAError(f"The table {table} lacks the column(s) {', '.join(missing)}; pass a CheXmask CSV.")
    id_col = id_column or next((c for c in columns if c not in KNOWN_COLUMNS), None)
    if id_col is None or id_col not in columns:
        raise NCAError(f"The table {table} has no image-id column {id_column or ''}; name it with the id_column option.")
    if patient_column is not None and patient_column not in columns:
        raise NCAError(f"The table {table} has no column {patient_column!r}; pick the patient column from {', '.join(columns)}.")
    return id_col


def _row_image(index: _ImageIndex, image_id: str, where: str, image_root: Path, skip_missing: bool) -> Path | None:
    """The one image of a row, or None for a missing image when ``skip_missing``."""
    found = index.find(image_id)
    if not found:
        if skip_missing:
            return None
        raise NCAError(f"The CheXmask row {where} has no image under {image_root}; add the image or convert with skip_missing=True.")
    if len(found) > 1:
        raise NCAError(f"The CheXmask row {where} matches several images ({found[0]}, {found[1]}); give ids with their folders.")
    return found[0]


def _load_image(path: Path, shape: tuple[int, int], where: str) -> np.ndarray:
    """The image at ``path``, which must have the ``(height, width)`` of its mask in the table."""
    image = io.load(path).array
    if image.shape[:2] != shape:
        height, width = shape
        raise NCAError(
            f"The image {path} is {image.shape[1]}x{image.shape[0]} but its mask in {where} is {width}x{height}; "
            f"use CheXmask's OriginalResolution table with the original images."
        )
    return image


def _row_label(row: dict, heart: bool, where: str) -> np.ndarray:
    """A row's ``[Height, Width]`` label: lungs 1, heart bit 2 (bitmask) when ``heart``."""
    try:
        height, width = int(float(row["Height"])), int(float(row["Width"]))
        lungs = decode_rle(row["Left Lung"], height, width) | decode_rle(row["Right Lung"], height, width)
        heart_mask = decode_rle(row["Heart"], height, width) if heart else None
    except ValueError as exc:
        raise NCAError(f"The CheXmask row {where} has a malformed mask ({exc}); re-download the table.") from None
    return lungs if heart_mask is None else lungs | (heart_mask << 1)

