"""Unlabeled target-domain images: found in a folder, read whole, in model units."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import io
from ..errors import NCAError
from ..inference.sources import Normalizer
from ..segment.pipeline import check_compatible


@dataclass
class Unlabeled:
    """One image: its file and its pixels as a ``[IN, *spatial]`` float32 tensor in model units."""

    path: Path
    image: torch.Tensor


def list_images(source: str | Path) -> list[Path]:
    """The inputs ``nca segment`` would read in ``source`` (a file, or a folder's direct
    entries, sorted by name; hidden files and files of other kinds are skipped)."""
    source = Path(source)
    if not source.exists():
        raise NCAError(f"The unlabeled folder {source} does not exist; pass a folder of target-domain images.")
    if source.is_file():
        return [source]
    try:
        found = sorted(p for p in source.iterdir() if not p.name.startswith(".") and io.is_supported(p))
    except OSError as exc:
        raise NCAError(f"Cannot read the unlabeled folder {source} ({exc.strerror}); check its permissions.") from None
    if not found:
        raise NCAError(f"The unlabeled folder {source} holds no readable images; "
                       f"add PNG, JPEG, TIFF, DICOM or NIfTI files of the target domain.")
    return found


def to_model_units(pixels: np.ndarray) -> torch.Tensor:
    """Channels-last pixels → ``[C, *spatial]`` float32, normalised as ``nca segment`` does
    (uint8 / 255; other types clipped to their 0.5–99.5 percentiles and scaled to [0, 1])."""
    t = Normalizer(pixels.dtype, lambda: pixels)(pixels)
    return t.movedim(-1, 0).contiguous()


def read_input(path: Path, model) -> torch.Tensor:
    """Read one input whole after checking that ``model`` can take it."""
    image = io.open_input(path)
    try:
        if image.kind == "slide":
            raise NCAError(f"{path} is a whole-slide image, which fine-tuning cannot hold in memory; "
                           f"export tiles of it as PNG or TIFF files and pass their folder.")
        check_compatible(model, image, path)
        pixels = image.read()
    finally:
        image.close()
    io.check_finite(pixels, path)
    return to_model_units(pixels)


def load_unlabeled(source: str | Path, model) -> list[Unlabeled]:
    """Every image of ``source``, checked against ``model`` and read into memory."""
    return [Unlabeled(p, read_input(p, model)) for p in list_images(source)]
