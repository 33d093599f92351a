"""Intensity normalisation the engines can rely on, and optional slice-wise equalisation.

Normalisation: ``x_n = (x - offset) / scale`` with ``offset = 0`` (MR magnitude: air stays at
zero, so the engines see an unshifted background). ``wm-peak`` (the default) takes ``scale``
from brain tissue: the white-matter level of the head's core, the same function
(``models.normalize.wm_peak_scale``) that the 0.2 networks were trained with, so white matter
lands near 1 whatever the scanner's units, the field of view or the amount of scalp fat.
``percentile`` (release 0.1's default) divides by a percentile of the head mask, which on T1 is
scalp fat, so the brain's scale followed the scalp. The pair (offset, scale) is kept in a
``Normalisation`` record and ``invert`` multiplies it back, so the derived series comes out in the
source's range and the source's window settings stay meaningful. ``none`` is the identity.

Slice equalisation: low-field 2D T1 spin echo shows slice-to-slice brightness steps from
cross-talk between adjacent slices. Following Figini et al. (2024) each slice is histogram-matched
to the central slice (SimpleITK's quantile-based matching, background excluded by thresholding
at the mean). Off by default: it also evens out true anatomical contrast differences between
slices, so it is a per-protocol choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pipeline.settings import IntensitySettings


@dataclass(frozen=True)
class Normalisation:
    """A reversible affine intensity map: ``normalised = (x - offset) / scale``."""

    method: str
    offset: float
    scale: float

    def apply(self, array: np.ndarray) -> np.ndarray:
        return ((array - self.offset) / self.scale).astype(np.float32, copy=False)

    def invert(self, array: np.ndarray) -> np.ndarray:
        return (array * self.scale + self.offset).astype(np.float32, copy=False)


def fit_normalisation(
    array: np.ndarray,
    mask: np.ndarray | None,
    settings: IntensitySettings,
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Normalisation:
    """Measure the normalisation (array axes in ``spacing_mm``; the percentile method uses the
    head ``mask``, all voxels when there is no usable mask)."""
    if settings.normalisation == "none":
        return Normalisation("none", 0.0, 1.0)
    if settings.normalisation == "wm-peak":
        from models.normalize import wm_peak_scale

        return Normalisation("wm-peak", 0.0, wm_peak_scale(array, spacing_mm))
    values = array[mask > 0] if mask is not None and np.any(mask) else array.ravel()
    scale = float(np.percentile(values, settings.percentile))
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.abs(values).max()) or 1.0
    return Normalisation(f"percentile{settings.percentile:g}", 0.0, scale)


def equalise_slices(image: sitk.Image, settings: IntensitySettings | None = None) -> sitk.Image:
    """Histogram-match every slice (z index) to the central slice; geometry unchanged."""
    settings = settings or IntensitySettings()
    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    centre = array.shape[0] // 2
    # Plain 2D images (no geometry): only intensities matter, and 2D slices cut from an oblique
    # volume would carry origins that SimpleITK refuses to stack again.
    reference = sitk.GetImageFromArray(array[centre])
    matcher = sitk.HistogramMatchingImageFilter()
    matcher.SetNumberOfHistogramLevels(settings.equalisation_histogram_levels)
    matcher.SetNumberOfMatchPoints(settings.equalisation_match_points)
    matcher.ThresholdAtMeanIntensityOn()
    for z in range(array.shape[0]):
        if z != centre:
            matched = matcher.Execute(sitk.GetImageFromArray(array[z]), reference)
            array[z] = sitk.GetArrayViewFromImage(matched)
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result
