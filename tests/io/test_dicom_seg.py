"""DICOM SEG: the mask read back per source instance, references and geometry copied from the sources."""
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from nca_cli import __version__, io
from nca_cli.core.errors import NCAError
from nca_cli.io.dicom_seg import is_dicom_input, write_dicom_seg

from .dicom_series import write_cine, write_ct_series, write_xray

SHA = "ab" * 32


def _validated(path):
    """The SEG read with pydicom's strict validation (every value checked against its VR) and by highdicom."""
    with pydicom.config.strict_reading():
        ds = pydicom.dcmread(path)
        for elem in ds.iterall():
            _ = elem.value
    pydicom.dataset.validate_file_meta(ds.file_meta, enforce_standard=True)
    return hd.seg.Segmentation.from_dataset(ds)


def _referenced(seg) -> set[str]:
    return {ref.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
            for ref in series.ReferencedInstanceSequence}


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct") / "series"
    data = (np.random.default_rng(0).random((16, 40, 48)) * 2000).astype(np.int16)
    uids = write_ct_series(folder, data)
    return folder, data, uids


def test_a_ct_series_reads_back_slice_for_slice_in_the_source_order(tmp_path, ct_series):
    folder, data, uids = ct_series
    with io.open_input(folder) as vol:
        hu = vol.read()[..., 0]
    assert np.array_equal(hu, data - 1024.0)              # the reader stacks the slices by position
    labels = ((hu > -500).astype(np.uint8) + (hu > 500)).astype(np.uint8)
    labels[3] = 0                                          # an empty slice: its frames are omitted, read back as 0
    out = write_dicom_seg(tmp_path / "seg.dcm", folder, labels, ["soft tissue", "bone"], SHA)
    seg = _validated(out)
    got = seg.get_pixels_by_source_instance(uids["sop_instances"], combine_segments=True)
    assert np.array_equal(got, labels)
    assert _referenced(seg) == set(uids["sop_instances"])
    assert seg.FrameOfReferenceUID == uids["frame_of_reference"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["series"]
    assert seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["soft tissue", "bone"]
    algorithm = seg.SegmentSequence[1].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "nca" and algorithm.AlgorithmVersion == __version__
    assert SHA in algorithm.AlgorithmParameters
    assert seg.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"


def test_the_geometry_is_the_sources_own(tmp_path, ct_series):
    folder, data, uids = ct_series
    labels = np.ones(data.shape, np.uint8)
    seg = _validated(write_dicom_seg(tmp_path / "seg.dcm", folder, labels, ["body"], SHA))
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in folder.iterdir())}
    shared = seg.SharedFunctionalGroupsSequence[0]
    first = sources[uids["sop_instances"][0]]
    same = lambda a, b: np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-12, atol=1e-12)  # DS text
    assert same(shared.PlaneOrientationSequence[0].ImageOrientationPatient, first.ImageOrientationPatient)
    assert same(shared.PixelMeasuresSequence[0].PixelSpacing, first.PixelSpacing)
    assert same(shared.PixelMeasuresSequence[0].SliceThickness, first.SliceThickness)
    assert len(seg.PerFrameFunctionalGroupsSequence) == 16
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert same(frame.PlanePositionSequence[0].ImagePositionPatient, sources[ref].ImagePositionPatient)


def test_pydicoms_own_ct_round_trips(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    with io.open_input(src) as img:
        labels = (img.read()[..., 0] > 100).astype(np.uint8)
    assert 0 < labels.mean() < 1
    seg = _validated(write_dicom_seg(tmp_path / "ct_seg.dcm", src, labels, ["dense"], SHA))
    source = pydicom.dcmread(src, stop_before_pixels=True)
    got = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)[0]
    assert np.array_equal(got, labels)
    assert _referenced(seg) == {source.SOPInstanceUID}
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID


def test_an_xray_without_frame_of_reference(tmp_path):
    uid = write_xray(tmp_path / "dx.dcm")
    labels = np.zeros((30, 40), np.uint8)
    labels[5:20, 4:25] = 1
    labels[22:28, 30:38] = 1
    seg = _validated(write_dicom_seg(tmp_path / "dx_seg.dcm", tmp_path / "dx.dcm", labels, ["lung"], SHA))
    assert np.array_equal(seg.get_pixels_by_source_instance([uid], combine_segments=True)[0], labels)


def test_a_multi_frame_volume_frame_for_frame(tmp_path, ct_series):
    folder, data, _ = ct_series
    slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]     # file-name order: not the position order
    multi = hd.legacy.LegacyConvertedEnhancedCTImage(slices, series_instance_uid=generate_uid(), series_number=9,
                                                     sop_instance_uid=generate_uid(), instance_number=1)
    multi.save_as(tmp_path / "enhanced.dcm")
    with io.open_input(tmp_path / "enhanced.dcm") as vol:
        assert vol.kind == "volume"
        labels = (vol.read()[..., 0] > 0).astype(np.uint8)
    seg = _validated(write_dicom_seg(tmp_path / "seg.dcm", tmp_path / "enhanced.dcm", labels, ["body"], SHA))
    got = seg.get_pixels_by_source_frame(multi.SOPInstanceUID, list(range(1, 17)), combine_segments=True)
    assert np.array_equal(got, labels)
    assert seg.FrameOfReferenceUID == multi.FrameOfReferenceUID


def test_a_cine_without_patient_geometry_is_refused_in_one_sentence(tmp_path):
    write_cine(tmp_path / "cine.dcm")
    with pytest.raises(NCAError, match=r"6 frames of .*cine\.dcm needs their patient geometry.*write the mask as"):
        write_dicom_seg(tmp_path / "seg.dcm", tmp_path / "cine.dcm", np.zeros((6, 24, 32), np.uint8), ["heart"])
    assert not (tmp_path / "seg.dcm").exists()


def test_refusals_are_one_sentence_and_leave_nothing(tmp_path, ct_series, monkeypatch):
    folder, data, _ = ct_series
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert is_dicom_input(folder) and not is_dicom_input(png)
    with pytest.raises(NCAError, match=r"a\.png is not DICOM; pass its DICOM series folder"):
        write_dicom_seg(tmp_path / "seg.dcm", png, np.zeros((2, 2), np.uint8), ["x"])
    with pytest.raises(NCAError, match="has shape .* but its DICOM images hold 16 frame"):
        write_dicom_seg(tmp_path / "seg.dcm", folder, np.zeros((15, 40, 48), np.uint8), ["x"])
    with pytest.raises(NCAError, match="use a .dcm file name"):
        write_dicom_seg(tmp_path / "seg.nii", folder, np.zeros(data.shape, np.uint8), ["x"])

    def fail(self, path, **kw):
        open(path, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", fail)
    with pytest.raises(NCAError, match="disk is full"):
        write_dicom_seg(tmp_path / "seg.dcm", folder, np.zeros(data.shape, np.uint8), ["x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(NCAError, match=r'pip install "nca\[formats\]"'):
        write_dicom_seg(tmp_path / "seg.dcm", folder, np.zeros(data.shape, np.uint8), ["x"])
