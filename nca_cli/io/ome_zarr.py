"""Label masks as OME-Zarr (OME-NGFF 0.4) label images that napari, QuPath and the ``ome-zarr`` reader open.

The store is one multiscale label image: level ``0`` holds the mask at the segmented
resolution; each further level halves the space axes by nearest-neighbour sampling (labels
are never averaged), so every level is ``level0[::2**k, ::2**k]`` and holds only labels of
level 0. The coordinate transformations carry the physical scale: µm per pixel for slides
and images that record it, mm for volumes, seconds per frame for videos. The ``image-label``
metadata names each class and gives it the project palette's colour.

:class:`LabelStore` takes the mask a region at a time (bands from :func:`write_ome_zarr`, or
tiles that cover whole chunks and so write only their own chunks), then builds the pyramid
chunk by chunk from the level below: no second full-resolution copy is ever held. The store
is written into a temporary folder and renamed when complete (``core.files.atomic_folder``).
``zarr`` is imported only when such an output is written.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..core.errors import NCAError
from ..core.files import atomic_folder
from .formats import OME_ZARR_SUFFIXES, full_suffix, strip_suffix
from .palette import PALETTE

NGFF_VERSION = "0.4"
PYRAMID_MIN_SIDE = 256
"""Reduced levels are added until the longest space axis is at most this many pixels."""
CHUNKS = {"slide": (512, 512), "image": (512, 512), "volume": (64, 128, 128), "video": (1, 512, 512)}
_MISSING = 'writing OME-Zarr needs the zarr package: pip install "nca[formats]"'


@dataclass(frozen=True)
class Axis:
    """One NGFF axis: name, type (``space`` or ``time``), unit (None when unknown) and the
    size of a level-0 pixel along it in that unit."""

    name: str
    type: str
    unit: str | None
    scale: float

    def entry(self) -> dict:
        return {"name": self.name, "type": self.type, **({"unit": self.unit} if self.unit else {})}


def axes_for(kind: str, meta: dict, ndim: int) -> list[Axis]:
    """The axes of a ``kind`` mask with the reader's ``meta``: slides and images in µm when
    their resolution is known (``mpp``), else in mm when the reader gives a ``spacing`` (x
    first); volumes in mm; videos as frames in seconds (``1 / fps``), rows and columns in mm
    when the file records a spacing."""
    spacing = meta.get("spacing")
    if ndim == 2:
        if meta.get("mpp"):
            return [Axis(n, "space", "micrometer", float(meta["mpp"])) for n in "yx"]
        unit, (sx, sy) = ("millimeter", spacing[:2]) if spacing else (None, (1.0, 1.0))
        return [Axis("y", "space", unit, float(sy)), Axis("x", "space", unit, float(sx))]
    if kind == "video":
        fps = float(meta.get("fps") or 0.0)
        unit, (sx, sy) = ("millimeter", spacing[:2]) if spacing else (None, (1.0, 1.0))
        return [Axis("t", "time", "second" if fps > 0 else None, 1.0 / fps if fps > 0 else 1.0),
                Axis("y", "space", unit, float(sy)), Axis("x", "space", unit, float(sx))]
    return [Axis(n, "space", "millimeter", float(s)) for n, s in zip("zyx", reversed((spacing or (1.0,) * 3)[:3]))]


def level_factors(shape: tuple[int, ...], axes: list[Axis], min_side: int = PYRAMID_MIN_SIDE) -> list[tuple[int, ...]]:
    """Per-axis downsample factors of each level: space axes halve until the longest space
    axis is at most ``min_side``; time axes are never reduced."""
    space = [i for i, a in enumerate(axes) if a.type == "space"]
    factors = [tuple(1 for _ in shape)]
    while max(-(-shape[i] // factors[-1][i]) for i in space) > min_side:
        factors.append(tuple(f * 2 if i in space else f for i, f in enumerate(factors[-1])))
    return factors


def _zarr():
    try:
        import zarr
    except ImportError:
        raise NCAError(f"Cannot write OME-Zarr: {_MISSING}.") from None
    return zarr


def label_metadata(classes: list[str]) -> dict:
    """``image-label`` metadata: class names (``properties``) and palette colours (``colors``;
    background transparent) of labels 0 (background), 1, 2, ..."""
    names = ["background", *classes]
    colors = [{"label-value": k, "rgba": [int(c) for c in PALETTE[k]] + [0 if k == 0 else 255]}
              for k in range(len(names))]
    properties = [{"label-value": k, "class": name} for k, name in enumerate(names)]
    return {"version": NGFF_VERSION, "colors": colors, "properties": properties}


class LabelStore:
    """An OME-Zarr label image being written into ``folder`` (a fresh, empty folder).

    :meth:`write` stores a region of level 0; :meth:`finish` adds the reduced levels and the
    metadata. Regions aligned to :attr:`chunks` write their own chunks and nothing else.
    """

    def __init__(self, folder: Path, shape: tuple[int, ...], axes: list[Axis], classes: list[str],
                 chunks: tuple[int, ...], name: str = "mask"):
        if len(shape) != len(axes) or len(chunks) != len(axes):
            raise ValueError(f"shape {shape}, axes {[a.name for a in axes]} and chunks {chunks} differ in length")
        zarr = _zarr()
        self.shape = tuple(int(s) for s in shape)
        self.axes = axes
        self.classes = classes
        self.name = name
        self.chunks = tuple(max(1, min(int(c), s)) for c, s in zip(chunks, self.shape))
        self.factors = level_factors(self.shape, axes)
        self.group = zarr.open_group(str(folder), mode="w", zarr_format=2)
        self.levels = [self.group.create_array(
            name=str(k), shape=tuple(-(-s // f) for s, f in zip(self.shape, fac)), chunks=self.chunks, dtype="uint8",
            fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})
            for k, fac in enumerate(self.factors)]

    def write(self, region: tuple[slice, ...], block: np.ndarray) -> None:
        """Store ``block`` (uint8) at ``region`` of level 0."""
        self.levels[0][region] = np.asarray(block, dtype=np.uint8)

    def finish(self) -> None:
        """Each reduced level from the one below, one output chunk at a time, then the metadata."""
        for k in range(1, len(self.levels)):
            below, level = self.levels[k - 1], self.levels[k]
            step = tuple(f // g for f, g in zip(self.factors[k], self.factors[k - 1]))
            for region in chunk_regions(level.shape, self.chunks):
                source = tuple(slice(r.start * s, r.stop * s) for r, s in zip(region, step))
                level[region] = below[source][tuple(slice(None, None, s) for s in step)]
        self.group.attrs.update(self.metadata())

    def metadata(self) -> dict:
        datasets = [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": [a.scale * f for a, f in zip(self.axes, fac)]}]}
            for k, fac in enumerate(self.factors)]
        multiscale = {"version": NGFF_VERSION, "name": self.name, "axes": [a.entry() for a in self.axes],
                      "datasets": datasets, "type": "nearest",
                      "metadata": {"description": "each level samples level 0 at every 2**k-th pixel"}}
        return {"multiscales": [multiscale], "image-label": label_metadata(self.classes)}


def chunk_regions(shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterable[tuple[slice, ...]]:
    """The regions of the chunk grid of ``shape``, row-major."""
    ranges = [range(0, s, c) for s, c in zip(shape, chunks)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(a, min(a + c, s)) for a, c, s in zip(starts, chunks, shape))


def write_ome_zarr(path: str | Path, labels: np.ndarray, kind: str, meta: dict, classes: list[str]) -> Path:
    """Write ``labels`` (uint8 ``[H, W]``, ``[D, H, W]`` or ``[T, H, W]``; may be a memmap) of a
    ``kind`` input with the reader's ``meta`` as an OME-Zarr label image at ``path``
    (``*.ome.zarr``), a band of chunk rows at a time; the folder appears only when complete."""
    path = Path(path)
    if full_suffix(path) not in OME_ZARR_SUFFIXES:
        raise NCAError(f"Cannot write an OME-Zarr mask to {path}: use a name ending in .ome.zarr.")
    if labels.dtype != np.uint8 or labels.ndim not in (2, 3):
        raise ValueError(f"labels must be uint8 [H, W] or [D, H, W], got {labels.dtype} {labels.shape}")
    axes = axes_for(kind, meta, labels.ndim)
    chunks = CHUNKS.get(kind, CHUNKS["volume"])[-labels.ndim:]
    with atomic_folder(path) as tmp:
        store = LabelStore(tmp, labels.shape, axes, classes, chunks, name=strip_suffix(path))
        band = store.chunks[0]
        for start in range(0, labels.shape[0], band):
            rows = slice(start, min(start + band, labels.shape[0]))
            store.write((rows,), labels[rows])
        store.finish()
    return path
