"""Resizing images (linear, anti-aliased when shrinking) and label maps (nearest).

PyTorch does the linear resampling; it is imported on first use so that reading datasets
or writing synthetic slides does not load it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output position for a nearest-neighbour resize (pixel centres)."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_labels(label: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map [*spatial] to ``shape``; dtype kept."""
    shape = tuple(int(s) for s in shape)
    if label.shape == shape:
        return label
    index = np.ix_(*[nearest_indices(n, m) for n, m in zip(label.shape, shape)])
    return np.ascontiguousarray(label[index])


def resize_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear resize of a channels-last image [*spatial, C] to spatial ``shape``.

    2D: bilinear, anti-aliased when shrinking. 3D: the same in-plane on every slice, then
    linear along depth. Integer images are rounded and clipped back to their dtype.
    """
    import torch
    import torch.nn.functional as F

    shape = tuple(int(s) for s in shape)
    if image.shape[:-1] == shape:
        return image
    dtype = image.dtype
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if image.ndim == 3:
        x = _resize_plane(x.permute(2, 0, 1)[None], shape)[0].permute(1, 2, 0)
    elif image.ndim == 4:
        d, _, _, c = image.shape
        x = _resize_plane(x.permute(0, 3, 1, 2), shape[1:])  # (D, C, H, W)
        if shape[0] != d:
            h, w = shape[1:]
            flat = x.permute(1, 2, 3, 0).reshape(1, c * h * w, d)
            flat = F.interpolate(flat, size=shape[0], mode="linear", align_corners=False)
            x = flat.reshape(c, h, w, shape[0]).permute(3, 0, 1, 2)
        x = x.permute(0, 2, 3, 1)
    else:
        raise ValueError(f"resize_image expects [H, W, C] or [D, H, W, C], got {image.shape}")
    out = x.numpy()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return np.ascontiguousarray(out.astype(dtype, copy=False))


def _resize_plane(x, hw: Sequence[int]):
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrinking = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False, antialias=shrinking)


def resized_input(image, shape: Sequence[int]):
    """An opened 2D or 3D input resized to spatial ``shape`` (linear, anti-aliased when
    shrinking), as an opened input read whole (plain images, DICOM and volumes are decoded whole
    anyway). ``meta["scale"]`` records the factor per axis and ``meta["source_shape"]`` the
    original size; the resolution (``mpp``, ``spacing`` in SimpleITK order) is updated."""
    from .base import InputImage

    shape = tuple(int(s) for s in shape)
    old = tuple(image.spatial_shape)
    factors = [n / o for n, o in zip(shape, old)]
    pixels = resize_image(image.read(), shape)
    meta = dict(image.meta, scale=factors[0] if len(set(factors)) == 1 else factors, source_shape=old)
    if meta.get("mpp"):
        meta["mpp"] = meta["mpp"] / factors[-1]
    if meta.get("spacing"):   # SimpleITK order: x (the last array axis) first
        meta["spacing"] = tuple(s / f for s, f in zip(meta["spacing"], reversed(factors)))
    return InputImage(image.path, image.kind, image.dims, shape, image.channels, pixels.dtype, meta,
                      lambda region, a=pixels: np.array(a[region]), None)
