"""pipeline.bias: N4 removes a known shading and leaves an unshaded whole head (nearly) alone.

Two kinds of case:

- ``biased``: the small skull-stripped series of the other pipeline tests with a strong linear
  field (the 0.1 test, kept for the 0.1 settings, which remain selectable; the stiff defaults
  remove only part of this +-50 % field, see pipeline.bias);
- ``head``: a whole head WITH scalp (mni152nlin6asym), acquired as in ``bench/bench_n4.py`` but
  coarser to keep the tests to seconds: 5 mm slices every 6 mm, 1.5 mm pixels (160x160x30),
  GM/WM 0.84, Rician noise at WM/30 including the background. Figures inside its brain mask:
  ``neutrality`` = p95 |exp(log_field) - 1| on the unshaded head; ``removed fraction`` =
  1 - p95|e - mean e| / p95|t - mean t| with t the true log field and e = log_field - t (1 is a
  perfect estimate, 0 no better than not correcting). Definitions live in bench/bench_n4.py.

Bounds are the measured figures of the defaults with a margin (neutrality 0.054, removed 0.20
and 0.17 at +-30 %; the 0.1 settings: neutrality 0.157), not issue 13's targets (2 % and 70 %),
which these settings do not reach: the brain's own smooth white-matter variation (about 5 % p95
in this template) is already above 2 %, and N4 converges only part of the way on a stiff mesh
(see pipeline.bias and the bench).

The tissue-fit method (``method = "tissue-fit"``) is tested on ``head`` too (measured: neutrality
0.023, removed 0.15 (poly) and 0.11 (blobs) at +-30 %; one class 0.059, 0.33, 0.34) and on a
synthetic phantom where its model holds exactly (flat tissues, a degree-2 field), which
separates the fit itself from what the anatomy of a real head adds.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import SimpleITK as sitk

from bench.bench_n4 import (
    RELEASE_01,
    Case,
    make_case,
    neutrality,
    own_field,
    removed_fraction,
    shading,
)
from models.brains import Brain, load_brain
from models.simulate import TissueMaps
from pipeline.bias import control_points, correct_bias, remove_output_shading, shrink_factors
from pipeline.mask import head_mask
from pipeline.settings import N4Settings
from pipeline.volume import read_volume

OLD = RELEASE_01
"""The 0.1 settings (the bench's): they flatten the strong simple field of ``biased`` but add
a +-10-15 % anatomy-shaped field to unshaded whole heads."""


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
    # The 0.1 settings (still selectable: control_points, head mask). The stiff defaults remove
    # only a quarter of this +-50 % field on a skull-stripped brain (see pipeline.bias).
    result = correct_bias(image, OLD.model_copy(update={"iterations": [20, 20, 10]}))
    _check_flattened(result, clean, image, applied)
    # The field is centred on the head, so the source's intensity scale is kept.
    mask = sitk.GetArrayViewFromImage(result.mask) > 0
    ratio = np.median(sitk.GetArrayViewFromImage(result.corrected)[mask]) / np.median(
        sitk.GetArrayViewFromImage(clean)[mask]
    )
    assert 0.85 < ratio < 1.15


def test_shrink_is_in_plane_only_for_thick_slices(biased):
    _, image, _ = biased
    four = N4Settings(shrink_in_plane=4)
    assert shrink_factors(image, four) == [4, 4, 1]
    iso = sitk.Image([64, 64, 64], sitk.sitkFloat32)
    assert shrink_factors(iso, four) == [4, 4, 4]
    assert shrink_factors(image, four.model_copy(update={"shrink_through_plane": 2})) == [4, 4, 2]
    assert shrink_factors(image, N4Settings()) == [8, 8, 1]


def test_mesh_follows_the_physical_extent():
    """Spans = ceil(extent / distance) per axis, plus the spline order; control_points wins."""
    image = sitk.Image([64, 64, 30], sitk.sitkFloat32)
    image.SetSpacing((3.75, 3.75, 6.0))  # 240 x 240 x 180 mm
    assert control_points(image, N4Settings()) == [5, 5, 4]
    assert control_points(image, N4Settings(spline_distance_mm=100)) == [6, 6, 5]
    assert control_points(image, N4Settings(control_points=4)) == [4, 4, 4]


@pytest.fixture(scope="module")
def head():
    brain = load_brain("mni152nlin6asym")

    def case(kind: str | None, amplitude: float = 0.0):
        field = None if kind is None else shading(brain, kind, amplitude, seed=3)
        return make_case(brain, field, pixel_mm=1.5, matrix=160)

    return case


def test_unshaded_whole_head_is_left_nearly_alone(head):
    case = head(None)
    result = correct_bias(case.image)
    found = neutrality(result.log_field, case)
    assert found <= 0.08, found
    assert found < 0.5 * neutrality(correct_bias(case.image, OLD).log_field, case)
    # The pipeline normalises over the HEAD mask, so that is what comes back; the fit used less.
    head_voxels = sitk.GetArrayViewFromImage(result.mask).sum()
    assert sitk.GetArrayViewFromImage(result.fit_mask).sum() < 0.5 * head_voxels
    assert head_voxels > case.brain.sum()


@pytest.mark.parametrize("kind", ["poly", "blobs"])
def test_known_smooth_shading_is_partly_removed(head, kind):
    case = head(kind, 0.3)
    result = correct_bias(case.image)
    removed = removed_fraction(result.log_field, case)
    assert removed >= 0.1, removed  # measured 0.20 (poly), 0.17 (blobs); 0: no correction
    assert result.corrected.GetSize() == case.image.GetSize()  # full resolution


@pytest.mark.skipif(importlib.util.find_spec("ants") is None, reason="ANTsPy not installed")
def test_antspy_backend_flattens_too(biased):
    clean, image, applied = biased
    settings = OLD.model_copy(update={"backend": "antspy", "iterations": [20, 20, 10]})
    result = correct_bias(image, settings)
    _check_flattened(result, clean, image, applied)


# --- tissue-fit (pipeline.bias.tissue_fit) -----------------------------------------------------

TISSUE_FIT = N4Settings(method="tissue-fit")
"""The tissue-fit defaults: degree-2 Legendre log field, grey and white matter with a level each,
fitted once to the 50-99.5 % window of the inner mask."""


def _phantom(shaded: bool, seed: int = 0) -> tuple[Case, np.ndarray]:
    """A synthetic head where the tissue-fit model holds: flat tissues, an exactly quadratic field.

    160x160x30 at 1.5 x 1.5 x 6 mm: bright scalp fat, dark skull, CSF, then a brain of white
    matter (1.0) with grey matter (0.84, the 0.36 T ratio) in a cortical rim and in blobs
    throughout, Rician noise at WM/30. The shading spans about +-30 % in the brain.
    """
    z, y, x = np.meshgrid(
        (np.arange(30) - 14.5) * 6.0,
        (np.arange(160) - 79.5) * 1.5,
        (np.arange(160) - 79.5) * 1.5,
        indexing="ij",
    )
    head = np.sqrt((x / 80) ** 2 + (y / 100) ** 2 + (z / 85) ** 2)
    inner = np.sqrt((x / 62) ** 2 + (y / 82) ** 2 + (z / 68) ** 2)
    brain = inner < 0.95
    grey = brain & ((np.sin(x / 6) * np.sin(y / 7) * np.cos(z / 13) > 0.25) | (inner > 0.85))
    tissue = np.zeros(x.shape)
    tissue[head < 1] = 1.3
    tissue[head < 0.92] = 0.1
    tissue[inner < 1] = 0.3
    tissue[brain] = 1.0
    tissue[grey] = 0.84
    log_field = np.zeros(x.shape)
    if shaded:
        u, v, w = x / 80, y / 100, z / 85
        log_field = 0.3 * u + 0.2 * v**2 - 0.2 * u * w + 0.15 * w
    rng = np.random.default_rng(seed)
    signal = tissue * np.exp(log_field)
    noisy = np.abs(signal + rng.normal(0, 1 / 30, x.shape) + 1j * rng.normal(0, 1 / 30, x.shape))
    image = sitk.GetImageFromArray(noisy.astype(np.float32))
    image.SetSpacing((1.5, 1.5, 6.0))
    return Case(image, brain, np.exp(log_field).astype(np.float32)), log_field


def test_tissue_fit_finds_a_field_where_its_model_holds():
    """On the phantom the field is degree 2 and the tissues flat, so only the fit is tested.

    The defaults stay neutral on the unshaded phantom (measured 0.003-0.006 over 4 noise seeds)
    but find only a third of the shading (0.34-0.39): the window and the grey/white split are
    taken on the shaded image, so the bright side's grey matter counts as white and the field
    comes out too flat. Re-taking the window on the corrected image (3 rounds, one class)
    removes most of it (0.81-0.87, neutral 0.018-0.023): the machinery is right; on real heads
    the re-selection also follows anatomy, which is why the defaults do not use it.
    """
    flat, _ = _phantom(False)
    shaded, applied = _phantom(True)
    result = correct_bias(flat.image, TISSUE_FIT)
    assert neutrality(result.log_field, flat) <= 0.015
    assert removed_fraction(correct_bias(shaded.image, TISSUE_FIT).log_field, shaded) >= 0.25
    rounds = TISSUE_FIT.model_copy(update={"tissue_classes": 1, "tissue_rounds": 3})
    result = correct_bias(shaded.image, rounds)
    assert removed_fraction(result.log_field, shaded) >= 0.7
    found = sitk.GetArrayViewFromImage(result.log_field)[shaded.brain]
    assert np.corrcoef(found, applied[shaded.brain])[0, 1] > 0.95
    assert result.corrected.GetSize() == shaded.image.GetSize()  # full resolution
    assert neutrality(correct_bias(flat.image, rounds).log_field, flat) <= 0.04


def test_tissue_fit_leaves_an_unshaded_whole_head_nearly_alone(head):
    """Measured 0.023 here (N4 defaults 0.054): a degree-2 field with a level per tissue cannot
    follow the partial-volume mix that N4 and the one-class fit read as field."""
    case = head(None)
    result = correct_bias(case.image, TISSUE_FIT)
    found = neutrality(result.log_field, case)
    assert found <= 0.035, found
    assert found < 0.7 * neutrality(correct_bias(case.image).log_field, case)
    # The same contract as N4: the head mask comes back, the fitted window is less.
    head_voxels = sitk.GetArrayViewFromImage(result.mask).sum()
    assert sitk.GetArrayViewFromImage(result.fit_mask).sum() < 0.5 * head_voxels
    assert head_voxels > case.brain.sum()


@pytest.mark.parametrize("kind", ["poly", "blobs"])
def test_tissue_fit_removes_part_of_a_known_shading(head, kind):
    """Only part: measured 0.15 (poly) and 0.11 (blobs) at +-30 % for the defaults, 0.33 and
    0.34 for the one-class (white matter only) fit, whose unshaded field is 2.5x larger."""
    case = head(kind, 0.3)
    removed = removed_fraction(correct_bias(case.image, TISSUE_FIT).log_field, case)
    assert removed >= 0.05, removed
    one_class = TISSUE_FIT.model_copy(update={"tissue_classes": 1})
    removed = removed_fraction(correct_bias(case.image, one_class).log_field, case)
    assert removed >= 0.2, removed


def test_tissue_fit_settings_keep_the_digest_of_existing_configurations():
    """The fields added with tissue-fit are left out of the dump while at their defaults."""
    dumped = N4Settings().model_dump()
    assert "method" not in dumped and not any(k.startswith("tissue_") for k in dumped)
    assert TISSUE_FIT.model_dump()["method"] == "tissue-fit"
    assert N4Settings.model_validate(TISSUE_FIT.model_dump()) == TISSUE_FIT


def _ellipsoid_brain(centre_drop: float) -> Brain:
    """A 2 mm ellipsoid brain of flat white matter in a grey rim, with a radial field
    ``exp(-centre_drop * r^2)`` (r = 1 at the white matter's edge) applied to its T1."""
    z, y, x = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in (60, 80, 70)), indexing="ij")
    r = np.sqrt((x / 30) ** 2 + (y / 36) ** 2 + (z / 26) ** 2)
    white = (r < 0.85).astype(np.float32)
    grey = ((r >= 0.85) & (r < 1.0)).astype(np.float32)
    t1 = (1000.0 * white + 800.0 * grey) * np.exp(-centre_drop * (r / 0.85) ** 2)
    return Brain(
        name="ellipsoid",
        t1=t1.astype(np.float32),
        brain_mask=r < 1.0,
        tissue=TissueMaps(grey, white, np.zeros_like(grey)),
        voxel_mm=2.0,
    )


def test_own_field_is_flat_on_flat_white_matter():
    whole, white, squares = own_field(_ellipsoid_brain(0.0), 2)
    assert whole < 0.01 and white < 0.01, (whole, white)
    assert np.all(np.abs(squares) < 0.01), squares


def test_own_field_reads_a_centre_bright_field_back():
    """A 15 % drop from centre to the white matter's edge: each axis' curvature comes back
    negative, close to the log drop (-0.16) once the one-voxel erosion is allowed for."""
    whole, white, squares = own_field(_ellipsoid_brain(0.16), 2)
    assert np.all(squares < -0.1) and np.all(squares > -0.2), squares
    assert white > 0.05 and whole > white, (whole, white)


def test_output_shading_removal_is_neutral_and_takes_part_of_a_known_field():
    """``remove_output_shading`` at the released degree (1) on the phantom: measured neutral
    0.001-0.004 and removed 0.22-0.30 over 3 noise seeds. A plane can take only the linear part
    of the phantom's degree-2 field, and the window and grey/white split are taken on the
    shaded image (as for the tissue fit above), so only part of it."""
    flat, _ = _phantom(False)
    shaded, _ = _phantom(True)
    assert neutrality(remove_output_shading(flat.image, 1).log_field, flat) <= 0.01
    result = remove_output_shading(shaded.image, 1)
    assert removed_fraction(result.log_field, shaded) >= 0.15
    assert result.corrected.GetSize() == shaded.image.GetSize()
