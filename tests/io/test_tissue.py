"""Tissue masks: detected from saturation, or read from a user's image."""
import numpy as np
import pytest
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.io.tissue import TissueMask, otsu_threshold, read_tissue, tissue_from_rgb


def test_otsu_splits_two_populations_between_them():
    values = np.concatenate([np.full(700, 0.02), np.full(300, 0.5)])
    assert 0.02 < otsu_threshold(values) <= 0.5


def test_stained_tissue_is_found_on_glass_and_its_small_holes_filled():
    rgb = np.full((200, 300, 3), 236, np.uint8)
    yy, xx = np.mgrid[0:200, 0:300]
    disc = (yy - 100) ** 2 + (xx - 120) ** 2 < 70 ** 2
    rgb[disc] = (190, 90, 170)
    rgb[98:102, 118:122] = 236                        # a small hole (a lumen) inside the tissue
    found = tissue_from_rgb(rgb)
    assert found[100, 120] and not found[10, 280]
    assert not (disc & ~found).any()                   # all the tissue, and a margin of a few pixels
    assert not (found & ((yy - 100) ** 2 + (xx - 120) ** 2 > 74 ** 2)).any()


def test_a_slide_that_is_all_tissue_stays_whole():
    rgb = np.random.default_rng(0).integers(0, 60, (64, 64, 3)).astype(np.uint8) + np.array([190, 90, 160], np.uint8)
    assert tissue_from_rgb(rgb).all()


def test_a_tissue_region_is_judged_on_level_0_coordinates():
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = True                                  # level-0 pixels 0..9 of a 100 x 100 slide
    t = TissueMask(mask, (10.0, 10.0), "test")
    assert t.holds_tissue((slice(0, 5), slice(0, 5)), 2.0)          # segmented at downsample 2: 0..9
    assert not t.holds_tissue((slice(5, 10), slice(5, 10)), 2.0)    # 10..19
    expected = np.zeros((6, 6), bool)
    expected[:5, :5] = True                            # segmented pixel centres 1, 3, .., 9 lie in level-0 0..9
    assert np.array_equal(t.pixels(slice(0, 6), 6, 2.0), expected)


def test_a_user_mask_that_is_missing_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(NCAError, match="does not exist"):
        read_tissue(tmp_path / "none.png", (100, 100))
    Image.fromarray(np.full((5, 10), 255, np.uint8)).save(tmp_path / "all.png")
    assert read_tissue(tmp_path / "all.png", (100, 200)).scale == (20.0, 20.0)
