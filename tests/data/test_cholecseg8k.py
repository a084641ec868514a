import shutil

import numpy as np
import pytest
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.data import PreparedDataset, make_synthetic
from nca_cli.data.cholecseg8k import COLORS, KEPT, colors_to_labels
from nca_cli.data.prepare import prepare

from .conftest import assert_patient_split, no_leftovers


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_synthetic("surgery", tmp_path_factory.mktemp("cholec") / "CholecSeg8k", cases=6, size=(4, 54, 96), seed=3)


def test_color_table():
    assert len(COLORS) == 13 and len(set(COLORS.values())) == 13
    assert COLORS["liver"] == (255, 114, 114) and COLORS["gallbladder"] == (255, 160, 165)
    mask = np.array([list(COLORS.values())], np.uint8)
    labels = colors_to_labels(mask, "m.png")[0].tolist()
    expected = [KEPT.index(n) + 1 if n in KEPT else 0 for n in COLORS]
    assert labels == expected
    assert sorted(set(labels)) == [0, 1, 2, 3, 4, 5]


def test_layout_is_cholecseg8k_like(raw):
    clip = raw / "video01" / "video01_00080"
    assert sorted(p.name for p in clip.iterdir())[:2] == ["frame_80_endo.png", "frame_80_endo_color_mask.png"]
    mask = np.asarray(Image.open(clip / "frame_81_endo_color_mask.png"))
    colours = {tuple(c) for c in mask.reshape(-1, 3).tolist()}
    assert colours <= set(COLORS.values()) and len(colours) >= 5


def test_convert(raw, tmp_path):
    ds = PreparedDataset(prepare("cholecseg8k", raw, tmp_path / "cholec", seed=1), "all")
    m = ds.manifest
    assert (m["kind"], m["dims"], m["channels"], m["classes"]) == ("surgery", 3, 3, list(KEPT))
    assert m["frame_rate"] == 25.0
    assert ds.ids == ["video01_00080", "video01_00160", "video02_00080", "video02_00160", "video03_00080", "video03_00160"]
    assert [c["patient"] for c in m["cases"]] == ["video01"] * 2 + ["video02"] * 2 + ["video03"] * 2
    assert m["cases"][1]["frames"] == [160, 161, 162, 163]
    assert_patient_split(m)
    assert all(len(m["split"][p]) == 2 for p in ("train", "val", "test"))
    seen = set()
    for k in range(len(ds)):
        image, label = ds.image(k), ds.label(k)
        assert isinstance(image, np.memmap)
        assert image.shape == (4, 240, 432, 3) and image.dtype == np.uint8 and label.shape == (4, 240, 432)
        seen |= set(np.unique(label).tolist())
    assert seen == {0, 1, 2, 3, 4, 5}
    # frame order: the first stored frame matches frame_80 resized, not another frame
    frame = np.asarray(Image.open(raw / "video01" / "video01_00080" / "frame_80_endo.png").resize((432, 240), Image.BILINEAR))
    diffs = [np.abs(ds.image(0)[d].astype(int) - frame).mean() for d in range(4)]
    assert int(np.argmin(diffs)) == 0
    # grasper pixels are grey in the image
    is_grasper = ds.label(0) == 4
    assert is_grasper.any() and np.ptp(ds.image(0)[is_grasper].mean(axis=0)) < 20


def _copy(raw, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(raw, src)
    return src


def test_unknown_colour(raw, tmp_path):
    src = _copy(raw, tmp_path)
    path = src / "video02" / "video02_00080" / "frame_82_endo_color_mask.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[5, 7] = (1, 2, 3)
    Image.fromarray(mask).save(path)
    with pytest.raises(NCAError, match=r"frame_82_endo_color_mask\.png has colour \(1, 2, 3\) at row 5, column 7"):
        prepare("cholecseg8k", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")
    ds = PreparedDataset(prepare("cholecseg8k", src, tmp_path / "out", strict_colors=False), "all")
    assert len(ds) == 6


def test_missing_frame_names_the_mask(raw, tmp_path):
    src = _copy(raw, tmp_path)
    (src / "video03" / "video03_00160" / "frame_161_endo.png").unlink()
    with pytest.raises(NCAError, match=r"mask .*frame_161_endo_color_mask\.png has no frame"):
        prepare("cholecseg8k", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_frame_and_mask_sizes_must_match(raw, tmp_path):
    src = _copy(raw, tmp_path)
    path = src / "video01" / "video01_00160" / "frame_160_endo.png"
    Image.open(path).resize((90, 50)).save(path)
    with pytest.raises(NCAError, match=r"frame .*frame_160_endo\.png is 90x50 but its mask .*frame_160_endo_color_mask\.png is 96x54"):
        prepare("cholecseg8k", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_empty_source(tmp_path):
    (tmp_path / "src" / "video01").mkdir(parents=True)
    with pytest.raises(NCAError, match="No \\*_endo_color_mask.png files"):
        prepare("cholecseg8k", tmp_path / "src", tmp_path / "out")
    assert no_leftovers(tmp_path, "out")
