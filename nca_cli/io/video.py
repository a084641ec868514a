"""Videos through imageio-ffmpeg: frames as a ``[T, H, W, 3]`` uint8 clip, label and overlay output."""
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


def _available_memory() -> int | None:
    """Bytes the system reports as available (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _decode(path: Path, start: float, duration: float | None, max_frames: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode the selected frames into one array; returns it with ffmpeg's header info."""
    output_params: list[str] = []
    if duration is not None:
        output_params += ["-t", f"{duration:.6f}"]
    if max_frames is not None:
        output_params += ["-frames:v", str(max_frames)]
    gen = imageio_ffmpeg.read_frames(str(path), input_params=["-ss", f"{start:.6f}"] if start else None, output_params=output_params)
    try:
        header = next(gen)
        w, h = (int(v) for v in header["size"])
        fps = float(header.get("fps") or 0.0)
        total = float(header.get("duration") or 0.0)
        estimate = None
        if fps > 0 and total > 0:
            span = max(0.0, total - start)
            if duration is not None:
                span = min(span, duration)
            estimate = int(span * fps + 1)
        if max_frames is not None:
            estimate = max_frames if estimate is None else min(estimate, max_frames)
        if estimate is not None:
            need, avail = estimate * h * w * 3, _available_memory()
            if avail is not None and need > avail * 0.8:
                raise NCAError(
                    f"Decoding {path} needs about {need / 2**30:.1f} GiB for {estimate} frames but only "
                    f"{avail / 2**30:.1f} GiB is free; limit it with --max-frames or --duration."
                )
        buf = np.empty((estimate or 0, h, w, 3), dtype=np.uint8)
        extra: list[np.ndarray] = []
        n = 0
        for raw in gen:
            frame = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
            if n < len(buf):
                buf[n] = frame
            else:
                extra.append(frame)
            n += 1
            if max_frames is not None and n >= max_frames:
                break
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise NCAError(f"Cannot decode video {path} ({str(exc).splitlines()[0]}); check that the file is a complete .mp4/.avi/.mov/.mkv video.") from None
    finally:
        gen.close()
    frames = np.concatenate([buf, np.stack(extra)]) if extra else buf[:n]
    return frames, {"fps": fps, "source_duration": total, "size": (w, h), "codec": header.get("codec")}


def open_video(
    path: Path, *, start: float | None = None, duration: float | None = None, max_frames: int | None = None
) -> InputImage:
    """Open a video clip as a ``[T, H, W]`` stack of RGB uint8 frames.

    ``start`` and ``duration`` are in seconds; ``max_frames`` caps the frame count. The
    selected frames are decoded here, so limit long videos with these arguments. ``meta``
    holds ``fps``, ``start`` (seconds of the first frame) and ``duration`` of the clip.
    """
    path = Path(path)
    start = float(start or 0.0)
    if start < 0:
        raise NCAError(f"The start time {start} s for {path} must not be negative.")
    if duration is not None and not duration > 0:
        raise NCAError(f"The duration {duration} s for {path} must be positive.")
    if max_frames is not None and max_frames < 1:
        raise NCAError(f"The frame limit {max_frames} for {path} must be at least 1.")
    frames, info = _decode(path, start, duration, max_frames)
    if len(frames) == 0:
        raise NCAError(
            f"No frames were decoded from {path} starting at {start:g} s (the video lasts {info['source_duration']:g} s); "
            "choose an earlier start or check the file."
        )
    fps = info["fps"]
    meta = {
        "fps": fps,
        "start": start,
        "duration": len(frames) / fps if fps > 0 else None,
        "source_duration": info["source_duration"],
        "codec": info["codec"],
    }
    state = {"frames": frames}

    def read(region: Region) -> np.ndarray:
        return np.array(state["frames"][region])

    return InputImage(
        path=path,
        kind="video",
        dims=3,
        spatial_shape=frames.shape[:3],
        channels=3,
        dtype=np.uint8,
        meta=meta,
        _reader=read,
        _closer=state.clear,
    )


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
