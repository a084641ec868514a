"""InputImage: region handling, block-averaged reads, closing."""
from __future__ import annotations

import numpy as np
import pytest

from nca_cli.core.errors import NCAError
from nca_cli.io.base import InputImage


def array_image(arr: np.ndarray, kind="image") -> InputImage:
    reads = []

    def read(region):
        reads.append(region)
        return arr[region].copy()

    img = InputImage("mem.png", kind, arr.ndim - 1, arr.shape[:-1], arr.shape[-1], arr.dtype, {}, read, None)
    img.meta["reads"] = reads
    return img


def test_normalize_region():
    img = array_image(np.zeros((10, 20, 1), np.uint8))
    assert img.normalize_region(None) == (slice(0, 10), slice(0, 20))
    assert img.normalize_region((slice(-3, None), slice(5, 100))) == (slice(7, 10), slice(5, 20))
    assert img.normalize_region((slice(8, 2), slice(0, 1))) == (slice(8, 8), slice(0, 1))
    with pytest.raises(ValueError):
        img.normalize_region((slice(0, 10, 2), slice(None)))
    with pytest.raises(ValueError):
        img.normalize_region((slice(None),))


def test_read_downsampled_uint8_in_bands():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (103, 57, 3), dtype=np.uint8)
    img = array_image(arr)
    out = img.read_downsampled(4, band_rows=20)
    assert out.shape == (26, 15, 3) and out.dtype == np.uint8
    assert all(r[0].stop - r[0].start <= 20 for r in img.meta["reads"])
    ref = arr.astype(np.float64)
    for y in range(26):
        for x in range(15):
            block = ref[4 * y : 4 * y + 4, 4 * x : 4 * x + 4].reshape(-1, 3).mean(axis=0)
            np.testing.assert_array_equal(out[y, x], np.rint(block))


def test_read_downsampled_float_and_refuses_3d():
    arr = np.arange(36, dtype=np.float32).reshape(6, 6, 1)
    out = array_image(arr).read_downsampled(3)
    np.testing.assert_allclose(out[..., 0], [[7.0, 10.0], [25.0, 28.0]])
    with pytest.raises(ValueError):
        array_image(np.zeros((2, 3, 4, 1), np.float32), kind="volume").read_downsampled(2)


def test_context_manager_closes():
    closed = []
    img = InputImage("x.png", "image", 2, (2, 2), 1, np.uint8, {}, lambda r: np.zeros((2, 2, 1), np.uint8), lambda: closed.append(1))
    with img as same:
        assert same.read().shape == (2, 2, 1)
    assert closed == [1]
    with pytest.raises(NCAError, match="x.png is closed"):
        img.read()


def test_validates_kind_and_shape():
    with pytest.raises(ValueError):
        InputImage("x", "movie", 2, (2, 2), 1, np.uint8)
    with pytest.raises(ValueError):
        InputImage("x", "image", 3, (2, 2), 1, np.uint8)
