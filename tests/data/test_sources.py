from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from nca_cli.data.resize import nearest_indices, resize_image, resize_labels
from nca_cli.data.sources import SlideSource, full_suffix, read_image, read_volume, strip_suffix, visible_files
from nca_cli.errors import NCAError


def test_volumes_become_channels_last(tmp_path):
    four_d = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)
    image = sitk.GetImageFromArray(four_d, isVector=False)
    image.SetSpacing((0.5, 0.6, 3.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))
    vol = read_volume(tmp_path / "a.nii.gz")
    assert vol.array.shape == (3, 4, 5, 2) and vol.spacing == pytest.approx((3.0, 0.6, 0.5))
    np.testing.assert_array_equal(vol.array[..., 1], four_d[1])
    vector = sitk.GetImageFromArray(np.moveaxis(four_d, 0, -1).copy(), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "v.mha"))
    np.testing.assert_array_equal(read_volume(tmp_path / "v.mha").array, vol.array)
    (tmp_path / "bad.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(NCAError, match=r"Cannot read volume .*bad\.nii\.gz"):
        read_volume(tmp_path / "bad.nii.gz")


def test_dicom_monochrome1_is_inverted(tmp_path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = 4, 6
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1"
    pixels = (np.arange(24, dtype=np.uint16) * 100).reshape(4, 6)
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    image = read_image(tmp_path / "x.dcm")
    assert image.shape == (4, 6, 1)
    np.testing.assert_array_equal(image[..., 0], pixels.max() - pixels)


def test_planar_tiff_and_suffixes(tmp_path):
    planes = np.random.default_rng(0).integers(0, 255, (3, 8, 10), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", planes, planarconfig="separate", photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), np.moveaxis(planes, 0, -1))
    assert full_suffix(Path("a/b.NII.GZ")) == ".nii.gz" and strip_suffix(Path("case_0001.nii.gz")) == "case_0001"
    (tmp_path / "._p.tif").write_bytes(b"")
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "p.tif").write_bytes(b"")
    assert visible_files(tmp_path, "*.tif", recursive=True) == [tmp_path / "p.tif"]


def test_slide_source_reads_stripped_tiff_regions(tmp_path):
    data = (np.arange(70 * 50) % 251).astype(np.uint8).reshape(70, 50)
    tifffile.imwrite(tmp_path / "m.tif", data, rowsperstrip=8, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    with SlideSource(tmp_path / "m.tif") as slide:
        assert slide.level_dimensions == [(50, 70)] and slide.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(slide.read(0, 7, 13, 30, 41)[..., 0], data[13:54, 7:37])
    (tmp_path / "x.tif").write_bytes(b"junk")
    with pytest.raises(NCAError, match=r"Cannot read slide .*x\.tif"):
        SlideSource(tmp_path / "x.tif")


def test_resizing():
    assert nearest_indices(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert resize_labels(label, (6, 2)).tolist() == [[1, 3], [1, 3], [5, 7], [5, 7], [9, 11], [9, 11]]
    image = np.full((10, 12, 3), 200, np.uint8)
    out = resize_image(image, (5, 6))
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8 and (out == 200).all()
    ramp = np.broadcast_to(np.linspace(0, 1, 8, dtype=np.float32)[:, None, None, None], (8, 6, 6, 1))
    out = resize_image(np.ascontiguousarray(ramp), (4, 3, 3))
    assert out.shape == (4, 3, 3, 1) and np.all(np.diff(out[:, 0, 0, 0]) > 0)
