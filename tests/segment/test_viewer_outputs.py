"""Outputs viewers open as objects and pictures: GeoJSON polygons, palette masks, previews,
montages; cine DICOM as video; segmenting images at a chosen resolution."""
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from nca_cli.core.errors import NCAError
from nca_cli.segment.options import SegmentOptions
from nca_cli.segment.run import segment_inputs


def run(inputs, out, model, **kw):
    kw.setdefault("quiet", True)
    return segment_inputs(SegmentOptions(inputs=[str(i) for i in inputs], output=out, model=model, **kw))


def rasterise(features, shape, scale=1.0):
    """Even-odd fill of the polygons at pixel centres (coordinates divided by ``scale``)."""
    out = np.zeros(shape, np.uint8)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    cy, cx = ys + 0.5, xs + 0.5
    for f in features:
        inside = np.zeros(shape, bool)
        for ring in f["geometry"]["coordinates"]:
            pts = np.asarray(ring, float) / scale
            for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
                if y0 == y1:
                    continue
                cross = ((y0 <= cy) & (cy < y1)) | ((y1 <= cy) & (cy < y0))
                xint = x0 + (cy - y0) * (x1 - x0) / (y1 - y0)
                inside ^= cross & (cx < xint)
        out[inside] = 1
    return out


def test_geojson_as_the_output_and_beside_the_mask(tmp_path, models, rgb_image):
    src = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(src)
    run([src], tmp_path / "a_mask.png", models["rgb2d"], geojson=tmp_path / "a.geojson", geojson_tolerance=0.0)
    mask = np.asarray(Image.open(tmp_path / "a_mask.png"))
    assert Image.open(tmp_path / "a_mask.png").mode == "P"
    doc = json.loads((tmp_path / "a.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"]
    props = doc["features"][0]["properties"]
    assert props["objectType"] == "annotation" and props["classification"]["name"] == "class 1"
    assert np.array_equal(rasterise(doc["features"], mask.shape), (mask > 0).astype(np.uint8))
    meta = json.loads((tmp_path / "a_mask.run_metadata.json").read_text())
    assert str(tmp_path / "a.geojson") in meta["outputs"]
    run([src], tmp_path / "only.geojson", models["rgb2d"])
    assert json.loads((tmp_path / "only.geojson").read_text())["features"]
    assert (tmp_path / "only.run_metadata.json").exists() and not (tmp_path / "only.png").exists()


def test_geojson_of_a_slide_level_is_in_level0_pixels(tmp_path, models):
    import tifffile

    base = np.random.default_rng(1).integers(0, 255, (600, 520, 3), dtype=np.uint8)
    src = tmp_path / "slide.tif"
    with tifffile.TiffWriter(src, bigtiff=True) as tw:
        opts = dict(tile=(256, 256), photometric="rgb", resolutionunit="CENTIMETER")
        tw.write(base, resolution=(1e4 / 0.5, 1e4 / 0.5), **opts)
        tw.write(base[::2, ::2], subfiletype=1, resolution=(1e4 / 1.0, 1e4 / 1.0), **opts)
    run([src], tmp_path / "m.tif", models["rgb2d"], level=1, geojson=tmp_path / "m.geojson", geojson_tolerance=0.0)
    import openslide

    with openslide.OpenSlide(str(tmp_path / "m.tif")) as s:
        mask = np.asarray(s.read_region((0, 0), 0, s.dimensions))[..., 0] > 0
    doc = json.loads((tmp_path / "m.geojson").read_text())
    xs = [x for f in doc["features"] for ring in f["geometry"]["coordinates"] for x, _ in ring]
    assert max(xs) > 300                                    # level-1 pixels doubled: level-0 coordinates
    assert np.array_equal(rasterise(doc["features"], mask.shape, scale=2.0), mask.astype(np.uint8))


def test_geojson_refused_for_volumes_before_any_work(tmp_path, models):
    vol = tmp_path / "v.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32)), str(vol))
    with pytest.raises(NCAError, match="--geojson writes 2D polygons"):
        run([vol], tmp_path / "m.nii.gz", models["gray3d"], geojson=tmp_path / "m.geojson")
    with pytest.raises(NCAError, match=r"mask of .*v\.nii\.gz to .*m\.geojson"):
        run([vol], tmp_path / "m.geojson", models["gray3d"])


@pytest.mark.parametrize("style", ["outline", "fill", "side-by-side"])
def test_preview_styles(tmp_path, models, rgb_image, style):
    src = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(src)
    run([src], tmp_path / "m.png", models["rgb2d"], preview=tmp_path / "p.png", preview_style=style)
    pic = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    h, w = rgb_image.shape[:2]
    assert pic.shape[0] >= h and pic.shape[1] == (2 * w + 4 if style == "side-by-side" else w)
    drawn = pic[:h, w + 4:] if style == "side-by-side" else pic[:h, :w]
    assert not np.array_equal(drawn, rgb_image if style != "side-by-side" else np.zeros_like(drawn))  # classes drawn


def test_volume_preview_is_a_three_plane_montage(tmp_path, models):
    vol = (np.random.default_rng(2).random((9, 20, 17)) * 100).astype(np.float32)
    src = tmp_path / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(src))
    run([src], tmp_path / "m.nii.gz", models["gray3d"], preview=tmp_path / "p.png")
    pic = np.asarray(Image.open(tmp_path / "p.png"))
    assert pic.shape[0] > 3 * 9 and pic.shape[1] > 3 * 17      # three rows of planes, three planes each


def _cine(path, frames=6, h=24, w=32, frame_time=40.0):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"      # ultrasound multi-frame
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.NumberOfFrames = h, w, frames
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.FrameTime = frame_time
    ds.PixelSpacing = [0.2, 0.3]
    pix = (np.random.default_rng(0).random((frames, h, w)) * 255).astype(np.uint8)
    ds.PixelData = pix.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_cine_dicom_is_a_video_with_its_frame_time(tmp_path, models):
    from nca_cli import io

    src = _cine(tmp_path / "cine.dcm")
    assert io.probe(src) == ("video", 3)
    with io.open_input(src) as img:
        assert img.kind == "video" and img.meta["fps"] == pytest.approx(25.0)
    run([src], tmp_path / "cine_mask.nii.gz", models["gray3d"], overlay=tmp_path / "cine.mp4")
    got = sitk.ReadImage(str(tmp_path / "cine_mask.nii.gz"))
    assert got.GetSize() == (32, 24, 6) and got.GetSpacing()[2] == pytest.approx(0.04)
    assert (tmp_path / "cine.mp4").stat().st_size > 0


def test_images_segmented_at_a_chosen_resolution_are_written_at_their_size(tmp_path, models, rgb_image):
    src = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(src)
    h, w = rgb_image.shape[:2]
    run([src], tmp_path / "half.png", models["rgb2d"], scale=0.5)
    meta = json.loads((tmp_path / "half.run_metadata.json").read_text())
    assert meta["segmented_shape"] == [h // 2, w // 2] and meta["shape"] == [h, w] and meta["scale"] == 0.5
    assert np.asarray(Image.open(tmp_path / "half.png")).shape == (h, w)
    with pytest.raises(NCAError, match="records no resolution.*--input-mpp"):
        run([src], tmp_path / "mpp.png", models["rgb2d"], mpp=1.0)
    run([src], tmp_path / "mpp.png", models["rgb2d"], mpp=1.0, input_mpp=0.5)
    assert json.loads((tmp_path / "mpp.run_metadata.json").read_text())["segmented_shape"] == [h // 2, w // 2]


def test_a_3d_input_for_a_2d_model_asks_for_a_3d_model(tmp_path, models):
    vol = tmp_path / "v.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32)), str(vol))
    with pytest.raises(NCAError, match="use a 3D model for this input"):
        run([vol], tmp_path / "m.nii.gz", models["gray2d"])
