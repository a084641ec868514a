"""Pyramidal label-mask TIFF: OpenSlide opens it with levels, sizes and mpp; labels stay labels."""
from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile

from nca_cli.core.errors import NCAError
from nca_cli.io import write_pyramidal_mask
from nca_cli.io.palette import PALETTE
from nca_cli.io.slide_writer import pyramid_factors


def make_labels(h=2600, w=2100, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), dtype=np.uint8)
    for _ in range(40):
        y, x = rng.integers(0, h), rng.integers(0, w)
        labels[y : y + rng.integers(5, 300), x : x + rng.integers(5, 300)] = rng.choice([2, 5, 7])
    return labels


def openslide_level(slide: openslide.OpenSlide, level: int) -> np.ndarray:
    w, h = slide.level_dimensions[level]
    return np.asarray(slide.read_region((0, 0), level, (w, h)))


def test_pyramid_factors():
    assert pyramid_factors((1024, 1000)) == [1]
    assert pyramid_factors((1025, 10)) == [1, 2]
    assert pyramid_factors((2600, 2100)) == [1, 2, 4]
    assert pyramid_factors((100_000, 50_000))[-1] == 128


def test_mask_opens_in_openslide_with_levels_and_mpp(tmp_path):
    labels = make_labels()
    path = write_pyramidal_mask(tmp_path / "mask.tif", labels, mpp=0.25, tile=256)
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_count == 3
        assert slide.level_dimensions == ((2100, 2600), (1050, 1300), (525, 650))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        full = openslide_level(slide, 0)
        np.testing.assert_array_equal(full[..., 0], labels)
        assert (full[..., 3] == 255).all()
        present = set(np.unique(labels).tolist())
        for level, f in enumerate([1, 2, 4]):
            values = openslide_level(slide, level)[..., 0]
            assert set(np.unique(values).tolist()) <= present
            np.testing.assert_array_equal(values, labels[::f, ::f])
    with tifffile.TiffFile(path) as tif:
        for page, f in zip(tif.pages, [1, 2, 4]):
            assert page.get_resolution() == pytest.approx((1e4 / (0.25 * f),) * 2)
            assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER


def test_mask_from_memmap_and_tifffile_view(tmp_path):
    labels = make_labels(1500, 1300, seed=1)
    mm = np.memmap(tmp_path / "labels.raw", dtype=np.uint8, mode="w+", shape=labels.shape)
    mm[:] = labels
    mm.flush()
    path = write_pyramidal_mask(tmp_path / "mask.tiff", mm, mpp=None, tile=512)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
        assert len(tif.pages) == 2
        assert tif.pages[0].is_tiled and tif.pages[0].tilewidth == 512
        np.testing.assert_array_equal(tif.pages[0].asarray(), labels)
        np.testing.assert_array_equal(tif.pages[1].asarray(), labels[::2, ::2])
    with openslide.OpenSlide(str(path)) as slide:
        assert "openslide.mpp-x" not in slide.properties


def test_palette_mask_keeps_values_and_shows_colours(tmp_path):
    labels = make_labels(1200, 900, seed=2)
    path = write_pyramidal_mask(tmp_path / "mask.tif", labels, mpp=0.5, tile=256, palette=PALETTE)
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.pages[0].asarray(), labels)
    with openslide.OpenSlide(str(path)) as slide:
        rgb = openslide_level(slide, 0)[..., :3]
    np.testing.assert_array_equal(rgb, PALETTE[labels])


class ExplodingLabels:
    """Looks like a uint8 label array but fails after a few tile reads."""

    def __init__(self, labels: np.ndarray, fail_after: int):
        self.labels, self.left = labels, fail_after
        self.shape, self.dtype, self.ndim = labels.shape, labels.dtype, labels.ndim

    def __getitem__(self, key):
        self.left -= 1
        if self.left < 0:
            raise OSError("disk went away")
        return self.labels[key]


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "mask.tif"
    with pytest.raises(OSError, match="disk went away"):
        write_pyramidal_mask(target, ExplodingLabels(make_labels(1300, 1300), fail_after=5), mpp=0.5, tile=256)
    assert list(tmp_path.iterdir()) == []


def test_rejects_bad_suffix(tmp_path):
    with pytest.raises(NCAError, match="mask.png"):
        write_pyramidal_mask(tmp_path / "mask.png", np.zeros((10, 10), np.uint8), mpp=1.0)
