"""The quality benchmark's simulator and metrics (bench/bench_quality.py), on answers known in
advance: synthetic arrays with a known ripple, slab-edge band and affine map, and one tiny
acquisition of a real brain at 3 mm pixels where the pipeline's own B-spline engine without N4
must score exactly like cubic interpolation of the raw input. Not timed."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from bench.bench_quality import (
    Case,
    Geometry,
    Method,
    error_maps,
    make_truth,
    report,
    run_case,
    score,
)
from bench.quality_limits import smooth_error_share
from models.brains import load_brain
from models.metrics import (
    affine_match,
    ripple_amplitude,
    slab_edge_error,
    slab_edge_psnr_drop,
    slice_ratio_profile,
)
from pipeline.sample import (
    AXIAL,
    Head,
    Shading,
    build_series,
    head_from_brain,
    plan_acquisition,
    simulate_acquisition,
)
from pipeline.volume import read_volume


def _anatomy(shape: tuple[int, int, int] = (64, 40, 40), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(np.float32)


def test_affine_match_recovers_gain_and_offset():
    truth = _anatomy()
    mask = np.ones(truth.shape, bool)
    matched, a, b = affine_match(3.0 * truth - 2.0, truth, mask)
    assert a == pytest.approx(1 / 3, rel=1e-6)
    assert b == pytest.approx(2 / 3, rel=1e-6)
    np.testing.assert_allclose(matched, truth, atol=1e-5)


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("phase", [0.0, 1.1])
def test_ripple_amplitude_finds_a_known_ripple(factor, phase):
    truth = _anatomy()
    mask = np.ones(truth.shape, bool)
    i = np.arange(truth.shape[0])
    # A 1 % ripple of period k on top of a slow 5 % drift (which is not ripple).
    level = (1 + 0.05 * i / i[-1]) * (1 + 0.01 * np.cos(2 * np.pi * i / factor + phase))
    pred = truth * level[:, None, None].astype(np.float32)
    assert ripple_amplitude(pred, truth, mask, factor) == pytest.approx(1.0, abs=0.05)
    drift_only = truth * (1 + 0.05 * i / i[-1])[:, None, None].astype(np.float32)
    assert ripple_amplitude(drift_only, truth, mask, factor) < 0.02
    assert ripple_amplitude(truth, truth, mask, factor) == pytest.approx(0.0, abs=1e-9)


def test_ripple_needs_enough_slices():
    truth = _anatomy((12, 20, 20))
    assert np.isnan(ripple_amplitude(truth, truth, np.ones(truth.shape, bool), 8))


@pytest.mark.parametrize("factor", [4, 8])
def test_slab_edge_error_measures_a_band_at_either_end(factor):
    truth = np.full((64, 30, 30), 2.0, np.float32)
    mask = np.ones(truth.shape, bool)
    half = factor // 2
    bright = truth.copy()
    bright[:half] += 0.2  # +10 % of the interior's level in the first half slice
    assert slab_edge_error(bright, truth, mask, factor) == pytest.approx(10.0, abs=1e-4)
    dark = truth.copy()
    dark[-half:] -= 0.3
    assert slab_edge_error(dark, truth, mask, factor) == pytest.approx(-15.0, abs=1e-4)
    # Only the extrapolated half slice counts as the edge: a band deeper in is not.
    inner = truth.copy()
    inner[half : half + 1] += 0.2
    assert slab_edge_error(inner, truth, mask, factor) == pytest.approx(0.0, abs=1e-6)
    noisy = truth + np.random.default_rng(1).normal(0, 0.05, truth.shape).astype(np.float32)
    banded = noisy.copy()
    banded[:half] += 0.2
    assert slab_edge_psnr_drop(banded, truth, mask, factor) > 3.0
    assert abs(slab_edge_psnr_drop(noisy, truth, mask, factor)) < 0.5


def test_slice_ratio_profile_skips_slices_with_little_mask():
    truth = _anatomy((10, 20, 20))
    mask = np.zeros(truth.shape, bool)
    mask[2:8] = True
    profile = slice_ratio_profile(1.1 * truth, truth, mask, min_voxels=100)
    assert np.isnan(profile[:2]).all() and np.isnan(profile[8:]).all()
    np.testing.assert_allclose(profile[2:8], 1.1, rtol=1e-5)


@pytest.fixture(scope="module")
def head() -> Head:
    return head_from_brain(load_brain("mni152-2009a"))


def test_head_is_in_lps_with_the_brain_centred(head):
    # x index grows towards the patient's right, i.e. -L in LPS; y towards anterior (-P).
    direction = np.asarray(head.t1.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(np.diag(direction), [-1, -1, 1])
    centre = head.points(head.brain_array(), step=5)
    middle = (centre.min(axis=0) + centre.max(axis=0)) / 2
    np.testing.assert_allclose(middle, 0.0, atol=3.0)
    assert not head.scalp  # nilearn's template is skull-stripped


def test_shading_spans_the_asked_amplitude_over_the_brain(head):
    fit = Shading(0.2, seed=5).fit(head)
    log_field = fit.log_field(head.points(head.brain_array(), step=3))
    assert float(np.abs(log_field).max()) == pytest.approx(np.log(1.2), rel=0.02)
    assert abs(float(log_field.mean())) < 0.01


def test_simulated_acquisition_has_the_asked_snr_and_geometry(head):
    acq = plan_acquisition(head, AXIAL, 3.0, 12.0, 9.0, snr_wm_gm=(40.0, 30.0), seed=2)
    sim = simulate_acquisition(head, acq)
    assert sim.pixels.shape == (acq.slices, acq.rows, acq.columns)
    assert sim.pixels.dtype == np.uint16
    assert sim.snr_measured[0] == pytest.approx(40.0, rel=0.1)
    assert sim.snr_measured[1] == pytest.approx(30.0, rel=0.15)
    # Rician background: the mean of a Rayleigh variable is sigma sqrt(pi / 2).
    corner = sim.pixels[:, :3, :3].astype(float)
    assert float(corner.mean()) == pytest.approx(sim.sigma * np.sqrt(np.pi / 2), rel=0.25)
    datasets = build_series(acq, pixels=sim.pixels)
    image = read_volume(datasets).image
    assert image.GetSpacing()[2] == pytest.approx(12.0, abs=1e-3)


def test_cubic_scores_finite_on_a_noise_free_unshaded_acquisition(head):
    acq = plan_acquisition(head, AXIAL, 3.0, 12.0, 12.0, snr_wm_gm=(1e6, 8e5), seed=3)
    sim = simulate_acquisition(head, acq)
    raw = read_volume(build_series(acq, pixels=sim.pixels)).image
    # The derived grid of k = 4: same plane, 4 thin slices per acquired one, centred on it.
    grid = sitk.Image(raw.GetSize()[:2] + (raw.GetSize()[2] * 4,), sitk.sitkFloat32)
    grid.SetSpacing(raw.GetSpacing()[:2] + (3.0,))
    direction = np.asarray(raw.GetDirection()).reshape(3, 3)
    grid.SetOrigin(tuple(np.asarray(raw.GetOrigin()) - direction[:, 2] * 3.0 * 1.5))
    grid.SetDirection(raw.GetDirection())
    truth = make_truth(head, acq, sim.gm_scale, grid, ["whole"])
    cubic = sitk.GetArrayFromImage(
        sitk.Resample(raw, grid, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    )[truth.crop]
    scores, _ = score(cubic, truth, "whole", 4)
    for name, value in vars(scores).items():
        assert np.isfinite(value), name
    assert 15.0 < scores.psnr < 60.0
    assert 0.5 < scores.ssim <= 1.0
    # Without noise, the resolution-only truth is what was acquired, blur aside.
    assert scores.res_psnr > scores.psnr


def test_the_two_hemisphere_regions_split_the_brain_region(head):
    """``--region halves`` compares the seen half of a head with its held-out half: the two
    must cover the brain between them, without overlap, and each hold brain."""
    acq = plan_acquisition(head, AXIAL, 3.0, 12.0, 12.0, snr_wm_gm=(40.0, 30.0), seed=4)
    sim = simulate_acquisition(head, acq)
    raw = read_volume(build_series(acq, pixels=sim.pixels)).image
    truth = make_truth(head, acq, sim.gm_scale, raw, ["whole", "left", "right"])
    whole, left, right = (truth.regions[r] for r in ("whole", "left", "right"))
    assert not (left & right).any()
    assert np.array_equal(left | right, whole)
    assert 0.3 < left.sum() / whole.sum() < 0.7


def test_bench_case_bspline_without_n4_equals_cubic(head, tmp_path):
    geometry = Geometry("tiny", "axial", AXIAL, 3.0, 12.0, 9.0, 4)
    rows, figure = run_case(
        Case("mni152-2009a", geometry, "mean", 0.2),
        head,
        [Method("bspline", n4=False)],
        ["whole"],
        seed=0,
        want_figure=True,
    )
    (row,) = rows
    assert row.factor == 4
    assert row.seen == "seen in training"
    # The pipeline's B-spline engine on the raw volume is cubic interpolation on the same grid:
    # any geometry slip (origin, slice order, half-slice shift) would show here.
    assert abs(row.gain("psnr")) < 0.05
    assert abs(row.gain("ssim")) < 1e-3
    assert row.readback_max_abs_diff <= 1.0
    assert figure is not None
    error_maps(figure, tmp_path / "errors.png")
    assert (tmp_path / "errors.png").stat().st_size > 1000


def test_smooth_error_share_separates_a_slope_from_noise():
    truth = _anatomy((40, 48, 48))
    mask = np.zeros(truth.shape, bool)
    mask[4:-4, 6:-6, 6:-6] = True
    z = np.linspace(-1, 1, truth.shape[0])[:, None, None]
    sloped = truth + (0.2 * z).astype(np.float32)
    noisy = truth + np.random.default_rng(1).normal(0, 0.2, truth.shape).astype(np.float32)
    assert smooth_error_share(sloped, truth, mask, (1.0, 1.0, 1.0)) > 0.8
    assert smooth_error_share(noisy, truth, mask, (1.0, 1.0, 1.0)) < 0.05


def test_limits_place_cubic_below_clean_interpolation(head):
    """``--limits`` on cubic itself (the B-spline engine without N4): the noise-free, unshaded
    interpolation must score above it, cubic cannot have restored detail beyond it, and no
    global intensity map can make an output worse than the affine match did."""
    geometry = Geometry("tiny", "axial", AXIAL, 3.0, 12.0, 9.0, 4)
    shares = {}
    all_rows = []
    for shading in (0.0, 0.3):
        rows, _ = run_case(
            Case("mni152-2009a", geometry, "tail", shading),
            head,
            [Method("bspline", n4=False)],
            ["whole"],
            seed=0,
            want_figure=False,
            want_limits=True,
        )
        (row,) = rows
        all_rows.append(row)
        lim = row.limits
        assert lim["clean_res_psnr"] > row.cubic.res_psnr + 0.05
        assert row.scores.res_psnr < lim["clean_res_psnr"]
        assert lim["clean_psnr"] > row.scores.psnr
        assert lim["global_map_db"] >= -1e-6
        shares[shading] = lim["smooth_error_share"]
    # A +-30 % shading left in the image is smooth error.
    assert shares[0.3] > shares[0.0] + 0.1
    # The report puts the decomposition between the summary and the timing, however many cases.
    body, _ = report(all_rows, ["case 1", "case 2", "case 3"], [], done=True)
    headings = [line for line in body if line.startswith("## ")]
    assert headings[-2:] == [
        "## Where the error lies (--limits; definitions: bench/quality_limits.py)",
        "## Timing",
    ]
