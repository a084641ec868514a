"""OpenSlide reader: level and mpp choice, region reads, transparency, block averaging."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from nca_cli.core.errors import NCAError
from nca_cli.io import open_input
from nca_cli.io import slide as slide_mod
from nca_cli.io.slide import choose_level, open_slide, rgba_to_rgb


def write_rgb_pyramid(path, data: np.ndarray, factors=(1, 2, 4), mpp: float | None = 0.5, tile=128):
    """A tiled pyramidal RGB TIFF; level k is ``data[::f, ::f]``."""
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, f in enumerate(factors):
            level = np.ascontiguousarray(data[::f, ::f])
            extra = {}
            if mpp is not None:
                extra = {"resolution": (1e4 / (mpp * f),) * 2, "resolutionunit": "CENTIMETER"}
            tif.write(level, tile=(tile, tile), photometric="rgb", compression="zlib", subfiletype=1 if i else 0, metadata=None, **extra)
    return path


@pytest.fixture(scope="module")
def rgb_data() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(600, 520, 3), dtype=np.uint8)


@pytest.fixture
def slide_path(tmp_path, rgb_data):
    return write_rgb_pyramid(tmp_path / "s.tif", rgb_data)


def test_opens_pyramidal_tiff_as_slide(slide_path, rgb_data):
    with open_input(slide_path) as img:
        assert img.kind == "slide" and img.dims == 2 and img.channels == 3
        assert img.spatial_shape == (600, 520)
        assert img.dtype == np.uint8
        assert img.meta["mpp"] == pytest.approx(0.5)
        assert img.meta["mpp_source"] == "file"
        assert img.meta["level_count"] == 3
        region = (slice(37, 301), slice(250, 519))
        out = img.read(region)
        assert out.dtype == np.uint8 and out.shape == (264, 269, 3)
        np.testing.assert_array_equal(out, rgb_data[region])
        np.testing.assert_array_equal(img.read(), rgb_data)


def test_region_read_in_small_chunks(slide_path, rgb_data, monkeypatch):
    monkeypatch.setattr(slide_mod, "READ_CHUNK", 70)
    with open_input(slide_path) as img:
        region = (slice(5, 290), slice(100, 333))
        np.testing.assert_array_equal(img.read(region), rgb_data[region])


def test_level_argument(slide_path, rgb_data):
    with open_input(slide_path, level=1) as img:
        assert img.spatial_shape == (300, 260)
        assert img.meta["mpp"] == pytest.approx(1.0)
        assert img.meta["downsample"] == pytest.approx(2.0)
        np.testing.assert_array_equal(img.read((slice(10, 200), slice(33, 250))), rgb_data[::2, ::2][10:200, 33:250])


@pytest.mark.parametrize("mpp, level", [(0.1, 0), (0.5, 0), (0.9, 0), (1.0, 1), (1.9, 1), (2.0, 2), (20.0, 2)])
def test_mpp_picks_coarsest_level_fine_enough(slide_path, mpp, level):
    with open_input(slide_path, mpp=mpp) as img:
        assert img.meta["level"] == level
        assert img.meta["requested_mpp"] == mpp
        assert img.meta["mpp"] <= max(mpp, 0.5) * 1.05


def test_choose_level_tolerance():
    assert choose_level(0.25, (1.0, 4.0, 16.0), 1.0) == 1
    assert choose_level(0.2502, (1.0, 4.0, 16.0), 1.0) == 1
    assert choose_level(0.3, (1.0, 4.0, 16.0), 1.0) == 0


def test_slide_without_mpp(tmp_path, rgb_data):
    path = write_rgb_pyramid(tmp_path / "n.tif", rgb_data, mpp=None)
    with open_input(path) as img:
        assert img.meta["mpp"] is None and img.meta["mpp_source"] is None
    with open_input(path, mpp=0.25) as img:
        assert img.meta["level"] == 0
        assert img.meta["mpp"] == pytest.approx(0.25)
        assert img.meta["mpp_source"] == "argument"
    with open_input(path, mpp=0.25, level=2) as img:
        assert img.meta["mpp"] == pytest.approx(1.0)


def test_bad_level_and_conflicting_options(slide_path):
    with pytest.raises(NCAError, match="levels 0..2"):
        open_input(slide_path, level=3)
    with pytest.raises(NCAError, match="either a level or an mpp"):
        open_input(slide_path, level=1, mpp=1.0)
    with pytest.raises(NCAError, match="positive"):
        open_input(slide_path, mpp=-1.0)


def test_closed_slide_refuses_reads(slide_path):
    img = open_input(slide_path)
    img.close()
    with pytest.raises(NCAError, match="closed"):
        img.read()


def test_rgba_to_rgb_composites_on_white():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 100, 200, 128]]], dtype=np.uint8)
    out = rgba_to_rgb(rgba)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    expected = np.rint((np.array([0, 100, 200]) * 128 + 255 * 127) / 255)
    np.testing.assert_allclose(out[0, 2], expected, atol=1)


def test_read_downsampled_block_means(slide_path, rgb_data):
    with open_input(slide_path) as img:
        small = img.read_downsampled(7, band_rows=50)
    assert small.shape == (-(-600 // 7), -(-520 // 7), 3) and small.dtype == np.uint8
    ref = rgb_data.astype(np.float64)
    for (y, x) in [(0, 0), (3, 10), (85, 74), (85, 0), (0, 74)]:
        block = ref[y * 7 : y * 7 + 7, x * 7 : x * 7 + 7].reshape(-1, 3).mean(axis=0)
        np.testing.assert_array_equal(small[y, x], np.rint(block))


def test_stripped_tiff_mask_read_region_by_region(tmp_path):
    """Label masks that OpenSlide rejects are read strip by strip with tifffile."""
    data = (np.arange(70 * 50) % 251).astype(np.uint8).reshape(70, 50)
    tifffile.imwrite(tmp_path / "m.tif", data, rowsperstrip=8, resolution=(1e4 / 0.25, 1e4 / 0.25),
                     resolutionunit="CENTIMETER")
    with open_slide(tmp_path / "m.tif") as mask:
        assert mask.channels == 1 and mask.spatial_shape == (70, 50)
        assert mask.meta["level_dimensions"] == [(70, 50)] and mask.meta["level0_mpp"] == pytest.approx(0.25)
        np.testing.assert_array_equal(mask.read((slice(13, 54), slice(7, 37)))[..., 0], data[13:54, 7:37])
    (tmp_path / "x.tif").write_bytes(b"junk")
    with pytest.raises(NCAError, match=r"Cannot read slide .*x\.tif"):
        open_slide(tmp_path / "x.tif")
