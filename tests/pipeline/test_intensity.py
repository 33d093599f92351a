"""pipeline.intensity: reversible normalisation and slice equalisation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.intensity import equalise_slices, fit_normalisation
from pipeline.mask import head_mask
from pipeline.settings import IntensitySettings
from pipeline.volume import read_volume


def test_normalisation_is_documented_and_reversible(series_cache):
    image = read_volume(series_cache()).image
    array = sitk.GetArrayFromImage(image)
    mask = sitk.GetArrayFromImage(head_mask(image))
    spacing = image.GetSpacing()[::-1]  # array axes (slice, row, column)
    norm = fit_normalisation(array, mask, IntensitySettings(), spacing)
    # The default is the training's own white-matter scale, measured in millimetres.
    from models.normalize import wm_peak_scale

    assert (norm.method, norm.offset) == ("wm-peak", 0.0)
    assert norm.scale == pytest.approx(wm_peak_scale(array, spacing))
    normalised = norm.apply(array)
    assert 0.3 < np.median(normalised[mask > 0]) < 1.0
    np.testing.assert_allclose(norm.invert(normalised), array, rtol=1e-5, atol=1e-3)
    percentile = fit_normalisation(array, mask, IntensitySettings(normalisation="percentile"))
    assert percentile.scale == np.percentile(array[mask > 0], 99.0)
    identity = fit_normalisation(array, mask, IntensitySettings(normalisation="none"))
    np.testing.assert_array_equal(identity.apply(array), array)


def _step_between_slices(array: np.ndarray, mask: np.ndarray) -> float:
    means = np.array([a[m > 0].mean() for a, m in zip(array, mask, strict=True)])
    return float(np.mean(np.abs(np.diff(np.log(means)))))


@pytest.mark.parametrize("orientation", ["axial", "oblique"])
def test_slice_equalisation_removes_cross_talk_steps(series_cache, orientation):
    image = read_volume(series_cache(orientation)).image
    mask = sitk.GetArrayFromImage(head_mask(image))
    array = sitk.GetArrayFromImage(image)
    stepped = array.copy()
    stepped[1::2] *= 0.75  # interleaved acquisition: every other slice darker
    stepped_image = sitk.GetImageFromArray(stepped)
    stepped_image.CopyInformation(image)
    equalised = equalise_slices(stepped_image)
    assert equalised.GetSize() == image.GetSize()
    assert equalised.GetOrigin() == image.GetOrigin()
    before = _step_between_slices(stepped, mask)
    after = _step_between_slices(sitk.GetArrayFromImage(equalised), mask)
    assert after < 0.5 * before, (before, after)
