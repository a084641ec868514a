"""Preview PNGs (outline, fill, side-by-side), volume/video montages and nearest-neighbour downscaling."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.io import downscale_nearest, write_preview, write_volume_preview
from nca_cli.io.palette import PALETTE, blend
from nca_cli.io.preview import GAP, boundary, render_preview, slice_positions


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


def test_write_preview_fill(tmp_path):
    image = np.full((2000, 1000, 3), 200, np.uint8)
    labels = np.zeros((2000, 1000), np.uint8)
    labels[:1000] = 3
    out = write_preview(tmp_path / "p.png", image, labels, style="fill", max_side=500)
    picture = np.asarray(Image.open(out))
    assert picture.shape == (500, 250, 3)
    np.testing.assert_array_equal(picture[100, 100], np.rint(0.6 * 200 + 0.4 * PALETTE[3].astype(float)))
    np.testing.assert_array_equal(picture[400, 100], [200, 200, 200])
    np.testing.assert_array_equal(picture[249, 100], PALETTE[3])  # a 1 px edge in the class colour


def test_write_preview_with_coarser_labels_and_grey_image(tmp_path):
    image = np.zeros((400, 300, 1), np.uint8)
    labels = np.zeros((40, 30), np.uint8)
    labels[20:, 15:] = 1
    picture = np.asarray(Image.open(write_preview(tmp_path / "p.png", image, labels, style="fill")))
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


def square_labels(h=300, w=400) -> np.ndarray:
    labels = np.zeros((h, w), np.uint8)
    labels[50:250, 50:200] = 1
    labels[50:250, 200:350] = 2  # touches class 1 along x = 200
    labels[100:120, 100:110] = 0  # a hole
    return labels


def expected_boundary(labels: np.ndarray) -> np.ndarray:
    """Non-zero pixels with a 4-neighbour of another label (picture edges do not count)."""
    p = np.pad(labels, 1, mode="edge")
    centre = p[1:-1, 1:-1]
    other = (p[:-2, 1:-1] != centre) | (p[2:, 1:-1] != centre) | (p[1:-1, :-2] != centre) | (p[1:-1, 2:] != centre)
    return other & (labels != 0)


def test_outline_is_exactly_on_class_boundaries():
    labels = square_labels()
    image = np.full(labels.shape + (3,), 128, np.uint8)
    picture = render_preview(image, labels, max_side=1024)  # 400 px: 1 px lines
    line = expected_boundary(labels)
    np.testing.assert_array_equal(boundary(labels), line)
    np.testing.assert_array_equal(picture[line], PALETTE[labels[line]])
    coloured = (picture != 128).any(axis=-1) & (picture != 32).any(axis=-1)
    np.testing.assert_array_equal(coloured, line)  # nothing else is coloured
    assert (picture[150, 150] == 128).all() and (picture[150, 300] == 128).all()  # region insides untouched
    halo = (picture == 32).all(axis=-1)  # dark halo just outside the regions
    assert halo[49, 100] and halo[250, 300] and halo[110, 100] and halo[150, 350]  # above, below, in the hole, right
    assert not halo[labels != 0].any()  # the halo never covers a region's own pixels
    assert picture[100, 199].tolist() == PALETTE[1].tolist() and picture[100, 200].tolist() == PALETTE[2].tolist()


def test_outline_width_grows_with_the_picture():
    labels = np.zeros((2000, 2000), np.uint8)
    labels[:, 1000:] = 1
    image = np.zeros((2000, 2000, 1), np.uint8)
    for max_side, width in ((500, 1), (1000, 2), (2000, 3)):
        picture = render_preview(image, labels, max_side=max_side)
        row = picture[picture.shape[0] // 2]
        green = np.flatnonzero((row == PALETTE[1]).all(axis=-1))
        half = picture.shape[1] // 2
        assert green.tolist() == list(range(half, half + width)), max_side
        assert (row[half - 1] == 0).all()  # halo on black stays black


def test_styles_and_sizes(tmp_path):
    labels = square_labels()
    image = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)  # labels at half resolution
    for style in ("outline", "fill"):
        out = np.asarray(Image.open(write_preview(tmp_path / f"{style}.png", image, labels, style=style, max_side=400)))
        assert out.shape == (300, 400, 3)
    side = np.asarray(Image.open(write_preview(tmp_path / "s.png", image, labels, style="side-by-side", max_side=400)))
    assert side.shape == (300, 2 * 400 + GAP, 3)
    np.testing.assert_array_equal(side[:, 400 + GAP :], PALETTE[labels])
    assert (side[:, 400 : 400 + GAP] == side[0, 400]).all()
    grey = render_preview(np.full((30, 40), 9, np.uint8), np.zeros((30, 40), np.uint8), style="side-by-side")
    assert grey.shape == (30, 80 + GAP, 3) and (grey[:, :40] == 9).all() and (grey[:, 40 + GAP :] == 0).all()
    with pytest.raises(ValueError, match="style"):
        render_preview(image, labels, style="contour")


def test_one_pixel_thick_regions_and_pictures():
    labels = np.zeros((1, 50), np.uint8)
    labels[0, 10:20] = 1
    picture = render_preview(np.zeros((1, 50, 3), np.uint8), labels)
    assert picture.shape == (1, 50, 3)
    assert picture[0, 10].tolist() == PALETTE[1].tolist() and picture[0, 19].tolist() == PALETTE[1].tolist()
    assert (picture[0, 11:19] == 0).all()
    thin = np.zeros((20, 20), np.uint8)
    thin[5, 2:18] = 3  # a one-pixel line is all outline
    picture = render_preview(np.full((20, 20, 3), 255, np.uint8), thin)
    np.testing.assert_array_equal(picture[5, 2:18], np.tile(PALETTE[3], (16, 1)))
    assert (picture[4, 2:18] == 63).all()  # dark halo on white


def test_slice_positions():
    counts = np.zeros(40, np.int64)
    counts[10:13] = 5
    assert slice_positions(counts, 3) == [10, 11, 12]
    counts[10:13] = 0
    counts[30] = 9
    assert slice_positions(counts, 3) == [29, 30, 31]  # all in one slice: spread to its neighbours
    assert slice_positions(np.zeros(40, np.int64), 3) == [6, 20, 33]  # nothing labelled: evenly spaced
    assert slice_positions(np.zeros(2, np.int64), 3) == [0, 1]


def bands(mask: np.ndarray, axis: int) -> list[tuple[int, int]]:
    """Runs of True in ``mask.any(other axis)``: where tiles are, along one axis."""
    hit = mask.any(axis=1 - axis).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.r_[0, hit, 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def test_volume_montage_layout(tmp_path):
    shape = (10, 40, 80)
    labels = np.zeros(shape, np.uint8)
    labels[3:7, 10:30, 20:60] = 1
    reads = []

    def read_slice(axis, index):
        reads.append((axis, index))
        plane = [shape[1:], (shape[0], shape[2]), shape[:2]][axis]
        return np.broadcast_to(np.array([10, 200, 30], np.uint8), plane + (3,))  # a colour no caption has

    path = write_volume_preview(tmp_path / "v.png", read_slice, shape, labels, style="fill", alpha=0.0,
                                spacing=(4.0, 1.0, 1.0), max_side=700)
    montage = np.asarray(Image.open(path))
    assert max(montage.shape[:2]) <= 700 and montage.shape[1] >= 650
    assert len(reads) == 9 and {a for a, _ in reads} == {0, 1, 2}
    assert sorted(i for a, i in reads if a == 0) == [3, 5, 6]  # through the labelled slices
    tile = (montage == [10, 200, 30]).all(axis=-1) | (montage == PALETTE[1]).all(axis=-1)
    rows = bands(tile, 0)
    assert len(rows) == 3
    for (top, bottom), aspect in zip(rows, (0.5, 0.5, 1.0)):  # physical aspect: 40x80, 40x80, 40x40 mm
        cols = bands(tile[top:bottom], 1)
        assert len(cols) == 3
        for left, right in cols:
            assert abs((bottom - top) / (right - left) - aspect) < 0.02
    wide = np.asarray(Image.open(write_volume_preview(tmp_path / "w.png", read_slice, shape, labels,
                                                     style="side-by-side", max_side=700)))
    assert wide.shape[1] <= 700 and wide.shape[1] > wide.shape[0]


@pytest.mark.parametrize("shape", [(1, 30, 40), (2, 30, 40), (6, 1, 40), (6, 40, 1), (1, 1, 1)])
def test_volume_montage_of_thin_volumes(tmp_path, shape):
    labels = np.zeros(shape, np.uint8)
    labels[..., : max(1, shape[2] // 2)] = 2
    reads = []

    def read_slice(axis, index):
        reads.append((axis, index))
        return np.take(np.full(shape + (3,), 150, np.uint8), index, axis=axis)

    montage = np.asarray(Image.open(write_volume_preview(tmp_path / "t.png", read_slice, shape, labels, max_side=400)))
    assert montage.ndim == 3 and max(montage.shape[:2]) <= 400
    assert sorted(a for a, _ in reads) == sorted(a for a in range(3) for _ in range(min(3, shape[a])))


def test_volume_preview_checks(tmp_path):
    shape = (4, 5, 6)
    labels = np.zeros(shape, np.uint8)
    with pytest.raises(NCAError, match="v.jpg"):
        write_volume_preview(tmp_path / "v.jpg", lambda a, i: None, shape, labels)
    with pytest.raises(ValueError, match="shape"):
        write_volume_preview(tmp_path / "v.png", lambda a, i: None, (4, 5, 7), labels)
    with pytest.raises(ValueError, match="read_slice"):
        write_volume_preview(tmp_path / "v.png", lambda a, i: np.zeros((2, 2, 1), np.uint8), shape, labels)
    assert list(tmp_path.iterdir()) == []
