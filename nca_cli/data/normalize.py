"""Intensity normalisation applied when a dataset is prepared."""
from __future__ import annotations

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5

UINT8 = {"method": "none", "dtype": "uint8", "divide_by": 255.0}


def percentile_settings(low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE) -> dict:
    """The manifest's ``normalization`` entry for ``percentile_rescale``."""
    return {"method": "percentile", "low": float(low), "high": float(high), "range": [0.0, 1.0], "dtype": "float32", "divide_by": 1.0}


def percentile_rescale(image: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE) -> np.ndarray:
    """Clip each channel of [*spatial, C] to its ``low``-``high`` percentiles, rescale to [0, 1].

    A constant channel becomes zeros. Returns float32.
    """
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[-1]):
        channel = image[..., c].astype(np.float32)
        lo, hi = np.percentile(channel, [low, high])
        if hi > lo:
            out[..., c] = (np.clip(channel, lo, hi) - lo) / (hi - lo)
        else:
            out[..., c] = 0.0
    return out


def to_uint8(image: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE) -> np.ndarray:
    """uint8 kept as is; other dtypes percentile-rescaled per channel to 0..255."""
    if image.dtype == np.uint8:
        return image
    return np.rint(percentile_rescale(image, low, high) * 255.0).astype(np.uint8)
