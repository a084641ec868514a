"""Preview PNGs and nearest-neighbour downscaling."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.io import downscale_nearest, write_preview
from nca_cli.io.palette import PALETTE, blend


def test_downscale_nearest_keeps_values_and_aspect():
    labels = np.zeros((3000, 1500), dtype=np.uint8)
    labels[:, 750:] = 4
    small = downscale_nearest(labels, 1000)
    assert small.shape == (1000, 500)
    assert set(np.unique(small).tolist()) == {0, 4}
    assert (small[:, :250] == 0).all() and (small[:, 251:] == 4).all()
    rgb = np.zeros((10, 20, 3), np.uint8)
    assert downscale_nearest(rgb, 64) is rgb
    assert downscale_nearest(np.zeros((5, 4001, 3), np.uint8), 1000).shape == (1, 1000, 3)


def test_blend():
    image = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [2, 0]], np.uint8)
    out = blend(image, labels, alpha=0.4)
    assert (out[0, 0] == 100).all() and (out[1, 1] == 100).all()
    np.testing.assert_array_equal(out[0, 1], np.rint(0.6 * 100 + 0.4 * PALETTE[1].astype(float)))
    np.testing.assert_array_equal(out[1, 0], np.rint(0.6 * 100 + 0.4 * PALETTE[2].astype(float)))
    grey = blend(np.full((2, 2, 1), 7, np.uint8), labels)
    assert grey.shape == (2, 2, 3) and (grey[0, 0] == 7).all()
    assert len({tuple(c) for c in PALETTE[1:16]}) == 15


def test_write_preview(tmp_path):
    image = np.full((2000, 1000, 3), 200, np.uint8)
    labels = np.zeros((2000, 1000), np.uint8)
    labels[:1000] = 3
    out = write_preview(tmp_path / "p.png", image, labels, max_side=500)
    picture = np.asarray(Image.open(out))
    assert picture.shape == (500, 250, 3)
    np.testing.assert_array_equal(picture[100, 100], np.rint(0.6 * 200 + 0.4 * PALETTE[3].astype(float)))
    np.testing.assert_array_equal(picture[400, 100], [200, 200, 200])


def test_write_preview_with_coarser_labels_and_grey_image(tmp_path):
    image = np.zeros((400, 300, 1), np.uint8)
    labels = np.zeros((40, 30), np.uint8)
    labels[20:, 15:] = 1
    picture = np.asarray(Image.open(write_preview(tmp_path / "p.png", image, labels)))
    assert picture.shape == (400, 300, 3)
    assert (picture[:200].sum(axis=-1) == 0).all()
    np.testing.assert_array_equal(picture[399, 299], np.rint(0.4 * PALETTE[1].astype(float)))


def test_write_preview_rejects_other_suffix_and_leaves_nothing(tmp_path, monkeypatch):
    with pytest.raises(NCAError, match="p.jpg"):
        write_preview(tmp_path / "p.jpg", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        write_preview(tmp_path / "p.png", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []
