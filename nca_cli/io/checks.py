"""Checks on input data before it is segmented."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import NCAError

_CHUNK_ELEMENTS = 1 << 24


def check_finite(array: np.ndarray, path: str | Path) -> None:
    """Raise NCAError if a floating-point ``array`` read from ``path`` holds NaN or Inf.

    Large arrays (memmaps included) are scanned in slabs along the first axis, so no
    full-size boolean copy is made.
    """
    if array.dtype.kind not in "fc":
        return
    if array.ndim == 0 or array.size <= _CHUNK_ELEMENTS:
        finite = bool(np.isfinite(array).all())
    else:
        step = max(1, _CHUNK_ELEMENTS // max(1, array.size // array.shape[0]))
        finite = all(bool(np.isfinite(array[i : i + step]).all()) for i in range(0, array.shape[0], step))
    if not finite:
        raise NCAError(f"{path} contains NaN or Inf values; fix or mask them before segmenting.")


def check_finite_input(image) -> None:
    """Raise NCAError if an opened floating-point input holds NaN or Inf, read band by band
    (NIfTI files are scanned as stored: their reader would have turned NaN into 0)."""
    if np.dtype(image.dtype).kind not in "fc":
        return
    from .formats import full_suffix

    if image.path.is_file() and full_suffix(image.path) in (".nii", ".nii.gz"):
        from .volume import nifti_is_finite

        if not nifti_is_finite(image.path):
            raise NCAError(f"{image.path} contains NaN or Inf values; fix or mask them before segmenting.")
        return
    shape = image.spatial_shape
    rows = max(1, _CHUNK_ELEMENTS // max(1, int(np.prod(shape[1:])) * image.channels))
    rest = tuple(slice(0, n) for n in shape[1:])
    for r0 in range(0, shape[0], rows):
        check_finite(image.read((slice(r0, min(r0 + rows, shape[0])), *rest)), image.path)
