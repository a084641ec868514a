"""A phone photograph of an image shown on a monitor: the target-domain shift of the
synthetic data (``nca prepare synthetic ... --shifted``).

The edge-training paper adapts a Med-NCA to X-rays "captured by a phone from an X-ray
lightbox or monitor", with "Moiré effects and excessive contrast". ``photograph`` turns a
digital image (grey or RGB, uint8) into such a photo, reproducibly from a seed. In the
order the light travels:

1. monitor tone: a display gamma below 1 and a lifted black level with a dimmer white
   (washed-out contrast); on RGB images also reduced saturation and a colour cast of the
   monitor and the camera's white balance;
2. camera pose: a slight rotation, a perspective (keystone) tilt, a small zoom and offset
   (a homography); the photo samples the monitor bilinearly, and where it sees past the
   displayed image it sees the monitor's black; the label maps get the same homography
   (nearest neighbour, 0 outside), so they stay aligned with the photo;
3. uneven light: a soft glare spot and vignetting;
4. moiré: beat bands of the display's pixel grid against the sensor's, two gratings
   (nearly crossed, periods of 1/5 to 1/12 of the image side), bent by a smooth field;
5. optics: Gaussian defocus blur (sigma about 0.5 % of the image side);
6. sensor: signal-dependent (shot) plus constant (read) Gaussian noise, then 8-bit
   quantisation.

Sizes are relative to the image side, so a photo looks the same at any resolution.
``strength`` scales every effect (0 returns the inputs unchanged; 1 is the default shift).
Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed, image and
strength give the same photo on any machine.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

DEFAULT_STRENGTH = 1.0


@dataclass(frozen=True)
class PhotoParams:
    """The random draws behind one photo (strength already applied); see ``draw_params``."""

    gamma: float            # display gamma (< 1 lifts the dark parts)
    black: float            # displayed black level, fraction of full scale
    white: float            # displayed white level
    saturation: float       # RGB: 1 keeps colours, 0 is grey
    cast: tuple             # RGB: per-channel gains (white balance)
    rotation: float         # radians
    keystone: tuple         # 8 corner offsets, fractions of the side (perspective)
    zoom: float             # > 1 crops into the displayed image
    offset: tuple           # (dy, dx) fractions of the side
    glare: float            # glare spot amplitude (added, fraction of full scale)
    glare_centre: tuple     # (y, x) fractions of the side
    glare_radius: float     # fraction of the side
    vignette: float         # brightness loss at the corners
    moire: float            # moiré amplitude (multiplicative)
    moire_period: float     # fraction of the side
    moire_angle: float      # radians
    moire_bend: float       # cycles of phase bending across the image
    blur: float             # Gaussian sigma, fraction of the side
    shot_noise: float       # noise std = sqrt(shot^2 * value + read^2), values in [0, 1]
    read_noise: float
    seed: int               # seed of the smooth fields and the noise

    def to_dict(self) -> dict:
        return asdict(self)


def draw_params(seed: int, strength: float = DEFAULT_STRENGTH) -> PhotoParams:
    """The parameters of the photo for ``seed``: every effect's size drawn from its range
    and scaled by ``strength`` (0: none)."""
    if not strength >= 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    rng = np.random.default_rng(int(seed))
    u = rng.uniform
    s = float(strength)
    cast = tuple(float(1.0 + s * g) for g in u(-0.08, 0.08, 3))
    return PhotoParams(
        gamma=float(1.0 - s * u(0.3, 0.45)),
        black=float(s * u(0.12, 0.22)),
        white=float(1.0 - s * u(0.05, 0.15)),
        saturation=float(1.0 - s * u(0.25, 0.45)),
        cast=cast,
        rotation=float(s * u(-1, 1) * math.radians(4.0)),
        keystone=tuple(float(s * v) for v in u(-0.035, 0.035, 8)),
        zoom=float(1.0 + s * u(0.0, 0.06)),
        offset=tuple(float(s * v) for v in u(-0.03, 0.03, 2)),
        glare=float(s * u(0.12, 0.25)),
        glare_centre=(float(u(0.15, 0.85)), float(u(0.15, 0.85))),
        glare_radius=float(u(0.2, 0.35)),
        vignette=float(s * u(0.15, 0.3)),
        moire=float(s * u(0.14, 0.22)),
        moire_period=float(1.0 / u(5.0, 12.0)),
        moire_angle=float(u(0.0, math.pi)),
        moire_bend=float(u(0.5, 1.5)),
        blur=float(s * u(0.004, 0.007)),
        shot_noise=float(s * u(0.03, 0.05)),
        read_noise=float(s * u(0.01, 0.02)),
        seed=int(rng.integers(1 << 31)),
    )


# ------------------------------------------------------------------ geometry
def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 matrix mapping the 4 points ``src`` (x, y) onto ``dst``."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def source_coordinates(p: PhotoParams, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """For every photo pixel, the (row, column) of the displayed image it sees (float64)."""
    side = float(max(height, width))
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    corners = np.array([[-cx, -cy], [cx, -cy], [cx, cy], [-cx, cy]], np.float64)
    c, s = math.cos(p.rotation), math.sin(p.rotation)
    seen = corners @ np.array([[c, s], [-s, c]]) / p.zoom
    seen = seen + np.asarray(p.keystone, np.float64).reshape(4, 2) * side
    seen = seen + np.array([p.offset[1], p.offset[0]]) * side
    h = _homography(corners, seen)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs -= cx
    ys -= cy
    den = h[2, 0] * xs + h[2, 1] * ys + h[2, 2]
    sx = (h[0, 0] * xs + h[0, 1] * ys + h[0, 2]) / den + cx
    sy = (h[1, 0] * xs + h[1, 1] * ys + h[1, 2]) / den + cy
    return sy, sx


def _bilinear(image: np.ndarray, sy: np.ndarray, sx: np.ndarray, fill: float) -> np.ndarray:
    """``image`` [H, W, C] float32 sampled at (sy, sx); ``fill`` outside."""
    h, w = image.shape[:2]
    inside = (sy > -0.5) & (sy < h - 0.5) & (sx > -0.5) & (sx < w - 0.5)
    y = np.clip(sy, 0, h - 1)
    x = np.clip(sx, 0, w - 1)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(y.shape, np.int64)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(x.shape, np.int64)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    ty = (y - y0).astype(np.float32)[..., None]
    tx = (x - x0).astype(np.float32)[..., None]
    top = image[y0, x0] * (1 - tx) + image[y0, x1] * tx
    bottom = image[y1, x0] * (1 - tx) + image[y1, x1] * tx
    out = top * (1 - ty) + bottom * ty
    out[~inside] = fill
    return out


def warp_label(label: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
    """A label map sampled at (sy, sx) by nearest neighbour; 0 where the photo sees past it."""
    h, w = label.shape[:2]
    iy, ix = np.rint(sy).astype(np.int64), np.rint(sx).astype(np.int64)
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    out = label[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]
    out[~inside] = 0
    return out


# ------------------------------------------------------------------ fields and filters
def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int = 4) -> np.ndarray:
    """A smooth random field (roughly unit variance), bilinear from a coarse normal grid."""
    grid = rng.normal(size=(cells + 1, cells + 1, 1)).astype(np.float32)
    sy = np.linspace(0, cells, height)[:, None] * np.ones((1, width))
    sx = np.ones((height, 1)) * np.linspace(0, cells, width)[None, :]
    return _bilinear(grid, sy, sx, 0.0)[..., 0]


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] float32 (reflected borders); sigma in pixels."""
    if sigma <= 0.05:
        return image
    radius = max(1, int(math.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    out = image
    for axis in (0, 1):
        n = out.shape[axis]
        r = min(radius, n - 1)
        if r < 1:
            continue
        k = taps[radius - r: radius + r + 1]
        k = k / k.sum()
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect")
        acc = np.zeros_like(out)
        for i, weight in enumerate(k):
            acc += weight * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def _moire(p: PhotoParams, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Multiplicative moiré pattern (mean about 1)."""
    side = float(max(height, width))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / side
    bend = _smooth_field(rng, height, width, 3) * np.float32(p.moire_bend)
    pattern = np.zeros((height, width), np.float32)
    for k, angle in enumerate((p.moire_angle, p.moire_angle + math.pi / 2 + 0.15)):
        period = p.moire_period * (1.0 + 0.2 * k)
        u = xs * math.cos(angle) + ys * math.sin(angle)
        pattern += np.cos(2 * math.pi * (u / period + bend + rng.uniform()))
    return 1.0 + np.float32(p.moire / 2) * pattern


def photograph(image: np.ndarray, labels: Sequence[np.ndarray] = (), *, seed: int,
               strength: float = DEFAULT_STRENGTH, params: PhotoParams | None = None
               ) -> tuple[np.ndarray, list[np.ndarray]]:
    """The phone photo of ``image`` (uint8 [H, W] or [H, W, C]) for ``seed``, and each label
    map of ``labels`` ([H, W], any integer or bool dtype) moved with it.

    Returns a uint8 image of the input's shape and the moved labels (same dtypes). With
    ``strength`` 0 the inputs come back unchanged (as copies). ``params`` overrides the
    draw (``draw_params(seed, strength)``).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"photograph takes a uint8 [H, W] or [H, W, C] image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    for lab in labels:
        if lab.shape != (height, width):
            raise ValueError(f"label of shape {lab.shape} does not match the image {image.shape[:2]}")
    if params is None:
        if strength == 0:
            return image.copy(), [np.array(lab, copy=True) for lab in labels]
        params = draw_params(seed, strength)
    p = params
    rng = np.random.default_rng(p.seed)
    x = (image.reshape(height, width, -1).astype(np.float32)) / 255.0
    rgb = x.shape[2] == 3

    # 1. the monitor shows it: gamma, washed-out range, colours
    x = np.power(np.clip(x, 0.0, 1.0), np.float32(p.gamma))
    if rgb:
        grey = x.mean(axis=2, keepdims=True)
        x = grey + np.float32(p.saturation) * (x - grey)
        x = x * np.asarray(p.cast, np.float32)
    x = np.float32(p.black) + np.float32(p.white - p.black) * x

    # 2. the camera sees it from a slight angle
    sy, sx = source_coordinates(p, height, width)
    x = _bilinear(x, sy, sx, fill=np.float32(p.black * 0.6))
    moved = [warp_label(np.asarray(lab), sy, sx) for lab in labels]

    # 3. uneven light
    side = float(max(height, width))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    gy, gx = p.glare_centre[0] * height, p.glare_centre[1] * width
    r2 = ((ys - gy) ** 2 + (xs - gx) ** 2) / np.float32((p.glare_radius * side) ** 2)
    glare = np.float32(p.glare) * np.exp(-r2)
    c2 = ((ys - (height - 1) / 2) ** 2 + (xs - (width - 1) / 2) ** 2) / np.float32((side / 2) ** 2 * 2)
    x = x * (1.0 - np.float32(p.vignette) * c2)[..., None] + glare[..., None]

    # 4. moiré, 5. defocus
    x = x * _moire(p, rng, height, width)[..., None]
    x = gaussian_blur(x.astype(np.float32), p.blur * side)

    # 6. sensor noise and quantisation
    x = np.clip(x, 0.0, 1.0)
    std = np.sqrt(np.float32(p.shot_noise) ** 2 * x + np.float32(p.read_noise) ** 2)
    x = x + std * rng.standard_normal(x.shape, dtype=np.float32)
    out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return out.reshape(image.shape), moved
