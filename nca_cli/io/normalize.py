"""Raw pixel values to model units: the one normalisation used by `prepare`, training and inference.

Two methods, recorded in a prepared dataset's ``dataset.yaml`` (``normalization``) and in
every model trained on it, so `segment` and `finetune-vwsl` apply exactly what training saw:

- ``none``: ``value / divide_by`` (255 for 8-bit images, stored as uint8; 1 for data stored
  as float32 unchanged);
- ``percentile``: each channel clipped to its ``low``..``high`` percentiles (0.5 and 99.5 by
  default) and rescaled to [0, 1]; a constant channel becomes 0. The percentiles are taken
  over the whole image, or over a fixed, evenly strided sample of at most ``SAMPLE`` values
  per channel for larger ones (read band by band, so a large input is never copied whole).

The arithmetic is one function (float64 in, float32 out), so the same image prepared for
training and read by `segment` reaches the network as identical tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
SAMPLE = 1 << 22          # values per channel the percentiles are taken from, at most
METHODS = ("none", "percentile")


@dataclass(frozen=True)
class Normalization:
    """How raw values become model units (see the module docstring)."""

    method: str = "percentile"
    low: float = LOW_PERCENTILE
    high: float = HIGH_PERCENTILE
    divide_by: float = 1.0

    @classmethod
    def for_dtype(cls, dtype) -> "Normalization":
        """The default: 8-bit images divided by 255, everything else percentile-rescaled."""
        return cls("none", divide_by=255.0) if np.dtype(dtype) == np.uint8 else cls("percentile")

    @classmethod
    def from_entry(cls, entry: dict | None, dtype) -> "Normalization":
        """What to apply to raw pixels of ``dtype`` for a model trained on data normalised as
        ``entry`` (a ``dataset.yaml`` ``normalization`` mapping; None: the default).

        Percentile training data: the same percentiles, whatever the input type. Data kept as
        8-bit (divide by 255): 8-bit inputs the same way, others percentile-rescaled (their
        range is unknown). Float data kept unchanged: inputs unchanged."""
        if not entry:
            return cls.for_dtype(dtype)
        if entry.get("method") == "percentile":
            return cls("percentile", float(entry.get("low", LOW_PERCENTILE)), float(entry.get("high", HIGH_PERCENTILE)))
        divide_by = float(entry.get("divide_by", 1.0))
        if divide_by == 255.0 and np.dtype(dtype) != np.uint8:
            return cls("percentile")
        return cls("none", divide_by=divide_by)

    def entry(self, stored_dtype: str) -> dict:
        """The ``dataset.yaml`` mapping describing data stored as ``stored_dtype`` after this
        normalisation (``divide_by`` is what training still divides the stored values by)."""
        if self.method == "percentile":
            return {"method": "percentile", "low": float(self.low), "high": float(self.high), "range": [0.0, 1.0],
                    "dtype": "float32", "divide_by": 1.0}
        return {"method": "none", "dtype": stored_dtype, "divide_by": float(self.divide_by)}


Reader = Callable[[slice], np.ndarray]   # rows of the first spatial axis -> [rows, ..., C]


FIT_BAND = 1 << 22        # values read at once while sampling


def _sample(read: Reader, shape: Sequence[int], channels: int) -> list[np.ndarray]:
    """Per channel, every ``stride``-th value in row-major order (all values when few enough)."""
    n = math.prod(shape)
    stride = max(1, math.ceil(n / SAMPLE))
    per_row = max(1, math.prod(shape[1:]))
    band = max(1, FIT_BAND // (per_row * max(1, channels)))
    parts: list[list[np.ndarray]] = [[] for _ in range(channels)]
    for r0 in range(0, shape[0], band):
        r1 = min(shape[0], r0 + band)
        block = np.asarray(read(slice(r0, r1))).reshape(-1, channels)
        first = (-r0 * per_row) % stride
        picked = block[first::stride]
        for c in range(channels):
            parts[c].append(np.asarray(picked[:, c], dtype=np.float64))
    return [np.concatenate(p) if p else np.zeros(0) for p in parts]


class Normalizer:
    """A :class:`Normalization` fitted to one image: per-channel offset and scale."""

    def __init__(self, method: str, lo: np.ndarray | None = None, hi: np.ndarray | None = None,
                 divide_by: float = 1.0):
        self.method = method
        self.lo, self.hi = lo, hi
        self.divide_by = float(divide_by)

    @classmethod
    def fit(cls, norm: Normalization, read: Reader | np.ndarray, shape: Sequence[int] | None = None,
            channels: int | None = None) -> "Normalizer":
        """Fit ``norm`` to an image given as a channels-last array, or as a row reader with its
        spatial ``shape`` and ``channels``."""
        if norm.method == "none":
            return cls("none", divide_by=norm.divide_by)
        if not callable(read):
            array = read
            shape, channels = array.shape[:-1], array.shape[-1]
            read = lambda rows, a=array: a[rows]  # noqa: E731
        samples = _sample(read, shape, channels)
        lo, hi = np.zeros(channels), np.ones(channels)
        for c, values in enumerate(samples):
            if values.size:
                lo[c], hi[c] = np.percentile(values, [norm.low, norm.high])
            if not hi[c] > lo[c]:
                hi[c] = lo[c] + 1.0   # a constant channel: (x - lo) / 1 = 0
        return cls("percentile", lo, hi)

    @classmethod
    def fit_image(cls, norm: Normalization, image) -> "Normalizer":
        """Fit to an opened ``nca_cli.io`` input, read band by band."""
        rest = tuple(slice(0, n) for n in image.spatial_shape[1:])
        return cls.fit(norm, lambda rows: image.read((rows, *rest)), image.spatial_shape, image.channels)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Channels-last raw values -> float32 model units, same shape (computed in place on
        one working copy, so a band costs one float copy of itself)."""
        if self.method == "none":
            x = np.asarray(raw, dtype=np.float32)
            if np.shares_memory(x, raw):
                return x / np.float32(self.divide_by)
            return np.divide(x, np.float32(self.divide_by), out=x)
        x = np.array(raw, dtype=np.float64)
        np.clip(x, self.lo, self.hi, out=x)
        x -= self.lo
        x /= self.hi - self.lo
        return x.astype(np.float32)

    def describe(self) -> dict:
        if self.method == "none":
            return {"method": "none", "divide_by": self.divide_by}
        return {"method": "percentile", "low_values": self.lo.tolist(), "high_values": self.hi.tolist()}


def fit_bytes(cells: int, channels: int, itemsize: int, norm: Normalization) -> int:
    """Peak working memory of :meth:`Normalizer.fit` on an image of ``cells`` x ``channels``:
    one band of raw values, the kept sample (float64) and the sorted copy ``np.percentile`` makes."""
    if norm.method == "none":
        return 0
    sample = min(cells, SAMPLE)
    return min(cells * channels, FIT_BAND) * itemsize + sample * channels * 8 + sample * 8


def band_bytes(values: int, itemsize: int, norm: Normalization) -> int:
    """Peak working memory of normalising ``values`` raw values (one band): the raw values, the
    float32 result and, for percentiles, the float64 working copy."""
    return values * (itemsize + 4 + (8 if norm.method == "percentile" else 0))


def normalize(image: np.ndarray, norm: Normalization) -> np.ndarray:
    """A whole channels-last image in model units (fit and apply)."""
    return Normalizer.fit(norm, image)(image)
