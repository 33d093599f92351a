"""Realistic low-field MR series built from real brains shipped in PyPI wheels.

No real multi-slice MR DICOM series ships in any package (see DESIGN.md), yet the node, its tests,
its benchmarks and the demo all need series that look like what a 0.36 T scanner sends: thick
slices with gaps, noise, correct patient geometry and the MR tags that routing rules look at.
This module resamples a shipped high-field brain onto an acquisition grid of our choosing
(any orientation, thickness and gap), blurs it with a Gaussian slice profile, adds Rician noise
and writes classic single-frame MR Image Storage instances.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from pipeline.io import write_datasets

UID_ROOT = "1.2.826.0.1.3680043.10.1345."
"""Our UID root for synthetic data (under the pydicom-registered prefix family)."""

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def deterministic_uid(*parts: object) -> str:
    """A UID that depends only on its inputs, so test series are reproducible."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return (UID_ROOT + str(int(digest[:30], 16)))[:64]


def load_brain(name: str = "mni152_2009a") -> sitk.Image:
    """Load a brain shipped inside a PyPI wheel as a float32 SimpleITK image in LPS.

    ``mni152_2009a`` is nilearn's MNI152 2009a T1 template (1 mm, values 0..1).
    """
    if name != "mni152_2009a":
        raise ValueError(f"unknown brain {name!r}; available: mni152_2009a")
    from nilearn import datasets

    nifti = datasets.load_mni152_template(resolution=1)
    return _nifti_to_sitk(np.asarray(nifti.get_fdata(), dtype=np.float32), nifti.affine)


def _nifti_to_sitk(data: np.ndarray, affine_ras: np.ndarray) -> sitk.Image:
    """NIfTI stores RAS; DICOM and SimpleITK think in LPS, so flip x and y."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in affine[:3, 3]])
    image.SetDirection([float(d) for d in direction.ravel()])
    return image


@dataclass
class Acquisition:
    """The geometry and scanner settings of one synthetic acquisition.

    Defaults give a typical 0.36 T axial T1 spin echo: 256x256 at 0.9 mm, 30 slices of 5 mm
    every 6 mm (a 1 mm gap), covering the whole brain.
    """

    orientation: Sequence[float] = AXIAL
    rows: int = 256
    columns: int = 256
    pixel_spacing: float = 0.9
    slices: int = 30
    slice_thickness: float = 5.0
    slice_spacing: float = 6.0
    center: Sequence[float] = (0.0, -18.0, 18.0)
    field_strength: float = 0.36
    series_description: str = "T1 AX SE"
    snr: float = 25.0
    seed: int = 0
    patient_name: str = "DEMO^LOWFIELD"
    patient_id: str = "LF0001"
    study_uid: str | None = None
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    series_number: int = 3
    extra: dict[str, object] = field(default_factory=dict)

    def normal(self) -> np.ndarray:
        row = np.asarray(self.orientation[:3], dtype=float)
        col = np.asarray(self.orientation[3:], dtype=float)
        return np.cross(row, col)

    def slice_positions(self) -> list[np.ndarray]:
        """Top-left voxel centre of each slice, in LPS millimetres."""
        row = np.asarray(self.orientation[:3], dtype=float)
        col = np.asarray(self.orientation[3:], dtype=float)
        normal = self.normal()
        centre = np.asarray(self.center, dtype=float)
        corner = (
            centre
            - row * self.pixel_spacing * (self.columns - 1) / 2
            - col * self.pixel_spacing * (self.rows - 1) / 2
        )
        offsets = (np.arange(self.slices) - (self.slices - 1) / 2) * self.slice_spacing
        return [corner + normal * off for off in offsets]


def acquire(brain: sitk.Image, acq: Acquisition) -> np.ndarray:
    """Simulate the acquisition: slice profile, sampling every slice_spacing, Rician noise.

    Returns uint16 pixels shaped (slices, rows, columns).
    """
    # Blur along the slice normal with a Gaussian whose FWHM is the slice thickness, on an
    # intermediate grid aligned with the acquisition so that the blur is truly through-plane.
    row = np.asarray(acq.orientation[:3], dtype=float)
    col = np.asarray(acq.orientation[3:], dtype=float)
    normal = acq.normal()
    fine_step = 1.0
    first = acq.slice_positions()[0]
    extent = (acq.slices - 1) * acq.slice_spacing
    fine_count = int(round(extent / fine_step)) + 1
    reference = sitk.Image([acq.columns, acq.rows, fine_count], sitk.sitkFloat32)
    reference.SetSpacing([acq.pixel_spacing, acq.pixel_spacing, fine_step])
    reference.SetOrigin([float(v) for v in first])
    reference.SetDirection([float(v) for v in np.column_stack([row, col, normal]).ravel()])
    fine = sitk.Resample(brain, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    sigma_mm = acq.slice_thickness / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    array = sitk.GetArrayFromImage(fine).astype(np.float32)
    from scipy.ndimage import gaussian_filter1d

    array = gaussian_filter1d(array, sigma=sigma_mm / fine_step, axis=0, mode="constant")
    indices = np.round(np.arange(acq.slices) * acq.slice_spacing / fine_step).astype(int)
    sampled = array[indices]
    signal = sampled / max(float(sampled.max()), 1e-6) * 1000.0
    rng = np.random.default_rng(acq.seed)
    sigma_noise = 1000.0 * 0.6 / acq.snr  # SNR quoted against mean brain (about 0.6 of max)
    real = signal + rng.normal(0.0, sigma_noise, signal.shape)
    imag = rng.normal(0.0, sigma_noise, signal.shape)
    magnitude = np.sqrt(real**2 + imag**2)
    return np.clip(np.round(magnitude), 0, 4095).astype(np.uint16)


def build_series(acq: Acquisition | None = None, brain: sitk.Image | None = None) -> list[Dataset]:
    """Build the instances of one synthetic low-field MR series, in acquisition order."""
    acq = acq or Acquisition()
    brain = brain if brain is not None else load_brain()
    pixels = acquire(brain, acq)
    study_uid = acq.study_uid or deterministic_uid("study", acq.patient_id, acq.seed)
    series_uid = acq.series_uid or deterministic_uid(
        "series", study_uid, acq.series_number, acq.seed
    )
    for_uid = acq.frame_of_reference_uid or deterministic_uid("for", study_uid)
    now = _dt.datetime(2026, 11, 2, 9, 30, 0)
    datasets = []
    for index, position in enumerate(acq.slice_positions()):
        ds = _mr_instance(acq, pixels[index], position, index, study_uid, series_uid, for_uid, now)
        datasets.append(ds)
    return datasets


def _mr_instance(
    acq: Acquisition,
    pixels: np.ndarray,
    position: np.ndarray,
    index: int,
    study_uid: str,
    series_uid: str,
    for_uid: str,
    when: _dt.datetime,
) -> Dataset:
    sop_uid = deterministic_uid("instance", series_uid, index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID_ROOT + "1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = "A" + acq.patient_id
    ds.Modality = "MR"
    ds.Manufacturer = "SyntheticLowField"
    ds.ManufacturerModelName = f"LF{int(acq.field_strength * 1000)}"
    ds.InstitutionName = "Test Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = "LFMR01"
    ds.StudyDescription = "BRAIN"
    ds.SeriesDescription = acq.series_description
    ds.PatientName = acq.patient_name
    ds.PatientID = acq.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = f"{acq.slice_thickness:g}"
    ds.RepetitionTime = "500"
    ds.EchoTime = "15"
    ds.EchoTrainLength = "1"
    ds.NumberOfAverages = "2"
    ds.ImagingFrequency = f"{acq.field_strength * 42.577:.4f}"
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = f"{acq.field_strength:g}"
    ds.SpacingBetweenSlices = f"{acq.slice_spacing:g}"
    ds.ImagesInAcquisition = str(acq.slices)
    ds.FlipAngle = "90"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = str(acq.series_number)
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = str(index + 1)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in acq.orientation]
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{float(np.dot(position, acq.normal())):.6f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = acq.rows
    ds.Columns = acq.columns
    ds.PixelSpacing = [f"{acq.pixel_spacing:g}", f"{acq.pixel_spacing:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "500"
    ds.WindowWidth = "1000"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in acq.extra.items():
        setattr(ds, keyword, value)
    return ds


def write_series(datasets: Sequence[Dataset], folder: Path | str) -> list[Path]:
    """Write instances as DICOM Part 10 files named by instance number."""
    return write_datasets(datasets, folder)


def build_legacy_multiframe(datasets: Sequence[Dataset]) -> Dataset:
    """Convert a classic series into one Legacy Converted Enhanced MR Image (multi-frame).

    Some scanners and archives send the multi-frame form; building it with highdicom from the
    same synthetic series lets tests check that both forms give the same volume.
    """
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    first = datasets[0]
    series_uid = deterministic_uid("legacy-mf", first.SeriesInstanceUID)
    return LegacyConvertedEnhancedMRImage(
        legacy_datasets=list(datasets),
        series_instance_uid=series_uid,
        series_number=int(first.SeriesNumber),
        sop_instance_uid=deterministic_uid("legacy-mf-instance", series_uid),
        instance_number=1,
    )
