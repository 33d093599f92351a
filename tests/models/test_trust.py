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
