"""Training draws of release 0.2: random grids in mm, fixed target contrast, slab-edge patches,
loss weights on the brain, the hemisphere split."""

from __future__ import annotations

import numpy as np
import pytest

from models.augment import GridDraw, resample_on_random_grid
from models.patches import DrawSettings, sample_patches, simulate_pair
from models.profile import load_profile
from models.target import TARGET_GM_WM_RATIO, render_target


@pytest.mark.parametrize("axis", [2, 1, 0])
def test_unaugmented_grid_is_the_brains_own_reoriented(phantom_brain, axis) -> None:  # type: ignore[no-untyped-def]
    """The physical reorientation agrees with ``Brain.with_slice_axis`` voxel for voxel."""
    out, spacing = resample_on_random_grid(
        {"t1": phantom_brain.t1, "gm": phantom_brain.tissue.gm},
        phantom_brain.voxel_mm,
        axis,
        np.random.default_rng(0),
        augment=False,
    )
    expected = phantom_brain.with_slice_axis(axis)
    assert spacing == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(out["t1"], expected.t1, atol=1e-5)
    np.testing.assert_allclose(out["gm"], expected.tissue.gm, atol=1e-5)


def test_random_grid_spacing_and_anatomy_in_millimetres(phantom_brain) -> None:  # type: ignore[no-untyped-def]
    draw = GridDraw(in_plane_mm=(1.2, 1.5), thin_mm=(0.75, 0.8), max_rotation_deg=15.0)
    rng = np.random.default_rng(3)
    volume_mm3 = phantom_brain.brain_mask.sum() * phantom_brain.voxel_mm**3
    for _ in range(3):
        out, (t, p, q) = resample_on_random_grid(
            {"t1": phantom_brain.t1, "brain": phantom_brain.brain_mask.astype(np.float32)},
            phantom_brain.voxel_mm,
            2,
            rng,
            draw,
        )
        assert 0.75 <= t <= 0.8 and 1.2 <= p <= 1.5 and p == q
        # Resampled in mm: the brain keeps its physical volume up to the random scaling
        # (+-10 % per axis), however anisotropic the grid; shearing would not.
        resampled_mm3 = float(out["brain"].sum()) * t * p * q
        assert resampled_mm3 == pytest.approx(volume_mm3, rel=0.35)
        assert out["t1"].min() >= 0.0


def test_target_contrast_is_fixed() -> None:
    rng = np.random.default_rng(0)
    gm = (rng.random((20, 20, 20)) > 0.5).astype(np.float32)
    wm = 1.0 - gm
    image = 0.8 * gm + 1.0 * wm
    target = render_target(image, gm, wm)
    ratio = target[gm > 0.5].mean() / target[wm > 0.5].mean()
    assert ratio == pytest.approx(TARGET_GM_WM_RATIO, rel=1e-4)
    np.testing.assert_allclose(target[wm > 0.5], 1.0)


def test_release_draw_normalises_on_white_matter_and_weights_the_brain(phantom_brain) -> None:  # type: ignore[no-untyped-def]
    settings = DrawSettings(
        factor=4,
        profile=load_profile("0.36T"),
        noise="rician",
        grid=GridDraw(in_plane_mm=(1.0, 1.2), thin_mm=(0.9, 1.1), elastic_mm=1.0),
        thickness_ratios=(0.75, 1.0),
        target_contrast=True,
        normalisation="wm-peak",
        outside_weight=0.1,
    )
    low, high, weight = simulate_pair(phantom_brain, settings, np.random.default_rng(5), axis=2)
    assert high.shape[0] == low.shape[0] * 4 and weight.shape == high.shape
    assert set(np.unique(weight)) == {np.float32(0.1), np.float32(1.0)}
    # the brain's core, in the target, sits near 1 on the input's white-matter scale
    core = weight == 1.0
    assert 0.6 < float(np.percentile(high[core], 90)) < 1.3


def test_edge_patches_carry_inference_padding_and_no_loss_on_it() -> None:
    rng = np.random.default_rng(0)
    low = rng.random((10, 32, 32)).astype(np.float32) + 1.0
    high = rng.random((40, 32, 32)).astype(np.float32)
    x, y, w = sample_patches(
        low, high, 4, 4, rng, in_plane=32, out_slices=32, flips=False, edge_fraction=1.0
    )
    assert x.shape == (4, 1, 8, 32, 32) and y.shape == w.shape == (4, 1, 32, 32, 32)
    # reflected padding as numpy's "reflect" (what models.infer pads with), then slices 0..5
    padded = np.pad(low, ((2, 0), (0, 0), (0, 0)), mode="reflect")[:8]
    np.testing.assert_array_equal(x[0, 0], padded)
    assert (w[:, :, :8] == 0).all() and (w[:, :, 8:] == 1).all()
    np.testing.assert_array_equal(y[0, 0, 8:], high[:24])


def test_hemisphere_split_halves_the_head(phantom_brain) -> None:  # type: ignore[no-untyped-def]
    left, right = phantom_brain.hemisphere("left"), phantom_brain.hemisphere("right")
    nx = phantom_brain.t1.shape[2]
    assert left.t1.shape[2] + right.t1.shape[2] == nx
    np.testing.assert_array_equal(np.concatenate([left.t1, right.t1], axis=2), phantom_brain.t1)
    with pytest.raises(ValueError, match="side"):
        phantom_brain.hemisphere("top")


@pytest.mark.parametrize("mode", ["keep", "remove"])
def test_shading_target_decides_whether_the_target_carries_the_coil(
    phantom_brain, monkeypatch, mode
) -> None:  # type: ignore[no-untyped-def]
    """A constant "field" of 2 makes the effect exact: input and target both double ("keep",
    so the normalised target is unchanged), or only the input does ("remove", so the target
    on the input's white-matter scale halves)."""
    import models.patches as patches

    monkeypatch.setattr(patches, "smooth_bias_field", lambda shape, rng, s: np.full(shape, 2.0))
    common = dict(factor=4, profile=load_profile("0.36T"), noise="rician", normalisation="wm-peak")
    shaded = DrawSettings(**common, shading=0.2, shading_target=mode)  # type: ignore[arg-type]
    plain = DrawSettings(**common, shading=0.0)  # type: ignore[arg-type]
    snr = (40.0, 40.0)
    low_s, high_s, weight = simulate_pair(
        phantom_brain, shaded, np.random.default_rng(5), axis=2, snr=snr
    )
    low_p, high_p, _ = simulate_pair(
        phantom_brain, plain, np.random.default_rng(5), axis=2, snr=snr
    )
    brain = (weight == 1.0) & (high_p > 0.2)
    ratio = float(np.median(high_s[brain] / high_p[brain]))
    assert ratio == pytest.approx(1.0 if mode == "keep" else 0.5, rel=0.05)
    # the input is normalised either way, so the network sees white matter near 1 in both
    assert float(np.median(low_s[low_s > 0.5] / np.maximum(low_p[low_s > 0.5], 1e-3))) == (
        pytest.approx(1.0, rel=0.05)
    )


def test_unknown_shading_target_is_refused() -> None:
    with pytest.raises(ValueError, match="shading_target"):
        DrawSettings(factor=4, profile=load_profile("0.36T"), shading_target="flatten")
