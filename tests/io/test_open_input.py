"""Dispatch by suffix and content, and the errors users see for bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.io import SUPPORTED_SUFFIXES, is_supported, open_input


def tiled(path, data, **kwargs):
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib", metadata=None, **kwargs)
    return path


def test_tiff_dispatch(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (130, 150, 3), dtype=np.uint8)
    with open_input(tiled(tmp_path / "tiled_rgb.tif", rgb, photometric="rgb")) as img:
        assert img.kind == "slide"
        np.testing.assert_array_equal(img.read(), rgb)
    with open_input(tiled(tmp_path / "tiled_grey.tif", rgb[..., 0])) as img:
        assert img.kind == "image" and img.channels == 1
        np.testing.assert_array_equal(img.read()[..., 0], rgb[..., 0])
    with open_input(tiled(tmp_path / "tiled16.tif", rgb.astype(np.uint16) * 200, photometric="rgb")) as img:
        assert img.kind == "image" and img.dtype == np.uint16
    tifffile.imwrite(tmp_path / "strips.tif", rgb, photometric="rgb")
    with open_input(tmp_path / "strips.tif") as img:
        assert img.kind == "image" and img.channels == 3
        np.testing.assert_array_equal(img.read(), rgb)


def test_slide_and_video_options_are_ignored_by_plain_images(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    with open_input(tmp_path / "a.png", mpp=0.8, level=3, max_frames=2) as img:
        assert img.kind == "image" and "mpp" not in img.meta   # --mpp resizes images in segment


def test_is_supported(tmp_path):
    assert ".nii.gz" in SUPPORTED_SUFFIXES and ".svs" in SUPPORTED_SUFFIXES
    for name in ("a.SVS", "b.nii.gz", "c.mp4", "d.PNG", "e.dcm", "f.mrxs"):
        assert is_supported(tmp_path / name), name
    for name in ("a.txt", "b.gz", "c.doc"):
        assert not is_supported(tmp_path / name), name
    series = tmp_path / "series"
    series.mkdir()
    assert not is_supported(series)
    (series / "1.dcm").write_bytes(b"x")
    assert is_supported(series)
    magic = tmp_path / "IM0001"
    magic.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    assert is_supported(magic)


def expect_error(path, **kwargs) -> str:
    with pytest.raises(NCAError) as info:
        with open_input(path, **kwargs) as img:
            img.read()
    message = str(info.value)
    assert str(path) in message
    assert message.count(". ") == 0, message  # one sentence
    return message


def test_missing_and_empty(tmp_path):
    assert "does not exist" in expect_error(tmp_path / "nope.svs")
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in expect_error(tmp_path / "empty.png")


def test_unknown_suffix(tmp_path):
    (tmp_path / "notes.xyz").write_text("hello")
    assert "not supported" in expect_error(tmp_path / "notes.xyz")


def test_text_file_named_like_a_slide(tmp_path):
    for name in ("fake.svs", "fake.ndpi", "fake.tif"):
        (tmp_path / name).write_text("this is not a slide\n" * 20)
        expect_error(tmp_path / name)


def test_truncated_png(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "ok.png")
    raw = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    expect_error(tmp_path / "cut.png")


def test_truncated_tiled_slide(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    raw = tiled(tmp_path / "ok.tif", rgb, photometric="rgb").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    expect_error(tmp_path / "cut.tif")


def test_truncated_video(tmp_path):
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(tmp_path / "ok.mp4"), (32, 32), fps=10, macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for i in range(10):
        writer.send(np.full((32, 32, 3), i * 20, np.uint8))
    writer.close()
    raw = (tmp_path / "ok.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(raw[: len(raw) // 3])
    expect_error(tmp_path / "cut.mp4")


def test_garbage_dicom(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 7)
    expect_error(tmp_path / "bad.dcm")
