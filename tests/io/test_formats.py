from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from nca_cli import io
from nca_cli.core.errors import NCAError
from nca_cli.io.formats import full_suffix, strip_suffix


def test_suffixes():
    assert full_suffix(Path("a/b.NII.GZ")) == ".nii.gz" and strip_suffix(Path("case_0001.nii.gz")) == "case_0001"
    assert full_suffix("slide.ome.tiff") == ".ome.tiff" and strip_suffix("slide.ome.tif") == "slide"
    assert io.is_volume_file("x.mha") and io.is_image_file("x.dcm") and not io.is_image_file("x.nii")


def test_load_volumes_channels_last_with_spacing(tmp_path):
    four_d = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)
    image = sitk.GetImageFromArray(four_d, isVector=False)
    image.SetSpacing((0.5, 0.6, 3.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))
    vol = io.load(tmp_path / "a.nii.gz")
    assert vol.array.shape == (3, 4, 5, 2) and vol.spacing == pytest.approx([3.0, 0.6, 0.5])
    np.testing.assert_array_equal(vol.array[..., 1], four_d[1])
    vector = sitk.GetImageFromArray(np.moveaxis(four_d, 0, -1).copy(), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "v.mha"))
    np.testing.assert_array_equal(io.load(tmp_path / "v.mha").array, vol.array)
    (tmp_path / "bad.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(NCAError, match=r"bad\.nii\.gz"):
        io.load(tmp_path / "bad.nii.gz")


def test_planar_tiff(tmp_path):
    planes = np.random.default_rng(0).integers(0, 255, (3, 8, 10), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", planes, planarconfig="separate", photometric="rgb")
    np.testing.assert_array_equal(io.load(tmp_path / "p.tif").array, np.moveaxis(planes, 0, -1))


def test_label_images_keep_palette_indices(tmp_path):
    labels = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)
    img = Image.fromarray(labels, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    img.save(tmp_path / "m.png")
    got, meta = io.read_labels(tmp_path / "m.png")
    np.testing.assert_array_equal(got, labels)
    assert meta is None
    Image.fromarray(np.stack([labels * 60] * 3, -1)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(io.read_labels(tmp_path / "grey_rgb.png")[0], labels * 60)
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(NCAError, match=r"colour\.png is a colour image"):
        io.read_labels(tmp_path / "colour.png")


def test_probe_kinds_without_decoding(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    assert io.probe(tmp_path / "a.png") == ("image", 2)
    assert io.probe(tmp_path / "v.nii.gz") == ("volume", 3)
    assert io.probe(tmp_path / "clip.mp4") == ("video", 3)
