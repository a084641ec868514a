"""Segmenting at the model's resolution: a slide read at the mpp recorded in model.pt."""
import json

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.models import checkpoint
from nca_cli.models.contract import dataset_contract
from nca_cli.segment.options import SegmentOptions
from nca_cli.segment.run import segment_inputs

from ..io.test_geojson import rasterise
from .conftest import random_model

H, W = 768, 1024   # level 0 at 0.25 µm/px


def _slide(path, mpp=0.25):
    """A pyramidal TIFF (downsamples 1, 4, 16): white glass with dark discs."""
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.full((H, W, 3), 235, np.uint8)
    rng = np.random.default_rng(0)
    for cy, cx, r in zip(rng.integers(60, H - 60, 12), rng.integers(60, W - 60, 12), rng.integers(20, 60, 12)):
        base[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (120, 40, 140)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        opts = dict(tile=(256, 256), photometric="rgb", resolutionunit="CENTIMETER")
        for k, ds in enumerate((1, 4, 16)):
            tw.write(base[::ds, ::ds], subfiletype=1 if k else 0, resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)),
                     metadata=None, **opts)
    return path


@pytest.fixture(scope="module")
def model_at_half_micron(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.pt"
    contract = dataset_contract({"dims": 2, "channels": 3, "modality": "H&E", "kind": "pathology",
                                 "classes": ["tissue"], "normalization": {"method": "none", "divide_by": 255},
                                 "spacing": [0.5, 0.5], "spacing_unit": "um"})
    checkpoint.save_model(path, random_model(2, 3, 1), None, {"contract": contract})
    return path


def run(src, out, model, **kw):
    return segment_inputs(SegmentOptions(inputs=[str(src)], output=out, model=model, quiet=True, **kw))


def test_a_slide_is_segmented_at_the_models_mpp_and_maps_back_to_level_0(tmp_path, model_at_half_micron):
    src = _slide(tmp_path / "slide.tif")
    out = tmp_path / "mask.tif"
    run(src, out, model_at_half_micron, geojson=tmp_path / "mask.geojson", geojson_tolerance=0.0,
        preview=tmp_path / "preview.png")
    meta = json.loads((tmp_path / "mask.run_metadata.json").read_text())
    assert meta["segmented_mpp"] == 0.5 and meta["level_read"] == 0 and meta["resolution_from"] == "model"
    with openslide.OpenSlide(str(out)) as s:
        mask_w, mask_h = s.dimensions
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-3)
    assert (mask_w * 0.5, mask_h * 0.5) == (W * 0.25, H * 0.25)   # the slide's physical extent
    mask = tifffile.imread(out, level=0)
    assert mask.shape == (H // 2, W // 2) and 0.01 < (mask > 0).mean() < 0.99
    doc = json.loads((tmp_path / "mask.geojson").read_text())
    drawn = np.zeros((H, W), bool)
    for feature in doc["features"]:
        drawn |= rasterise([np.asarray(r, np.float64) for r in feature["geometry"]["coordinates"]], (H, W))
    at_level0 = np.repeat(np.repeat(mask > 0, 2, axis=0), 2, axis=1)
    assert (drawn & at_level0).sum() / (drawn | at_level0).sum() >= 0.99
    assert Image.open(tmp_path / "preview.png").size[0] > 0


def test_native_and_a_given_mpp_override_the_model(tmp_path, model_at_half_micron):
    src = _slide(tmp_path / "slide.tif")
    run(src, tmp_path / "native.tif", model_at_half_micron, mpp="native")
    native = json.loads((tmp_path / "native.run_metadata.json").read_text())
    assert native["segmented_mpp"] == 0.25 and native["segmented_shape"] == [H, W]
    run(src, tmp_path / "one.tif", model_at_half_micron, mpp="1.0")
    one = json.loads((tmp_path / "one.run_metadata.json").read_text())
    assert one["segmented_mpp"] == 1.0 and one["level_read"] == 1 and one["segmented_shape"] == [H // 4, W // 4]
    with pytest.raises(NCAError, match="--mpp"):
        run(src, tmp_path / "bad.tif", model_at_half_micron, mpp="fine")


def test_an_image_without_resolution_is_taken_at_the_models_with_a_note(tmp_path, model_at_half_micron, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(src)
    segment_inputs(SegmentOptions(inputs=[str(src)], output=tmp_path / "a_mask.png", model=model_at_half_micron))
    said = capsys.readouterr()
    assert "records no resolution; assumed the model's 0.5 µm/px" in said.out + said.err
    assert "--input-mpp" in said.out + said.err
    run(src, tmp_path / "b_mask.png", model_at_half_micron, input_mpp=0.25)
    meta = json.loads((tmp_path / "b_mask.run_metadata.json").read_text())
    assert meta["segmented_shape"] == [20, 30] and np.array(Image.open(tmp_path / "b_mask.png")).shape == (40, 60)


def test_a_volume_is_resized_to_the_models_shape_and_written_back_in_its_geometry(tmp_path):
    import SimpleITK as sitk

    from .conftest import assert_same_geometry, write_oblique_nifti

    model = tmp_path / "model3d.pt"
    contract = dataset_contract({"dims": 3, "channels": 1, "classes": ["prostate"], "spacing": [3.0, 1.6, 1.4],
                                 "spacing_unit": "mm", "resize_shape": [6, 16, 20],
                                 "normalization": {"method": "none", "divide_by": 1}})
    checkpoint.save_model(model, random_model(3, 1, 1), None, {"contract": contract})
    vol = np.random.default_rng(0).random((12, 32, 40)).astype(np.float32)
    img = write_oblique_nifti(tmp_path / "v.nii.gz", vol)
    run(tmp_path / "v.nii.gz", tmp_path / "v_mask.nii.gz", model)
    meta = json.loads((tmp_path / "v_mask.run_metadata.json").read_text())
    assert meta["segmented_shape"] == [6, 16, 20] and meta["segmented_spacing"] == pytest.approx([6.0, 1.6, 1.4])
    assert_same_geometry(sitk.ReadImage(str(tmp_path / "v_mask.nii.gz")), img)
