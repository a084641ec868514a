import numpy as np
import openslide
import pytest
import tifffile

from nca_cli.data import make_synthetic_slide
from nca_cli.data.synthetic_slide import HEField, pyramid_levels


def test_slide_opens_with_levels_and_mpp(tmp_path):
    path = make_synthetic_slide(tmp_path / "s.tif", 1200, 900, seed=4, tile=256, mask_path=tmp_path / "m.tif")
    slide = openslide.OpenSlide(str(path))
    assert slide.level_dimensions == ((1200, 900), (600, 450), (300, 225), (150, 113))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.48)
    assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.48)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_bigtiff and tf.pages[0].is_tiled and tf.pages[0].tilewidth == 256
    region = np.asarray(slide.read_region((0, 0), 0, (1200, 900)))[..., :3]
    mask = openslide.OpenSlide(str(tmp_path / "m.tif"))
    assert mask.level_count == 4
    truth = np.asarray(mask.read_region((0, 0), 0, (1200, 900)))[..., 0]
    assert set(np.unique(truth).tolist()) == {0, 1, 2}
    glass, epithelium, stroma = (region[truth == v].mean(axis=0) for v in (0, 1, 2))
    assert glass.min() > 225  # near white
    assert epithelium[2] > epithelium[1] + 20  # epithelium purple...
    assert abs(float(stroma[0]) - float(epithelium[0])) > 10  # ...and unlike stroma
    # a coarse level is the same tissue at lower resolution
    low = np.asarray(mask.read_region((0, 0), 2, (300, 225)))[..., 0]
    assert abs((low == 2).mean() - (truth == 2).mean()) < 0.03


def test_tiles_join_and_output_is_deterministic(tmp_path):
    field = HEField(seed=11)
    whole_rgb, whole_label = field.render(0, 0, 384, 384)
    part_rgb, part_label = field.render(128, 192, 256, 192)
    np.testing.assert_array_equal(part_label, whole_label[128:384, 192:384])
    assert np.abs(part_rgb.astype(int) - whole_rgb[128:384, 192:384]).max() <= 1
    a = make_synthetic_slide(tmp_path / "a.tif", 400, 300, seed=2, tile=128, workers=1).read_bytes()
    b = make_synthetic_slide(tmp_path / "b.tif", 400, 300, seed=2, tile=128, workers=2).read_bytes()
    c = make_synthetic_slide(tmp_path / "c.tif", 400, 300, seed=3, tile=128).read_bytes()
    assert a == b and a != c


def test_pyramid_levels():
    assert pyramid_levels(100, 100, 512) == [1]
    assert pyramid_levels(10000, 3000, 512) == [1, 2, 4, 8, 16, 32]
