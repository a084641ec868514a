"""Prepared datasets: the on-disk format ``nca prepare`` writes and training/evaluation read.

A prepared dataset is a folder::

    <root>/dataset.yaml
    <root>/images/<id>.npy     channels-last [*spatial, C]; spatial order (H, W) or (D, H, W)
    <root>/labels/<id>.npy     uint8 [*spatial]

``dataset.yaml`` (written with ``yaml.safe_dump``) holds:

- ``name`` (str), ``synthetic`` (bool: generated data, never a real scan),
- ``kind``: pathology | radiology | surgery | xray | generic; ``modality`` (str, e.g. "MR-T2"),
- ``dims`` (2 or 3) and ``channels`` (input channels C),
- ``classes``: foreground class names. Labels are one binary mask per class, stored in one
  uint8 map whose meaning ``label_encoding`` gives: ``index`` (classes mutually exclusive,
  value k = class k, 1-based, 0 = none) or ``bitmask`` (classes may overlap, bit k-1 set =
  class k; at most 8 classes). A missing ``label_encoding`` means ``index``.
- ``spacing`` (per spatial axis, in the same order) and ``spacing_unit`` (mm, um or px),
- ``normalization``: how raw intensities were mapped. Images are stored already
  normalised: ``divide_by`` gives the model input as ``stored / divide_by`` (255 for uint8
  RGB or grey kept as uint8; 1 for float32 data, e.g. MRI clipped to the 0.5-99.5
  percentiles and rescaled to [0, 1]); ``method`` names the mapping (``none`` or
  ``percentile``, with ``low``/``high`` percentiles).
- ``split``: ``{seed, val_fraction, test_fraction, train: [ids], val: [ids], test: [ids]}``,
  split by patient (no patient in two splits),
- ``cases``: ``[{id, patient, image, label, shape}]`` with ``image``/``label`` relative to
  the root and ``shape`` the spatial shape,
- optional ``source`` (what it was converted from) and ``format_version`` (1).

Arrays are opened with ``np.load(mmap_mode="r")``, so opening a gigapixel slide reads
nothing until a region is indexed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from ..core.errors import NCAError
from ..io.normalize import Normalizer

MANIFEST = "dataset.yaml"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("name", "synthetic", "kind", "modality", "dims", "channels", "classes", "spacing", "normalization", "split", "cases")
DATASET_KINDS = ("pathology", "radiology", "surgery", "xray", "generic")
LABEL_ENCODINGS = ("index", "bitmask")
SPLITS = ("train", "val", "test", "all")
CASE_KEYS = ("id", "patient", "image", "label", "shape")
BLOCK = 256  # edge of the blocks the foreground index is kept at


def load_manifest(root: str | Path) -> dict:
    """Read and validate ``<root>/dataset.yaml``; raises ``NCAError`` naming the file."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise NCAError(f"No {MANIFEST} in {Path(root)}; point to a folder written by `nca prepare`.")
    try:
        manifest = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise NCAError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); run `nca prepare` again.") from None
    if not isinstance(manifest, dict):
        raise NCAError(f"{path} does not hold a mapping; run `nca prepare` again.")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise NCAError(f"{path} lacks the key(s) {', '.join(missing)}; run `nca prepare` again.")
    if manifest["kind"] not in DATASET_KINDS:
        raise NCAError(f"{path} has kind {manifest['kind']!r}; use one of {', '.join(DATASET_KINDS)}.")
    if manifest["dims"] not in (2, 3):
        raise NCAError(f"{path} has dims {manifest['dims']!r}; only 2 and 3 are supported.")
    if not isinstance(manifest["channels"], int) or manifest["channels"] < 1:
        raise NCAError(f"{path} has channels {manifest['channels']!r}; a positive integer is required.")
    if not isinstance(manifest["classes"], list) or not manifest["classes"]:
        raise NCAError(f"{path} lists no classes; at least one foreground class name is required.")
    encoding = manifest.setdefault("label_encoding", "index")
    if encoding not in LABEL_ENCODINGS:
        raise NCAError(f"{path} has label_encoding {encoding!r}; use index or bitmask.")
    if encoding == "bitmask" and len(manifest["classes"]) > 8:
        raise NCAError(f"{path} has {len(manifest['classes'])} classes in bitmask encoding; at most 8 fit in uint8.")
    if len(manifest["spacing"]) != manifest["dims"]:
        raise NCAError(f"{path} gives {len(manifest['spacing'])} spacing values for {manifest['dims']}D data; give one per axis.")
    if not isinstance(manifest["normalization"], dict) or "divide_by" not in manifest["normalization"]:
        raise NCAError(f"{path} has no normalization.divide_by; run `nca prepare` again.")
    cases = manifest["cases"]
    if not isinstance(cases, list) or not cases:
        raise NCAError(f"{path} lists no cases; run `nca prepare` on a source with data.")
    ids = set()
    for case in cases:
        if not isinstance(case, dict) or any(k not in case for k in CASE_KEYS):
            raise NCAError(f"{path} has a case without all of {', '.join(CASE_KEYS)}; run `nca prepare` again.")
        if len(case["shape"]) != manifest["dims"]:
            raise NCAError(f"{path}: case {case['id']} has shape {case['shape']} for {manifest['dims']}D data; run `nca prepare` again.")
        ids.add(case["id"])
    split = manifest["split"]
    if not isinstance(split, dict) or any(not isinstance(split.get(k), list) for k in ("train", "val", "test")):
        raise NCAError(f"{path} has no train/val/test lists under split; run `nca prepare` again.")
    for part in ("train", "val", "test"):
        unknown = [i for i in split[part] if i not in ids]
        if unknown:
            raise NCAError(f"{path}: split {part} names unknown case {unknown[0]!r}; run `nca prepare` again.")
    return manifest


def label_masks(label: np.ndarray, num_classes: int, encoding: str = "index") -> np.ndarray:
    """Binary masks [*spatial, K] (uint8) from a stored label map [*spatial]."""
    label = np.asarray(label)
    if encoding == "index":
        return (label[..., None] == np.arange(1, num_classes + 1, dtype=label.dtype)).astype(np.uint8)
    return ((label[..., None] >> np.arange(num_classes, dtype=np.uint8)) & 1).astype(np.uint8)


def as_numpy_generator(generator) -> np.random.Generator:
    """A numpy Generator, or one seeded by a single draw from a ``torch.Generator``."""
    if isinstance(generator, np.random.Generator):
        return generator
    import torch

    if isinstance(generator, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    raise TypeError(f"expected a numpy or torch generator, got {type(generator).__name__}")


def _patch_size(size: int | Sequence[int], dims: int) -> tuple[int, ...]:
    if isinstance(size, (int, np.integer)):
        return (int(size),) * dims
    size = tuple(int(s) for s in size)
    if len(size) != dims:
        raise ValueError(f"patch size {size} has {len(size)} axes for {dims}D data")
    return size


def _crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``array[start:start+size]`` on the leading axes, zero-padded past the far edge."""
    index = tuple(slice(s, min(s + k, n)) for s, k, n in zip(start, size, array.shape))
    part = np.asarray(array[index])
    pad = [(0, k - p) for k, p in zip(size, part.shape)] + [(0, 0)] * (array.ndim - len(size))
    if any(after for _, after in pad):
        part = np.pad(part, pad)
    return np.ascontiguousarray(part)


class PreparedDataset:
    """One split of a prepared dataset; images and labels open as read-only memmaps."""

    def __init__(self, root: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise NCAError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self.split = split
        by_id = {c["id"]: c for c in self.manifest["cases"]}
        ids = [c["id"] for c in self.manifest["cases"]] if split == "all" else self.manifest["split"][split]
        self.cases = [by_id[i] for i in ids]
        self._index = {c["id"]: k for k, c in enumerate(self.cases)}
        self._foreground: dict[str, np.ndarray] = {}

    @property
    def ids(self) -> list[str]:
        return [c["id"] for c in self.cases]

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def dims(self) -> int:
        return int(self.manifest["dims"])

    @property
    def channels(self) -> int:
        return int(self.manifest["channels"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def label_encoding(self) -> str:
        return self.manifest["label_encoding"]

    def case(self, i: int | str) -> dict:
        """The manifest entry of case ``i`` (position in this split, or case id)."""
        if isinstance(i, str):
            if i not in self._index:
                raise NCAError(f"Case {i!r} is not in the {self.split} split of {self.root}; pick one of its ids.")
            return self.cases[self._index[i]]
        return self.cases[i]

    def _load(self, rel: str) -> np.ndarray:
        path = self.root / rel
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            raise NCAError(f"Cannot read {path}: the prepared dataset is incomplete; run `nca prepare` again.") from None

    def image(self, i: int | str) -> np.ndarray:
        """Image of case ``i``: read-only memmap [*spatial, C]."""
        return self._load(self.case(i)["image"])

    def label(self, i: int | str) -> np.ndarray:
        """Label map of case ``i``: read-only uint8 memmap [*spatial]."""
        return self._load(self.case(i)["label"])

    @property
    def normalization(self) -> dict:
        """How raw intensities were mapped (the manifest's ``normalization``)."""
        return dict(self.manifest["normalization"])

    def to_float(self, image: np.ndarray) -> np.ndarray:
        """Model input from stored pixels: float32 ``image / normalization.divide_by``."""
        return Normalizer("none", divide_by=self.manifest["normalization"]["divide_by"])(image)

    def to_masks(self, label: np.ndarray) -> np.ndarray:
        """Binary masks [*spatial, num_classes] from a stored label map."""
        return label_masks(label, self.num_classes, self.label_encoding)

    def patch_start(self, i: int | str, size: Sequence[int], generator, require_foreground: bool = False,
                    tries: int = 10) -> list[int]:
        """The corner of a random patch of ``size`` in case ``i`` (the one sampling rule).

        Positions are uniform over the valid range (an axis shorter than the patch starts at 0).
        With ``require_foreground`` up to ``tries`` random positions are tried, then the patch is
        placed around a random foreground pixel found through a per-case index of foreground
        blocks (built once, by one pass over the label); a case without any foreground gives a
        random patch. ``generator``: a numpy or torch generator (one draw seeds the choices)."""
        generator = as_numpy_generator(generator)
        label = self.label(i)
        size = _patch_size(size, label.ndim)

        def random_start() -> list[int]:
            return [int(generator.integers(0, max(n - k, 0) + 1)) for n, k in zip(label.shape, size)]

        start = random_start()
        if not require_foreground:
            return start
        for _ in range(tries):
            if np.asarray(label[tuple(slice(s, s + k) for s, k in zip(start, size))]).any():
                return start
            start = random_start()
        pos = self._foreground_position(i, label, generator)
        if pos is None:
            return start
        return [int(np.clip(p - generator.integers(0, k), 0, max(n - k, 0))) for p, k, n in zip(pos, size, label.shape)]

    def sample_patch(
        self,
        i: int | str,
        size: int | Sequence[int],
        generator,
        require_foreground: bool = False,
        tries: int = 10,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A random patch (image [*size, C], label [*size]) of case ``i`` as in-memory arrays,
        placed by :meth:`patch_start` and zero-padded past the far edge."""
        generator = as_numpy_generator(generator)
        size = _patch_size(size, self.dims)
        start = self.patch_start(i, size, generator, require_foreground, tries)
        return _crop(self.image(i), start, size), _crop(self.label(i), start, size)

    def _foreground_position(self, i, label: np.ndarray, generator: np.random.Generator) -> tuple[int, ...] | None:
        cid = self.case(i)["id"]
        if cid not in self._foreground:
            self._foreground[cid] = foreground_blocks(label)
        blocks = self._foreground[cid]
        if len(blocks) == 0:
            return None
        block = blocks[generator.integers(0, len(blocks))]
        origin = [int(b) * BLOCK for b in block]
        region = np.asarray(label[tuple(slice(o, o + BLOCK) for o in origin)])
        hits = np.argwhere(region != 0)
        hit = hits[generator.integers(0, len(hits))]
        return tuple(int(o + h) for o, h in zip(origin, hit))


def foreground_blocks(label: np.ndarray) -> np.ndarray:
    """Indices (M, dims) of the BLOCK^dims blocks of ``label`` holding any non-zero value.

    Reads the label once, BLOCK rows at a time, so a gigapixel memmap costs little memory.
    """
    found = []
    for k in range(-(-label.shape[0] // BLOCK)):
        chunk = np.asarray(label[k * BLOCK : (k + 1) * BLOCK]) != 0
        reduced = chunk.any(axis=0)
        for axis, n in enumerate(label.shape[1:]):
            reduced = np.logical_or.reduceat(reduced, np.arange(0, n, BLOCK), axis=axis)
        for idx in np.argwhere(reduced):
            found.append((k, *idx.tolist()))
    return np.asarray(found, dtype=np.int64).reshape(-1, label.ndim)
