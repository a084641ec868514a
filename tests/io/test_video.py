"""Video clips: frame selection by time and count, label volumes, overlay video."""
from __future__ import annotations

import imageio_ffmpeg
import numpy as np
import pytest
import SimpleITK as sitk

from nca_cli.core.errors import NCAError
from nca_cli.io import open_input, write_label_volume, write_overlay_mp4
from nca_cli.io.palette import PALETTE

FPS = 10
N_FRAMES = 20


def frame_value(i: int) -> int:
    return 10 + 12 * i


def write_test_video(path, n=N_FRAMES, size=(64, 48), fps=FPS) -> None:
    """Frames of uniform grey ``frame_value(i)``, so each frame can be identified."""
    w, h = size
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", quality=10, macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for i in range(n):
        writer.send(np.full((h, w, 3), frame_value(i), dtype=np.uint8))
    writer.close()


def read_back(path) -> tuple[np.ndarray, dict]:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])
    return frames, meta


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_test_video(path)
    return path


def frame_ids(frames: np.ndarray) -> list[int]:
    return [int(round((f.mean() - 10) / 12)) for f in frames]


def test_reads_all_frames(video_path):
    with open_input(video_path) as vid:
        assert vid.kind == "video" and vid.dims == 3 and vid.channels == 3 and vid.dtype == np.uint8
        assert vid.spatial_shape == (N_FRAMES, 48, 64)
        assert vid.meta["fps"] == pytest.approx(FPS)
        assert vid.meta["start"] == 0.0
        assert vid.meta["duration"] == pytest.approx(N_FRAMES / FPS)
        frames = vid.read()
        assert frames.shape == (N_FRAMES, 48, 64, 3) and frames.dtype == np.uint8
        assert frame_ids(frames) == list(range(N_FRAMES))
        part = vid.read((slice(3, 6), slice(0, 10), slice(5, 20)))
        assert part.shape == (3, 10, 15, 3)
        assert frame_ids(part) == [3, 4, 5]


def test_start_duration_and_max_frames(video_path):
    with open_input(video_path, start=1.0) as vid:
        assert vid.spatial_shape[0] == 10
        assert vid.meta["start"] == 1.0
        assert frame_ids(vid.read()) == list(range(10, 20))
    with open_input(video_path, start=0.5, duration=0.5) as vid:
        assert frame_ids(vid.read()) == [5, 6, 7, 8, 9]
    with open_input(video_path, max_frames=3) as vid:
        assert vid.spatial_shape == (3, 48, 64)
        assert frame_ids(vid.read()) == [0, 1, 2]
    with open_input(video_path, start=1.2, max_frames=4) as vid:
        assert frame_ids(vid.read()) == [12, 13, 14, 15]


def test_bad_selection(video_path):
    with pytest.raises(NCAError, match="clip.mp4"):
        open_input(video_path, start=50.0)
    with pytest.raises(NCAError, match="negative"):
        open_input(video_path, start=-1.0)
    with pytest.raises(NCAError, match="at least 1"):
        open_input(video_path, max_frames=0)


def test_label_volume_outputs(tmp_path):
    labels = np.random.default_rng(0).integers(0, 3, size=(5, 6, 7), dtype=np.uint8)
    meta = {"fps": 25.0, "start": 2.0}
    out = write_label_volume(tmp_path / "labels.nii.gz", labels, meta)
    back = sitk.ReadImage(str(out))
    assert back.GetSpacing() == pytest.approx((1.0, 1.0, 0.04))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)
    out = write_label_volume(tmp_path / "labels.npz", labels, meta)
    with np.load(out) as z:
        np.testing.assert_array_equal(z["labels"], labels)
        assert float(z["fps"]) == 25.0 and float(z["start"]) == 2.0
    with pytest.raises(NCAError, match="labels.mp4"):
        write_label_volume(tmp_path / "labels.mp4", labels, meta)


def test_overlay_video_with_odd_size(tmp_path):
    t, h, w = 4, 33, 47
    frames = np.full((t, h, w, 3), 100, dtype=np.uint8)
    labels = np.zeros((t, h, w), dtype=np.uint8)
    labels[:, 5:20, 5:25] = 1
    out = write_overlay_mp4(tmp_path / "overlay.mp4", frames, labels, fps=5)
    back, meta = read_back(out)
    assert meta["size"] == (48, 34)
    assert back.shape[0] == t
    expected = np.rint(0.6 * 100 + 0.4 * PALETTE[1].astype(float))
    np.testing.assert_allclose(back[:, 10, 12].astype(float), np.broadcast_to(expected, (t, 3)), atol=12)
    np.testing.assert_allclose(back[:, 28, 40].astype(float), 100, atol=6)


def test_overlay_from_frame_iterator_and_failure_leaves_nothing(tmp_path):
    labels = np.zeros((3, 16, 16), dtype=np.uint8)

    def frames_then_error():
        yield np.zeros((16, 16, 3), np.uint8)
        yield np.zeros((16, 16, 3), np.uint8)
        raise OSError("camera unplugged")

    with pytest.raises(OSError, match="camera unplugged"):
        write_overlay_mp4(tmp_path / "o.mp4", frames_then_error(), labels, fps=5)
    assert list(tmp_path.iterdir()) == []
    out = write_overlay_mp4(tmp_path / "o.mp4", iter(np.zeros((3, 16, 16, 3), np.uint8)), labels, fps=5)
    assert read_back(out)[0].shape == (3, 16, 16, 3)


def test_not_a_video(tmp_path):
    (tmp_path / "fake.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(NCAError, match="fake.mp4"):
        open_input(tmp_path / "fake.mp4")


def test_reads_in_any_order_decode_only_what_they_need(video_path, monkeypatch):
    """Reading on continues the decoder, the last band is kept, earlier frames restart it."""
    from nca_cli.io import video

    starts = []
    real = video._frames

    def counting(*args):
        starts.append(args[1])
        return real(*args)

    monkeypatch.setattr(video, "_frames", counting)
    with open_input(video_path) as vid:
        assert len(starts) == 1                                   # the count at opening
        rest = (slice(0, 48), slice(0, 64))
        assert frame_ids(vid.read((slice(2, 6), *rest))) == [2, 3, 4, 5]
        assert frame_ids(vid.read((slice(4, 6), slice(0, 8), slice(0, 8)))) == [4, 5]   # kept band
        assert frame_ids(vid.read((slice(5, 9), *rest))) == [5, 6, 7, 8]                # overlaps, reads on
        assert frame_ids(vid.read((slice(12, 14), *rest))) == [12, 13]                  # skips ahead
        assert len(starts) == 2                                   # one decoder so far
        assert frame_ids(vid.read((slice(0, 3), *rest))) == [0, 1, 2]                   # earlier: restarts
        assert len(starts) == 3
        assert frame_ids(vid.read((slice(N_FRAMES - 2, N_FRAMES), *rest))) == [N_FRAMES - 2, N_FRAMES - 1]
    with open_input(video_path, start=1.0) as vid:               # restarts keep the selection's start
        assert frame_ids(vid.read((slice(4, 5), slice(0, 48), slice(0, 64)))) == [14]
        assert frame_ids(vid.read((slice(0, 2), slice(0, 48), slice(0, 64)))) == [10, 11]


def test_a_long_clip_is_never_decoded_whole(tmp_path):
    """Opening and reading a 119 MiB clip band by band holds a few bands (6 MiB each), not the clip."""
    from nca_cli.core.machine import PeakMeter

    path = tmp_path / "long.mp4"
    writer = imageio_ffmpeg.write_frames(str(path), (432, 240), fps=FPS, codec="libx264", quality=10,
                                         macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for i in range(400):
        writer.send(np.full((240, 432, 3), frame_value(i % N_FRAMES), dtype=np.uint8))
    writer.close()
    clip_bytes, band_bytes = 400 * 240 * 432 * 3, 20 * 240 * 432 * 3
    meter = PeakMeter("cpu").start()
    with open_input(path) as vid:
        assert vid.spatial_shape == (400, 240, 432)
        seen = []
        for t0 in range(0, 400, 20):
            band = vid.read((slice(t0, t0 + 20), slice(0, 240), slice(0, 432)))
            seen += frame_ids(band)
    peak = meter.stop()["peak_bytes"]
    assert seen == [i % N_FRAMES for i in range(400)]
    assert peak < min(clip_bytes / 4, 5 * band_bytes + 8 * 2 ** 20), peak / 2 ** 20


def test_a_file_that_changes_after_opening_ends_in_one_sentence(tmp_path):
    path = tmp_path / "clip.mp4"
    write_test_video(path)
    with open_input(path) as vid:
        write_test_video(path, n=5)                               # shorter now
        with pytest.raises(NCAError, match="ended after 5 of its 20 frames"):
            vid.read((slice(0, 20), slice(0, 48), slice(0, 64)))
        assert frame_ids(vid.read((slice(0, 2), slice(0, 48), slice(0, 64)))) == [0, 1]   # usable again


def test_a_plane_through_all_frames_is_read_a_chunk_at_a_time(video_path, monkeypatch):
    from nca_cli.io import video

    monkeypatch.setattr(video, "CHUNK_BYTES", 3 * 48 * 64 * 3)   # three frames per chunk
    with open_input(video_path) as vid:
        plane = vid.read((slice(0, N_FRAMES), slice(0, 48), slice(7, 8)))
        assert plane.shape == (N_FRAMES, 48, 1, 3)
        assert frame_ids(plane) == list(range(N_FRAMES))
        assert frame_ids(vid.read()) == list(range(N_FRAMES))
