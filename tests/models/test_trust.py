"""Data-consistency score and the optional back-projection step."""

from __future__ import annotations

import numpy as np

from models.baseline import cubic_bspline_upsample
from models.simulate import degrade_slices
from models.trust import back_project, consistency_psnr


def test_truth_is_consistent_and_wrong_predictions_are_not(phantom_brain) -> None:  # type: ignore[no-untyped-def]
    truth = phantom_brain.t1
    acquired = degrade_slices(truth, 4)
    good = consistency_psnr(truth, acquired, 4)
    assert good > 60.0
    shifted = np.roll(truth, 6, axis=0)
    assert consistency_psnr(shifted, acquired, 4) < good - 30.0
    assert consistency_psnr(cubic_bspline_upsample(acquired, 4), acquired, 4) < good


def test_back_projection_restores_consistency(phantom_brain) -> None:  # type: ignore[no-untyped-def]
    acquired = degrade_slices(phantom_brain.t1, 8)
    guess = cubic_bspline_upsample(acquired, 8)
    before = consistency_psnr(guess, acquired, 8)
    after = consistency_psnr(back_project(guess, acquired, 8, iterations=5), acquired, 8)
    assert after > before + 3.0


def test_intended_contrast_change_is_not_an_inconsistency(phantom_brain) -> None:  # type: ignore[no-untyped-def]
    """Restoring high-field contrast (grey matter darker) is what the network is for; only
    misplaced structure may lower the score."""
    truth = phantom_brain.t1
    acquired = degrade_slices(truth, 4)
    darker_grey = truth * (1.0 - 0.2 * phantom_brain.tissue.gm)
    contrast = consistency_psnr(darker_grey, acquired, 4)
    shifted = consistency_psnr(np.roll(darker_grey, 6, axis=0), acquired, 4)
    assert contrast > 25.0 and shifted < contrast - 10.0
