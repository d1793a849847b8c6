"""Small generated inputs so that the suite runs without ../shared."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def write_dicom_series(folder: Path, slices: int = 3, patient_name: str = "Doe^Jane") -> list[Path]:
    """A real CT series: pydicom's CT_small.dcm repeated at 5 mm steps, one series UID."""
    folder.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for index in range(slices):
        dataset = copy.deepcopy(source)
        dataset.PatientName = patient_name
        dataset.SeriesInstanceUID = series_uid
        dataset.FrameOfReferenceUID = frame_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = index + 1
        x, y, z = (float(v) for v in source.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y, z + 5.0 * index]
        dataset.SliceLocation = z + 5.0 * index
        pixels = dataset.pixel_array.astype(np.int16) + np.int16(10 * index)
        dataset.PixelData = pixels.tobytes()
        path = folder / f"slice{index:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
