"""Low-field simulator: slice profile FWHM, sampling, target SNRs, noise models, profiles."""

from __future__ import annotations

import numpy as np
import pytest

from models.profile import load_profile
from models.simulate import (
    FWHM_TO_SIGMA,
    add_noise,
    degrade_slices,
    measured_snr,
    simulate_low_field,
    slice_profile_matrix,
)


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("ratio", [1.0, 0.6])
def test_profile_fwhm_and_centres(factor: int, ratio: float) -> None:
    a = slice_profile_matrix(20 * factor, factor, ratio)
    assert a.shape == (20, 20 * factor)
    z = np.arange(20 * factor)
    row = a[10]
    centre = float((row * z).sum())
    assert centre == pytest.approx(10 * factor + (factor - 1) / 2, abs=1e-3)
    fwhm = np.sqrt(float((row * (z - centre) ** 2).sum())) / FWHM_TO_SIGMA
    assert fwhm == pytest.approx(factor * ratio, rel=0.05)


def test_gap_between_slices_is_not_sampled() -> None:
    factor = 8
    a = slice_profile_matrix(10 * factor, factor, 0.4)
    coverage = a.sum(axis=0)
    centres = (np.arange(10) * factor + (factor - 1) / 2).astype(int)
    gaps = centres[:-1] + factor // 2
    assert coverage[gaps].max() < 0.05 * coverage[centres].min()


def test_degrade_keeps_constants_and_takes_every_kth() -> None:
    v = np.full((32, 5, 6), 3.0, np.float32)
    out = degrade_slices(v, 4)
    assert out.shape == (8, 5, 6)
    np.testing.assert_allclose(out, 3.0, rtol=1e-5)


def test_fixed_snr_is_reproduced(phantom_brain) -> None:  # type: ignore[no-untyped-def]
    prof = load_profile("0.36T")
    b = phantom_brain
    sim = simulate_low_field(b.t1, b.tissue, 4, prof, np.random.default_rng(0), snr=(40.0, 30.0))
    clean = simulate_low_field(b.t1, b.tissue, 4, prof, np.random.default_rng(0), snr=(1e9, 0.75e9))
    # The noise-free twin has the same GM rescaling (same SNR ratio) and negligible noise.
    snr_wm, snr_gm = measured_snr(sim, clean.low_field)
    assert snr_wm == pytest.approx(40.0, rel=0.05)
    assert snr_gm == pytest.approx(30.0, rel=0.05)


def test_drawn_snrs_follow_the_profile() -> None:
    prof = load_profile("0.36T")
    rng = np.random.default_rng(1)
    draws = np.array([prof.draw_snr(rng) for _ in range(4000)])
    np.testing.assert_allclose(draws.mean(axis=0), prof.snr_mean, rtol=0.02)
    np.testing.assert_allclose(np.cov(draws.T), prof.snr_covariance, rtol=0.12)


def test_profiles_are_data_files_with_the_paper_numbers() -> None:
    p = load_profile("0.36T")
    assert p.snr_mean == (64.50, 54.14)
    assert p.snr_covariance == ((78.47, 71.50), (71.50, 73.91))
    assert not p.estimate
    low = load_profile("64mT")
    assert low.estimate and low.field_strength_t == pytest.approx(0.064)
    assert low.snr_mean[0] < p.snr_mean[0]
    wm, gm = p.tail_snr(-2.0)
    assert wm < p.snr_mean[0] and gm < p.snr_mean[1]


def test_gaussian_and_rician_noise() -> None:
    rng = np.random.default_rng(0)
    zeros = np.zeros((200, 200), np.float32)
    g = add_noise(zeros, 1.0, rng, "gaussian")
    r = add_noise(zeros, 1.0, rng, "rician")
    assert abs(g.mean()) < 0.02 and g.std() == pytest.approx(1.0, rel=0.03)
    assert (r >= 0).all() and r.mean() == pytest.approx(np.sqrt(np.pi / 2), rel=0.03)
    with pytest.raises(ValueError):
        add_noise(zeros, 1.0, rng, "uniform")
