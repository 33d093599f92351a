"""pipeline.bias: N4 measurably flattens an applied bias field."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.bias import correct_bias, shrink_factors
from pipeline.mask import head_mask
from pipeline.settings import N4Settings
from pipeline.volume import read_volume


@pytest.fixture(scope="module")
def biased(series_cache):
    clean = read_volume(series_cache()).image
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in clean.GetSize()[::-1]), indexing="ij")
    log_field = (0.35 * x + 0.2 * y - 0.25 * x * y + 0.1 * z).astype(np.float32)
    array = sitk.GetArrayFromImage(clean) * np.exp(log_field)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(clean)
    return clean, image, log_field


def _residual_log_spread(image: sitk.Image, clean: sitk.Image, mask: np.ndarray) -> float:
    ratio = np.log(
        np.maximum(sitk.GetArrayViewFromImage(image), 1)
        / np.maximum(sitk.GetArrayViewFromImage(clean), 1)
    )
    return float(np.std(ratio[mask]))


def _check_flattened(result, clean, biased_image, applied):
    """The residual shading shrinks to under half, and the field found is the field applied.

    Not to zero: N4 also removes some of the template's own slow intensity variation, and the
    Rician noise floor remains, so about 0.4 is what a working N4 reaches here.
    """
    mask = sitk.GetArrayFromImage(head_mask(clean)) > 0
    before = _residual_log_spread(biased_image, clean, mask)
    after = _residual_log_spread(result.corrected, clean, mask)
    assert after < 0.5 * before, (before, after)
    found = sitk.GetArrayViewFromImage(result.log_field)[mask]
    assert np.corrcoef(found, applied[mask])[0, 1] > 0.85
    assert result.corrected.GetSize() == biased_image.GetSize()  # full resolution
    assert result.log_field.GetSpacing() == biased_image.GetSpacing()


def test_n4_flattens_an_applied_bias_field(biased):
    clean, image, applied = biased
    result = correct_bias(image, N4Settings(iterations=[20, 20, 10]))
    _check_flattened(result, clean, image, applied)
    # The field is centred on the head, so the source's intensity scale is kept.
    mask = sitk.GetArrayViewFromImage(result.mask) > 0
    ratio = np.median(sitk.GetArrayViewFromImage(result.corrected)[mask]) / np.median(
        sitk.GetArrayViewFromImage(clean)[mask]
    )
    assert 0.85 < ratio < 1.15


def test_shrink_is_in_plane_only_for_thick_slices(biased):
    _, image, _ = biased
    assert shrink_factors(image, N4Settings()) == [4, 4, 1]
    iso = sitk.Image([64, 64, 64], sitk.sitkFloat32)
    assert shrink_factors(iso, N4Settings()) == [4, 4, 4]
    assert shrink_factors(image, N4Settings(shrink_through_plane=2)) == [4, 4, 2]


@pytest.mark.skipif(importlib.util.find_spec("ants") is None, reason="ANTsPy not installed")
def test_antspy_backend_flattens_too(biased):
    clean, image, applied = biased
    result = correct_bias(image, N4Settings(backend="antspy", iterations=[20, 20, 10]))
    _check_flattened(result, clean, image, applied)
