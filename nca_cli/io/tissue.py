"""Tissue masks of whole slides: where there is tissue, so glass need not be segmented.

:func:`detect_tissue` reads one low-resolution level of a slide (at most ``MAX_SIDE`` pixels on
its long side), thresholds its saturation with Otsu's method (kept between ``MIN_THRESHOLD`` and
``MAX_THRESHOLD``, so a slide that is all glass or all tissue is not split in two), closes
small gaps, fills holes and widens the result by a margin: well under a second for any slide.
:func:`read_tissue` takes a user's mask instead: a PNG/TIFF at any scale (non-zero = tissue,
stretched over the slide) or a GeoJSON of polygons in level-0 pixels (QuPath's export).

A :class:`TissueMask` answers, for the input as it is segmented (``downsample`` level-0 pixels
per pixel), whether a region holds any tissue (tiles without are skipped) and which of its
pixels are tissue (the mask is ANDed with that).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import NCAError

MAX_SIDE = 1024          # long side of the image the tissue is detected on, at most
MIN_SIDE = 512           # the level read is the coarsest at least this long
MIN_THRESHOLD = 0.04     # saturation: glass stays below this
MAX_THRESHOLD = 0.15     # and stained tissue above this
MARGIN = 2               # pixels of the detection image added around the tissue


@dataclass
class TissueMask:
    mask: np.ndarray          # bool [h, w]
    scale: tuple[float, float]  # level-0 pixels per mask pixel (y, x)
    source: str               # "auto" or the file it was read from

    @property
    def fraction(self) -> float:
        return float(self.mask.mean())

    def _range(self, part: slice, downsample: float, axis: int) -> slice:
        n = self.mask.shape[axis]
        lo = int(math.floor(part.start * downsample / self.scale[axis]))
        hi = int(math.ceil(part.stop * downsample / self.scale[axis]))
        return slice(min(max(lo, 0), n - 1), min(max(hi, lo + 1), n))

    def holds_tissue(self, region, downsample: float) -> bool:
        """Whether any tissue pixel overlaps ``region`` (slices of the segmented input)."""
        return bool(self.mask[self._range(region[0], downsample, 0), self._range(region[1], downsample, 1)].any())

    def pixels(self, rows: slice, width: int, downsample: float) -> np.ndarray:
        """Bool ``[rows, width]``: the tissue pixel each segmented pixel's centre lies in."""
        def index(part: slice, axis: int) -> np.ndarray:
            centres = (np.arange(part.start, part.stop) + 0.5) * downsample / self.scale[axis]
            return np.clip(centres.astype(np.int64), 0, self.mask.shape[axis] - 1)

        return self.mask[np.ix_(index(rows, 0), index(slice(0, width), 1))]

    def outline(self, shape: tuple[int, int]) -> np.ndarray:
        """Bool ``shape``: the tissue's boundary pixels, the mask stretched over ``shape``."""
        rows = np.minimum((np.arange(shape[0]) * self.mask.shape[0]) // shape[0], self.mask.shape[0] - 1)
        cols = np.minimum((np.arange(shape[1]) * self.mask.shape[1]) // shape[1], self.mask.shape[1] - 1)
        m = self.mask[np.ix_(rows, cols)]
        inner = m.copy()
        inner[1:] &= m[:-1]
        inner[:-1] &= m[1:]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        return m & ~inner


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    omega = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of uint8 RGB ``[h, w, 3]`` in [0, 1]."""
    hi = rgb.max(axis=-1).astype(np.float32)
    lo = rgb.min(axis=-1).astype(np.float32)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0)


def tissue_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Bool tissue mask of a low-resolution RGB image (saturation, Otsu, closing, holes, margin)."""
    import SimpleITK as sitk

    sat = saturation(rgb)
    threshold = min(max(otsu_threshold(sat), MIN_THRESHOLD), MAX_THRESHOLD)
    image = sitk.GetImageFromArray((sat > threshold).astype(np.uint8))
    image = sitk.BinaryMorphologicalClosing(image, [2, 2])
    image = sitk.BinaryFillhole(image)
    image = sitk.BinaryDilate(image, [MARGIN, MARGIN])
    return sitk.GetArrayFromImage(image).astype(bool)


def detect_tissue(path: Path) -> TissueMask:
    """The tissue of the slide at ``path``, from its coarsest level at least ``MIN_SIDE`` long
    (read whole, then block-averaged to at most ``MAX_SIDE``)."""
    from .slide import open_slide

    with open_slide(path) as slide:
        sizes = slide.meta["level_dimensions"]
        level = max([k for k, (h, w) in enumerate(sizes) if max(h, w) >= MIN_SIDE] or [0])
    with open_slide(path, level=level) as slide:
        h, w = slide.spatial_shape
        factor = max(1, -(-max(h, w) // MAX_SIDE))
        rgb = slide.read_downsampled(factor)
        h0, w0 = slide.meta["level0_shape"]
    if rgb.shape[-1] < 3:
        raise NCAError(f"{path} is not an RGB slide, so its tissue cannot be detected; pass --tissue off or a mask.")
    mask = tissue_from_rgb(rgb[..., :3])
    return TissueMask(mask, (h0 / mask.shape[0], w0 / mask.shape[1]), "auto")


def read_tissue(path: Path, level0_shape: tuple[int, int]) -> TissueMask:
    """A user's tissue mask: an image (non-zero = tissue, any scale) or GeoJSON polygons."""
    path = Path(path)
    if not path.is_file():
        raise NCAError(f"The tissue mask {path} does not exist; pass an existing PNG/TIFF/GeoJSON, 'auto' or 'off'.")
    h0, w0 = level0_shape
    if path.suffix.lower() in (".geojson", ".json"):
        mask = _rasterise_geojson(path, level0_shape)
    else:
        from . import read_label_image

        try:
            mask = read_label_image(path) > 0
        except NCAError:
            raise
        except Exception:
            raise NCAError(f"Cannot read the tissue mask {path}; pass a PNG or TIFF (non-zero = tissue) or a GeoJSON.") from None
        if mask.ndim != 2:
            raise NCAError(f"The tissue mask {path} is not a 2D image; pass a single-channel PNG or TIFF.")
    return TissueMask(mask, (h0 / mask.shape[0], w0 / mask.shape[1]), str(path))


def _rasterise_geojson(path: Path, level0_shape: tuple[int, int]) -> np.ndarray:
    """Polygons (level-0 pixels) drawn on a grid of at most ``MAX_SIDE`` pixels (holes cleared)."""
    from PIL import Image, ImageDraw

    h0, w0 = level0_shape
    f = max(1.0, max(h0, w0) / (4 * MAX_SIDE))   # user polygons are drawn finer than detection needs
    size = (max(1, math.ceil(w0 / f)), max(1, math.ceil(h0 / f)))
    try:
        doc = json.loads(path.read_text())
        features = doc["features"] if doc.get("type") == "FeatureCollection" else [doc]
        polygons = []
        for feature in features:
            geometry = feature.get("geometry") or feature
            parts = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
            polygons += parts if geometry["type"] in ("Polygon", "MultiPolygon") else []
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise NCAError(f"The tissue mask {path} is not a GeoJSON of polygons; export the annotations from QuPath "
                       f"as GeoJSON.") from None
    canvas = Image.new("1", size, 0)
    draw = ImageDraw.Draw(canvas)
    for rings in polygons:
        for k, ring in enumerate(rings):
            # PIL fills the pixels a polygon's edges touch; half a pixel in keeps pixel centres' rule
            draw.polygon([(float(x) / f - 0.5, float(y) / f - 0.5) for x, y in ring], fill=0 if k else 1)
    return np.array(canvas, dtype=bool)
