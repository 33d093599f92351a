"""Per-series through-plane detail learnt from the series' own in-plane slices (models.smore)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from models.baseline import cubic_bspline_upsample
from models.simulate import degrade_slices
from models.smore import (
    DetailSettings,
    apply_through_plane,
    blend_detail,
    degrade_axis,
    fit_detail_net,
    noise_sigma,
)


def _blobs(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Isotropic texture inside a sphere: the same detail in-plane as through-plane."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    texture = 0.6 + 0.3 * (field > 0) + 0.1 * np.tanh(field / field.std())
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = z**2 + y**2 + x**2 < 0.85
    return np.where(inside, texture, 0.0).astype(np.float32)


def test_degraded_rows_stay_where_they_were_acquired() -> None:
    """A ramp survives the slice profile and cubic interpolation unchanged, and row t of the
    result is row shift + t of the image, whatever the shift."""
    ramp = np.repeat(np.arange(64, dtype=np.float32)[:, None], 8, axis=1)
    rng = np.random.default_rng(0)
    for shift in range(4):
        out = degrade_axis(ramp, 4, 0.75, shift, 1.0, 0.0, rng)
        inner = slice(16, out.shape[0] - 16)  # away from the mirrored edges
        np.testing.assert_allclose(out[inner], ramp[shift : shift + out.shape[0]][inner], atol=0.05)
    impulse = np.zeros((64, 8), np.float32)
    impulse[30] = 1.0
    out = degrade_axis(impulse, 4, 1.0, 2, 1.0, 0.0, rng)
    assert abs(int(np.argmax(out[:, 0])) - 28) <= 1


def test_thick_samples_get_the_noise_the_profile_averaged_away() -> None:
    flat = np.ones((400, 400), np.float32)
    rng = np.random.default_rng(1)
    out = degrade_axis(flat, 4, 1.0, 0, 1.0, 0.1, rng)
    thick_rows = out[1::4][5:-5]  # interpolated rows between samples are smoother
    assert 0.07 < float(thick_rows.std()) < 0.11


def test_noise_sigma_is_read_from_the_image() -> None:
    volume = _blobs((16, 96, 96))
    smooth = ndimage.gaussian_filter(volume, 3.0) + 0.5 * (volume > 0)
    noisy = smooth + np.random.default_rng(2).normal(0, 0.02, smooth.shape).astype(np.float32)
    assert abs(noise_sigma(noisy) - 0.02) < 0.004


def test_learnt_detail_beats_cubic_through_plane_and_is_deterministic() -> None:
    truth = _blobs((64, 64, 64))
    acquired = degrade_slices(truth, 4, 1.0)
    cubic = cubic_bspline_upsample(acquired, 4, "mirror")
    settings = DetailSettings(max_steps=250, min_steps=250, channels=16)
    net, stats = fit_detail_net(acquired, 4, 1.0, (4.0, 1.0, 1.0), settings, threads=1)
    assert stats["loss_last"] < 0.9 * stats["loss_first"]
    detail = apply_through_plane(net, cubic)
    inside = truth > 0
    cubic_error = float(np.mean((cubic - truth)[inside] ** 2))
    detail_error = float(np.mean((detail - truth)[inside] ** 2))
    assert detail_error < 0.8 * cubic_error
    again, _ = fit_detail_net(acquired, 4, 1.0, (4.0, 1.0, 1.0), settings, threads=1)
    np.testing.assert_array_equal(apply_through_plane(again, cubic), detail)


def test_blended_detail_takes_the_predictions_contrast_and_local_level() -> None:
    """A detail volume in another contrast and under a coil's shading is mapped onto the
    prediction's contrast, and its local mean onto the prediction's, before it is blended."""
    prediction = 0.5 + 0.5 * _blobs((40, 64, 64))
    prediction[_blobs((40, 64, 64)) == 0] = 0.0
    inside = prediction > 0
    spacing = (3.0, 3.0, 3.0)  # the 15 mm gain is 5 voxels here
    other_contrast = 0.2 + 0.6 * prediction**2
    out = blend_detail(prediction, other_contrast, 1.0, spacing)
    assert float(np.max(np.abs(out - prediction)[inside])) < 0.01

    shading = 1.0 + 0.3 * np.linspace(-1, 1, 40, dtype=np.float32)[:, None, None]
    shaded = other_contrast * shading

    def local_mean(image: np.ndarray) -> np.ndarray:
        mask = inside.astype(np.float32)
        return ndimage.gaussian_filter(image * mask, 5.0) / ndimage.gaussian_filter(mask, 5.0)

    core = ndimage.binary_erosion(inside, iterations=6)
    out = blend_detail(prediction, shaded, 1.0, spacing)
    level = np.abs(local_mean(out) / local_mean(prediction) - 1.0)[core]
    plain = np.polynomial.Polynomial.fit(shaded[inside], prediction[inside], 3)(shaded)
    plain_level = np.abs(local_mean(plain) / local_mean(prediction) - 1.0)[core]
    assert float(np.percentile(level, 95)) < 0.02 < 0.04 < float(np.percentile(plain_level, 95))
    half = blend_detail(prediction, shaded, 0.5, spacing)
    np.testing.assert_allclose(half, 0.5 * (prediction + out), atol=1e-5)
    assert blend_detail(prediction, shaded, 0.0, spacing) is prediction
