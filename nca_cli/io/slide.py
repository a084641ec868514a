"""Whole-slide images through OpenSlide: level choice by index or µm per pixel, uint8 RGB reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide

from ..errors import NCAError
from .base import InputImage, Region

READ_CHUNK = 2048
"""Side of the square pieces one ``read_region`` call fetches (pixels at the read level)."""

MPP_TOLERANCE = 0.05
"""A level counts as fine enough for a requested mpp when it is at most this much coarser."""


def _slide_mpp(slide: openslide.OpenSlide) -> tuple[float, float] | None:
    props = slide.properties
    try:
        mx = float(props[openslide.PROPERTY_NAME_MPP_X])
        my = float(props.get(openslide.PROPERTY_NAME_MPP_Y, mx))
    except (KeyError, ValueError):
        return None
    if not (mx > 0 and my > 0):
        return None
    return mx, my


def choose_level(level0_mpp: float, downsamples: tuple[float, ...], mpp: float) -> int:
    """The coarsest level still at least as fine as ``mpp`` (level 0 if none is)."""
    best = 0
    for i, ds in enumerate(downsamples):
        if level0_mpp * ds <= mpp * (1.0 + MPP_TOLERANCE):
            best = i
    return best


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite un-premultiplied RGBA uint8 on white; returns RGB uint8."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if np.all(alpha == 255):
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)[..., None]
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def open_slide(path: Path, *, level: int | None = None, mpp: float | None = None) -> InputImage:
    """Open a whole-slide image at one pyramid level.

    ``level`` picks a level by index. ``mpp`` picks the coarsest level still as fine as the
    requested µm per pixel when the file records its resolution; when it does not, ``mpp``
    is taken as the level-0 resolution (``meta["mpp_source"] == "argument"``). Reads return
    ``[h, w, 3]`` uint8 with transparent pixels made white.
    """
    path = Path(path)
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise NCAError(
            f"Cannot read slide {path}: not a supported whole-slide format; "
            "convert it to a tiled pyramidal TIFF or pass a .svs/.ndpi/.mrxs file."
        ) from None
    except (openslide.OpenSlideError, OSError) as exc:
        raise NCAError(f"Cannot read slide {path} ({exc}); check that the file is complete and not corrupted.") from None

    try:
        file_mpp = _slide_mpp(slide)
        downsamples = tuple(float(d) for d in slide.level_downsamples)
        n_levels = slide.level_count
        if mpp is not None and not mpp > 0:
            raise NCAError(f"The requested resolution {mpp} µm/px for {path} must be positive.")
        if level is not None and not 0 <= level < n_levels:
            raise NCAError(f"Slide {path} has levels 0..{n_levels - 1}; pass --level within that range.")
        if file_mpp is not None:
            if level is not None and mpp is not None:
                raise NCAError(f"Slide {path} records its resolution; pass either a level or an mpp, not both.")
            mpp_source = "file"
            mpp0 = file_mpp
            if level is None:
                level = choose_level(file_mpp[0], downsamples, mpp) if mpp is not None else 0
        elif mpp is not None:
            mpp_source = "argument"
            mpp0 = (float(mpp), float(mpp))
            level = level or 0
        else:
            mpp_source = None
            mpp0 = None
            level = level or 0
    except BaseException:
        slide.close()
        raise

    ds = downsamples[level]
    w, h = slide.level_dimensions[level]
    w0, h0 = slide.level_dimensions[0]
    props = slide.properties
    meta = {
        "level": level,
        "level_count": n_levels,
        "downsample": ds,
        "level0_shape": (h0, w0),
        "mpp": mpp0[0] * ds if mpp0 else None,
        "mpp_y": mpp0[1] * ds if mpp0 else None,
        "level0_mpp": mpp0[0] if mpp0 else None,
        "mpp_source": mpp_source,
        "requested_mpp": float(mpp) if mpp is not None else None,
        "vendor": props.get(openslide.PROPERTY_NAME_VENDOR),
        "objective_power": props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER),
    }

    def read(region: Region) -> np.ndarray:
        ys, xs = region
        out = np.empty((ys.stop - ys.start, xs.stop - xs.start, 3), dtype=np.uint8)
        try:
            for y in range(ys.start, ys.stop, READ_CHUNK):
                ch = min(READ_CHUNK, ys.stop - y)
                for x in range(xs.start, xs.stop, READ_CHUNK):
                    cw = min(READ_CHUNK, xs.stop - x)
                    tile = slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (cw, ch))
                    out[y - ys.start : y - ys.start + ch, x - xs.start : x - xs.start + cw] = rgba_to_rgb(np.asarray(tile))
        except openslide.OpenSlideError as exc:
            raise NCAError(f"Cannot read pixels from slide {path} ({exc}); the file is probably truncated or corrupted.") from None
        return out

    return InputImage(
        path=path,
        kind="slide",
        dims=2,
        spatial_shape=(h, w),
        channels=3,
        dtype=np.uint8,
        meta=meta,
        _reader=read,
        _closer=slide.close,
    )


def slide_vendor(path: Path) -> str | None:
    """OpenSlide's name for the format of ``path`` ("aperio", "generic-tiff", ...), or None."""
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        return None
