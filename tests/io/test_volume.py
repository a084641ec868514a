"""SimpleITK volumes: geometry survives a read/write round trip; DICOM series; failures."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import SimpleITK as sitk

from nca_cli.core.errors import NCAError
from nca_cli.io import open_input, write_volume
from nca_cli.io import volume as volume_mod

SPACING = (0.7, 0.8, 2.5)
ORIGIN = (10.0, -5.5, 3.25)


def rotation() -> tuple[float, ...]:
    a, b = np.deg2rad(30), np.deg2rad(-20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


def write_nifti(path, data: np.ndarray) -> None:
    image = sitk.GetImageFromArray(data)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(rotation())
    sitk.WriteImage(image, str(path))


def test_nifti_round_trip_keeps_geometry(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 20, 17)).astype(np.float32) * 100
    write_nifti(tmp_path / "ct.nii.gz", data)
    with open_input(tmp_path / "ct.nii.gz") as vol:
        assert vol.kind == "volume" and vol.dims == 3 and vol.channels == 1
        assert vol.spatial_shape == (6, 20, 17)
        assert vol.dtype == np.float32
        np.testing.assert_allclose(vol.meta["spacing"], SPACING, rtol=1e-6)
        np.testing.assert_allclose(vol.meta["origin"], ORIGIN, rtol=1e-6)
        np.testing.assert_allclose(vol.meta["direction"], rotation(), atol=1e-6)
        assert vol.meta["default_output_suffix"] == ".nii.gz"
        full = vol.read()
        assert full.shape == (6, 20, 17, 1) and full.dtype == np.float32
        np.testing.assert_allclose(full[..., 0], data, rtol=1e-6)
        region = (slice(1, 4), slice(5, 15), slice(0, 9))
        np.testing.assert_allclose(vol.read(region)[..., 0], data[region], rtol=1e-6)
        labels = (full[..., 0] > 0).astype(np.uint8)
        out = write_volume(tmp_path / "seg.nii.gz", labels, vol.meta)
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(back.GetSpacing(), SPACING, rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), ORIGIN, rtol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), rotation(), atol=1e-5)
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)


def test_mha_and_nrrd_outputs(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((1.5, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "v.mha"))
    with open_input(tmp_path / "v.mha") as vol:
        assert vol.meta["pixel_type"].startswith("16-bit signed")
        np.testing.assert_array_equal(vol.read()[..., 0], data.astype(np.float32))
        for name in ("a.mha", "a.nrrd", "a.nii"):
            write_volume(tmp_path / name, np.ones((2, 3, 4), np.uint8), vol.meta)
            assert sitk.ReadImage(str(tmp_path / name)).GetSpacing() == pytest.approx((1.5, 2.0, 3.0))


def test_four_d_becomes_channels(tmp_path):
    data = np.stack([np.full((3, 4, 5), 1.0), np.full((3, 4, 5), 2.0)]).astype(np.float32)  # [t, z, y, x]
    sitk.WriteImage(sitk.GetImageFromArray(data, isVector=False), str(tmp_path / "mp.nii"))
    with open_input(tmp_path / "mp.nii") as vol:
        assert vol.spatial_shape == (3, 4, 5) and vol.channels == 2
        arr = vol.read()
    assert arr.shape == (3, 4, 5, 2)
    assert (arr[..., 0] == 1).all() and (arr[..., 1] == 2).all()
    assert len(vol.meta["spacing"]) == 3 and len(vol.meta["direction"]) == 9


def write_dicom_series(folder, data: np.ndarray, spacing=(0.5, 0.6), slice_gap=3.0) -> None:
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.99"
    for k in range(data.shape[0]):
        sl = sitk.GetImageFromArray(data[k])
        sl.SetSpacing(spacing)
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.98",
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0032": f"1.0\\2.0\\{k * slice_gap}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
            "0018|0050": str(slice_gap),
            "0008|0018": f"{series}.{k + 1}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path):
    data = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5)
    write_dicom_series(tmp_path / "series", data)
    with open_input(tmp_path / "series") as vol:
        assert vol.kind == "volume" and vol.spatial_shape == (4, 6, 5)
        assert vol.meta["source_format"] == "dicom"
        assert vol.meta["default_output_suffix"] == ".nii.gz"
        np.testing.assert_allclose(vol.meta["spacing"], (0.5, 0.6, 3.0), rtol=1e-5)
        np.testing.assert_allclose(vol.meta["origin"], (1.0, 2.0, 0.0), atol=1e-5)
        np.testing.assert_array_equal(vol.read()[..., 0], data)
        out = write_volume(tmp_path / ("seg" + vol.meta["default_output_suffix"]), np.zeros((4, 6, 5), np.uint8), vol.meta)
    assert sitk.ReadImage(str(out)).GetSpacing() == pytest.approx((0.5, 0.6, 3.0), rel=1e-5)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NCAError, match="empty"):
        open_input(tmp_path / "empty")


def test_write_refuses_dicom_and_detached_headers(tmp_path):
    labels = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(NCAError, match="seg.dcm"):
        write_volume(tmp_path / "seg.dcm", labels, {})
    with pytest.raises(NCAError, match=r"seg\.mha"):
        write_volume(tmp_path / "seg.mhd", labels, {})
    assert list(tmp_path.iterdir()) == []


def test_truncated_nifti(tmp_path):
    write_nifti(tmp_path / "ok.nii", np.ones((8, 30, 30), np.float32))
    raw = (tmp_path / "ok.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NCAError, match="cut.nii"):
        with open_input(tmp_path / "cut.nii") as vol:
            vol.read()


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_write(image, name, compress):
        with open(name, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("Description: no space left on device")

    monkeypatch.setattr(volume_mod.sitk, "WriteImage", broken_write)
    with pytest.raises(NCAError, match="seg.nii.gz"):
        write_volume(tmp_path / "seg.nii.gz", np.zeros((2, 3, 4), np.uint8), {"spacing": (1, 1, 1)})
    assert list(tmp_path.iterdir()) == []


def test_truncated_nifti_gz(tmp_path):
    write_nifti(tmp_path / "ok.nii.gz", np.random.default_rng(1).normal(size=(8, 30, 30)).astype(np.float32))
    raw = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) - 700])
    with pytest.raises(NCAError, match="cut.nii.gz"):
        open_input(tmp_path / "cut.nii.gz")


def test_multi_member_gzip_nifti_is_accepted(tmp_path):
    import gzip

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    write_nifti(tmp_path / "v.nii", data)
    raw = (tmp_path / "v.nii").read_bytes()
    with open(tmp_path / "multi.nii.gz", "wb") as f:
        f.write(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    with open_input(tmp_path / "multi.nii.gz") as vol:
        np.testing.assert_array_equal(vol.read()[..., 0], data)


def write_negative_spacing_nifti(path, data: np.ndarray) -> None:
    """A NIfTI whose header's pixdim is (-0.4, 0.7, -5), as some converters write."""
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((0.4, 0.7, 5.0))
    image.SetOrigin(ORIGIN)
    sitk.WriteImage(image, str(path))
    raw = bytearray(path.read_bytes())
    pixdim = list(struct.unpack("<8f", raw[76:108]))
    pixdim[1], pixdim[3] = -pixdim[1], -pixdim[3]
    raw[76:108] = struct.pack("<8f", *pixdim)
    path.write_bytes(bytes(raw))


def test_negative_spacing_reads_and_writes_as_simpleitk_reads_it(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    src = tmp_path / "neg.nii"
    write_negative_spacing_nifti(src, data)
    expected = sitk.ReadImage(str(src))
    assert expected.GetSpacing()[0] > 0 and expected.GetDirection()[0] == -1.0   # SimpleITK's own reading
    with open_input(src) as vol:
        np.testing.assert_allclose(vol.meta["spacing"], expected.GetSpacing(), rtol=1e-6)
        np.testing.assert_allclose(vol.meta["direction"], expected.GetDirection(), atol=1e-9)
        np.testing.assert_array_equal(vol.read()[..., 0], data)
        out = write_volume(tmp_path / "seg.nii.gz", (data % 2).astype(np.uint8), vol.meta)
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(back.GetSpacing(), expected.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), expected.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), data % 2)
