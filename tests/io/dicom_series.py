"""Synthetic DICOM sources for the SEG tests: an oblique CT series, an X-ray and an ultrasound cine."""
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"         # digital X-ray, for presentation
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


def _dataset(sop_class: str, modality: str, study: str, series: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = modality, "NCA-TEST", "Test^Phantom", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "20240101", "120000", "", "", "1"
    ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "test", 3, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    return ds


def oblique_axes(angle: float = 0.3, tilt: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column directions of an oblique plane (both tilted off the patient axes), and its normal."""
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    col = np.array([-np.sin(angle) * tilt, np.cos(angle) * tilt, 1.0])
    col -= row * (row @ col)
    col /= np.linalg.norm(col)
    return row, col, np.cross(row, col)


def write_ct_series(folder, data: np.ndarray, spacing=(0.7, 0.8), gap=2.5) -> dict:
    """``data`` ``[D, H, W]`` (int16 HU + 1024) as a CT series of single-frame files in an
    oblique orientation, slice ``k`` at ``origin + k * gap * normal``; the files are named in a
    shuffled order, so the series order comes from the positions. Returns the UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    row, col, normal = oblique_axes()
    names = np.random.default_rng(1).permutation(len(data))
    uids = []
    for k, name in enumerate(names):
        ds = _dataset(CTImageStorage, "CT", study, series)
        ds.FrameOfReferenceUID, ds.InstanceNumber = frame_of_ref, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]   # DS: at most 16 characters
        ds.ImagePositionPatient = [round(float(v), 5) for v in np.array([10.0, -5.0, 20.0]) + k * gap * normal]
        ds.PixelSpacing, ds.SliceThickness = [spacing[0], spacing[1]], gap
        ds.Rows, ds.Columns = data.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = data[k].astype(np.int16).tobytes()
        ds.save_as(folder / f"im{int(name):03d}.dcm", enforce_file_format=True)
        uids.append(ds.SOPInstanceUID)
    return {"sop_instances": uids, "frame_of_reference": frame_of_ref, "series": series}


def write_xray(path, h=30, w=40):
    """A digital X-ray: one frame, ImagerPixelSpacing, no frame of reference, MONOCHROME1."""
    ds = _dataset(DX_STORAGE, "DX", generate_uid(), generate_uid())
    ds.ImagerPixelSpacing, ds.PatientOrientation, ds.PhotometricInterpretation = [0.15, 0.15], ["L", "F"], "MONOCHROME1"
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.random.default_rng(0).random((h, w)) * 4000).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


def write_cine(path, frames=6, h=24, w=32):
    """An ultrasound multi-frame cine (40 ms per frame)."""
    ds = _dataset(US_MULTIFRAME_STORAGE, "US", generate_uid(), generate_uid())
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.FrameTime = h, w, frames, 40.0
    ds.FrameIncrementPointer = 0x00181063
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = (np.random.default_rng(0).random((frames, h, w)) * 255).astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID
