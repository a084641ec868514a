"""`nca segment` to DICOM SEG (PACS) and OME-Zarr (NGFF viewers): the same labels as the NIfTI/TIFF masks."""
import json

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import zarr
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.core.files import sha256_file
from nca_cli.segment.options import SegmentOptions
from nca_cli.segment.run import segment_inputs

from ..io.dicom_series import write_ct_series
from .conftest import write_pyramid_slide


def run(inputs, out, model, **kw):
    kw.setdefault("quiet", True)
    return segment_inputs(SegmentOptions(inputs=[str(i) for i in inputs], output=out, model=model, **kw))


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct") / "series"
    zz, yy, xx = np.mgrid[0:16, 0:40, 0:48]
    data = np.where((yy - 20) ** 2 + (xx - 24) ** 2 < (8 + zz) ** 2, 1900, 300).astype(np.int16)
    return folder, write_ct_series(folder, data)


def test_a_ct_series_to_seg_has_the_nifti_labels_slice_for_slice(tmp_path, ct_series, models):
    folder, uids = ct_series
    nifti, seg_path = tmp_path / "ct_mask.nii.gz", tmp_path / "ct_seg.dcm"
    run([folder], nifti, models["gray3d"], dicom_seg=seg_path)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti)))
    assert 0 < labels.mean() < 1
    seg = hd.seg.segread(seg_path)
    assert np.array_equal(seg.get_pixels_by_source_instance(uids["sop_instances"], combine_segments=True), labels)
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(
        uids["sop_instances"])
    assert seg.FrameOfReferenceUID == uids["frame_of_reference"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert sha256_file(models["gray3d"]) in algorithm.AlgorithmParameters
    assert seg.SegmentSequence[0].SegmentLabel == "class 1"
    meta = json.loads((tmp_path / "ct_mask.run_metadata.json").read_text())
    assert str(seg_path) in meta["outputs"]

    only = tmp_path / "only.dcm"                               # -o *.dcm: the SEG is the mask
    run([folder], only, models["gray3d"])
    again = hd.seg.segread(only).get_pixels_by_source_instance(uids["sop_instances"], combine_segments=True)
    assert np.array_equal(again, labels)


def test_a_seg_of_an_input_that_is_not_dicom_is_refused_in_one_sentence(tmp_path, models, rgb_image):
    png = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(png)
    with pytest.raises(NCAError, match=r"a\.png is not DICOM; pass its DICOM series folder or DICOM file"):
        run([png], tmp_path / "out" / "a.dcm", tmp_path / "no_model.pt")     # refused before the model is loaded
    with pytest.raises(NCAError, match=r"\(--dicom-seg\).*is not DICOM"):
        run([png], tmp_path / "out" / "a.png", models["rgb2d"], dicom_seg=tmp_path / "out" / "a_seg.dcm")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def _slide(path):
    return write_pyramid_slide(path, np.random.default_rng(1).integers(0, 255, (600, 700, 3), dtype=np.uint8))


def test_a_slide_to_ome_zarr_equals_the_tiff_mask_at_the_slides_mpp(tmp_path, models):
    src = _slide(tmp_path / "slide.tif")
    run([src], tmp_path / "mask.tif", models["rgb2d"])
    run([src], tmp_path / "mask.ome.zarr", models["rgb2d"])
    tiff = tifffile.imread(tmp_path / "mask.tif")
    group = zarr.open_group(str(tmp_path / "mask.ome.zarr"), mode="r")
    assert 0 < tiff.mean() < 1 and np.array_equal(group["0"][:], tiff)
    assert np.array_equal(group["1"][:], tiff[::2, ::2])
    datasets = group.attrs["multiscales"][0]["datasets"]
    assert datasets[0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    meta = json.loads((tmp_path / "mask.run_metadata.json").read_text())
    assert meta["output_bytes"][str(tmp_path / "mask.ome.zarr")] > 0


def test_a_volume_to_ome_zarr_in_mm_and_continue_checks_the_store(tmp_path, models):
    vol = (np.random.default_rng(2).random((9, 20, 17)) * 100).astype(np.float32)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.7, 0.8, 3.0))
    src = tmp_path / "vol.nii.gz"
    sitk.WriteImage(img, str(src))
    run([src], tmp_path / "v.nii.gz", models["gray3d"])
    out = tmp_path / "v.ome.zarr"
    assert run([src], out, models["gray3d"])[0]["status"] == "done"
    group = zarr.open_group(str(out), mode="r")
    assert np.array_equal(group["0"][:], sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "v.nii.gz"))))
    scale = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([3.0, 0.8, 0.7], rel=1e-6)      # NIfTI keeps spacing as float32
    assert [a["unit"] for a in group.attrs["multiscales"][0]["axes"]] == ["millimeter"] * 3
    assert run([src], out, models["gray3d"], resume=True)[0]["status"] == "skipped (complete)"
    (out / "0" / "extra").write_bytes(b"x")                   # the store changed since: not complete
    assert run([src], out, models["gray3d"], resume=True)[0]["status"] == "done"
    assert not (out / "0" / "extra").exists()
