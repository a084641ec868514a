import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.data import PreparedDataset, make_synthetic
from nca_cli.data.chexmask import decode_rle, encode_rle
from nca_cli.data.prepare import prepare

from .conftest import assert_patient_split, no_leftovers


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_synthetic("xray", tmp_path_factory.mktemp("cxr") / "cxr", cases=10, size=80, seed=5)


def test_rle_convention():
    # starts are 1-based positions in the row-major flattening, followed by run lengths
    mask = np.array([[0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]], np.uint8)
    assert encode_rle(mask) == "2 2 8 2"
    np.testing.assert_array_equal(decode_rle("2 2 8 2", 3, 4), mask)
    np.testing.assert_array_equal(decode_rle("", 3, 4), np.zeros((3, 4)))
    big = (np.random.default_rng(0).random((37, 53)) > 0.6).astype(np.uint8)
    np.testing.assert_array_equal(decode_rle(encode_rle(big), 37, 53), big)
    for bad in ("1 2 3", "0 4", "10 5"):
        with pytest.raises(ValueError):
            decode_rle(bad, 3, 4)


def test_layout_is_chexmask_like(raw):
    with open(raw / "chexmask.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:9] == ["image_id", "Dice RCA (Mean)", "Dice RCA (Max)", "Landmarks", "Left Lung", "Right Lung", "Heart", "Height", "Width"]
    image = np.asarray(Image.open(raw / "images" / f"{rows[0]['image_id']}.png"))
    assert image.shape == (int(rows[0]["Height"]), int(rows[0]["Width"])) and image.dtype == np.uint8
    left = decode_rle(rows[0]["Left Lung"], image.shape[0], image.shape[1]).astype(bool)
    assert image[left].mean() < image[~left].mean()  # lungs are dark
    # patient's left lung sits on the image's right
    assert np.argwhere(left)[:, 1].mean() > image.shape[1] / 2


def test_convert(raw, tmp_path):
    ds = PreparedDataset(prepare("chexmask", raw, tmp_path / "cxr"), "all")
    m = ds.manifest
    assert (m["kind"], m["dims"], m["channels"], m["classes"], m["label_encoding"]) == ("xray", 2, 1, ["lungs"], "index")
    assert len(ds) == 10 and m["normalization"]["divide_by"] == 255
    assert [c["patient"] for c in m["cases"]][:4] == ["subject_0000", "subject_0000", "subject_0001", "subject_0001"]
    assert_patient_split(m)
    with open(raw / "chexmask.csv", newline="") as f:
        row = next(csv.DictReader(f))
    h, w = int(row["Height"]), int(row["Width"])
    lungs = decode_rle(row["Left Lung"], h, w) | decode_rle(row["Right Lung"], h, w)
    for k in range(len(ds)):
        image, label = ds.image(k), ds.label(k)
        assert isinstance(image, np.memmap) and isinstance(label, np.memmap)
        assert image.shape == (256, 256, 1) and image.dtype == np.uint8 and label.shape == (256, 256)
        assert set(np.unique(label).tolist()) == {0, 1}
    # the stored label is the decoded union of both lungs, resized
    frac = ds.label(row["image_id"]).mean()
    assert frac == pytest.approx(lungs.mean(), abs=0.01)


def test_heart_as_bitmask(raw, tmp_path):
    ds = PreparedDataset(prepare("chexmask", raw, tmp_path / "cxr", heart=True, image_size=(64, 64)), "all")
    assert ds.classes == ["lungs", "heart"] and ds.label_encoding == "bitmask"
    masks = ds.to_masks(ds.label(0))
    assert masks.shape == (64, 64, 2)
    assert masks[..., 0].any() and masks[..., 1].any()
    assert (masks[..., 0] & masks[..., 1]).any()  # the heart overlaps a lung


def _copy(raw, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(raw, src)
    return src


def test_missing_image(raw, tmp_path):
    src = _copy(raw, tmp_path)
    (src / "images" / "cxr_0003.png").unlink()
    with pytest.raises(NCAError, match=r"row .*chexmask\.csv line 5 \(cxr_0003\) has no image"):
        prepare("chexmask", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")
    ds = PreparedDataset(prepare("chexmask", src, tmp_path / "out", skip_missing=True, max_cases=4), "all")
    assert ds.ids == ["cxr_0000", "cxr_0001", "cxr_0002", "cxr_0004"]


def test_size_mismatch_names_both(raw, tmp_path):
    src = _copy(raw, tmp_path)
    Image.new("L", (30, 20)).save(src / "images" / "cxr_0002.png")
    with pytest.raises(NCAError, match=r"image .*cxr_0002\.png is 30x20 but its mask in .*chexmask\.csv line 4"):
        prepare("chexmask", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_colour_and_16_bit_images_become_grey(raw, tmp_path):
    src = _copy(raw, tmp_path)
    grey = np.asarray(Image.open(src / "images" / "cxr_0000.png"))
    Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(src / "images" / "cxr_0000.png")
    other = np.asarray(Image.open(src / "images" / "cxr_0001.png"))
    Image.fromarray(other.astype(np.uint16) * 200).save(src / "images" / "cxr_0001.png")
    ds = PreparedDataset(prepare("chexmask", src, tmp_path / "out", image_size=(80, 80)), "all")
    assert ds.image("cxr_0000").shape == (80, 80, 1)
    assert int(ds.image("cxr_0001").max()) == 255  # rescaled between percentiles


def test_csv_problems(raw, tmp_path):
    src = _copy(raw, tmp_path)
    (src / "chexmask.csv").rename(src / "other.txt")
    with pytest.raises(NCAError, match="holds no .csv"):
        prepare("chexmask", src, tmp_path / "out")
    with open(src / "bad.csv", "w") as f:
        f.write("image_id,Height,Width\ncxr_0000,80,80\n")
    with pytest.raises(NCAError, match="lacks the column"):
        prepare("chexmask", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")
