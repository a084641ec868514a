"""Plain images, single DICOM files and mask images."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from nca_cli.core.errors import NCAError
from nca_cli.io import image as image_mod
from nca_cli.io import open_input, write_mask_image
from nca_cli.io.palette import PALETTE


def test_png_rgb_grey_and_16_bit(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with open_input(tmp_path / "rgb.png") as img:
        assert (img.kind, img.dims, img.spatial_shape, img.channels, img.dtype) == ("image", 2, (30, 41), 3, np.uint8)
        np.testing.assert_array_equal(img.read(), rgb)
        np.testing.assert_array_equal(img.read((slice(3, 9), slice(10, 40))), rgb[3:9, 10:40])

    grey = rng.integers(0, 256, (12, 13), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    with open_input(tmp_path / "grey.png") as img:
        assert img.channels == 1
        np.testing.assert_array_equal(img.read()[..., 0], grey)

    deep = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    with open_input(tmp_path / "deep.png") as img:
        assert img.dtype == np.uint16 and img.channels == 1
        out = img.read()
        assert out.dtype == np.uint16
        np.testing.assert_array_equal(out[..., 0], deep)


def test_png_alpha_becomes_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 40
    rgba[:2, :, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    with open_input(tmp_path / "a.png") as img:
        out = img.read()
    assert img.channels == 3
    assert (out[:2] == 40).all() and (out[2:] == 255).all()


def test_jpeg_and_bmp(tmp_path):
    data = np.full((16, 24, 3), 128, dtype=np.uint8)
    for name in ("x.jpg", "x.bmp"):
        Image.fromarray(data).save(tmp_path / name)
        with open_input(tmp_path / name) as img:
            assert img.spatial_shape == (16, 24)
            np.testing.assert_allclose(img.read().astype(int), 128, atol=2)


def test_plain_tiff_is_mapped_not_decoded(tmp_path, monkeypatch):
    data = np.arange(50 * 60, dtype=np.uint16).reshape(50, 60)
    tifffile.imwrite(tmp_path / "plain.tif", data, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")

    def no_full_decode(*args, **kwargs):
        raise AssertionError("the whole file was decoded")

    monkeypatch.setattr(image_mod.tifffile, "imread", no_full_decode)
    with open_input(tmp_path / "plain.tif") as img:
        assert img.kind == "image" and img.dtype == np.uint16 and img.channels == 1
        assert img.meta["mpp"] == pytest.approx(0.5)
        np.testing.assert_array_equal(img.read((slice(10, 20), slice(5, 55)))[..., 0], data[10:20, 5:55])


def test_compressed_and_planar_tiff(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "z.tiff", rgb, compression="zlib")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "f.tif", rgb[..., 0].astype(np.float64) / 7)
    for name in ("z.tiff", "planar.tif"):
        with open_input(tmp_path / name) as img:
            assert img.channels == 3 and img.spatial_shape == (20, 30)
            np.testing.assert_array_equal(img.read(), rgb)
    with open_input(tmp_path / "f.tif") as img:
        assert img.dtype == np.float32
        np.testing.assert_allclose(img.read()[..., 0], rgb[..., 0] / 7, rtol=1e-6)


def test_tiff_stack_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(NCAError, match="stack.tif"):
        open_input(tmp_path / "stack.tif")


def dicom_dataset(pixels: np.ndarray, photometric: str, *, bits_stored=12, slope=None, intercept=None) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.2, 0.3]
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def test_dicom_monochrome1_with_rescale(tmp_path):
    stored = np.random.default_rng(2).integers(0, 4096, (7, 9), dtype=np.uint16)
    dicom_dataset(stored, "MONOCHROME1", slope=2, intercept=-100).save_as(tmp_path / "xray.dcm", enforce_file_format=True)
    with open_input(tmp_path / "xray.dcm") as img:
        assert (img.kind, img.dims, img.spatial_shape, img.channels, img.dtype) == ("image", 2, (7, 9), 1, np.float32)
        assert img.meta["spacing"] == (0.3, 0.2)
        assert img.meta["default_output_suffix"] == ".png"
        out = img.read()
    assert out.dtype == np.float32 and out.shape == (7, 9, 1)
    expected = 2.0 * (4095 - stored.astype(np.float64)) - 100
    np.testing.assert_array_equal(out[..., 0], expected)
    # brighter stored value under MONOCHROME1 means darker picture
    assert out[..., 0].ravel()[np.argmax(stored)] == out.min()


def test_dicom_multiframe_without_suffix(tmp_path):
    stored = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    dicom_dataset(stored, "MONOCHROME2").save_as(tmp_path / "cine", enforce_file_format=True)
    with open_input(tmp_path / "cine") as vol:
        assert (vol.kind, vol.dims, vol.spatial_shape) == ("volume", 3, (3, 4, 5))
        assert vol.meta["default_output_suffix"] == ".nii.gz"
        np.testing.assert_array_equal(vol.read((slice(1, 3), slice(None), slice(None)))[..., 0], stored[1:3])


def test_dicom_without_pixels(tmp_path):
    ds = dicom_dataset(np.zeros((4, 4), np.uint16), "MONOCHROME2")
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    with pytest.raises(NCAError, match=r"The DICOM file .*nopix\.dcm has no pixel data") as caught:
        with open_input(tmp_path / "nopix.dcm") as img:
            img.read()
    assert "decoder" not in str(caught.value)


def test_write_mask_image_round_trip(tmp_path):
    labels = np.random.default_rng(3).integers(0, 4, (21, 17), dtype=np.uint8)
    png = write_mask_image(tmp_path / "m.png", labels)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), labels)
    tif = write_mask_image(tmp_path / "m.tif", labels)
    np.testing.assert_array_equal(tifffile.imread(tif), labels)
    with pytest.raises(NCAError, match="m.jpg"):
        write_mask_image(tmp_path / "m.jpg", labels)


def test_png_mask_is_a_palette_image(tmp_path):
    labels = np.zeros((6, 7), np.uint8)
    labels[1:3, 1:4] = 1
    labels[4, :] = 2
    labels[5, 6] = 255
    with Image.open(write_mask_image(tmp_path / "m.png", labels)) as img:
        assert img.mode == "P"
        np.testing.assert_array_equal(np.asarray(img), labels)  # values stay the class indices
        colours = np.asarray(img.convert("RGB"))  # what viewers show
    np.testing.assert_array_equal(colours, PALETTE[labels])
    assert (colours[labels == 0] == 0).all()
    assert tifffile.TiffFile(write_mask_image(tmp_path / "m.tif", labels)).pages[0].photometric == 1  # stays grey


def test_written_png_masks_read_back_as_class_indices_and_as_colours(tmp_path):
    """A mask PNG is a label map to ``read_labels`` and a coloured picture to ``open_input``."""
    from nca_cli.io import read_labels

    labels = np.zeros((6, 7), np.uint8)
    labels[1:3, 1:4] = 1
    labels[4, :] = 2
    write_mask_image(tmp_path / "m.png", labels)
    np.testing.assert_array_equal(read_labels(tmp_path / "m.png")[0], labels)
    with open_input(tmp_path / "m.png") as img:
        assert img.channels == 3
        np.testing.assert_array_equal(img.read(), PALETTE[labels])


def test_write_mask_image_failure_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(image_mod.Image.Image, "save", broken_save)
    with pytest.raises(OSError):
        write_mask_image(tmp_path / "m.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []
