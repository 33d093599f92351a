"""Enhanced volume -> instances of a new derived series with full provenance.

Two formats (DESIGN.md): Secondary Capture (default, built with highdicom) with Image Position,
Image Orientation, Pixel Spacing, Slice Thickness and Frame of Reference added so viewers and
ITK/GDCM can treat it as a 3D stack (dciodvfy reports these as warnings, not errors), or derived
MR Image Storage for PACS that reformat only MR.

Provenance on every instance: ImageType DERIVED\\SECONDARY, a SeriesDescription naming the
engine and factor, DerivationDescription (engine, version, weights, factor, preprocessing),
DerivationCodeSequence (DCM 113085 "Spatial resampling"), SourceImageSequence (purpose DCM 121322)
naming the acquired slice each thin slice replaces and its two neighbours (the slices that shape
it most), ReferencedSeriesSequence listing every source instance, ContributingEquipmentSequence
with the acquiring scanner and this software (engine name, version and weights hash), and
patient/study attributes, StudyInstanceUID and FrameOfReferenceUID copied from the source.

Series number rule: source SeriesNumber + ``series_number_offset`` (1000 by default), so series 3
gives 1003 and the derived series sorts after, and is recognisably tied to, its source; a source
without SeriesNumber gives the offset itself.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage

import pipeline
from models.engine import EngineInfo
from pipeline.settings import OutputSettings, PipelineSettings
from pipeline.uids import derived_instance_uid, derived_series_uid
from pipeline.volume import SeriesVolume, SourceRef

log = logging.getLogger(__name__)

SOFTWARE_NAME = "dicomnode"

_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
    "OtherPatientIDsSequence",
    "EthnicGroup",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
_MR_ACQUISITION = (
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "SequenceName",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "EchoTrainLength",
    "NumberOfAverages",
    "ImagingFrequency",
    "ImagedNucleus",
    "MagneticFieldStrength",
    "FlipAngle",
    "PatientPosition",
    "BodyPartExamined",
    "AcquisitionDate",
    "AcquisitionTime",
)


@dataclass(frozen=True)
class Provenance:
    """What was done, for the DICOM provenance attributes and the job record."""

    engine: EngineInfo
    factor: int
    preprocessing: str
    source_slice_spacing: float
    consistency_psnr_db: float | None = None
    needs_review: bool = False

    def consistency_text(self) -> str:
        if self.consistency_psnr_db is None:
            return "data consistency not measured"
        verdict = "; below the review threshold" if self.needs_review else ""
        return f"data consistency {self.consistency_psnr_db:.1f} dB{verdict}"

    def derivation_description(self) -> str:
        thin = self.source_slice_spacing / self.factor
        weights = self.engine.weights_sha256 or "none"
        text = (
            f"Through-plane super-resolution x{self.factor} "
            f"({self.source_slice_spacing:.3g} mm -> {thin:.3g} mm slice spacing) by engine "
            f"{self.engine.name} {self.engine.version} (weights sha256 {weights}); "
            f"{self.consistency_text()}; preprocessing: {self.preprocessing}; "
            f"software {SOFTWARE_NAME} {pipeline.__version__}"
        )
        return text[:1024]


def series_number(source: Dataset, offset: int) -> int:
    """The documented rule: source SeriesNumber + offset (offset alone without one)."""
    value = source.get("SeriesNumber")
    return (int(value) if value not in (None, "") else 0) + offset


def window(array: np.ndarray) -> tuple[float, float]:
    """Centre and width covering the 1st..99.5th percentile of the non-background voxels."""
    high = float(np.percentile(array, 99.5))
    foreground = array[array > 0.1 * high] if high > 0 else array.ravel()
    if foreground.size == 0:
        foreground = array.ravel()
    lo, hi = (float(v) for v in np.percentile(foreground, [1.0, 99.5]))
    width = max(hi - lo, 1.0)
    return round(lo + width / 2, 1), round(width, 1)


def derive_series(
    enhanced: sitk.Image,
    volume: SeriesVolume,
    provenance: Provenance,
    settings: PipelineSettings,
    *,
    when: _dt.datetime | None = None,
) -> list[Dataset]:
    """Build every instance of the derived series (slice order = enhanced z index)."""
    output = settings.output
    when = when or _dt.datetime.now()
    source = volume.header
    array = np.clip(np.rint(sitk.GetArrayViewFromImage(enhanced)), 0, 65535).astype(np.uint16)
    centre, width = window(array)
    series_uid = derived_series_uid(
        volume.series_instance_uid,
        provenance.engine,
        settings.digest(),
        output.format,
        output.uid_root,
    )
    number = series_number(source, output.series_number_offset)
    description = _series_description(source, provenance, output)
    direction = np.asarray(enhanced.GetDirection()).reshape(3, 3)
    origin = np.asarray(enhanced.GetOrigin())
    spacing = enhanced.GetSpacing()
    referenced_series = _referenced_series(volume)
    common = _common(source, provenance, settings, when, referenced_series)
    datasets = []
    for z in range(array.shape[0]):
        position = origin + direction[:, 2] * spacing[2] * z
        sop_uid = derived_instance_uid(series_uid, z + 1, output.uid_root)
        build = _sc_instance if output.format == "sc" else _mr_instance
        ds = build(
            source,
            array[z],
            series_uid,
            number,
            sop_uid,
            z + 1,
            description,
            settings,
            when,
            direction,
            spacing,
        )
        _add_plane(ds, source, position, direction, spacing)
        _copy_body_part(ds, source)
        for keyword, value in common.items():
            setattr(ds, keyword, value)
        ds.SourceImageSequence = _source_images(volume.sources, z // provenance.factor)
        ds.WindowCenter = f"{centre:g}"
        ds.WindowWidth = f"{width:g}"
        ds.WindowCenterWidthExplanation = "dicomnode auto"
        datasets.append(ds)
    log.info(
        "derived series %s (%s, %d instances) from series %s",
        series_uid,
        output.format,
        len(datasets),
        volume.series_instance_uid,
    )
    return datasets


def _series_description(source: Dataset, provenance: Provenance, output: OutputSettings) -> str:
    """Source description + what was done; a series needing review says so where readers look."""
    tag = f" {output.description_suffix} {provenance.engine.name} x{provenance.factor}"
    if provenance.needs_review:
        tag += f" {output.review_marker}"
    base = str(source.get("SeriesDescription", "") or "")
    return (base[: max(0, 64 - len(tag))] + tag).strip()[:64]


def _common(
    source: Dataset,
    provenance: Provenance,
    settings: PipelineSettings,
    when: _dt.datetime,
    referenced_series: DicomSequence,
) -> dict[str, object]:
    derivation_code = hd.sr.CodedConcept.from_code(codes.DCM.SpatialResampling)
    return {
        "ImageType": ["DERIVED", "SECONDARY", "OTHER"],
        "DerivationDescription": provenance.derivation_description(),
        "DerivationCodeSequence": [derivation_code],
        "ReferencedSeriesSequence": referenced_series,
        "ContributingEquipmentSequence": _contributing_equipment(
            source, provenance, settings, when
        ),
        "InstanceCreationDate": when.strftime("%Y%m%d"),
        "InstanceCreationTime": when.strftime("%H%M%S"),
    }


def _contributing_equipment(
    source: Dataset, provenance: Provenance, settings: PipelineSettings, when: _dt.datetime
) -> list[Dataset]:
    engine = provenance.engine
    items: list[Dataset] = []
    try:
        items.append(hd.ContributingEquipment.for_image_acquisition(source))
    except Exception:  # a source without Manufacturer: nothing to name
        log.debug("source names no acquisition equipment")
    items.append(
        hd.ContributingEquipment(
            manufacturer=settings.output.manufacturer,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=[
                f"{SOFTWARE_NAME} {pipeline.__version__}",
                f"{engine.name} {engine.version}"[:64],
            ],
            institution_name=settings.output.institution_name,
            contribution_datetime=when,
            contribution_description=(
                f"model {engine.name} version {engine.version} weights sha256 "
                f"{engine.weights_sha256 or 'none'}; factor {provenance.factor}; "
                f"{provenance.consistency_text()}"
            ),
        )
    )
    return items


def _source_images(sources: list[SourceRef], index: int) -> list[Dataset]:
    """The acquired slice this thin slice replaces, and its neighbours that shape it."""
    purpose = hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    items = []
    for ref in sources[max(0, index - 1) : index + 2]:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        if ref.frame_number is not None:
            item.ReferencedFrameNumber = ref.frame_number
        item.PurposeOfReferenceCodeSequence = [purpose]
        items.append(item)
    return items


def _referenced_series(volume: SeriesVolume) -> DicomSequence:
    instances = []
    seen = set()
    for ref in volume.sources:
        if ref.sop_instance_uid in seen:
            continue
        seen.add(ref.sop_instance_uid)
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        instances.append(item)
    series = Dataset()
    series.SeriesInstanceUID = volume.series_instance_uid
    series.ReferencedInstanceSequence = instances
    return DicomSequence([series])


def _letters(vector: np.ndarray) -> str:
    """The closest patient direction letter of a direction cosine vector (LPS)."""
    axis = int(np.argmax(np.abs(vector)))
    positive = vector[axis] > 0
    return ("L", "P", "H")[axis] if positive else ("R", "A", "F")[axis]


def _sc_instance(
    source: Dataset,
    pixels: np.ndarray,
    series_uid: str,
    number: int,
    sop_uid: str,
    instance: int,
    description: str,
    settings: PipelineSettings,
    when: _dt.datetime,
    direction: np.ndarray,
    spacing: tuple[float, ...],
) -> Dataset:
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=number,
        sop_instance_uid=sop_uid,
        instance_number=instance,
        manufacturer=settings.output.manufacturer,
        pixel_spacing=(float(spacing[1]), float(spacing[0])),
        patient_orientation=(_letters(direction[:, 0]), _letters(direction[:, 1])),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=description,
        manufacturer_model_name=SOFTWARE_NAME,
        software_versions=f"{SOFTWARE_NAME} {pipeline.__version__}",
        institution_name=settings.output.institution_name,
        content_date=when.date(),
        content_time=when.time().replace(microsecond=0),
        series_date=when.date(),
        series_time=when.time().replace(microsecond=0),
    )


def _mr_instance(
    source: Dataset,
    pixels: np.ndarray,
    series_uid: str,
    number: int,
    sop_uid: str,
    instance: int,
    description: str,
    settings: PipelineSettings,
    when: _dt.datetime,
    direction: np.ndarray,
    spacing: tuple[float, ...],
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    for keyword in _PATIENT_STUDY + _MR_ACQUISITION:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
    ):
        ds.setdefault(keyword, "")
    for keyword in ("ScanningSequence", "SequenceVariant"):
        ds.setdefault(keyword, "RM" if keyword == "ScanningSequence" else "NONE")
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.Manufacturer = settings.output.manufacturer
    ds.ManufacturerModelName = SOFTWARE_NAME
    ds.SoftwareVersions = f"{SOFTWARE_NAME} {pipeline.__version__}"
    if settings.output.institution_name:
        ds.InstitutionName = settings.output.institution_name
    ds.InstanceNumber = instance
    ds.ScanOptions = source.get("ScanOptions", "")
    ds.MRAcquisitionType = source.get("MRAcquisitionType", "2D")
    ds.EchoTime = source.get("EchoTime", "")
    ds.EchoTrainLength = source.get("EchoTrainLength", "")
    ds.RepetitionTime = source.get("RepetitionTime", "")
    ds.SpacingBetweenSlices = f"{spacing[2]:.6g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _copy_body_part(ds: Dataset, source: Dataset) -> None:
    """General Series Laterality is 2C: known body part (or laterality) copied, else empty."""
    for keyword in ("BodyPartExamined", "Laterality"):
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    if "BodyPartExamined" not in ds and "Laterality" not in ds:
        ds.Laterality = ""


def _add_plane(
    ds: Dataset,
    source: Dataset,
    position: np.ndarray,
    direction: np.ndarray,
    spacing: tuple[float, ...],
) -> None:
    """Image Plane + Frame of Reference: what makes the stack reformattable and 3D-readable."""
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [
        f"{v:.6f}" for v in np.concatenate([direction[:, 0], direction[:, 1]])
    ]
    ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]
    ds.SliceThickness = f"{spacing[2]:.6g}"
    normal = np.cross(direction[:, 0], direction[:, 1])
    if ds.SOPClassUID == MRImageStorage:
        ds.SliceLocation = f"{float(np.dot(position, normal)):.6f}"
    if "FrameOfReferenceUID" in source:
        ds.FrameOfReferenceUID = source.FrameOfReferenceUID
        ds.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
