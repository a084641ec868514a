"""The resolution an input is segmented at: the model's own (its I/O contract) unless a flag says
otherwise.

- Slides: the nearest level at least as fine as the target µm/px is read and area-averaged to
  exactly that resolution (``nca_cli.io.resample``), band by band; the mask keeps that
  resolution, so its pyramid and GeoJSON map back to level 0 exactly. ``--level`` reads a level
  as stored.
- Images and DICOM with a known resolution (their own, or ``--input-mpp``): resized to the
  target; the mask is written back at the input's size. ``--scale`` resizes by a factor.
- Volumes: the model's training resampling repeated (its fixed resize shape, or its voxel
  spacing); the mask is written back in the input's geometry.

The target is ``--mpp X``, else the model's recorded µm/px; ``--mpp native`` segments every input
as stored. An input that records no resolution is taken to be at the model's (one note says so
and how to set it).
"""
from __future__ import annotations

from typing import Callable

from .. import io
from ..core.errors import NCAError
from ..io.base import InputImage

NATIVE = "native"


def requested_mpp(text) -> float | str | None:
    """``--mpp``: None (the model's), ``"native"`` or a positive µm/px."""
    if text is None or (isinstance(text, str) and text.strip().lower() == NATIVE):
        return None if text is None else NATIVE
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = -1.0
    if not value > 0:
        raise NCAError(f"--mpp {text} must be a positive resolution in µm/px or 'native'; write it like --mpp 0.5.")
    return value


def target_mpp(opts, contract: dict) -> tuple[float | None, str]:
    """(µm/px to segment 2D inputs at or None for as stored, where it came from)."""
    asked = requested_mpp(opts.mpp)
    if asked not in (None, NATIVE) and opts.level is not None:
        raise NCAError(f"--level {opts.level} and --mpp {opts.mpp} both choose what a slide is read at; pass one.")
    if asked == NATIVE or opts.level is not None or opts.scale is not None:
        return None, "native"
    if asked is not None:
        return float(asked), "--mpp"
    mpp = contract.get("mpp") if contract.get("dims") == 2 else None
    return (float(mpp), "model") if mpp else (None, "native")


def _assumed(path, mpp: float, origin: str, log: Callable[[str], None]) -> None:
    whose = "the model's " if origin == "model" else ""
    log(f"note: {path.name} records no resolution; assumed {whose}{mpp:g} µm/px "
        f"(give the input's own with --input-mpp).")


def _slide(source: InputImage, opts, target: float, origin: str, log) -> tuple[InputImage, dict]:
    """A slide read at exactly ``target`` µm/px from the nearest level at least as fine."""
    from ..io.resample import at_mpp
    from ..io.slide import choose_level

    level0 = source.meta.get("level0_mpp") if source.meta.get("mpp_source") == "file" else None
    level0 = level0 or opts.input_mpp
    if not level0:
        _assumed(source.path, target, origin, log)
        level0 = target
    level = choose_level(level0, source.meta["level_downsamples"], target)
    if level != source.meta["level"]:
        source.close()
        source = io.open_slide(source.path, level=level)
    level_mpp = level0 * float(source.meta["downsample"])
    record = {"segmented_mpp": target, "level_read": level, "level_read_mpp": level_mpp, "resolution_from": origin}
    if abs(level_mpp - target) <= 1e-6 * target:
        source.meta.update(mpp=target, mpp_y=target, level0_mpp=level0)
        return source, record
    return at_mpp(source, target, level0), record


def _image_factor(source: InputImage, opts, target: float | None, origin: str, log) -> tuple[float | None, float | None]:
    """(how much a 2D image or DICOM is resized, None: as it is; its own µm/px when known)."""
    if opts.scale is not None:
        if not opts.scale > 0:
            raise NCAError(f"--scale {opts.scale} must be positive.")
        return float(opts.scale), None
    if target is None:
        return None, None
    own = opts.input_mpp or source.meta.get("mpp")
    if not own:
        if origin == "--mpp":
            raise NCAError(f"{source.path} records no resolution, so --mpp {target:g} cannot resize it; give its "
                           f"resolution with --input-mpp (µm/px) or resize it with --scale.")
        _assumed(source.path, target, origin, log)
        return None, None
    return float(own) / target, float(own)


def _image(source: InputImage, opts, target: float | None, origin: str, log) -> tuple[InputImage, float | None]:
    """(the image to segment, the resize factor): shrunk to a resolution by area averaging as
    slides are, enlarged or resized by ``--scale`` linearly."""
    from ..io.resample import at_mpp
    from ..io.resize import resized_input

    factor, own = _image_factor(source, opts, target, origin, log)
    if not factor or abs(factor - 1.0) <= 1e-9:
        return source, factor
    if own is not None and factor < 1.0:
        return at_mpp(source, target, own), factor
    h, w = source.spatial_shape
    return resized_input(source, (max(1, round(h * factor)), max(1, round(w * factor)))), factor


def _volume_shape(source: InputImage, contract: dict, native: bool) -> tuple[int, ...] | None:
    """The shape a volume is resampled to: the model's fixed resize shape, or its voxel spacing
    applied to the input's (None: as it is)."""
    if native or contract.get("dims") != 3 or source.kind != "volume":
        return None
    if contract.get("resize_shape"):
        return tuple(int(s) for s in contract["resize_shape"])
    spacing, own = contract.get("spacing"), source.meta.get("spacing")
    if contract.get("spacing_unit") != "mm" or not spacing or not own:
        return None
    own = [float(s) for s in reversed(own)][: source.dims]   # SimpleITK (x, y, z) -> array (D, H, W)
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(source.spatial_shape, own, spacing))


def at_resolution(source: InputImage, opts, contract: dict,
                  log: Callable[[str], None]) -> tuple[InputImage, InputImage, dict]:
    """(the source, possibly reopened at another level, the input to segment, the metadata).

    The input to segment differs from the source when its mask is written back at the source's
    size (images, DICOM, volumes); a slide's view is both (its mask keeps the segmented mpp)."""
    from ..io.resize import resized_input

    target, origin = target_mpp(opts, contract)
    if source.kind == "slide":
        if target is None:
            return source, source, {"segmented_mpp": source.meta.get("mpp"), "level_read": source.meta["level"],
                                    "resolution_from": origin}
        source, record = _slide(source, opts, target, origin, log)
        return source, source, record
    if source.kind == "image":
        image, factor = _image(source, opts, target, origin, log)
        return source, image, {"segmented_mpp": image.meta.get("mpp"), "scale": factor, "resolution_from": origin}
    shape = _volume_shape(source, contract, requested_mpp(opts.mpp) == NATIVE)
    image = resized_input(source, shape) if shape and tuple(shape) != tuple(source.spatial_shape) else source
    spacing = image.meta.get("spacing")
    return source, image, {"segmented_spacing": [float(s) for s in reversed(spacing)] if spacing else None,
                           "resolution_from": "model" if image is not source else "native"}

