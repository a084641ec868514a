"""Synthetic H&E-like whole-slide images, streamed tile by tile into pyramidal tiled BigTIFFs.

The slide is a procedural function of position (in µm) and seed, so every tile is computed
on its own from (seed, tile position), tiles join exactly, and every pyramid level is
rendered directly at its own resolution: memory stays at a few tiles whatever the slide
size. Content, drawn to be learnable from colour and texture:

- glass (near white) around tissue islands;
- stroma: pink with crossing fibres and sparse nuclei;
- glands (the target, "epithelium"): purple rings of cytoplasm densely packed with dark
  nuclei around a pale lumen;
- distractors that are not epithelium: lymphocyte clusters (dense small dark-blue nuclei
  in stroma), blood vessels (red) and fat vacuoles (white holes).

The mask, when asked for, uses PESO's values: 0 glass, 1 other tissue, 2 epithelium.

A photographed slide (``photo_seed``: the target domain of ``--shifted``) is rendered whole
at full resolution, turned into a phone photo of a monitor by ``shift.photograph`` (the
mask moves with it), and its coarser levels are averages of that photo (the mask's:
nearest), so it is limited to ``PHOTO_MAX_PIXELS``.
"""
from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..core.files import atomic_path
from ..core.seeds import MASK32 as _M
GLASS = np.array([242, 239, 244], np.float32)
# stroma, epithelial cytoplasm, lumen, blood, fat
PALETTE = np.array([[229, 146, 188], [178, 112, 182], [246, 232, 242], [196, 58, 72], [247, 245, 247]], np.float32)
# nuclei: epithelial/stromal, lymphocyte
NUCLEI = np.array([[72, 40, 125], [52, 38, 110]], np.float32)

PHOTO_MAX_PIXELS = 4096 * 4096
GLAND_CELL = 170.0  # µm between gland candidates
VESSEL_CELL = 310.0
FAT_CELL = 260.0


def _mix(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return h


def hash_u32(seed: int, *coords) -> np.ndarray:
    """Counter-based hash of integer coordinates (broadcast) and a seed, as uint32."""
    shape = np.broadcast_shapes(*[np.shape(c) for c in coords])
    h = np.full(shape, ((seed & _M) * 0x9E3779B1 + 0x632BE5AB) & _M, dtype=np.uint32)
    for c in coords:
        h ^= (np.asarray(c, dtype=np.int64) & _M).astype(np.uint32)
        h = _mix(h)
    return h


def _unit(h: np.ndarray, byte: int) -> np.ndarray:
    """One of the four bytes of a hash as a float in [0, 1)."""
    return ((h >> np.uint32(8 * byte)) & np.uint32(255)).astype(np.float32) * np.float32(1 / 256)


def _lerp_axis(coord: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Lattice cell index (from the first used one), smoothstep weight, first index, count."""
    g = coord / cell
    i0 = np.floor(g).astype(np.int64)
    t = (g - i0).astype(np.float32)
    first = int(i0.min())
    return i0 - first, t * t * (3 - 2 * t), first, int(i0.max()) - first + 2


def value_noise(seed: int, ys: np.ndarray, xs: np.ndarray, cell_y: float, cell_x: float | None = None) -> np.ndarray:
    """Smooth value noise in [0, 1] sampled on the grid ``ys`` x ``xs`` (µm).

    Lattice values come from ``hash_u32`` at integer lattice points, so any window of the
    plane gives the same values where windows overlap.
    """
    cell_x = cell_y if cell_x is None else cell_x
    ky, ty, fy, ny = _lerp_axis(ys, cell_y)
    kx, tx, fx, nx = _lerp_axis(xs, cell_x)
    iy = np.arange(fy, fy + ny)[:, None]
    ix = np.arange(fx, fx + nx)[None, :]
    lattice = (hash_u32(seed, iy, ix) >> np.uint32(8)).astype(np.float32) * np.float32(1 / (1 << 24))
    ty = ty[:, None]
    rows = lattice[ky] * (1 - ty) + lattice[ky + 1] * ty
    return rows[:, kx] * (1 - tx) + rows[:, kx + 1] * tx


def _noise(seed: int, ys, xs, cell_y: float, pix: float, cell_x: float | None = None) -> np.ndarray:
    """``value_noise`` faded to its mean (0.5) where the lattice is finer than two pixels."""
    cell_x = cell_y if cell_x is None else cell_x
    fade = min(1.0, max(0.0, min(cell_y, cell_x) / pix - 1.0))
    if fade == 0.0:
        return np.full((ys.size, xs.size), 0.5, np.float32)
    return 0.5 + fade * (value_noise(seed, ys, xs, cell_y, cell_x) - 0.5)


class HEField:
    """The procedural H&E slide: ``render`` any window of any pyramid level."""

    def __init__(self, seed: int = 0, mpp: float = 0.48):
        self.seed = int(seed)
        self.mpp = float(mpp)
        rng = np.random.default_rng(self.seed)
        self._speckle = (rng.random((256, 256), dtype=np.float32) - 0.5) * 10.0  # per-pixel grain, tiled

    def _blobs(self, salt: int, cell: float, prob: float, reach: float, ys: np.ndarray, xs: np.ndarray):
        """Candidate blobs whose cell lies within ``reach`` µm of the window: (cy, cx, hash)."""
        y0, y1, x0, x1 = ys[0] - reach, ys[-1] + reach, xs[0] - reach, xs[-1] + reach
        iy = np.arange(math.floor(y0 / cell), math.floor(y1 / cell) + 1)[:, None]
        ix = np.arange(math.floor(x0 / cell), math.floor(x1 / cell) + 1)[None, :]
        h = hash_u32(self.seed + salt, iy, ix)
        iy, ix = np.broadcast_arrays(iy, ix)
        keep = _unit(h, 3) < prob
        h2 = hash_u32(self.seed + salt + 1, iy[keep], ix[keep])
        cy = (iy[keep] + 0.15 + 0.7 * _unit(h[keep], 0)) * cell
        cx = (ix[keep] + 0.15 + 0.7 * _unit(h[keep], 1)) * cell
        return cy, cx, h2

    @staticmethod
    def _ellipse(ys, xs, cy, cx, a, b, angle, reach):
        """Normalised elliptic radius on the window's bounding box of one blob, or None."""
        r0, r1 = np.searchsorted(ys, [cy - reach, cy + reach])
        c0, c1 = np.searchsorted(xs, [cx - reach, cx + reach])
        if r1 <= r0 or c1 <= c0:
            return None
        dy = ys[r0:r1, None] - cy
        dx = xs[None, c0:c1] - cx
        ca, sa = math.cos(angle), math.sin(angle)
        u = (dx * ca + dy * sa) / a
        v = (dy * ca - dx * sa) / b
        return (slice(r0, r1), slice(c0, c1)), np.sqrt(u * u + v * v)

    def render(self, row: int, col: int, height: int, width: int, step: int = 1, image: bool = True):
        """Window of pyramid level ``step`` (downsample) at (row, col) in that level's pixels.

        Returns (rgb uint8 [h, w, 3] or None, label uint8 [h, w] with 0 glass, 1 tissue,
        2 epithelium).
        """
        pix = self.mpp * step
        ys = ((np.arange(row, row + height) + 0.5) * pix).astype(np.float64)
        xs = ((np.arange(col, col + width) + 0.5) * pix).astype(np.float64)
        seed = self.seed

        tissue_level = 0.65 * _noise(seed + 1, ys, xs, 900.0, pix) + 0.35 * _noise(seed + 2, ys, xs, 300.0, pix)
        tissue = np.clip((tissue_level - 0.36) / 0.03, 0.0, 1.0)
        wobble = _noise(seed + 3, ys, xs, 28.0, pix) - 0.5

        gland, lumen = self._glands(ys, xs, wobble)
        in_tissue = tissue > 0.5
        epithelium = gland & ~lumen & in_tissue
        label = in_tissue.astype(np.uint8)
        label[epithelium] = 2
        if not image:
            return None, label

        vessel, fat = self._vessels_and_fat(ys, xs, wobble, ~gland)
        lymph_zone = (_noise(seed + 4, ys, xs, 140.0, pix) > 0.72) & ~gland & ~vessel & ~fat
        plain = lumen | fat
        rgb = self._stained(ys, xs, pix, gland, lumen, vessel, fat)
        alpha = self._nuclei(ys, xs, pix, epithelium, lymph_zone)
        alpha[plain | vessel] = 0.0
        alpha = alpha[..., None]
        rgb += alpha * (np.take(NUCLEI, lymph_zone.view(np.uint8), axis=0) - rgb)

        if tissue.min() < 1.0:
            rgb += (1.0 - tissue)[..., None] * (GLASS - rgb)
        rgb += self._speckle[np.arange(row, row + height) % 256][:, np.arange(col, col + width) % 256][..., None]
        np.clip(rgb, 0, 255, out=rgb)
        return rgb.astype(np.uint8), label

    def _glands(self, ys: np.ndarray, xs: np.ndarray, wobble: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(gland, lumen) masks: wobbly ellipses whose rims are the epithelium."""
        gland = np.zeros((ys.size, xs.size), bool)
        lumen = np.zeros((ys.size, xs.size), bool)
        reach = 0.6 * GLAND_CELL  # largest gland radius with its wobble
        cy, cx, h = self._blobs(10, GLAND_CELL, 0.7, reach, ys, xs)
        for k in range(cy.size):
            a = 38.0 + 40.0 * float(_unit(h[k], 0))
            b = a * (0.55 + 0.4 * float(_unit(h[k], 1)))
            hit = self._ellipse(ys, xs, cy[k], cx[k], a, b, math.pi * float(_unit(h[k], 2)), reach)
            if hit is None:
                continue
            box, r = hit
            r = r + 0.22 * wobble[box]
            thickness = (15.0 + 12.0 * float(_unit(h[k], 3))) / b
            gland[box] |= r <= 1.0
            lumen[box] |= r < 1.0 - thickness
        return gland, lumen

    def _vessels_and_fat(self, ys: np.ndarray, xs: np.ndarray, wobble: np.ndarray,
                         stroma_only: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vessel, fat) masks, both in the stroma, fat outside vessels."""
        vessel = np.zeros((ys.size, xs.size), bool)
        cy, cx, h = self._blobs(20, VESSEL_CELL, 0.35, 0.5 * VESSEL_CELL, ys, xs)
        for k in range(cy.size):
            a = 30.0 + 50.0 * float(_unit(h[k], 0))
            hit = self._ellipse(ys, xs, cy[k], cx[k], a, a * (0.2 + 0.2 * float(_unit(h[k], 1))), math.pi * float(_unit(h[k], 2)), 0.5 * VESSEL_CELL)
            if hit is not None:
                vessel[hit[0]] |= hit[1] + 0.3 * wobble[hit[0]] <= 1.0
        fat = np.zeros((ys.size, xs.size), bool)
        cy, cx, h = self._blobs(30, FAT_CELL, 0.25, 0.5 * FAT_CELL, ys, xs)
        for k in range(cy.size):
            a = 22.0 + 25.0 * float(_unit(h[k], 0))
            hit = self._ellipse(ys, xs, cy[k], cx[k], a, a * (0.8 + 0.2 * float(_unit(h[k], 1))), 0.0, 0.5 * FAT_CELL)
            if hit is not None:
                fat[hit[0]] |= hit[1] + 0.15 * wobble[hit[0]] <= 1.0
        vessel &= stroma_only
        fat &= stroma_only & ~vessel
        return vessel, fat

    def _stained(self, ys, xs, pix: float, gland, lumen, vessel, fat) -> np.ndarray:
        """Base colour per pixel (float32 RGB): palette class times a texture shade."""
        seed = self.seed
        mixw = _noise(seed + 7, ys, xs, 180.0, pix)
        fibres = _noise(seed + 5, ys, xs, 3.0, pix, 26.0) * mixw + _noise(seed + 6, ys, xs, 26.0, pix, 3.0) * (1 - mixw)
        grain = _noise(seed + 8, ys, xs, 4.0, pix)
        shade = np.where(gland, np.float32(0.9) + np.float32(0.2) * grain, np.float32(0.86) + np.float32(0.28) * fibres)
        cls = gland.astype(np.uint8)
        cls[lumen] = 2
        cls[vessel] = 3
        cls[fat] = 4
        shade[lumen | fat] = 1.0
        shade[vessel] = 0.8 + 0.4 * grain[vessel]
        return np.take(PALETTE, cls, axis=0) * shade[..., None]

    def _nuclei(self, ys, xs, pix: float, epithelium, lymph_zone) -> np.ndarray:
        """Nucleus coverage per pixel: one candidate per 8 µm lattice cell, jittered; presence and
        size by region (drawn as discs at fine levels, as their mean coverage at coarse ones)."""
        ncell = np.float32(8.0)
        iy = np.floor(ys / ncell).astype(np.int64)
        ix = np.floor(xs / ncell).astype(np.int64)
        oy, ox = int(iy[0]), int(ix[0])
        ky, kx = iy - oy, ix - ox

        def spread(values: np.ndarray) -> np.ndarray:  # lattice values -> pixels
            return values[ky][:, kx]

        lat = hash_u32(self.seed + 40, np.arange(oy, iy[-1] + 1)[:, None], np.arange(ox, ix[-1] + 1)[None, :])
        density = np.where(epithelium, np.float32(0.9), np.where(lymph_zone, np.float32(0.7), np.float32(0.1)))
        radius = np.where(epithelium, np.float32(3.3), np.where(lymph_zone, np.float32(2.4), np.float32(2.1)))
        radius *= spread(0.8 + 0.35 * _unit(lat, 2))
        if pix < 3.0:
            cy_rel = spread((np.arange(lat.shape[0], dtype=np.float32)[:, None] + 0.25 + 0.5 * _unit(lat, 0)) * ncell)
            cx_rel = spread((np.arange(lat.shape[1], dtype=np.float32)[None, :] + 0.25 + 0.5 * _unit(lat, 1)) * ncell)
            dy = (ys - oy * ncell).astype(np.float32)[:, None] - cy_rel
            dx = (xs - ox * ncell).astype(np.float32)[None, :] - cx_rel
            alpha = np.clip((radius - np.sqrt(dy * dy + dx * dx)) / np.float32(pix) + 0.5, 0.0, 1.0)
            alpha *= spread(_unit(lat, 3)) < density
            return alpha
        return density * np.float32(np.pi / ncell**2) * radius * radius


def pyramid_levels(width: int, height: int, tile: int) -> list[int]:
    """Downsample factors 1, 2, 4, ... until the level fits in one tile."""
    factors = [1]
    while max(width, height) / factors[-1] > tile:
        factors.append(factors[-1] * 2)
    return factors


def _tiles(field: HEField, height: int, width: int, tile: int, step: int, image: bool, workers: int):
    """Tiles of one level in TIFF order, rendered by ``workers`` threads a few tiles ahead."""
    positions = [(row, col) for row in range(0, height, tile) for col in range(0, width, tile)]

    def render(pos):
        rgb, label = field.render(pos[0], pos[1], tile, tile, step, image=image)
        return rgb if image else label

    if workers <= 1:
        yield from map(render, positions)
        return
    with ThreadPoolExecutor(workers) as pool:
        ahead: deque = deque()
        for pos in positions:
            ahead.append(pool.submit(render, pos))
            if len(ahead) > 2 * workers:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def _photo_levels(field: HEField, height: int, width: int, tile: int, photo_seed: int):
    """Per pyramid level: the photographed slide's image and mask (full arrays)."""
    from .shift import photograph

    rgb, label = field.render(0, 0, height, width, 1, image=True)
    rgb, (label,) = photograph(rgb, (label,), seed=photo_seed)
    levels = []
    for step in pyramid_levels(width, height, tile):
        h, w = -(-height // step), -(-width // step)
        if step == 1:
            levels.append((rgb, label))
            continue
        pad = ((0, h * step - height), (0, w * step - width), (0, 0))
        summed = np.pad(rgb.astype(np.float32), pad, mode="edge").reshape(h, step, w, step, 3).mean(axis=(1, 3))
        rows = np.minimum(np.arange(h) * step + step // 2, height - 1)
        cols = np.minimum(np.arange(w) * step + step // 2, width - 1)
        levels.append((np.clip(np.rint(summed), 0, 255).astype(np.uint8), label[rows][:, cols]))
    return levels


def _array_tiles(array: np.ndarray, tile: int):
    """Tiles of ``array`` in TIFF order, zero-padded to full tiles at the edges."""
    for row in range(0, array.shape[0], tile):
        for col in range(0, array.shape[1], tile):
            block = array[row:row + tile, col:col + tile]
            if block.shape[:2] != (tile, tile):
                pad = [(0, tile - block.shape[0]), (0, tile - block.shape[1])] + [(0, 0)] * (array.ndim - 2)
                block = np.pad(block, pad)
            yield np.ascontiguousarray(block)


def make_synthetic_slide(
    path: str | Path,
    width: int,
    height: int,
    *,
    seed: int = 0,
    mpp: float = 0.48,
    tile: int = 512,
    mask_path: str | Path | None = None,
    compression_level: int = 1,
    workers: int | None = None,
    photo_seed: int | None = None,
) -> Path:
    """Write a synthetic H&E-like pyramidal tiled BigTIFF of ``width`` x ``height`` at ``mpp``.

    Tiles are zlib-compressed, levels halve until one tile holds the whole level, and the
    resolution tags carry ``mpp`` (OpenSlide reports it as ``openslide.mpp-x``). With
    ``mask_path`` the ground truth is written the same way (uint8, 0/1/2 as PESO's training
    masks). Deterministic for a given seed (``workers`` threads render tiles, default: the
    CPU count up to 4; output identical for any count); holds only a few tiles at a time.
    With ``photo_seed`` the slide is a phone photo of it on a monitor (see the module
    docstring), held whole in memory.
    """
    import tifffile

    if width < 1 or height < 1 or tile % 16:
        raise ValueError("slide size must be positive and tile a multiple of 16")
    if photo_seed is not None and width * height > PHOTO_MAX_PIXELS:
        raise ValueError(f"a photographed slide is held whole: at most {PHOTO_MAX_PIXELS} pixels, "
                         f"not {width}x{height}")
    field = HEField(seed, mpp)
    photo = _photo_levels(field, height, width, tile, photo_seed) if photo_seed is not None else None
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    px_per_cm = 1e4 / mpp
    outputs = [(Path(path), True)] + ([(Path(mask_path), False)] if mask_path is not None else [])
    for target, image in outputs:
        with atomic_path(target) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for k, step in enumerate(pyramid_levels(width, height, tile)):
                h, w = -(-height // step), -(-width // step)
                tiles = (_array_tiles(photo[k][0 if image else 1], tile) if photo is not None
                         else _tiles(field, h, w, tile, step, image, workers))
                tw.write(
                    tiles,
                    shape=(h, w, 3) if image else (h, w),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb" if image else "minisblack",
                    compression="zlib",
                    compressionargs={"level": compression_level},
                    resolution=(px_per_cm / step, px_per_cm / step),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if k else 0,
                    description=f"synthetic H&E-like slide, seed {seed}" if k == 0 else None,
                    metadata=None,
                )
    return Path(path)
