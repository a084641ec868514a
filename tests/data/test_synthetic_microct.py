import numpy as np
import SimpleITK as sitk

from nca_cli.data import make_synthetic
from nca_cli.data.dataset import PreparedDataset
from nca_cli.data.prepare import prepare


def test_microct_raw_layout_and_phases(tmp_path):
    out = make_synthetic("microct", tmp_path / "raw", cases=2, size=(24, 32, 40), seed=3)
    images = sorted((out / "imagesTr").iterdir())
    labels = sorted((out / "labelsTr").iterdir())
    assert [p.name for p in images] == ["microct_00_0000.nii.gz", "microct_01_0000.nii.gz"]
    assert [p.name for p in labels] == ["microct_00.nii.gz", "microct_01.nii.gz"]
    img, lab = sitk.ReadImage(str(images[0])), sitk.ReadImage(str(labels[0]))
    assert img.GetSize() == lab.GetSize() == (40, 32, 24) and np.allclose(img.GetSpacing(), 0.005)
    volume, label = sitk.GetArrayFromImage(img).astype(float), sitk.GetArrayFromImage(lab)
    assert sitk.GetArrayFromImage(img).dtype == np.uint16 and set(np.unique(label)) == {0, 1, 2, 3}
    means = [volume[label == k].mean() for k in range(4)]
    assert means[3] > means[1] > max(means[0], means[2])  # inclusions > matrix > pores, air
    assert abs(means[2] - means[0]) < 0.3 * (means[1] - means[0])  # pores look like air: context tells them apart
    again = make_synthetic("microct", tmp_path / "again", cases=2, size=(24, 32, 40), seed=3)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(again / "imagesTr" / images[0].name))),
                          sitk.GetArrayFromImage(img))


def test_prepare_synthetic_microct_through_the_generic_converter(tmp_path):
    root = prepare("synthetic", None, tmp_path / "ds", kind="microct", cases=3, size=16, seed=0)
    ds = PreparedDataset(root, "all")
    m = ds.manifest
    assert m["name"] == "synthetic-microct" and m["synthetic"] and m["source"]["format"] == "generic"
    assert m["classes"] == ["matrix", "pore", "inclusion"] and m["modality"] == "microCT" and m["dims"] == 3
    assert m["normalization"]["method"] == "percentile" and len(ds) == 3
    image = np.asarray(ds.image(0))
    assert image.shape == (16, 16, 16, 1) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    assert np.asarray(ds.label(0)).max() == 3
