"""Enhanced volume -> instances of a new derived series with full provenance.

Two formats (DESIGN.md): Secondary Capture (default, built with highdicom) with Image Position,
Image Orientation, Pixel Spacing, Slice Thickness and Frame of Reference added so viewers and
ITK/GDCM can treat it as a 3D stack (dciodvfy reports these as warnings, not errors), or derived
MR Image Storage for PACS that reformat only MR.

Provenance on every instance: ImageType DERIVED\\SECONDARY, a SeriesDescription that starts with
the label in plain words and names the engine and factor (``OutputSettings.ai_label``,
"AI-enhanced", when a learned model made the images; ``interpolation_label``, "Interpolated", when
a classical engine such as ``bspline`` did: see ``output_label``), the same label in ImageComments,
DerivationDescription and the contribution description, DerivationDescription (engine, version,
weights, factor, preprocessing), DerivationCodeSequence (DCM 113085 "Spatial resampling"),
SourceImageSequence (purpose DCM 121322) naming the acquired slice each thin slice replaces and its
two neighbours (the slices that shape it most), ReferencedSeriesSequence listing every source
instance, ContributingEquipmentSequence with the acquiring scanner and this software (engine name,
version and weights hash), and patient/study attributes (one list, ``PATIENT_STUDY``, for both
formats), StudyInstanceUID and, when the source has one, FrameOfReferenceUID copied from the source
(a source without it gives instances without a Frame of Reference), and the source's Specific
Character Set (``output_character_set``). A patient or study value that is not valid for its VR (a
birth date "31.12.1931") is carried unchanged, as the PACS already holds it with the original
series, and logged as a warning naming the attribute, never its value; it never fails the job.
Optionally (``burn_in_label``) the label is also burned into a corner of every image, for viewers
that show no series description (BurnedInAnnotation YES).

Pixel values: unsigned 16 bits as long as the source holds no negative values; a source with
negative real-world values (PixelRepresentation 1, or a negative RescaleIntercept) gives signed
16-bit output, so negatives are kept rather than clipped to 0.

Series number rule: source SeriesNumber + ``series_number_offset`` (1000 by default), so series 3
gives 1003 and the derived series sorts after, and is recognisably tied to, its source; a source
without SeriesNumber gives the offset itself.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
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

PATIENT_STUDY = (
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
    "IssuerOfAccessionNumberSequence",
    "RequestingService",
    "AdmittingDiagnosesDescription",
)
"""Patient and study attributes every derived instance carries from its source, whatever the
format: without them a PACS that takes study attributes from the latest instance (Orthanc) loses
StudyDescription from its study list the moment one derived instance arrives."""
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

    def derivation_description(self, label: str = "") -> str:
        """What was done, led by the label (``output_label``) so that a reader sees it first."""
        thin = self.source_slice_spacing / self.factor
        weights = self.engine.weights_sha256 or "none"
        method = "super-resolution" if self.engine.learned else "interpolation"
        if getattr(self.engine, "unsupervised", False):
            method += " (unsupervised: a model fitted per case to this series alone)"
        text = (
            f"{label + ': ' if label else ''}Through-plane {method} x{self.factor} "
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
    array = pixel_values(enhanced, signed=source_has_negatives(volume))
    centre, width = window(array)
    if output.burn_in_label:
        burn_in_label(array, output_label(output, provenance.engine), centre + width / 2)
    series_uid = derived_series_uid(
        volume.series_instance_uid,
        (ref.sop_instance_uid for ref in volume.sources),
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
    patient_study = patient_study_attributes(source, volume.series_instance_uid)
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
        for element in patient_study:
            ds.add(copy.deepcopy(element))
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
    """AI label + source description + what was done, within the 64 characters of LO.

    The label leads because worklists and study browsers cut long descriptions at the right;
    the source description is what gets shortened, never the label nor the engine and factor.
    A series needing review says so at the end, where the review marker has always been.
    """
    head = f"{output_label(output, provenance.engine)} "
    tag = f" {output.description_suffix} {provenance.engine.name} x{provenance.factor}"
    if provenance.needs_review:
        tag += f" {output.review_marker}"
    base = str(source.get("SeriesDescription", "") or "").strip()
    room = max(0, 64 - len(head) - len(tag))
    return " ".join((head + base[:room].strip() + tag).split())[:64]


def output_label(output: OutputSettings, engine: EngineInfo) -> str:
    """The plain-words label of the derived series: ``ai_label`` when a learned model made the
    images, ``interpolation_label`` when a classical engine interpolated them (no AI)."""
    return output.ai_label if engine.learned else output.interpolation_label


def _image_comments(source: Dataset, provenance: Provenance, output: OutputSettings) -> str:
    """The label in a sentence: what made the image, from what, and that it was not acquired.

    Only a learned model is called an AI model; classical interpolation says that it is one.
    """
    engine = provenance.engine
    number = source.get("SeriesNumber")
    series = f"series {number}" if number not in (None, "") else "the source series"
    review = "; flagged for review (low data consistency)" if provenance.needs_review else ""
    if engine.learned:
        fitted = (
            "unsupervised, fitted per case to this series alone; "
            if getattr(engine, "unsupervised", False)
            else ""
        )
        made = (
            f"computed by the AI model {engine.name} {engine.version} "
            f"({fitted}through-plane super-resolution x{provenance.factor})"
        )
    else:
        made = (
            f"interpolated between the acquired slices by classical interpolation, no AI model "
            f"(engine {engine.name} {engine.version}, through-plane x{provenance.factor})"
        )
    return (
        f"{output_label(output, engine)}: {made} from {series}, not acquired by the "
        f"scanner{review}. Compare with the original series."
    )


def source_has_negatives(volume: SeriesVolume) -> bool:
    """Whether the source's real-world values go below 0 (signed pixels or a negative intercept)."""
    return float(sitk.GetArrayViewFromImage(volume.image).min()) < 0


def pixel_values(enhanced: sitk.Image, *, signed: bool) -> np.ndarray:
    """The enhanced volume as stored pixels: int16 for a signed source, else uint16.

    A source without negatives keeps unsigned output, where the engine's small undershoots near
    edges are clipped to 0 as before; a signed source keeps its negatives.
    """
    values = np.rint(sitk.GetArrayViewFromImage(enhanced))
    if signed:
        return np.clip(values, -32768, 32767).astype(np.int16)
    return np.clip(values, 0, 65535).astype(np.uint16)


def burn_in_label(array: np.ndarray, text: str, value: float) -> None:
    """Burn ``text`` into the top-left corner of every slice, in place, at display white.

    For sites whose viewers show no series description. A dark box behind the letters keeps
    them legible on bright anatomy; the size follows the matrix (about 1/20 of the rows).
    """
    from PIL import Image, ImageDraw, ImageFont

    rows, columns = array.shape[1:]
    size = max(8, rows // 20)
    font = ImageFont.load_default(size=size)
    margin = max(2, size // 3)
    canvas = Image.new("L", (columns, rows), 0)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((margin, margin), text, font=font)
    box = np.zeros((rows, columns), dtype=bool)
    box[
        max(0, top - margin // 2) : min(rows, bottom + margin // 2),
        max(0, left - margin // 2) : min(columns, right + margin // 2),
    ] = True
    draw.text((margin, margin), text, fill=255, font=font)
    letters = np.asarray(canvas) > 127
    info = np.iinfo(array.dtype)
    array[:, box & ~letters] = array.min()
    array[:, letters] = np.clip(value, info.min, info.max)


def patient_study_attributes(source: Dataset, series_uid: str) -> list[DataElement]:
    """The source's ``PATIENT_STUDY`` elements, each carried as received.

    A value that is not valid for its VR stays as it is (the PACS holds the same value with the
    original series) and is reported with the attribute's keyword only: pydicom's own message
    quotes the value, which is patient data, so it is never passed on.
    """
    carried = []
    for keyword in PATIENT_STUDY:
        if keyword not in source:
            continue
        element = source[keyword]
        if _invalid(element):
            log.warning(
                "%s of series %s is not a valid %s; carried unchanged",
                keyword,
                series_uid,
                element.VR,
                extra={"series_uid": series_uid, "attribute": keyword},
            )
        carried.append(element)
    return carried


def _invalid(element: DataElement) -> bool:
    """Whether pydicom's strict validation refuses the value (sequences are not checked)."""
    if element.VR == "SQ" or element.value is None:
        return False
    values: Iterable[object] = (
        element.value if element.VM > 1 and not isinstance(element.value, str) else [element.value]
    )
    try:
        for value in values:
            DataElement(element.tag, element.VR, value, validation_mode=pydicom_config.RAISE)
    except (ValueError, TypeError):
        return True
    return False


def _common(
    source: Dataset,
    provenance: Provenance,
    settings: PipelineSettings,
    when: _dt.datetime,
    referenced_series: DicomSequence,
) -> dict[str, object]:
    output = settings.output
    derivation_code = hd.sr.CodedConcept.from_code(codes.DCM.SpatialResampling)
    burned = output.burn_in_label or str(source.get("BurnedInAnnotation", "")).upper() == "YES"
    common: dict[str, object] = {
        "ImageType": ["DERIVED", "SECONDARY", "OTHER"],
        "ImageComments": _image_comments(source, provenance, output),
        "BurnedInAnnotation": "YES" if burned else "NO",
        "DerivationDescription": provenance.derivation_description(
            output_label(output, provenance.engine)
        ),
        "DerivationCodeSequence": [derivation_code],
        "ReferencedSeriesSequence": referenced_series,
        "ContributingEquipmentSequence": _contributing_equipment(
            source, provenance, settings, when
        ),
        "InstanceCreationDate": when.strftime("%Y%m%d"),
        "InstanceCreationTime": when.strftime("%H%M%S"),
    }
    # Whether a face could be recognised does not change with through-plane resampling: the
    # source's answer holds for the output (absent when the scanner did not say).
    if source.get("RecognizableVisualFeatures") in ("YES", "NO"):
        common["RecognizableVisualFeatures"] = source.RecognizableVisualFeatures
    return common


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
                f"{output_label(settings.output, engine)}: "
                f"{'model' if engine.learned else 'classical engine'} {engine.name} "
                f"version {engine.version} "
                f"weights sha256 {engine.weights_sha256 or 'none'}; factor {provenance.factor}; "
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


def output_character_set(source: Dataset) -> str | list[str]:
    """The source's Specific Character Set, exactly as it was sent (``ISO_IR 100`` without one).

    The copied patient and study values are in the source's repertoire, so the derived
    instances name the same one; pydicom encodes every text value with it when the file is
    written (ISO 2022 escape sequences included). The node's own text (labels, engine names,
    the fixed English phrases) must then be encodable in it too: ASCII is, in every character
    set pydicom knows (docs/conformance.md asks to keep the labels to ASCII).
    """
    value = source.get("SpecificCharacterSet")
    if isinstance(value, str):
        return value or "ISO_IR 100"
    values = [str(v) for v in value or ()]
    return values if any(values) else "ISO_IR 100"


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
    """Secondary Capture by highdicom's constructor; patient and study come from
    ``PATIENT_STUDY`` afterwards, as for MR.

    highdicom's ``from_ref_dataset`` copies only a subset (no StudyDescription) and validates
    and logs the patient values it copies, so highdicom is given the StudyInstanceUID only.
    It takes unsigned arrays only: signed pixels go in as the same bytes read unsigned and
    PixelRepresentation is set to 1 afterwards (two's complement, PS3.5 8.1.1).

    Specific Character Set is set afterwards too, as on MR: highdicom accepts only the values
    of its own list and refuses ``ISO_IR 6``, ``ISO 2022 IR 149`` and the usual multi-valued form
    of the ISO 2022 code extensions (``\\ISO 2022 IR 87``, an empty first value), which a hospital
    in Japan or Korea sends. Every text value is held decoded until the file is written, and
    pydicom encodes it then with the character set the dataset names, escape sequences included.
    """
    signed = pixels.dtype == np.int16
    ds = hd.sc.SCImage(
        pixel_array=pixels.view(np.uint16) if signed else pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        coordinate_system="PATIENT",
        study_instance_uid=str(source.StudyInstanceUID),
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
    ds.SpecificCharacterSet = output_character_set(source)
    if signed:
        ds.PixelRepresentation = 1
    return ds


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
    ds.SpecificCharacterSet = output_character_set(source)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    for keyword in _MR_ACQUISITION:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    # Type 2 patient/study attributes: empty here, the source's values are added by the caller.
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
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
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
