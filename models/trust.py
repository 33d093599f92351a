"""Data consistency: does the prediction, re-acquired, give back the slices that were acquired?

A super-resolved volume can be plausible and wrong. Degrading it with the acquisition's own slice
profile and sampling (the simulator's operator) and comparing with the acquired slices catches
gross failures (wrong orientation, wrong factor, out-of-distribution input) without any ground
truth. The score is a PSNR inside the head mask of the acquired volume, peak = its robust scale
(the 99th percentile of the head, see ``models.normalize``), after one global cubic intensity
map of the re-degraded prediction onto the acquired slices (``models.metrics.polynomial_match``):
a network that restores high-field contrast changes grey matter on purpose, which the map undoes
(release 0.2.0 would otherwise score below 20 dB on good cases), while misplaced structure
cannot be mapped away. Noise alone bounds it: a perfect denoised prediction of an SNR-64
acquisition scores about 20*log10(64 / 0.8) ~ 38 dB; releases 0.1.0 and 0.2.0 score 34-35 dB on
the demo's synthetic 0.36 T series; scores well below that range mean the prediction
contradicts the data.

``back_project`` is plain iterative back-projection of the residual. On its own it lowers PSNR
against the truth (it puts the acquired low-field contrast and noise back), so releases keep it
off. ``contrast_matched_back_projection`` is the correction releases may turn on (per weights
file, ``consistency_weight``): the acquired slices are first mapped to the prediction's contrast,
so that only structure, not contrast, is pulled back towards the data, and a weight below 1 keeps
part of the network's denoising. See models/EVALUATION.md for what it does on held-out heads.
"""

from __future__ import annotations

import numpy as np

from models.metrics import polynomial_match
from models.normalize import head_mask, robust_scale
from models.simulate import slice_profile_matrix


def consistency_psnr(
    prediction: np.ndarray,
    acquired: np.ndarray,
    factor: int,
    thickness_ratio: float = 1.0,
    mask: np.ndarray | None = None,
) -> float:
    """PSNR (dB) of the re-degraded prediction against the acquired slices, in the head mask."""
    if prediction.shape[0] != acquired.shape[0] * factor:
        raise ValueError(
            f"prediction has {prediction.shape[0]} slices, expected {acquired.shape[0]} x {factor}"
        )
    a = slice_profile_matrix(prediction.shape[0], factor, thickness_ratio)
    degraded = np.tensordot(a, prediction.astype(np.float32, copy=False), axes=(1, 0))
    m = head_mask(acquired) if mask is None else mask
    if not m.any():
        m = np.ones_like(acquired, dtype=bool)
    # A network that restores high-field contrast changes grey matter on purpose; one global
    # cubic intensity map undoes that (and any scale) but no misplaced structure, so the score
    # stays a test of where things are, not of which contrast they have.
    degraded = polynomial_match(degraded, acquired, m)
    mse = float(np.mean((degraded[m] - acquired[m]) ** 2))
    peak = robust_scale(acquired)
    return float(10.0 * np.log10(peak * peak / max(mse, 1e-20)))


def contrast_matched_back_projection(
    prediction: np.ndarray,
    acquired: np.ndarray,
    factor: int,
    thickness_ratio: float = 1.0,
    weight: float = 0.5,
    iterations: int = 3,
    gain_sigma_mm: float = 0.0,
    spacing_mm: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Pull the prediction's structure towards the acquired slices, keeping its contrast.

    Why: the network transfers contrast on purpose (low-field grey matter is brighter) and
    denoises, but it also blurs detail the acquired slices do hold (release 0.2.0 lost 0.2-0.4 dB
    against cubic B-spline on resolution alone at k = 4). Back-projecting the raw slices would
    undo the contrast as well; so the acquired slices are mapped first onto the re-acquired
    prediction with one global cubic intensity map fitted over the head (what
    ``consistency_psnr`` does for scoring), and only what that map cannot explain, structure and
    noise, is back-projected. ``weight`` in [0, 1] blends the result with the prediction: 1 is
    full consistency (all the acquired noise too), 0 the network alone.

    ``gain_sigma_mm`` > 0 (release 0.5 on) also keeps the prediction's smooth gain: the mapped
    slices are multiplied by the ratio of prediction to acquisition after a Gaussian of that
    width (in mm, on the acquired grid ``spacing_mm``) inside the head. A network trained to
    return the unshaded anatomy has removed the coil's shading on purpose; without this the
    back-projection would put ``weight`` of the shading back, since one global intensity map
    cannot describe a field.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"consistency weight must be in [0, 1], not {weight}")
    if weight == 0.0:
        return prediction.astype(np.float32, copy=True)
    a = slice_profile_matrix(prediction.shape[0], factor, thickness_ratio)
    reacquired = np.tensordot(a, prediction.astype(np.float32, copy=False), axes=(1, 0))
    head = head_mask(acquired)
    if not head.any():
        head = np.ones_like(acquired, dtype=bool)
    # The same global map as the score, in the other direction: acquired -> prediction contrast.
    mapped = polynomial_match(acquired, reacquired, head)
    if gain_sigma_mm > 0.0:
        mapped *= smooth_gain(reacquired, mapped, head, gain_sigma_mm, spacing_mm or (1.0,) * 3)
    mapped[~head] = acquired[~head]
    corrected = back_project(prediction, mapped, factor, thickness_ratio, iterations)
    return prediction + weight * (corrected - prediction)


def smooth_gain(
    numerator: np.ndarray,
    denominator: np.ndarray,
    mask: np.ndarray,
    sigma_mm: float,
    spacing_mm: tuple[float, float, float],
) -> np.ndarray:
    """The smooth multiplicative field taking ``denominator`` to ``numerator`` inside ``mask``:
    the ratio of their Gaussian-smoothed values (normalised convolution over the mask, so the
    head's edge does not pull it down), 1 outside the mask, clipped to [0.5, 2]."""
    from scipy import ndimage

    sigma = [sigma_mm / max(float(s), 1e-3) for s in spacing_mm]
    m = mask.astype(np.float32)
    top = ndimage.gaussian_filter(numerator.astype(np.float32) * m, sigma, mode="nearest")
    bottom = ndimage.gaussian_filter(denominator.astype(np.float32) * m, sigma, mode="nearest")
    gain = np.ones_like(top)
    ok = mask & (bottom > 1e-6) & (top > 1e-6)
    gain[ok] = np.clip(top[ok] / bottom[ok], 0.5, 2.0)
    return gain


def back_project(
    prediction: np.ndarray,
    acquired: np.ndarray,
    factor: int,
    thickness_ratio: float = 1.0,
    iterations: int = 3,
) -> np.ndarray:
    """Iterative back-projection: x += A^T (y - A x) / (A^T 1), ``iterations`` times."""
    a = slice_profile_matrix(prediction.shape[0], factor, thickness_ratio)
    norm = np.maximum(a.sum(axis=0), 1e-6)[:, None, None]
    x = prediction.astype(np.float32, copy=True)
    for _ in range(iterations):
        residual = acquired - np.tensordot(a, x, axes=(1, 0))
        x += np.tensordot(a.T, residual, axes=(1, 0)) / norm
    return x
