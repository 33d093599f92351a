"""DICOM instances of one series -> one ``SimpleITK.Image`` in LPS, or a clear refusal.

Scanners send classic single-frame MR objects, enhanced MR multi-frame objects or legacy-converted
enhanced ones; all become a list of frames with their own plane geometry, so one code path checks
and stacks them. Slices are ordered by Image Position projected on the slice normal (never by
InstanceNumber or file name) and the slice spacing comes from those positions, because low-field
protocols acquire thick slices with gaps (spacing larger than SliceThickness) and interleaved.

Anything that is not one regular stack is refused with a ``VolumeError`` whose ``reason`` is a
short code the job runner records and whose ``instances`` name the offending SOP instances
(``uid#frame`` for a frame of a multi-frame object). Reason codes: ``empty``, ``not-image``,
``not-monochrome``, ``mixed-series``, ``missing-geometry``, ``localizer``, ``mixed-orientation``,
``mixed-matrix``, ``mixed-pixel-spacing``, ``2d-only``, ``too-few-slices``, ``absurd-size``,
``second-stack``, ``missing-slices``, ``irregular-spacing``, ``unreadable-pixels``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipeline.errors import VolumeError
from pipeline.settings import VolumeSettings

log = logging.getLogger(__name__)

MAX_PIXEL_SPACING_MM = 20.0
MAX_SLICE_SPACING_MM = 50.0
MIN_MATRIX = 16


@dataclass(frozen=True)
class SourceRef:
    """One acquired slice: the instance (and frame, for multi-frame objects) it came from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None

    @property
    def label(self) -> str:
        if self.frame_number is None:
            return self.sop_instance_uid
        return f"{self.sop_instance_uid}#{self.frame_number}"


@dataclass
class SeriesVolume:
    """The volume plus what ``pipeline.derive`` needs to point back at the source."""

    image: sitk.Image
    sources: list[SourceRef]
    """One per slice (image z index), in the same order as the slices."""
    header: Dataset
    """The first instance without its pixel data: patient, study and MR attributes to copy."""
    slice_thickness: float | None

    @property
    def series_instance_uid(self) -> str:
        return str(self.header.SeriesInstanceUID)

    @property
    def slice_spacing(self) -> float:
        return float(self.image.GetSpacing()[2])

    @property
    def thickness_ratio(self) -> float:
        """SliceThickness / slice spacing (below 1 with gaps); 1 when thickness is unknown."""
        if not self.slice_thickness:
            return 1.0
        return float(self.slice_thickness) / self.slice_spacing


@dataclass
class _Frame:
    ref: SourceRef
    dataset: Dataset
    frame_index: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int
    slope: float
    intercept: float
    thickness: float | None
    localizer: bool


def read_volume(
    datasets: Sequence[Dataset], settings: VolumeSettings | None = None
) -> SeriesVolume:
    """Check and stack the instances of one series; raise ``VolumeError`` if they are not one."""
    settings = settings or VolumeSettings()
    if not datasets:
        raise VolumeError("empty", "no instances were given")
    _check_instances(datasets)
    frames = [frame for ds in datasets for frame in _frames(ds)]
    _check_geometry_present(frames)
    _check_not_localizer(frames)
    orientation = _check_same(frames, "orientation", settings.orientation_tolerance)
    _check_same_matrix(frames)
    pixel_spacing = _check_same(frames, "pixel_spacing", 1e-3)
    if len(frames) == 1:
        raise VolumeError(
            "2d-only", "the series is a single 2D image, not a volume", [frames[0].ref.label]
        )
    _check_sizes(frames, pixel_spacing, settings)
    ordered, spacing = _order_and_check_spacing(frames, orientation, pixel_spacing, settings)
    image = _stack(ordered, orientation, pixel_spacing, spacing)
    header = _header(datasets[0])
    thickness = ordered[0].thickness
    log.info(
        "volume from series %s: %d slices, %s mm",
        header.get("SeriesInstanceUID", "?"),
        len(ordered),
        ", ".join(f"{s:.3g}" for s in image.GetSpacing()),
    )
    return SeriesVolume(image, [f.ref for f in ordered], header, thickness)


def _check_instances(datasets: Sequence[Dataset]) -> None:
    no_pixels = [_uid(ds) for ds in datasets if "PixelData" not in ds]
    if no_pixels:
        raise VolumeError("not-image", "instances without pixel data", no_pixels)
    colour = [_uid(ds) for ds in datasets if int(ds.get("SamplesPerPixel", 1)) != 1]
    if colour:
        raise VolumeError("not-monochrome", "colour instances cannot be enhanced", colour)
    series = Counter(str(ds.get("SeriesInstanceUID", "")) for ds in datasets)
    if len(series) > 1:
        main = series.most_common(1)[0][0]
        others = [_uid(ds) for ds in datasets if str(ds.get("SeriesInstanceUID", "")) != main]
        raise VolumeError(
            "mixed-series", f"instances from {len(series)} different series were mixed", others
        )


def _uid(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "<no SOPInstanceUID>"))


def _frames(ds: Dataset) -> list[_Frame]:
    """Each 2D frame of an instance with its own geometry (functional groups for multi-frame)."""
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    sop_class = str(ds.get("SOPClassUID", ""))
    if "PerFrameFunctionalGroupsSequence" not in ds and int(ds.get("NumberOfFrames", 1)) == 1:
        spacing = ds.get("PixelSpacing")
        return [
            _Frame(
                ref=SourceRef(sop_class, _uid(ds)),
                dataset=ds,
                frame_index=None,
                position=_vector(ds.get("ImagePositionPatient"), 3),
                orientation=_vector(ds.get("ImageOrientationPatient"), 6),
                pixel_spacing=_pair(spacing),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                slope=float(ds.get("RescaleSlope", 1) or 1),
                intercept=float(ds.get("RescaleIntercept", 0) or 0),
                thickness=_float(ds.get("SliceThickness")),
                localizer="LOCALIZER" in image_type,
            )
        ]
    count = int(ds.get("NumberOfFrames", 1))
    frames = []
    for index in range(count):
        position = _group(ds, index, "PlanePositionSequence")
        orientation = _group(ds, index, "PlaneOrientationSequence")
        measures = _group(ds, index, "PixelMeasuresSequence")
        transform = _group(ds, index, "PixelValueTransformationSequence")
        frame_type = _group(ds, index, "MRImageFrameTypeSequence")
        frame_types = [str(v).upper() for v in (frame_type or {}).get("FrameType", [])]
        frames.append(
            _Frame(
                ref=SourceRef(sop_class, _uid(ds), index + 1),
                dataset=ds,
                frame_index=index,
                position=_vector((position or {}).get("ImagePositionPatient"), 3),
                orientation=_vector((orientation or {}).get("ImageOrientationPatient"), 6),
                pixel_spacing=_pair((measures or {}).get("PixelSpacing")),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                slope=float((transform or ds).get("RescaleSlope", 1) or 1),
                intercept=float((transform or ds).get("RescaleIntercept", 0) or 0),
                thickness=_float((measures or {}).get("SliceThickness")),
                localizer="LOCALIZER" in image_type or "LOCALIZER" in frame_types,
            )
        )
    return frames


def _group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """A functional group macro for one frame: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame) and keyword in per_frame[index]:
        items = per_frame[index][keyword].value
        return items[0] if items else None
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0]:
        items = shared[0][keyword].value
        return items[0] if items else None
    return None


def _vector(value: object, length: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        vector = np.asarray([float(v) for v in value], dtype=float)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (length,) and np.all(np.isfinite(vector)) else None


def _pair(value: object) -> tuple[float, float] | None:
    vector = _vector(value, 2)
    return None if vector is None else (float(vector[0]), float(vector[1]))


def _float(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _check_geometry_present(frames: list[_Frame]) -> None:
    missing = [
        f.ref.label
        for f in frames
        if f.position is None or f.orientation is None or f.pixel_spacing is None
    ]
    if missing:
        raise VolumeError(
            "missing-geometry",
            "instances without Image Position, Image Orientation or Pixel Spacing",
            missing,
        )
    bad = [
        f.ref.label
        for f in frames
        if f.orientation is not None
        and (
            abs(np.linalg.norm(f.orientation[:3]) - 1) > 1e-2
            or abs(np.linalg.norm(f.orientation[3:]) - 1) > 1e-2
            or abs(float(np.dot(f.orientation[:3], f.orientation[3:]))) > 1e-2
        )
    ]
    if bad:
        raise VolumeError("missing-geometry", "Image Orientation is not two unit vectors", bad)


def _check_not_localizer(frames: list[_Frame]) -> None:
    localizers = [f.ref.label for f in frames if f.localizer]
    if localizers:
        raise VolumeError("localizer", "a localizer (scout) is mixed into the series", localizers)


def _check_same(frames: list[_Frame], attribute: str, tolerance: float) -> np.ndarray:
    """The majority value of an attribute; refuse the frames that differ from it."""
    values = [np.asarray(getattr(f, attribute), dtype=float) for f in frames]
    keys = Counter(tuple(np.round(v / max(tolerance, 1e-9)).astype(int)) for v in values)
    reference = values[
        [tuple(np.round(v / max(tolerance, 1e-9)).astype(int)) for v in values].index(
            keys.most_common(1)[0][0]
        )
    ]
    odd = [
        f.ref.label
        for f, v in zip(frames, values, strict=True)
        if np.max(np.abs(v - reference)) > tolerance
    ]
    if odd:
        if attribute == "orientation":
            raise VolumeError(
                "mixed-orientation",
                "instances with a different Image Orientation (another plane or a localizer)",
                odd,
            )
        raise VolumeError("mixed-pixel-spacing", "instances with a different Pixel Spacing", odd)
    return reference


def _check_same_matrix(frames: list[_Frame]) -> None:
    sizes = Counter((f.rows, f.columns) for f in frames)
    if len(sizes) > 1:
        main = sizes.most_common(1)[0][0]
        odd = [f.ref.label for f in frames if (f.rows, f.columns) != main]
        raise VolumeError("mixed-matrix", "instances with a different number of rows/columns", odd)


def _check_sizes(frames: list[_Frame], pixel_spacing: np.ndarray, settings: VolumeSettings) -> None:
    rows, columns = frames[0].rows, frames[0].columns
    problems = []
    if not (
        MIN_MATRIX <= rows <= settings.max_matrix and MIN_MATRIX <= columns <= settings.max_matrix
    ):
        problems.append(f"matrix {rows}x{columns} outside {MIN_MATRIX}..{settings.max_matrix}")
    if not (0 < pixel_spacing.min() and pixel_spacing.max() <= MAX_PIXEL_SPACING_MM):
        problems.append(
            f"pixel spacing {pixel_spacing.tolist()} mm outside 0..{MAX_PIXEL_SPACING_MM}"
        )
    if len(frames) > settings.max_slices:
        problems.append(f"{len(frames)} slices, more than {settings.max_slices}")
    if rows * columns * len(frames) > settings.max_voxels:
        problems.append(f"{rows * columns * len(frames)} voxels, more than {settings.max_voxels}")
    if problems:
        raise VolumeError("absurd-size", "implausible size: " + "; ".join(problems))


def _order_and_check_spacing(
    frames: list[_Frame],
    orientation: np.ndarray,
    pixel_spacing: np.ndarray,
    settings: VolumeSettings,
) -> tuple[list[_Frame], float]:
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    positions = np.array([f.position for f in frames])
    order = np.argsort(positions @ normal, kind="stable")
    ordered = [frames[i] for i in order]
    positions = positions[order]
    along = positions @ normal
    # Every slice of one stack has the same in-plane offset; a second stack does not.
    in_plane = (positions - positions[0]) @ np.column_stack([row, col])
    shifted = np.abs(in_plane).max(axis=1) > 0.5 * float(pixel_spacing.min())
    if shifted.any():
        raise VolumeError(
            "second-stack",
            "slices are not on one line along the slice normal (a second, shifted stack?)",
            [ordered[i].ref.label for i in np.flatnonzero(shifted)],
        )
    steps = np.diff(along)
    duplicate = np.flatnonzero(steps < 0.01)
    if duplicate.size:
        labels = sorted({ordered[i + d].ref.label for i in duplicate for d in (0, 1)})
        raise VolumeError(
            "second-stack",
            "two or more slices share the same position (a second stack or a repeat)",
            labels,
        )
    if len(frames) < settings.min_slices:
        raise VolumeError(
            "too-few-slices",
            f"{len(frames)} slices, fewer than the minimum of {settings.min_slices}",
        )
    median = float(np.median(steps))
    if not (0.05 <= median <= MAX_SLICE_SPACING_MM):
        raise VolumeError(
            "absurd-size", f"slice spacing {median:.3g} mm outside 0.05..{MAX_SLICE_SPACING_MM}"
        )
    tolerance = settings.spacing_tolerance
    ratios = steps / median
    gaps = [
        i for i, r in enumerate(ratios) if r > 1.5 and abs(r - round(r)) <= tolerance * round(r)
    ]
    if gaps:
        missing = int(sum(round(ratios[i]) - 1 for i in gaps))
        raise VolumeError(
            "missing-slices",
            f"{missing} slice(s) missing: a gap in positions after a step of {median:.3g} mm "
            "(the instances named are either side of each gap)",
            [ordered[i + d].ref.label for i in gaps for d in (0, 1)],
        )
    irregular = np.flatnonzero(np.abs(ratios - 1) > tolerance)
    if irregular.size:
        raise VolumeError(
            "irregular-spacing",
            f"slice steps vary beyond {tolerance:.0%} of the median {median:.3g} mm "
            f"(steps {', '.join(f'{steps[i]:.3g}' for i in irregular[:5])} mm)",
            sorted({ordered[i + d].ref.label for i in irregular for d in (0, 1)}),
        )
    spacing = float((along[-1] - along[0]) / (len(frames) - 1))
    return ordered, spacing


def _stack(
    frames: list[_Frame], orientation: np.ndarray, pixel_spacing: np.ndarray, spacing: float
) -> sitk.Image:
    """Decode, rescale to real-world values and stack; slice index = position on the normal."""
    decoded: dict[int, np.ndarray] = {}
    array = np.empty((len(frames), frames[0].rows, frames[0].columns), dtype=np.float32)
    for index, frame in enumerate(frames):
        key = id(frame.dataset)
        if key not in decoded:
            try:
                decoded[key] = frame.dataset.pixel_array
            except Exception as exc:  # pydicom raises many types for unsupported encodings
                raise VolumeError(
                    "unreadable-pixels", f"pixel data cannot be decoded: {exc}", [frame.ref.label]
                ) from exc
        pixels = decoded[key]
        if frame.frame_index is not None and pixels.ndim == 3:
            pixels = pixels[frame.frame_index]
        array[index] = pixels.astype(np.float32) * frame.slope + frame.intercept
    row, col = orientation[:3], orientation[3:]
    direction = np.column_stack([row, col, np.cross(row, col)])
    image = sitk.GetImageFromArray(array)
    # DICOM PixelSpacing is (between rows, between columns) = (y, x).
    image.SetSpacing((float(pixel_spacing[1]), float(pixel_spacing[0]), spacing))
    image.SetOrigin(tuple(float(v) for v in frames[0].position))  # type: ignore[arg-type]
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def _header(ds: Dataset) -> Dataset:
    """A shallow copy without bulk data, so the volume does not keep the pixels twice."""
    header = Dataset()
    for element in ds:
        if element.keyword not in ("PixelData", "PerFrameFunctionalGroupsSequence"):
            header.add(element)
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    return header
