"""Small pictures of a segmentation for a quick look: 2D previews and 3D/video montages.

Styles:

- ``outline`` (default): each class's boundary drawn inside the region in the class
  colour, 1-3 px wide depending on the picture size, with a 1 px dark halo just outside
  so that the bright line shows on white glass as well as on dark tissue, while the
  region's own pixels stay visible;
- ``fill``: class colours blended over the image, plus a 1 px edge in the class colour;
- ``side-by-side``: the image and the coloured mask (black background) next to each other.

Images are reduced by area averaging (no aliasing on H&E texture), labels by nearest
neighbour (values stay class indices).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..core.choices import PREVIEW_STYLES
from ..core.errors import NCAError
from ..core.files import atomic_path
from .palette import PALETTE, blend

GAP = 4
"""Pixels between the panels of side-by-side previews and between montage tiles."""
_GAP_GREY = 96
_HALO = 0.25  # halo pixels keep this fraction of their brightness


def downscale_nearest(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[h, w, ...]`` so that the longer side is at most ``max_side``.

    Arrays already small enough come back unchanged; labels keep their exact values.
    """
    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return arr
    nh, nw = _fit(h, w, max_side)
    return _nearest(arr, nh, nw)


def _fit(h: int, w: int, max_side: int) -> tuple[int, int]:
    """Size of an ``h`` x ``w`` picture shrunk to a longer side of at most ``max_side``."""
    if max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _nearest(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resample of ``[H, W, ...]`` to ``h`` x ``w`` (sampling pixel centres)."""
    rows = ((np.arange(h) + 0.5) * arr.shape[0] / h).astype(np.intp)
    cols = ((np.arange(w) + 0.5) * arr.shape[1] / w).astype(np.intp)
    return np.asarray(arr[np.ix_(rows, cols)])  # only the sampled pixels, even from a memmap


def _resize_image(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """``[H, W, C]`` uint8 to ``[h, w, 3]``: area averaging when shrinking, nearest when enlarging."""
    if image.ndim == 2:
        image = image[..., None]
    rgb = np.repeat(image[..., :1], 3, axis=-1) if image.shape[-1] < 3 else image[..., :3]
    if rgb.shape[:2] == (h, w):
        return np.ascontiguousarray(rgb)
    if h > rgb.shape[0] or w > rgb.shape[1]:
        return np.ascontiguousarray(_nearest(rgb, h, w))
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.Resampling.BOX))


def outline_width(h: int, w: int) -> int:
    """Line width for outlines on an ``h`` x ``w`` picture: 1 px up to 600, 2 up to 1400, else 3."""
    side = max(h, w)
    return 1 if side <= 600 else 2 if side <= 1400 else 3


def boundary(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of non-zero classes within ``width`` px (inside the region) of a different label.

    A pixel is on the boundary when a 4-neighbour has another label; pixels at the edge
    of the picture are not (the region may continue beyond it). Wider lines grow inward
    only, through pixels of the same label.
    """
    edge = np.zeros(labels.shape, bool)
    same = []
    for axis in (0, 1):
        differs = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= differs
        edge[tuple(hi)] |= differs
        same.append((tuple(lo), tuple(hi), ~differs))
    edge &= labels != 0
    line = edge
    for _ in range(width - 1):
        grown = line.copy()
        for lo, hi, keep in same:
            grown[lo] |= line[hi] & keep
            grown[hi] |= line[lo] & keep
        line = grown
    return line


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` moved by (dy, dx) pixels, zeros shifted in (no wrap-around)."""
    out = np.zeros_like(a)
    h, w = a.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = a[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out


_AROUND = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _halo(line: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pixels just outside the outlined regions: touching the line (8-neighbourhood) but
    neither on it nor of the class of a line pixel they touch."""
    halo = np.zeros(line.shape, bool)
    inside = np.zeros(line.shape, bool)
    for dy, dx in _AROUND:
        near = _shifted(line, dy, dx)
        halo |= near
        inside |= near & (_shifted(labels, dy, dx) == labels)
    return halo & ~line & ~inside


def draw_outline(rgb: np.ndarray, labels: np.ndarray, width: int, palette: np.ndarray = PALETTE,
                 halo: bool = True) -> np.ndarray:
    """``rgb`` with class outlines of ``width`` px in the palette colours, with a dark 1 px
    halo just outside each region (so the line shows on bright and dark backgrounds)."""
    out = np.array(rgb, dtype=np.uint8)
    line = boundary(labels, width)
    if halo:
        dark = _halo(line, labels)
        out[dark] = (out[dark] * _HALO).astype(np.uint8)
    out[line] = palette[labels[line]]
    return out


def render_preview(image: np.ndarray, labels: np.ndarray, *, style: str = "outline", max_side: int = 1024,
                   alpha: float = 0.4, palette: np.ndarray = PALETTE, size: tuple[int, int] | None = None) -> np.ndarray:
    """The picture :func:`write_preview` saves, as ``[h, w', 3]`` uint8.

    ``image`` is ``[H, W, C]`` (C = 1 or 3) or ``[H, W]`` uint8; ``labels`` ``[h, w]`` at
    any resolution (resampled to the picture). The picture is the image shrunk to a longer
    side of ``max_side`` (or exactly ``size`` = (h, w)); side-by-side doubles the width
    plus a :data:`GAP`.
    """
    if style not in PREVIEW_STYLES:
        raise ValueError(f"style must be one of {PREVIEW_STYLES}, got {style!r}")
    if image.dtype != np.uint8:
        raise ValueError(f"preview image must be uint8, got {image.dtype}")
    h, w = size if size is not None else _fit(image.shape[0], image.shape[1], max_side)
    rgb = _resize_image(image, h, w)
    small = _nearest(labels, h, w)
    if style == "outline":
        return draw_outline(rgb, small, outline_width(h, w), palette)
    if style == "fill":
        return draw_outline(blend(rgb, small, alpha, palette), small, 1, palette, halo=False)
    gap = np.full((h, GAP, 3), _GAP_GREY, np.uint8)
    return np.concatenate([rgb, gap, palette[small]], axis=1)


def _png_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise NCAError(f"Cannot write a preview to {path}: use a .png file name.")
    return path


def _save_png(path: Path, picture: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    return path


def write_preview(path: str | Path, image: np.ndarray, labels: np.ndarray, *, style: str = "outline",
                  max_side: int = 1024, alpha: float = 0.4, palette: np.ndarray = PALETTE) -> Path:
    """Write a PNG preview of ``labels`` over ``image`` (see :func:`render_preview`), atomically.

    For a 3D volume or a video use :func:`write_volume_preview`.
    """
    path = _png_path(path)
    return _save_png(path, render_preview(image, labels, style=style, max_side=max_side, alpha=alpha, palette=palette))


# --------------------------------------------------------------------------- volumes and videos


def _profiles(labels, shape: tuple[int, int, int], budget: int = 1 << 24) -> list[np.ndarray]:
    """Labelled-voxel counts per index along each axis, from a subsampled grid (cheap for any size)."""
    step = max(1, int(np.ceil((np.prod(shape, dtype=np.float64) / budget) ** (1 / 3))))
    counts = [np.zeros(n, np.int64) for n in shape]
    chunk = max(1, budget // max(1, (shape[1] // step + 1) * (shape[2] // step + 1)))
    for d0 in range(0, shape[0], step * chunk):
        sub = np.asarray(labels[d0 : d0 + step * chunk : step, ::step, ::step]) != 0
        d = np.arange(d0, min(d0 + step * chunk, shape[0]), step)[: sub.shape[0]]
        counts[0][d] += sub.sum(axis=(1, 2))
        counts[1][:: step][: sub.shape[1]] += sub.sum(axis=(0, 2))
        counts[2][:: step][: sub.shape[2]] += sub.sum(axis=(0, 1))
    return counts


def slice_positions(counts: np.ndarray, k: int) -> list[int]:
    """``k`` distinct indices: evenly spaced through the labelled mass, or the whole axis if none."""
    n = counts.size
    k = min(k, n)
    total = counts.sum()
    if total == 0:
        picks = np.floor((np.arange(k) + 0.5) * n / k)
    else:
        cum = np.cumsum(counts)
        picks = np.searchsorted(cum, (np.arange(k) + 0.5) * total / k, side="right")
    picks = sorted(set(np.clip(picks, 0, n - 1).astype(int).tolist()))
    free = [i for i in range(n) if i not in picks]
    while len(picks) < k:  # several quantiles in one slice: spread to the nearest unused ones
        centre = picks[len(picks) // 2]
        nearest = min(free, key=lambda i: abs(i - centre))
        free.remove(nearest)
        picks = sorted(picks + [nearest])
    return picks


def _plane(labels, axis: int, index: int) -> np.ndarray:
    if axis == 0:
        return np.asarray(labels[index])
    if axis == 1:
        return np.asarray(labels[:, index])
    return np.asarray(labels[:, :, index])


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ValueError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def write_volume_preview(
    path: str | Path,
    read_slice: Callable[[int, int], np.ndarray],
    shape: Sequence[int],
    labels: np.ndarray,
    *,
    style: str = "outline",
    slices: int = 3,
    max_side: int = 1536,
    alpha: float = 0.4,
    palette: np.ndarray = PALETTE,
    spacing: Sequence[float] | None = None,
    plane_names: Sequence[str] = ("axial", "coronal", "sagittal"),
) -> Path:
    """Write a PNG montage of a 3D segmentation: ``slices`` planes along each of the three axes.

    ``shape`` is the ``(D, H, W)`` size and ``labels`` the ``[D, H, W]`` uint8 classes (a
    memmap works; it is only sampled and sliced). ``read_slice(axis, index)`` returns the
    image plane as uint8 ``[h, w, C]`` (C = 1 or 3), already scaled for display:
    ``axis`` 0 gives ``[H, W]`` at depth ``index``, 1 gives ``[D, W]`` at row ``index``,
    2 gives ``[D, H]`` at column ``index``; only the planes shown are read, so a huge
    volume or video is never read whole. Planes are picked evenly through the labelled
    region (evenly through the volume when nothing is labelled).

    Row k of the montage holds the planes along axis k, each captioned with
    ``plane_names[k]`` and its index; planes along depth are drawn with depth (index 0
    first) downwards. ``spacing`` ``(z, y, x)`` draws them at their physical aspect. For a
    video (D = frames) pass e.g. ``plane_names=("frame", "row", "column")``: a "row"
    plane then shows one image row through time. All tiles share one cell size; the
    montage's longer side is at most ``max_side``.
    """
    path = _png_path(path)
    shape = _check_volume_args(style, shape, labels, plane_names)
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
    picks = [slice_positions(c, slices) for c in _profiles(labels, shape)]
    columns = max(len(p) for p in picks)
    text = 12 if max_side >= 600 else 9
    caption = text + 4
    cell_w, sizes, (height, width) = _montage_layout(shape, spacing, columns, max_side,
                                                     2 if style == "side-by-side" else 1, caption)
    montage = np.full((height, width, 3), 24, np.uint8)
    captions = []
    top = GAP
    for axis, indices in enumerate(picks):
        size = sizes[axis]
        top += caption
        for col, index in enumerate(indices):
            tile = _volume_tile(read_slice, labels, axis, index, size,
                                style=style, alpha=alpha, palette=palette)
            left = GAP + col * (cell_w + GAP)
            x = left + (cell_w - tile.shape[1]) // 2
            montage[top : top + tile.shape[0], x : x + tile.shape[1]] = tile
            captions.append(((left, top - caption + 1), f"{plane_names[axis]} {index}"))
        top += size[0] + GAP
    return _save_png(path, _captioned(montage, captions, text))


def _check_volume_args(style: str, shape: Sequence[int], labels: np.ndarray,
                       plane_names: Sequence[str]) -> tuple[int, int, int]:
    """Refuse an unknown style, labels not of the volume's ``[D, H, W]`` shape or not three plane
    names; return the shape as ints."""
    if style not in PREVIEW_STYLES:
        raise ValueError(f"style must be one of {PREVIEW_STYLES}, got {style!r}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or tuple(labels.shape) != shape or min(shape) < 1:
        raise ValueError(f"labels {tuple(labels.shape)} must be [D, H, W] of the volume's shape {shape}")
    if len(plane_names) != 3:
        raise ValueError("plane_names needs one name per axis")
    return shape


def _volume_tile(read_slice: Callable[[int, int], np.ndarray], labels: np.ndarray, axis: int, index: int,
                 size: tuple[int, int], *, style: str, alpha: float, palette: np.ndarray) -> np.ndarray:
    """The rendered tile of plane ``index`` along ``axis``: its image read and its labels drawn over it."""
    image = np.asarray(read_slice(axis, index))
    plane = _plane(labels, axis, index)
    if image.shape[:2] != plane.shape:
        raise ValueError(f"read_slice({axis}, {index}) gave {image.shape[:2]}, expected {plane.shape}")
    return render_preview(image, plane, style=style, alpha=alpha, palette=palette, size=size)


def _montage_layout(shape: tuple, spacing: tuple, columns: int, max_side: int, wide: int,
                    caption: int) -> tuple[int, list[tuple[int, int]], tuple[int, int]]:
    """The montage's cell width, the (h, w) of the planes along each axis and its (height, width):
    each plane fits a cell x cell box at its physical aspect; a row is as tall as its planes."""
    plane_axes = [(1, 2), (0, 2), (0, 1)]  # (rows, columns) of the planes along each axis
    extent = [(shape[r] * spacing[r], shape[c] * spacing[c]) for r, c in plane_axes]
    tall = [ph / max(ph, pw) for ph, pw in extent]
    cell = min((max_side - GAP * (columns + 1) - (wide - 1) * GAP * columns) // (columns * wide),
               int((max_side - 4 * GAP - 3 * caption) / sum(tall)))
    cell = max(cell, 8)
    cell_w = wide * cell + (wide - 1) * GAP
    sizes = [(max(1, round(cell * ph / max(ph, pw))), max(1, round(cell * pw / max(ph, pw)))) for ph, pw in extent]
    width = columns * cell_w + (columns + 1) * GAP
    height = sum(h for h, _ in sizes) + 3 * caption + 4 * GAP
    return cell_w, sizes, (height, width)


def _captioned(montage: np.ndarray, captions: list, text: int) -> np.ndarray:
    """``montage`` with each ``(xy, label)`` caption drawn in a ``text``-pixel font."""
    picture = Image.fromarray(montage)
    draw = ImageDraw.Draw(picture)
    font = _font(text)
    for xy, label in captions:
        draw.text(xy, label, fill=(230, 230, 230), font=font)
    return np.asarray(picture)
