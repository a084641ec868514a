"""Unlabeled target-domain images: found in a folder, read whole, in model units."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import io
from ..core.errors import NCAError
from ..inference.predictors import check_input
from ..io.normalize import Normalization, Normalizer


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


def read_input(path: Path, model, normalization: dict | None = None) -> torch.Tensor:
    """Read one input whole, in the units the model was trained with, after checking that
    ``model`` can take it."""
    image = io.open_input(path)
    try:
        if image.kind == "slide":
            raise NCAError(f"{path} is a whole-slide image, which fine-tuning cannot hold in memory; "
                           f"export tiles of it as PNG or TIFF files and pass their folder.")
        check_input(model.config, image, path)
        io.check_finite_input(image)
        pixels = image.read()
    finally:
        image.close()
    norm = Normalization.from_entry(normalization, pixels.dtype)
    return torch.from_numpy(Normalizer.fit(norm, pixels)(pixels)).movedim(-1, 0).contiguous()


def load_unlabeled(source: str | Path, model, normalization: dict | None = None) -> list[Unlabeled]:
    """Every image of ``source``, checked against ``model`` and read into memory."""
    return [Unlabeled(p, read_input(p, model, normalization)) for p in list_images(source)]
