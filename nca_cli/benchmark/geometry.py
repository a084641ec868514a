"""Input geometry of each benchmark task: what one "size" step means and how it is reported.

A size is one integer: the side of a square slide (pathology), the number of frames of a
240x432 video (surgery, 25 fps) or the number of 320x320 slices of a volume (radiology).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

FPS = 25.0


@dataclass(frozen=True)
class Geometry:
    """How a task's size maps to an input shape, a pixel count and the reported numbers."""

    task: str
    dims: int
    channels: int
    plane: tuple[int, ...]      # fixed trailing spatial axes (empty for square slides)
    size_name: str              # what one size unit is: "px side", "frames", "slices"
    value_unit: str             # unit of the reported size: "MP", "s", "MVx"
    rate_unit: str              # unit of the reported throughput: "MP/s", "FPS", "MVx/s"
    start: int                  # first size of the measurement ladder

    @property
    def warmup_shape(self) -> tuple[int, ...]:
        """A tiny input run once before the baseline is taken (lazy initialisation)."""
        return (64, 64) if self.dims == 2 else (8, 32, 32)

    def spatial_shape(self, size: int) -> tuple[int, ...]:
        if not self.plane:
            return (size,) * self.dims
        return (size, *self.plane)

    def pixels(self, size: int) -> int:
        """Pixels (voxels) of the input of this size."""
        return math.prod(self.spatial_shape(size))

    def value(self, size: int) -> float:
        """The reported size: megapixels, seconds of video or megavoxels."""
        if self.task == "surgery":
            return size / FPS
        return self.pixels(size) / 1e6

    def rate(self, size: int, seconds: float) -> float:
        """The reported throughput of a pass of ``seconds`` on this size."""
        if seconds <= 0:
            return float("inf")
        if self.task == "surgery":
            return size / seconds
        return self.pixels(size) / 1e6 / seconds

    def describe(self, size: int) -> str:
        shape = "x".join(str(s) for s in self.spatial_shape(size))
        if self.task == "surgery":
            return f"{self.value(size):.1f} s ({size} frames of 240x432)"
        return f"{self.value(size):.1f} {self.value_unit} ({shape})"

    def size_for_pixels(self, pixels: float) -> float:
        """The (fractional) size whose input has ``pixels`` pixels."""
        if not self.plane:
            return max(pixels, 0.0) ** (1.0 / self.dims)
        return max(pixels, 0.0) / math.prod(self.plane)


GEOMETRIES: dict[str, Geometry] = {
    "pathology": Geometry("pathology", 2, 3, (), "px side", "MP", "MP/s", start=128),
    "surgery": Geometry("surgery", 3, 3, (240, 432), "frames", "s", "FPS", start=1),
    "radiology": Geometry("radiology", 3, 1, (320, 320), "slices", "MVx", "MVx/s", start=1),
}
