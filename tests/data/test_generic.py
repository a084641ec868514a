import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.data import PreparedDataset
from nca_cli.data.prepare import prepare

from .conftest import no_leftovers


def _nnunet_3d(root, n=4, values=(0, 2, 5)):
    """imagesTr/case_00k_0000/_0001 (two channels, float) + labelsTr/case_00k with ``values``."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for k in range(n):
        label = np.zeros((5, 12, 14), np.uint8)
        label[1:3, 2:6, 3:9] = values[1]
        label[3:5, 7:10, 2:5] = values[2]
        for c in range(2):
            image = sitk.GetImageFromArray((rng.random((5, 12, 14)) * 1000 + 500 * c).astype(np.float32))
            image.SetSpacing((0.8, 0.7, 2.5))
            sitk.WriteImage(image, str(root / "imagesTr" / f"case_{k:03d}_{c:04d}.nii.gz"))
        seg = sitk.GetImageFromArray(label)
        seg.SetSpacing((0.8, 0.7, 2.5))
        sitk.WriteImage(seg, str(root / "labelsTr" / f"case_{k:03d}.nii.gz"))
    return root


def _png_2d(root, n=5):
    """images/img_k.png (RGB) + masks/img_k.png (0/255)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "images" / f"img_{k}.png")
        mask = np.zeros((30, 40), np.uint8)
        mask[5 + k : 15 + k, 10:20] = 255
        Image.fromarray(mask).save(root / "masks" / f"img_{k}.png")
    return root


def test_nnunet_3d_multichannel(tmp_path):
    src = _nnunet_3d(tmp_path / "src")
    ds = PreparedDataset(prepare("generic", src, tmp_path / "out", patient_regex=r"case_(\d)"), "all")
    m = ds.manifest
    assert (m["dims"], m["channels"], m["kind"]) == (3, 2, "generic")
    assert m["classes"] == ["class_2", "class_5"]  # values present, renumbered
    assert m["spacing"] == pytest.approx([2.5, 0.7, 0.8]) and m["spacing_unit"] == "mm"
    assert m["normalization"]["method"] == "percentile"
    image, label = ds.image(0), ds.label(0)
    assert isinstance(image, np.memmap) and isinstance(label, np.memmap)
    assert image.shape == (5, 12, 14, 2) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    assert int((label == 1).sum()) == 2 * 4 * 6 and int((label == 2).sum()) == 2 * 3 * 3
    assert {c["patient"] for c in m["cases"]} == {"0"}  # case_000..case_003 all match "case_0"


def test_named_classes_and_unknown_value(tmp_path):
    src = _nnunet_3d(tmp_path / "src", values=(0, 1, 2))
    ds = PreparedDataset(prepare("generic", src, tmp_path / "ok", classes=["a", "b"], dataset_kind="radiology", modality="CT"), "all")
    assert ds.classes == ["a", "b"] and ds.manifest["kind"] == "radiology" and ds.manifest["modality"] == "CT"
    with pytest.raises(NCAError, match=r"labelsTr/case_000\.nii\.gz contains value 2 but only 1 class"):
        prepare("generic", src, tmp_path / "out", classes=["a"])
    assert no_leftovers(tmp_path, "out")


def test_png_masks_0_255_and_resize(tmp_path):
    src = _png_2d(tmp_path / "src")
    ds = PreparedDataset(prepare("generic", src, tmp_path / "out"), "all")
    m = ds.manifest
    assert (m["dims"], m["channels"], m["classes"]) == (2, 3, ["class_1"])
    assert m["normalization"] == {"method": "none", "dtype": "uint8", "divide_by": 255.0}
    assert ds.image(0).dtype == np.uint8 and ds.image(0).shape == (30, 40, 3)
    assert np.unique(ds.label(0)).tolist() == [0, 1] and int(ds.label(0).sum()) == 100
    small = PreparedDataset(prepare("generic", src, tmp_path / "small", resize=(15, 20)), "all")
    assert small.image(0).shape == (15, 20, 3) and int(small.label(0).sum()) == 25


def test_missing_image_names_the_label(tmp_path):
    src = _png_2d(tmp_path / "src")
    (src / "images" / "img_3.png").unlink()
    with pytest.raises(NCAError, match=r"label .*masks/img_3\.png has no image named img_3"):
        prepare("generic", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_shape_mismatch_names_both(tmp_path):
    src = _png_2d(tmp_path / "src")
    Image.new("L", (10, 10)).save(src / "masks" / "img_2.png")
    with pytest.raises(NCAError, match=r"image .*images/img_2\.png has shape \(30, 40\) but its label .*masks/img_2\.png has \(10, 10\)"):
        prepare("generic", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def test_colour_label_and_bad_layout(tmp_path):
    src = _png_2d(tmp_path / "src")
    Image.new("RGB", (40, 30), (10, 20, 30)).save(src / "masks" / "img_1.png")
    with pytest.raises(NCAError, match=r"img_1\.png is a colour image"):
        prepare("generic", src, tmp_path / "out")
    (tmp_path / "flat").mkdir()
    with pytest.raises(NCAError, match="neither imagesTr/"):
        prepare("generic", tmp_path / "flat", tmp_path / "out")
    assert no_leftovers(tmp_path, "out")


def _instance_folder(tmp_path, n_objects=40):
    src = tmp_path / "nuclei"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src / "images" / f"n{i}.png")
        label = np.zeros((64, 64), np.uint8)
        for k in range(1, n_objects + 1):
            y, x = rng.integers(2, 60, 2)
            label[y - 1:y + 2, x - 1:x + 2] = k
        Image.fromarray(label).save(src / "masks" / f"n{i}.png")
    return src


def test_instance_masks_are_refused_with_the_advice_to_merge_them(tmp_path):
    src = _instance_folder(tmp_path)
    with pytest.raises(NCAError, match=r"distinct ids.*instance mask.*--binary"):
        prepare("generic", src, tmp_path / "out")
    ds = PreparedDataset(prepare("generic", src, tmp_path / "bin", binary=True), "all")
    assert ds.classes == ["foreground"] and set(np.unique(ds.label(0)).tolist()) == {0, 1}


def test_split_control_and_the_one_case_note(tmp_path):
    import subprocess
    import sys

    src = _instance_folder(tmp_path)
    ds = PreparedDataset(prepare("generic", src, tmp_path / "fixed", binary=True, test_cases=["n1"],
                                 val_fraction=0.0), "all")
    assert ds.manifest["split"]["test"] == ["n1"] and ds.manifest["split"]["val"] == []
    with pytest.raises(NCAError, match="'n9' is not among the prepared cases"):
        prepare("generic", src, tmp_path / "bad", binary=True, test_cases=["n9"])
    one = tmp_path / "one"
    (one / "images").mkdir(parents=True)
    (one / "masks").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(one / "images" / "a.png")
    Image.fromarray(np.eye(16, dtype=np.uint8)).save(one / "masks" / "a.png")
    proc = subprocess.run([sys.executable, "-m", "nca_cli", "prepare", "generic", str(one), "-o", str(tmp_path / "ds1")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "no validation case" in proc.stdout and "cases written 1" in proc.stdout


def test_images_without_masks_are_named_and_refused_unless_skipped(tmp_path):
    import subprocess
    import sys

    src = _png_2d(tmp_path / "src", n=6)
    (src / "masks" / "img_4.png").unlink()                      # 6 images, 5 masks
    with pytest.raises(NCAError, match=r"1 image\(s\) have no mask in .*masks: img_4\.png; add their masks or pass "
                                       r"--skip-unlabeled"):
        prepare("generic", src, tmp_path / "out")
    assert no_leftovers(tmp_path, "out")
    cmd = [sys.executable, "-m", "nca_cli", "prepare", "generic", str(src), "-o", str(tmp_path / "out")]
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1 and "img_4.png" in refused.stderr
    done = subprocess.run([*cmd, "--skip-unlabeled"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "without a mask" in done.stdout and "left out: img_4.png" in done.stdout
    ds = PreparedDataset(tmp_path / "out", "all")
    assert sorted(c["id"] for c in ds.manifest["cases"]) == ["img_0", "img_1", "img_2", "img_3", "img_5"]


def test_mpp_is_recorded_as_the_datasets_resolution(tmp_path):
    """``--mpp`` gives 2D images a physical resolution (what a trained model's contract carries);
    without it plain PNGs stay in pixels."""
    src = _png_2d(tmp_path / "src")
    ds = PreparedDataset(prepare("generic", src, tmp_path / "um", mpp=0.5), "all")
    assert ds.manifest["spacing"] == [0.5, 0.5] and ds.manifest["spacing_unit"] == "um"
    plain = PreparedDataset(prepare("generic", src, tmp_path / "px"), "all")
    assert plain.manifest["spacing_unit"] == "px"
