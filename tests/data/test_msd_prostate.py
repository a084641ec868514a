import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nca_cli.core.errors import NCAError
from nca_cli.data import PreparedDataset, make_synthetic
from nca_cli.data.prepare import prepare

from .conftest import assert_patient_split, no_leftovers


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_synthetic("radiology", tmp_path_factory.mktemp("msd") / "Task05_Prostate", cases=5, size=(10, 40, 48), seed=1)


def test_layout_is_msd_like(raw):
    image = sitk.ReadImage(str(raw / "imagesTr" / "prostate_00.nii.gz"))
    assert image.GetDimension() == 4 and image.GetSize()[3] == 2 and image.GetSize()[:2] == (48, 40)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / "prostate_00.nii.gz")))
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    assert (raw / "dataset.json").is_file()


def test_convert(raw, tmp_path):
    dst = prepare("msd-prostate", raw, tmp_path / "prostate", seed=2)
    ds = PreparedDataset(dst, "all")
    m = ds.manifest
    assert (m["kind"], m["modality"], m["dims"], m["channels"], m["classes"]) == ("radiology", "MR-T2", 3, 1, ["prostate"])
    assert m["normalization"]["method"] == "percentile" and m["normalization"]["low"] == 0.5 and m["normalization"]["high"] == 99.5
    assert m["spacing_unit"] == "mm" and len(m["spacing"]) == 3 and m["synthetic"] is False
    assert len(ds) == 5
    assert_patient_split(m)
    for k in range(len(ds)):
        image, label = ds.image(k), ds.label(k)
        assert isinstance(image, np.memmap)
        assert image.shape == (24, 320, 320, 1) and image.dtype == np.float32
        assert label.shape == (24, 320, 320) and label.dtype == np.uint8
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.max()) > 0.9
        assert set(np.unique(label).tolist()) == {0, 1}  # PZ and TZ merged
        # the T2 channel was used: the prostate is brighter inside than the background
        assert float(image[..., 0][label == 1].mean()) > float(image[..., 0][:, :8, :8].mean())


def test_custom_shape(raw, tmp_path):
    ds = PreparedDataset(prepare("msd-prostate", raw, tmp_path / "small", shape=(8, 32, 32)), "all")
    assert ds.image(0).shape == (8, 32, 32, 1)
    # spacing scales with the resize: original (40 px x 200/40 mm) over 32 px
    assert ds.case(0)["spacing"][1] == pytest.approx(200 / 32)
    assert ds.manifest["resize_shape"] == [8, 32, 32]   # what a trained model's contract repeats at segment time


def _copy(raw, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(raw, src)
    return src


def test_missing_image_names_the_label(raw, tmp_path):
    src = _copy(raw, tmp_path)
    (src / "imagesTr" / "prostate_03.nii.gz").unlink()
    with pytest.raises(NCAError, match=r"label .*labelsTr/prostate_03\.nii\.gz has no image"):
        prepare("msd-prostate", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_shape_mismatch_names_both(raw, tmp_path):
    src = _copy(raw, tmp_path)
    sitk.WriteImage(sitk.Image([30, 30, 5], sitk.sitkUInt8), str(src / "labelsTr" / "prostate_01.nii.gz"))
    with pytest.raises(NCAError, match=r"imagesTr/prostate_01\.nii\.gz has shape .*labelsTr/prostate_01\.nii\.gz has"):
        prepare("msd-prostate", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_unknown_label_value(raw, tmp_path):
    src = _copy(raw, tmp_path)
    path = src / "labelsTr" / "prostate_04.nii.gz"
    label = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 7
    fixed = sitk.GetImageFromArray(array)
    fixed.CopyInformation(label)
    sitk.WriteImage(fixed, str(path))
    with pytest.raises(NCAError, match=r"prostate_04\.nii\.gz contains value 7"):
        prepare("msd-prostate", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_empty_or_wrong_source(tmp_path):
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    (tmp_path / "empty" / "labelsTr").mkdir()
    with pytest.raises(NCAError, match="holds no NIfTI label files"):
        prepare("msd-prostate", tmp_path / "empty", tmp_path / "out")
    with pytest.raises(NCAError, match="does not exist"):
        prepare("msd-prostate", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(NCAError, match="no imagesTr/ and labelsTr/"):
        prepare("msd-prostate", tmp_path, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_existing_destination(raw, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(NCAError, match="not empty"):
        prepare("msd-prostate", raw, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x"]
