import shutil

import numpy as np
import openslide
import pytest
import tifffile

from nca_cli.core.errors import NCAError
from nca_cli.data import PreparedDataset, make_synthetic
from nca_cli.data.prepare import prepare

from .conftest import assert_patient_split, no_leftovers


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_synthetic("pathology", tmp_path_factory.mktemp("peso") / "peso", cases=3, size=(520, 700), seed=4)


def _mask_level0(path):
    with tifffile.TiffFile(path) as tf:
        return tf.pages[0].asarray()


def test_layout_is_peso_like(raw):
    slide = openslide.OpenSlide(str(raw / "peso_training_wsi_1" / "pds_1_HE.tif"))
    assert slide.level_dimensions[0] == (700, 520) and slide.level_count >= 2
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.48)
    mask = _mask_level0(raw / "peso_training_masks" / "pds_1_HE_training_mask.tif")
    assert mask.shape == (520, 700) and set(np.unique(mask).tolist()) <= {0, 1, 2} and (mask == 2).any()


def test_convert(raw, tmp_path):
    dst = prepare("peso", raw, tmp_path / "peso", band=128)
    ds = PreparedDataset(dst, "all")
    m = ds.manifest
    assert (m["kind"], m["dims"], m["channels"], m["classes"], m["modality"]) == ("pathology", 2, 3, ["epithelium"], "H&E")
    assert m["spacing"] == [0.48, 0.48] and m["spacing_unit"] == "um" and m["normalization"]["divide_by"] == 255
    assert ds.ids == ["pds_1_HE", "pds_2_HE", "pds_3_HE"]
    assert [c["patient"] for c in m["cases"]] == ["pds_1", "pds_2", "pds_3"]
    assert_patient_split(m)
    for case_id in ds.ids:
        image, label = ds.image(case_id), ds.label(case_id)
        assert isinstance(image, np.memmap) and image.shape == (520, 700, 3) and image.dtype == np.uint8
        truth = _mask_level0(raw / "peso_training_masks" / f"{case_id}_training_mask.tif")
        np.testing.assert_array_equal(label, (truth == 2).astype(np.uint8))
        # pixels are the slide's own level 0
        region = np.asarray(openslide.OpenSlide(str(raw / "peso_training_wsi_1" / f"{case_id}.tif")).read_region((100, 300), 0, (50, 40)))
        np.testing.assert_array_equal(image[300:340, 100:150], region[..., :3])
        # epithelium is purple (blue above green), stroma pink
        assert image[label == 1][:, 2].mean() > image[label == 1][:, 1].mean() + 20
    gen = np.random.default_rng(0)
    patch = ds.sample_patch(0, 128, gen, require_foreground=True)[1]
    assert patch.any()


def test_level_by_resolution(raw, tmp_path):
    ds = PreparedDataset(prepare("peso", raw, tmp_path / "half", mpp=0.96), "all")
    assert ds.image(0).shape == (260, 350, 3)
    assert ds.case(0)["level"] == 1 and ds.manifest["spacing"] == [0.96, 0.96]
    assert ds.label(0).any()
    ds = PreparedDataset(prepare("peso", raw, tmp_path / "lvl", level=2), "all")
    assert ds.image(0).shape == (130, 175, 3)


def _copy(raw, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(raw, src)
    return src


def test_untiled_half_size_mask_is_resampled(raw, tmp_path):
    src = _copy(raw, tmp_path)
    path = src / "peso_training_masks" / "pds_2_HE_training_mask.tif"
    full = _mask_level0(path)
    tifffile.imwrite(path, np.ascontiguousarray(full[::2, ::2]), rowsperstrip=16)  # strips, one level
    ds = PreparedDataset(prepare("peso", src, tmp_path / "out", band=100), "all")
    label = ds.label("pds_2_HE")
    assert label.shape == (520, 700)
    np.testing.assert_array_equal(label[::2, ::2], (full[::2, ::2] == 2).astype(np.uint8))


def test_missing_slide_names_the_mask(raw, tmp_path):
    src = _copy(raw, tmp_path)
    (src / "peso_training_wsi_1" / "pds_3_HE.tif").unlink()
    with pytest.raises(NCAError, match=r"mask .*pds_3_HE_training_mask\.tif has no slide pds_3_HE\.tif"):
        prepare("peso", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_mask_of_another_shape_names_both(raw, tmp_path):
    src = _copy(raw, tmp_path)
    tifffile.imwrite(src / "peso_training_masks" / "pds_1_HE_training_mask.tif", np.zeros((300, 100), np.uint8))
    with pytest.raises(NCAError, match=r"slide .*pds_1_HE\.tif is 700x520 .* mask .*pds_1_HE_training_mask\.tif is 100x300"):
        prepare("peso", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_unknown_mask_value(raw, tmp_path):
    src = _copy(raw, tmp_path)
    path = src / "peso_training_masks" / "pds_2_HE_training_mask.tif"
    mask = _mask_level0(path)
    mask[400, 10] = 7
    tifffile.imwrite(path, mask)
    with pytest.raises(NCAError, match=r"pds_2_HE_training_mask\.tif contains value 7"):
        prepare("peso", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_no_masks(tmp_path):
    (tmp_path / "src").mkdir()
    tifffile.imwrite(tmp_path / "src" / "pds_1_HE.tif", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(NCAError, match="No \\*_training_mask.tif files"):
        prepare("peso", tmp_path / "src", tmp_path / "out")
    assert no_leftovers(tmp_path, "out")
