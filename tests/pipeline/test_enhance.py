"""pipeline.enhance: factor choice, reorientation and the output grid in patient space."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.engines import BSplineEngine
from pipeline.enhance import choose_factor, enhance_volume
from pipeline.errors import EnhanceError
from pipeline.settings import EnhanceSettings
from pipeline.volume import read_volume

FACTORS = (2, 3, 4, 5, 6, 7, 8)


def test_choose_factor_from_geometry():
    assert choose_factor(6.0, 0.9, FACTORS) == 7  # 6/7 = 0.86 <= 0.9
    assert choose_factor(6.0, 1.8, FACTORS) == 4  # 1.5 <= 1.8, 2.0 is not
    assert choose_factor(6.0, 0.9, (4, 8)) == 8
    assert choose_factor(20.0, 0.9, (2, 4)) == 4  # cannot reach: the largest
    assert choose_factor(6.0, 0.9, FACTORS, EnhanceSettings(target_spacing_mm=1.5)) == 4
    assert choose_factor(6.0, 0.9, FACTORS, EnhanceSettings(factor=8)) == 8


def test_choose_factor_refusals():
    with pytest.raises(EnhanceError) as caught:
        choose_factor(6.0, 0.9, (4,), EnhanceSettings(factor=3))
    assert caught.value.reason == "unsupported-factor"
    with pytest.raises(EnhanceError) as caught:
        choose_factor(1.0, 1.0, FACTORS)
    assert caught.value.reason == "already-thin"


def _expected_grid(image: sitk.Image, k: int):
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    origin = np.asarray(image.GetOrigin()) - direction[:, 2] * spacing[2] / k * (k - 1) / 2
    return origin, (spacing[0], spacing[1], spacing[2] / k)


@pytest.mark.parametrize("orientation", ["oblique", "sagittal"])
def test_output_grid_in_the_same_frame(series_cache, orientation):
    volume = read_volume(series_cache(orientation))
    result = enhance_volume(volume.image, BSplineEngine(), enhance=EnhanceSettings(factor=4))
    out = result.image
    assert out.GetSize() == (128, 128, 48)
    origin, spacing = _expected_grid(volume.image, 4)
    np.testing.assert_allclose(out.GetOrigin(), origin, atol=1e-6)
    np.testing.assert_allclose(out.GetSpacing(), spacing)
    assert out.GetDirection() == volume.image.GetDirection()
    # The centre of thin-slice group i coincides with acquired slice i in patient space.
    source = sitk.GetArrayViewFromImage(volume.image)
    thin = sitk.GetArrayViewFromImage(out)
    for i in (2, 5, 8):
        centre = thin[i * 4 + 1 : i * 4 + 3].mean(axis=0).ravel()
        same = np.corrcoef(centre, source[i].ravel())[0, 1]
        neighbours = [np.corrcoef(centre, source[j].ravel())[0, 1] for j in (i - 1, i + 1)]
        assert same > 0.99 and same > max(neighbours), (i, same, neighbours)
    # Intensities come back in source units.
    assert np.percentile(thin, 99) == pytest.approx(np.percentile(source, 99), rel=0.1)


def test_reorients_when_the_slice_axis_is_not_z():
    array = np.random.default_rng(0).random((32, 10, 32)).astype(np.float32)  # (x, z, y) thick z
    image = sitk.GetImageFromArray(array)  # sitk axes: x=32, y=10, z=32
    image.SetSpacing((1.0, 6.0, 1.0))
    result = enhance_volume(image, BSplineEngine(), enhance=EnhanceSettings(factor=2))
    assert result.image.GetSpacing() == pytest.approx((1.0, 1.0, 3.0))
    assert result.image.GetSize() == (32, 32, 20)
    direction = np.asarray(result.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 2], [0, 1, 0])  # slice axis is patient y
