"""Videos through imageio-ffmpeg: frames as a ``[T, H, W, 3]`` uint8 clip decoded on demand, label and overlay output."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import imageio_ffmpeg
import numpy as np

from ..core.errors import NCAError
from ..core.files import atomic_path
from .base import InputImage, Region
from .formats import full_suffix
from .palette import PALETTE, blend
from .volume import write_volume

LABEL_SUFFIXES = (".nii", ".nii.gz", ".npz")
CHUNK_BYTES = 64 << 20     # decoded frames one read holds at most, besides what it returns


class _FrameStream:
    """The frames of a clip, decoded on demand by one forward-only ffmpeg decoder.

    The last frames read are kept (one band), so the regions of one band of frames (its
    tiles, its rows) decode once; reading on from there continues the decoder, reading
    further on skips frames, reading earlier frames restarts it at the clip's start. At most
    the frames of the last read exist in memory, never the clip."""

    def __init__(self, path: Path, start: float, output_params: list[str], count: int, size: tuple[int, int]):
        self.path, self.start, self.output_params = path, start, output_params
        self.count, (self.w, self.h) = count, size
        self.gen = None
        self.pos = 0                      # index of the next frame the decoder yields
        self.cache = np.empty((0, self.h, self.w, 3), dtype=np.uint8)
        self.cache_start = 0              # the decoder stands at cache_start + len(cache)

    def _restart(self) -> None:
        self.close()
        self.gen = _frames(self.path, self.start, self.output_params)
        next(self.gen)                    # the header
        self.pos = 0

    def _next(self) -> np.ndarray:
        try:
            raw = next(self.gen)
        except StopIteration:
            raw = None
        except (OSError, RuntimeError, ValueError) as exc:
            raise _decode_error(self.path, exc) from None
        if raw is None or len(raw) != self.w * self.h * 3:
            raise NCAError(f"The video {self.path} ended after {self.pos} of its {self.count} frames while it was "
                           "being read again; check that the file is complete and was not changed meanwhile.")
        self.pos += 1
        return np.frombuffer(raw, dtype=np.uint8).reshape(self.h, self.w, 3)

    def frames(self, t0: int, t1: int) -> np.ndarray:
        """Frames ``[t0, t1)`` as ``[t1 - t0, H, W, 3]`` uint8 (the array is kept: do not modify)."""
        c0, c1 = self.cache_start, self.cache_start + len(self.cache)
        if c0 <= t0 and t1 <= c1:
            return self.cache[t0 - c0:t1 - c0]
        out = np.empty((t1 - t0, self.h, self.w, 3), dtype=np.uint8)
        k = t0
        if c0 <= t0 < c1:                 # the start is kept; the decoder stands at c1
            out[:c1 - t0] = self.cache[t0 - c0:]
            k = c1
        self.cache = self.cache[:0]       # the previous frames go before more are decoded
        try:
            if self.gen is None or self.pos > k:
                self._restart()
            while self.pos < k:
                self._next()
            while k < t1:
                out[k - t0] = self._next()
                k += 1
        except BaseException:
            self.close()                  # the next read starts afresh
            raise
        self.cache, self.cache_start = out, t0
        return out

    def read(self, region: Region) -> np.ndarray:
        """A copy of ``region`` (frames, rows, columns). Many frames (a plane through time for a
        preview) are decoded a chunk of CHUNK_BYTES at a time, so only their cropped region is held."""
        t0, t1 = region[0].start, region[0].stop
        crop = (slice(None), *region[1:])
        chunk = max(1, CHUNK_BYTES // (self.w * self.h * 3))
        if t1 - t0 <= chunk:
            return np.array(self.frames(t0, t1)[crop])
        out = None
        for c0 in range(t0, t1, chunk):
            part = self.frames(c0, min(t1, c0 + chunk))[crop]
            if out is None:
                out = np.empty((t1 - t0, *part.shape[1:]), dtype=np.uint8)
            out[c0 - t0:c0 - t0 + len(part)] = part
        return out

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()
            self.gen = None
        self.cache, self.cache_start = self.cache[:0], 0


def _frames(path: Path, start: float, output_params: list[str]):
    return imageio_ffmpeg.read_frames(str(path), input_params=["-ss", f"{start:.6f}"] if start else None,
                                      output_params=output_params)


def _decode_error(path: Path, exc: BaseException) -> NCAError:
    return NCAError(f"Cannot decode video {path} ({str(exc).splitlines()[0]}); check that the file is a complete "
                    ".mp4/.avi/.mov/.mkv video.")


def _count(path: Path, start: float, output_params: list[str]) -> tuple[int, dict[str, Any]]:
    """Decode the selected frames once, keeping none: their number and ffmpeg's header info."""
    gen = _frames(path, start, output_params)
    try:
        header = next(gen)
        w, h = (int(v) for v in header["size"])
        n = 0
        for raw in gen:
            if len(raw) != w * h * 3:
                break
            n += 1
    except (OSError, RuntimeError, KeyError, ValueError, StopIteration) as exc:
        raise _decode_error(path, exc) from None
    finally:
        gen.close()
    info = {"fps": float(header.get("fps") or 0.0), "source_duration": float(header.get("duration") or 0.0),
            "size": (w, h), "codec": header.get("codec")}
    return n, info


def open_video(
    path: Path, *, start: float | None = None, duration: float | None = None, max_frames: int | None = None
) -> InputImage:
    """Open a video clip as a ``[T, H, W]`` stack of RGB uint8 frames.

    ``start`` and ``duration`` are in seconds; ``max_frames`` caps the frame count. Opening
    decodes the selection once to count its frames; reads decode the frames they need
    (``_FrameStream``), so a clip of any length costs memory for one band of frames only.
    ``meta`` holds ``fps``, ``start`` (seconds of the first frame) and ``duration`` of the clip.
    """
    path = Path(path)
    start = float(start or 0.0)
    if start < 0:
        raise NCAError(f"The start time {start} s for {path} must not be negative.")
    if duration is not None and not duration > 0:
        raise NCAError(f"The duration {duration} s for {path} must be positive.")
    if max_frames is not None and max_frames < 1:
        raise NCAError(f"The frame limit {max_frames} for {path} must be at least 1.")
    output_params: list[str] = []
    if duration is not None:
        output_params += ["-t", f"{duration:.6f}"]
    if max_frames is not None:
        output_params += ["-frames:v", str(max_frames)]
    count, info = _count(path, start, output_params)
    if count == 0:
        raise NCAError(
            f"No frames were decoded from {path} starting at {start:g} s (the video lasts {info['source_duration']:g} s); "
            "choose an earlier start or check the file."
        )
    fps = info["fps"]
    meta = {
        "fps": fps,
        "start": start,
        "duration": count / fps if fps > 0 else None,
        "source_duration": info["source_duration"],
        "codec": info["codec"],
    }
    stream = _FrameStream(path, start, output_params, count, info["size"])
    return InputImage(
        path=path,
        kind="video",
        dims=3,
        spatial_shape=(count, stream.h, stream.w),
        channels=3,
        dtype=np.uint8,
        meta=meta,
        _reader=stream.read,
        _closer=stream.close,
    )


def reread_bytes(cells: int, channels: int, band_cells: int) -> int:
    """What writing an overlay or a preview of a video of ``cells`` holds of its frames: the
    overlay re-reads them a band of ``band_cells`` at a time (decoded, then shown as uint8); a
    preview's planes through time decode a chunk of whole frames (at most CHUNK_BYTES) at a time."""
    return max(2 * min(cells, band_cells) * channels, min(cells * channels, CHUNK_BYTES))


def write_label_volume(path: str | Path, labels: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write per-frame labels ``[T, H, W]`` uint8 as NIfTI or ``.npz``, atomically.

    NIfTI stores the frame interval ``1 / fps`` seconds as the third spacing (``x, y`` = 1);
    ``.npz`` stores ``labels``, ``fps`` and ``start``.
    """
    path = Path(path)
    suffix = full_suffix(path)
    if labels.ndim != 3 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8 [T, H, W], got {labels.dtype} {labels.shape}")
    fps = float(meta.get("fps") or 0.0)
    if suffix in (".nii", ".nii.gz"):
        spacing = (1.0, 1.0, 1.0 / fps if fps > 0 else 1.0)
        return write_volume(path, labels, {"spacing": spacing})
    if suffix == ".npz":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, labels=labels, fps=np.float64(fps), start=np.float64(meta.get("start") or 0.0))
        return path
    raise NCAError(f"Cannot write video labels to {path}: use a .nii.gz, .nii or .npz file name.")


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad an ``[h, w, 3]`` frame by edge replication to even height and width."""
    ph, pw = frame.shape[0] % 2, frame.shape[1] % 2
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return np.ascontiguousarray(frame)


def _send(writer, frame: np.ndarray | None, path: Path) -> None:
    """Pass one frame to the ffmpeg writer, turning encoder failures into NCAError."""
    try:
        writer.send(frame)
    except (OSError, RuntimeError) as exc:
        raise NCAError(f"Cannot encode {path} ({str(exc).splitlines()[0]}); check the free disk space.") from None


def write_overlay_mp4(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray],
    labels: np.ndarray,
    fps: float,
    *,
    alpha: float = 0.4,
    palette: np.ndarray = PALETTE,
) -> Path:
    """Write an H.264 ``.mp4`` of ``frames`` with each class's colour blended in, atomically.

    ``frames`` is ``[T, H, W, 3]`` uint8 or an iterable of ``[H, W, 3]`` frames; ``labels`` is
    ``[T, H, W]``. Odd sizes are padded by one edge pixel to suit yuv420p.
    """
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise NCAError(f"Cannot write an overlay video to {path}: use a .mp4 file name.")
    if labels.ndim != 3:
        raise ValueError(f"labels must be [T, H, W], got {labels.shape}")
    if not fps > 0:
        fps = 25.0
    t, h, w = labels.shape
    size = (w + w % 2, h + h % 2)
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), size, fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=2, ffmpeg_log_level="error"
        )
        try:
            _send(writer, None, path)
            count = 0
            for i, frame in enumerate(frames):
                if i >= t:
                    raise ValueError(f"more frames than the {t} label frames")
                if frame.shape[:2] != (h, w):
                    raise ValueError(f"frame {i} is {frame.shape[:2]}, labels are {(h, w)}")
                _send(writer, _even(blend(frame, np.asarray(labels[i]), alpha, palette)), path)
                count += 1
            if count != t:
                raise ValueError(f"{count} frames for {t} label frames")
        finally:
            writer.close()
    return path
