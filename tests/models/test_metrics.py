"""Metrics and the cubic B-spline baseline behave as their definitions say."""

from __future__ import annotations

import numpy as np
import pytest

from models.baseline import cubic_bspline_upsample
from models.metrics import contrast_error, edge_f1, psnr_in_mask, ssim_in_mask


def test_psnr_known_value() -> None:
    truth = np.ones((4, 8, 8), np.float32)
    pred = truth + 0.1
    mask = np.ones_like(truth, bool)
    assert psnr_in_mask(pred, truth, mask) == pytest.approx(20.0, abs=1e-4)


def test_ssim_identity_and_degradation(phantom_brain) -> None:  # type: ignore[no-untyped-def]
    t = phantom_brain.t1
    m = phantom_brain.brain_mask
    assert ssim_in_mask(t, t, m) == pytest.approx(1.0)
    noisy = t + np.random.default_rng(0).normal(0, 0.1, t.shape).astype(np.float32)
    assert ssim_in_mask(noisy, t, m) < 0.9


def test_contrast_error(phantom_brain) -> None:  # type: ignore[no-untyped-def]
    b = phantom_brain
    wm, gm = b.tissue.wm > 0.5, b.tissue.gm > 0.5
    assert contrast_error(b.t1, b.t1, wm, gm) == pytest.approx(0.0)
    flat = np.where(gm, b.t1 * 1.2, b.t1)
    assert contrast_error(flat, b.t1, wm, gm) > 10.0


def test_edge_f1_tolerates_one_voxel_not_three(phantom_brain) -> None:  # type: ignore[no-untyped-def]
    t, m = phantom_brain.t1, np.ones_like(phantom_brain.brain_mask)
    assert edge_f1(t, t, m) == pytest.approx(1.0)
    assert edge_f1(np.roll(t, 1, axis=0), t, m) > 0.95
    assert edge_f1(np.roll(t, 3, axis=0), t, m) < 0.6


@pytest.mark.parametrize("factor", [4, 8])
def test_cubic_baseline_follows_grid_convention(factor: int) -> None:
    ramp = np.arange(12, dtype=np.float32)[:, None, None] * np.ones((1, 3, 3), np.float32)
    out = cubic_bspline_upsample(ramp, factor)
    assert out.shape == (12 * factor, 3, 3)
    expected = np.arange(12 * factor) / factor - (factor - 1) / (2 * factor)
    inner = slice(3 * factor, 9 * factor)
    np.testing.assert_allclose(out[inner, 1, 1], expected[inner], atol=5e-3)
    # each acquired slice is the mean position of its k thin slices
    np.testing.assert_allclose(
        out.reshape(12, factor, 3, 3).mean(axis=1)[3:9], ramp[3:9], atol=5e-3
    )
