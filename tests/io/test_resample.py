"""Area-average views at an exact resolution."""
import numpy as np

from nca_cli.io.base import InputImage
from nca_cli.io.resample import at_mpp


def _image(array, **meta):
    return InputImage("x.png", "image", 2, array.shape[:2], array.shape[-1], array.dtype, meta,
                      lambda region: array[region])


def test_halving_the_resolution_is_the_2x2_block_mean():
    a = np.random.default_rng(0).integers(0, 256, (64, 48, 3)).astype(np.uint8)
    view = at_mpp(_image(a), 0.5, 0.25)
    expected = np.rint(a.reshape(32, 2, 24, 2, 3).astype(np.float64).mean((1, 3))).astype(np.uint8)
    assert view.spatial_shape == (32, 24) and view.meta["downsample"] == 2.0 and view.meta["mpp"] == 0.5
    assert np.abs(view.read().astype(int) - expected).max() <= 1   # float32 sums round within one level


def test_a_region_read_alone_equals_the_same_region_of_a_whole_read():
    a = np.random.default_rng(1).random((97, 83, 2)).astype(np.float32)
    view = at_mpp(_image(a), 0.48, 0.25)   # 1.92 source pixels per output pixel
    whole = view.read()
    assert view.spatial_shape == (round(97 / 1.92), round(83 / 1.92))
    assert np.array_equal(whole[11:30, 4:37], view.read((slice(11, 30), slice(4, 37))))
    assert abs(float(whole.mean()) - float(a[:96, :80].mean())) < 0.01   # area averaging keeps the mean


def test_a_coarser_level_maps_back_to_level_0():
    """A level of downsample 4 read at 2 µm/px from 0.25 µm/px level 0: 2 level pixels per pixel."""
    a = np.arange(40 * 40, dtype=np.float32).reshape(40, 40, 1)
    view = at_mpp(_image(a, downsample=4.0, level0_shape=(160, 160)), 2.0, 0.25)
    assert view.spatial_shape == (20, 20) and view.meta["downsample"] == 8.0
    assert np.allclose(view.read()[..., 0], a[..., 0].reshape(20, 2, 20, 2).mean((1, 3)))


def test_reads_in_small_chunks_give_the_same_pixels(monkeypatch):
    from nca_cli.io import resample

    a = np.random.default_rng(2).integers(0, 256, (90, 70, 3)).astype(np.uint8)
    whole = at_mpp(_image(a), 0.6, 0.25).read()
    monkeypatch.setattr(resample, "CHUNK_CELLS", 50)   # one or two output rows per chunk
    assert np.array_equal(at_mpp(_image(a), 0.6, 0.25).read(), whole)
