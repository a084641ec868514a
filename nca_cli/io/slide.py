"""Whole-slide images: level choice by index or µm per pixel, region reads.

OpenSlide reads the slide formats it knows (RGB, transparent pixels made white). Tiled or
stripped TIFF pyramids OpenSlide rejects, such as the single-channel label masks that come
with slide datasets, are read with tifffile one tile or strip at a time, so neither backend
ever decodes a whole slide.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import tifffile

from ..core.errors import NCAError
from .base import InputImage, Region

READ_CHUNK = 2048
"""Side of the square pieces one ``read_region`` call fetches (pixels at the read level)."""

MPP_TOLERANCE = 0.05
"""A level counts as fine enough for a requested mpp when it is at most this much coarser."""


def choose_level(level0_mpp: float, downsamples, mpp: float) -> int:
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


class _OpenSlide:
    channels = 3

    def __init__(self, path: Path):
        self.path = path
        self.slide = openslide.OpenSlide(str(path))
        self.level_dimensions = [tuple(map(int, d)) for d in self.slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self.slide.level_downsamples]
        props = self.slide.properties
        try:
            mx = float(props[openslide.PROPERTY_NAME_MPP_X])
            my = float(props.get(openslide.PROPERTY_NAME_MPP_Y, mx))
            self.mpp = (mx, my) if mx > 0 and my > 0 else None
        except (KeyError, ValueError):
            self.mpp = None
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        self.objective_power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        tile = self.slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (width, height))
        return rgba_to_rgb(np.asarray(tile))

    def close(self) -> None:
        self.slide.close()


class _TiledTiff:
    """A TIFF pyramid (one page per level, largest first) read tile by tile or strip by strip."""

    def __init__(self, path: Path):
        self.path = path
        self.tiff = tifffile.TiffFile(str(path))
        pages = [p for p in self.tiff.pages if len(p.shape) in (2, 3)]
        pages.sort(key=lambda p: -p.imagewidth)
        if not pages:
            self.tiff.close()
            raise NCAError(f"The slide {path} holds no 2D image; convert it to a tiled pyramidal TIFF.")
        self.pages = pages
        if pages[0].dtype != np.uint8:
            self.tiff.close()
            raise NCAError(f"The slide {path} stores {pages[0].dtype} pixels; an 8-bit slide or label mask is expected.")
        self.channels = min(3, int(pages[0].samplesperpixel))
        self.level_dimensions = [(int(p.imagewidth), int(p.imagelength)) for p in pages]
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples = [(w0 / w + h0 / h) / 2 for w, h in self.level_dimensions]
        mpp = _tiff_mpp(pages[0])
        self.mpp = (mpp, mpp) if mpp else None
        self.vendor, self.objective_power = "tiff", None

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self.pages[level]
        samples = page.samplesperpixel
        out = np.zeros((height, width, samples), dtype=page.dtype)
        ch, cw = page.chunks[-2:] if page.is_tiled else (page.rowsperstrip, page.imagewidth)
        ncols = -(-page.imagewidth // cw)
        fh = self.tiff.filehandle
        for cy in range(y // ch, -(-(y + height) // ch)):
            for cx in range(x // cw, -(-(x + width) // cw)):
                index = cy * ncols + cx
                if index >= len(page.dataoffsets) or page.databytecounts[index] == 0:
                    continue
                fh.seek(page.dataoffsets[index])
                seg, _, _ = page.decode(fh.read(page.databytecounts[index]), index)
                seg = seg.reshape(seg.shape[-3:])
                y0, x0 = cy * ch, cx * cw
                sy0, sx0 = max(y, y0), max(x, x0)
                sy1 = min(y + height, y0 + seg.shape[0], page.imagelength)
                sx1 = min(x + width, x0 + seg.shape[1], page.imagewidth)
                if sy1 > sy0 and sx1 > sx0:
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = seg[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
        return out[..., : self.channels]

    def close(self) -> None:
        self.tiff.close()


def _tiff_mpp(page) -> float | None:
    """Microns per pixel from a TIFF page's resolution tags, if set in cm or inch."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not num or not den:
        return None
    per_unit = num / den
    if unit == 3:  # centimetre
        return 1e4 / per_unit
    if unit == 2:  # inch
        return 25400.0 / per_unit
    return None


def _open_backend(path: Path):
    try:
        return _OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError:
        pass
    except (openslide.OpenSlideError, OSError) as exc:
        raise NCAError(f"Cannot read slide {path} ({exc}); check that the file is complete and not corrupted.") from None
    try:
        return _TiledTiff(path)
    except NCAError:
        raise
    except Exception:  # tifffile raises many types for files it cannot parse
        raise NCAError(
            f"Cannot read slide {path}: not a supported whole-slide format; "
            "convert it to a tiled pyramidal TIFF or pass a .svs/.ndpi/.mrxs file."
        ) from None


def open_slide(path: Path, *, level: int | None = None, mpp: float | None = None) -> InputImage:
    """Open a whole-slide image (or a slide-sized label mask) at one pyramid level.

    ``level`` picks a level by index. ``mpp`` picks the coarsest level still as fine as the
    requested µm per pixel when the file records its resolution; when it does not, ``mpp``
    is taken as the level-0 resolution (``meta["mpp_source"] == "argument"``). Reads return
    ``[h, w, C]`` uint8 (C = 3 for slides, 1 for masks). ``meta`` lists every level's
    ``level_dimensions`` ((height, width)) and ``level_downsamples``.
    """
    path = Path(path)
    backend = _open_backend(path)
    try:
        level, mpp_source, mpp0 = _pick_level(backend, path, level, mpp)
    except BaseException:
        backend.close()
        raise
    w, h = backend.level_dimensions[level]
    return InputImage(
        path=path,
        kind="slide",
        dims=2,
        spatial_shape=(h, w),
        channels=backend.channels,
        dtype=np.uint8,
        meta=_slide_meta(backend, level, mpp_source, mpp0, mpp),
        _reader=_level_reader(backend, path, level),
        _closer=backend.close,
    )


def _pick_level(backend, path: Path, level: int | None, mpp: float | None):
    """Check ``level``/``mpp`` against the slide; return (level, mpp_source, level-0 (x, y) mpp)."""
    n_levels = len(backend.level_downsamples)
    if mpp is not None and not mpp > 0:
        raise NCAError(f"The requested resolution {mpp} µm/px for {path} must be positive.")
    if level is not None and not 0 <= level < n_levels:
        raise NCAError(f"Slide {path} has levels 0..{n_levels - 1}; pass --level within that range.")
    if backend.mpp is not None:
        if level is not None and mpp is not None:
            raise NCAError(f"Slide {path} records its resolution; pass either a level or an mpp, not both.")
        if level is None:
            level = choose_level(backend.mpp[0], tuple(backend.level_downsamples), mpp) if mpp is not None else 0
        return level, "file", backend.mpp
    if mpp is not None:
        return level or 0, "argument", (float(mpp), float(mpp))
    return level or 0, None, None


def _slide_meta(backend, level: int, mpp_source, mpp0, mpp: float | None) -> dict:
    """The ``meta`` of a slide opened at ``level``."""
    downsamples = tuple(backend.level_downsamples)
    ds = downsamples[level]
    w0, h0 = backend.level_dimensions[0]
    return {
        "level": level,
        "level_count": len(downsamples),
        "level_dimensions": [(int(hh), int(ww)) for ww, hh in backend.level_dimensions],
        "level_downsamples": list(downsamples),
        "downsample": ds,
        "level0_shape": (h0, w0),
        "mpp": mpp0[0] * ds if mpp0 else None,
        "mpp_y": mpp0[1] * ds if mpp0 else None,
        "level0_mpp": mpp0[0] if mpp0 else None,
        "mpp_source": mpp_source,
        "requested_mpp": float(mpp) if mpp is not None else None,
        "vendor": backend.vendor,
        "objective_power": backend.objective_power,
    }


def _level_reader(backend, path: Path, level: int):
    """A region reader of ``level`` that reads in READ_CHUNK tiles and names a damaged file."""

    def read(region: Region) -> np.ndarray:
        ys, xs = region
        out = np.empty((ys.stop - ys.start, xs.stop - xs.start, backend.channels), dtype=np.uint8)
        try:
            for y in range(ys.start, ys.stop, READ_CHUNK):
                ch = min(READ_CHUNK, ys.stop - y)
                for x in range(xs.start, xs.stop, READ_CHUNK):
                    cw = min(READ_CHUNK, xs.stop - x)
                    out[y - ys.start : y - ys.start + ch, x - xs.start : x - xs.start + cw] = \
                        backend.read(level, x, y, cw, ch)
        except NCAError:
            raise
        except Exception as exc:  # openslide, zlib, tifffile and codec errors all mean a damaged file
            raise NCAError(f"Cannot read pixels from slide {path} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                           f"the file is probably truncated or corrupted, so copy it again.") from None
        return out

    return read


def slide_vendor(path: Path) -> str | None:
    """OpenSlide's name for the format of ``path`` ("aperio", "generic-tiff", ...), or None."""
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        return None
