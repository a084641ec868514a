"""`InputImage`: an opened input described by its shape, read on demand."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import NCAError

Region = tuple[slice, ...]

KINDS = ("slide", "volume", "video", "image")


@dataclass
class InputImage:
    """An opened input. Pixels are read only when :meth:`read` is called.

    ``spatial_shape`` is ``(H, W)`` for slides and images, ``(D, H, W)`` for volumes, videos
    (``D`` = frames) and multi-frame DICOM. ``dtype`` is the dtype :meth:`read` returns:
    uint8 for slides, videos and RGB images, float32 for volumes and grey DICOM (after
    rescale), the file's own dtype for other images. ``meta`` holds what a writer needs to
    reproduce the geometry (mpp for slides; spacing/origin/direction in SimpleITK order for
    volumes; fps and start time for videos).
    """

    path: Path
    kind: str
    dims: int
    spatial_shape: tuple[int, ...]
    channels: int
    dtype: np.dtype
    meta: dict[str, Any] = field(default_factory=dict)
    _reader: Callable[[Region], np.ndarray] | None = field(default=None, repr=False, compare=False)
    _closer: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown input kind {self.kind!r}")
        if len(self.spatial_shape) != self.dims:
            raise ValueError(f"spatial_shape {self.spatial_shape} does not have {self.dims} dims")
        self.path = Path(self.path)
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)
        self.dtype = np.dtype(self.dtype)

    def normalize_region(self, region: Region | None) -> Region:
        """Clip ``region`` to the image; ``None`` means everything. Steps other than 1 are refused."""
        if region is None:
            return tuple(slice(0, s) for s in self.spatial_shape)
        if len(region) != self.dims:
            raise ValueError(f"region {region} needs {self.dims} slices for {self.path}")
        out = []
        for sl, size in zip(region, self.spatial_shape):
            start, stop, step = sl.indices(size)
            if step != 1:
                raise ValueError(f"region slices must have step 1, got {sl}")
            out.append(slice(start, max(start, stop)))
        return tuple(out)

    def read(self, region: Region | None = None) -> np.ndarray:
        """Channels-last ``[*spatial, C]`` pixels of ``region`` (the whole image if ``None``)."""
        if self._reader is None:
            raise NCAError(f"{self.path} is closed; open it again before reading.")
        return self._reader(self.normalize_region(region))

    def read_downsampled(self, factor: int, band_rows: int | None = None) -> np.ndarray:
        """Block-average a 2D input by an integer ``factor``: ``[ceil(H/f), ceil(W/f), C]``.

        Reads horizontal bands so that only one band is held at a time; the result keeps the
        input dtype (uint8 stays uint8, rounded). Edge blocks average the pixels they hold.
        """
        if self.dims != 2:
            raise ValueError("read_downsampled works on 2D inputs")
        factor = int(factor)
        if factor < 1:
            raise ValueError("factor must be >= 1")
        h, w = self.spatial_shape
        if band_rows is None:
            band_rows = max(1, (32 << 20) // max(1, w * self.channels * self.dtype.itemsize))
        band_rows = max(factor, band_rows // factor * factor)
        out_h, out_w = -(-h // factor), -(-w // factor)
        out = np.empty((out_h, out_w, self.channels), dtype=self.dtype)
        col_starts = np.arange(0, w, factor)
        col_counts = np.minimum(factor, w - col_starts).astype(np.float64)
        acc_dtype = np.float64 if self.dtype.kind == "f" else np.uint64
        for y0 in range(0, h, band_rows):
            band = self.read((slice(y0, min(h, y0 + band_rows)), slice(0, w)))
            row_starts = np.arange(0, band.shape[0], factor)
            row_counts = np.minimum(factor, band.shape[0] - row_starts).astype(np.float64)
            sums = np.add.reduceat(band, row_starts, axis=0, dtype=acc_dtype)
            sums = np.add.reduceat(sums, col_starts, axis=1, dtype=acc_dtype)
            mean = sums / (row_counts[:, None, None] * col_counts[None, :, None])
            if self.dtype.kind in "ui":
                mean = np.rint(mean)
            oy = y0 // factor
            out[oy : oy + mean.shape[0]] = mean.astype(self.dtype)
        return out

    def close(self) -> None:
        """Release the file handle; further reads raise NCAError."""
        if self._closer is not None:
            self._closer()
        self._reader = None
        self._closer = None

    def __enter__(self) -> "InputImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
