"""QuPath-readable GeoJSON polygons from class masks of any size, streamed band by band.

:func:`write_geojson` turns a ``[H, W]`` uint8 class mask (0 = background) into one Polygon
Feature per 4-connected region of each class, with holes as interior rings, in level-0
pixel coordinates. QuPath imports the file by drag and drop (or *File > Import objects*).

Memory. The mask is read in bands of rows, so a gigapixel ``numpy.memmap`` is never loaded
whole. Besides one band, only the regions that reach the band's last row are held: their
boundary pieces so far (polylines whose two ends lie on the band's lower edge) and their
already closed rings (holes). A region's Feature is written to the file, and forgotten, as
soon as the band holding its last row has been read.

Geometry. Pixel (row r, col c) covers x in [c, c+1], y in [r, r+1]; level-0 coordinates
are ``offset + downsample * (x, y)``. Boundaries run along pixel edges, so at
``tolerance=0`` filling the polygons at pixel centres gives back the mask exactly. Where a
region touches itself or a hole only at a pixel corner (a "pinch"), foreground is 4- and
background 8-connected: the boundary is split there into simple rings that share that one
point, as the OGC simple-features rules allow between a polygon's rings.

Orientation. Exterior rings have positive signed (shoelace) area computed on the numbers
as written and holes negative: counter-clockwise and clockwise in the sense of RFC 7946's
right-hand rule with x to the right and y up. Shown in image coordinates (y down) that is
clockwise on screen. QuPath builds its shapes with JTS, which does not depend on ring
orientation, so it reads either.

Simplification. Rings are simplified with Douglas-Peucker at ``tolerance`` mask pixels;
vertices where rings touch are kept. A simplified polygon is checked (every ring simple,
no crossings, holes inside the exterior, orientation kept, at least three vertices); rings
that fail are simplified again with a smaller tolerance, down to the exact pixel outline.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NCAError
from ..core.files import atomic_path
from .contours import _ClassTracer, _group_ranges
from .formats import GEOJSON_SUFFIXES
from .palette import PALETTE
from .simplify import _polygons

OBJECT_TYPES = ("annotation", "detection")
BAND_PIXELS = 1 << 23
"""Default band size in pixels (band rows = this / mask width): a few tens of MB of work arrays."""



# --------------------------------------------------------------------------- edges and their order


def _class_table(class_names, colours) -> dict[int, tuple[str, list[int]]]:
    """Class index -> (name, [r, g, b]) from a sequence (index = class) or a mapping."""
    names = dict(class_names.items()) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    if colours is None:
        cols = {k: PALETTE[k].tolist() for k in names if 0 <= k < 256}
    else:
        cols = dict(colours.items()) if isinstance(colours, Mapping) else dict(enumerate(colours))
    table = {}
    for k, name in names.items():
        if k == 0 or k not in cols:
            continue
        rgb = [int(c) for c in cols[k]]
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"colour of class {k} must be three values 0-255, got {cols[k]!r}")
        table[int(k)] = (str(name), rgb)
    return table


class _FeatureWriter:
    """Writes Features of finished regions to an open text file as they come, and counts them.

    Coordinates are formatted ring by ring, so even a region with millions of vertices is
    never held as Python objects all at once.
    """

    def __init__(self, out, table: dict[int, tuple[str, list[int]]], object_type: str,
                 downsample: tuple[float, float], offset: tuple[float, float]):
        self.out, self.table, self.object_type = out, table, object_type
        self.integral = all(float(v).is_integer() for v in (*downsample, *offset))
        kind = np.int64 if self.integral else np.float64
        self.scale, self.shift = np.array(downsample, kind), np.array(offset, kind)
        self.props: dict[int, str] = {}
        self.counts: dict[str, Any] = {"features": 0, "features_per_class": {}, "holes": 0, "vertices": 0}
        self.sep = "\n"
        out.write('{"type":"FeatureCollection","features":[')

    def _properties(self, cls: int) -> str:
        if cls not in self.props:
            name, rgb = self.table[cls]
            props = {"objectType": self.object_type, "classification": {"name": name, "color": rgb}, "isLocked": False}
            self.props[cls] = json.dumps(props, separators=(",", ":"))
            self.counts["features_per_class"].setdefault(name, 0)
        return self.props[cls]

    def write(self, classes: list[int], polygons: list[list[np.ndarray]]) -> None:
        """One Feature per polygon (rings in mask pixels, exterior first), coordinates scaled to level 0."""
        rings = [r for poly in polygons for r in poly]
        lengths = np.array([r.shape[0] for r in rings], np.int64)
        starts = np.cumsum(lengths) - lengths
        ring, within = _group_ranges(lengths + 1)
        v = np.concatenate(rings).astype(np.int64)[starts[ring] + within % lengths[ring]]  # closed rings
        del ring, within
        coords = v * self.scale + self.shift
        if not self.integral:
            coords = np.round(coords, 4)
        at = 0
        c = self.counts
        for cls, poly in zip(classes, polygons):
            parts = []
            for r in poly:
                n = r.shape[0] + 1
                parts.append(json.dumps(coords[at : at + n].tolist(), separators=(",", ":")))
                at += n
            self.out.write(f'{self.sep}{{"type":"Feature","geometry":{{"type":"Polygon","coordinates":['
                           f'{",".join(parts)}]}},"properties":{self._properties(cls)}}}')
            self.sep = ",\n"
            c["features_per_class"][self.table[cls][0]] += 1
        c["features"] += len(polygons)
        c["holes"] += len(rings) - len(polygons)
        c["vertices"] += int(lengths.sum())
        self.out.flush()  # a band's features go to disk now, not when the file closes

    def close(self) -> None:
        self.out.write("\n]}\n")


def _check_arguments(labels, downsample, tolerance: float, object_type: str,
                     band_rows: int | None) -> tuple[tuple[float, float], int]:
    """``write_geojson``'s arguments checked: the (x, y) downsample and the rows per band."""
    if len(labels.shape) != 2 or np.dtype(labels.dtype) != np.uint8:
        raise ValueError(f"labels must be uint8 [H, W], got {labels.dtype} {labels.shape}")
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, got {object_type!r}")
    dx, dy = (downsample, downsample) if np.ndim(downsample) == 0 else tuple(downsample)
    if not (dx > 0 and dy > 0):
        raise ValueError(f"downsample must be positive, got {downsample!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    W = int(labels.shape[1])
    rows = int(band_rows) if band_rows is not None else max(1, BAND_PIXELS // max(W, 1))
    if rows < 1:
        raise ValueError(f"band_rows must be >= 1, got {band_rows!r}")
    return (dx, dy), rows


def _trace_bands(labels, rows: int, table: dict, writer: "_FeatureWriter", tolerance: float) -> None:
    """Trace ``labels`` ``rows`` rows at a time; each region is simplified and written as soon as
    it is complete."""
    H, W = (int(n) for n in labels.shape)
    tracers: dict[int, _ClassTracer] = {}
    next_id = 1
    up = np.zeros(W, np.uint8)
    for y0 in range(0, H if W else 0, rows):
        band = np.asarray(labels[y0 : y0 + rows])
        if y0 + rows >= H:  # a background row below closes every region
            band = np.concatenate([band, np.zeros((1, W), np.uint8)])
        present = set((np.flatnonzero(np.bincount(band.ravel(), minlength=256)[1:]) + 1).tolist())
        unnamed = present - table.keys()
        if unnamed:
            raise ValueError(f"labels hold class {min(unnamed)}, which class_names does not name")
        finished = []
        for cls in sorted(present | set(tracers)):
            tracer = tracers.setdefault(cls, _ClassTracer())
            done, next_id = tracer.feed(band == cls, up == cls, y0, next_id)
            finished.extend((cls, rings) for _, rings in done)
            if tracer.idle():
                del tracers[cls]
        if finished:
            writer.write([c for c, _ in finished], _polygons([loops for _, loops in finished], tolerance))
        up = band[-1].copy()


def write_geojson(
    path: str | Path,
    labels: np.ndarray,
    class_names: Sequence[str] | Mapping[int, str],
    *,
    colours: Sequence[Sequence[int]] | Mapping[int, Sequence[int]] | None = None,
    downsample: float | tuple[float, float] = 1.0,
    offset: tuple[float, float] = (0, 0),
    tolerance: float = 1.0,
    object_type: str = "annotation",
    band_rows: int | None = None,
) -> dict[str, Any]:
    """Write the regions of a class mask as a QuPath-readable GeoJSON FeatureCollection.

    ``labels`` is a ``[H, W]`` uint8 array of class indices, 0 = background; anything that
    slices by rows like an array works, e.g. a ``numpy.memmap`` of a gigapixel mask, which
    is read ``band_rows`` rows at a time (default: about 8 M pixels per band). Every
    4-connected region of a class becomes one Polygon Feature (holes as interior rings)
    with ``properties`` ``{"objectType": object_type, "classification": {"name", "color"},
    "isLocked": false}``, written as soon as the region is complete; the file appears
    under ``path`` only once everything is written.

    ``class_names[k]`` names class ``k`` (a sequence indexed by class, entry 0 ignored, or a
    mapping); ``colours`` likewise, default the project palette. Coordinates are level-0
    pixels: ``offset + downsample * (x, y)`` with ``(x, y)`` on the mask's pixel grid, so a
    mask of pyramid level L passes that level's downsample (a number, or ``(x, y)``
    factors) and ``offset`` places a crop ``(x, y)`` within the slide. ``tolerance`` is the
    simplification tolerance in mask pixels (0: exact pixel outlines).

    Returns counts: ``features``, ``features_per_class`` (by name), ``holes`` and
    ``vertices`` (distinct ring vertices, without the repeated closing ones).
    """
    path = Path(path)
    if path.suffix.lower() not in GEOJSON_SUFFIXES:
        raise NCAError(f"Cannot write polygons to {path}: use a .geojson or .json file name.")
    (dx, dy), rows = _check_arguments(labels, downsample, tolerance, object_type, band_rows)
    table = _class_table(class_names, colours)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        writer = _FeatureWriter(out, table, object_type, (dx, dy), tuple(offset))
        _trace_bands(labels, rows, table, writer, tolerance)
        writer.close()
    return writer.counts
