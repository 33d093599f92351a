"""Image-quality metrics against the high-field truth (definitions: models/EVALUATION.md).

All take volumes on the same grid (slice axis 0) and on the same intensity scale.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def psnr_in_mask(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, peak: float | None = None
) -> float:
    """10 log10(peak^2 / MSE) over mask voxels; peak defaults to the truth's maximum in mask."""
    p = float(truth[mask].max()) if peak is None else peak
    mse = float(np.mean((pred[mask].astype(np.float64) - truth[mask]) ** 2))
    return float(10 * np.log10(p * p / max(mse, 1e-20)))


def ssim_in_mask(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, peak: float | None = None
) -> float:
    """Mean of the 3D SSIM map (Gaussian window sigma 1.5, K1=0.01, K2=0.03) over mask voxels."""
    from skimage.metrics import structural_similarity

    p = float(truth[mask].max()) if peak is None else peak
    _, smap = structural_similarity(
        truth.astype(np.float64),
        pred.astype(np.float64),
        data_range=p,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    return float(smap[mask].mean())


def reference_psnr_ssim(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Whole-volume PSNR and SSIM the way common IQT tutorial code computes them: skimage
    defaults, data_range = truth max - min, background included, 7x7x7 uniform SSIM window.
    Background inflates both; reported only for comparison with published numbers."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = float(truth.max() - truth.min())
    t = truth.astype(np.float64)
    p = pred.astype(np.float64)
    return (
        float(peak_signal_noise_ratio(t, p, data_range=rng)),
        float(structural_similarity(t, p, data_range=rng)),
    )


def contrast(image: np.ndarray, wm: np.ndarray, gm: np.ndarray) -> float:
    """WM/GM contrast (mean_WM - mean_GM) / (mean_WM + mean_GM) over hard tissue masks."""
    w = float(image[wm].mean())
    g = float(image[gm].mean())
    return (w - g) / (w + g)


def contrast_error(pred: np.ndarray, truth: np.ndarray, wm: np.ndarray, gm: np.ndarray) -> float:
    """Relative error of the WM/GM contrast against the truth's, in percent."""
    c_true = contrast(truth, wm, gm)
    return float(100.0 * abs(contrast(pred, wm, gm) - c_true) / abs(c_true))


def edges_through_plane(volume: np.ndarray, peak: float, sigma: float = 1.0) -> np.ndarray:
    """2D Canny on every (slice, col) plane (the reformat that shows through-plane detail),
    hysteresis thresholds 0.1 and 0.2 of ``peak`` on the gradient of the smoothed image."""
    from skimage.feature import canny

    edges = np.zeros(volume.shape, bool)
    v = volume.astype(np.float64) / peak
    for r in range(volume.shape[1]):
        edges[:, r, :] = canny(v[:, r, :], sigma=sigma, low_threshold=0.1, high_threshold=0.2)
    return edges


def edge_f1(
    pred: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    peak: float | None = None,
    tolerance: int = 1,
) -> float:
    """F1 of Canny edges: an edge voxel counts as matched if the other set has an edge within
    ``tolerance`` voxels (chessboard distance, in the plane the edges were found)."""
    p = float(truth[mask].max()) if peak is None else peak
    ep = edges_through_plane(pred, p) & mask
    et = edges_through_plane(truth, p) & mask
    if not et.any() and not ep.any():
        return 1.0
    st = np.zeros((3, 3, 3), bool)
    st[:, 1, :] = True  # dilate within the (slice, col) plane only
    near_t = ndimage.binary_dilation(et, st, iterations=tolerance)
    near_p = ndimage.binary_dilation(ep, st, iterations=tolerance)
    precision = float((ep & near_t).sum()) / max(int(ep.sum()), 1)
    recall = float((et & near_p).sum()) / max(int(et.sum()), 1)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# --- Whole-pipeline quality benchmark (bench/bench_quality.py, models/EVALUATION.md) ---


def affine_match(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """``a * pred + b`` with (a, b) the least-squares fit to ``truth`` over ``mask``.

    Intensities of an enhanced series are in the scanner's arbitrary units; one global affine
    map puts any method on the truth's scale without favouring any of them (a method cannot gain
    from it by anything but being right up to a global gain and offset). Returns the matched
    volume (float32, everywhere, not only in the mask) and (a, b).
    """
    p = pred[mask].astype(np.float64)
    t = truth[mask].astype(np.float64)
    if p.size < 2 or float(p.var()) == 0.0:
        b = float(t.mean()) if t.size else 0.0
        return np.full(pred.shape, b, np.float32), 0.0, b
    a = float(np.mean((p - p.mean()) * (t - t.mean())) / p.var())
    b = float(t.mean() - a * p.mean())
    return (a * pred.astype(np.float32) + np.float32(b)).astype(np.float32), a, b


def polynomial_match(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, degree: int = 3
) -> np.ndarray:
    """``P(pred)`` with P the least-squares polynomial of ``degree`` fitted to ``truth`` over
    ``mask``: one global intensity map, flexible enough to undo any grey/white/CSF contrast
    change (which is a smooth monotone map of intensity), never able to add detail.

    Why: the resolution-only score compares with the truth at the low-field contrast; after an
    affine match, a method that transfers contrast on purpose would lose there for its contrast,
    not for its resolution. After this map neither the method nor cubic gains or loses anything
    by contrast, and what remains is resolution and noise.
    """
    p = pred[mask].astype(np.float64)
    t = truth[mask].astype(np.float64)
    if p.size <= degree or float(p.std()) == 0.0:
        return affine_match(pred, truth, mask)[0]
    centre, spread = float(p.mean()), float(p.std())
    basis = np.vander((p - centre) / spread, degree + 1)
    coef, *_ = np.linalg.lstsq(basis, t, rcond=None)
    full = (pred.astype(np.float64) - centre) / spread
    return np.polyval(coef, full).astype(np.float32)


def slice_ratio_profile(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, min_voxels: int = 200
) -> np.ndarray:
    """Per slice (axis 0): sum of ``pred`` / sum of ``truth`` over the mask voxels of that slice.

    NaN where a slice holds fewer than ``min_voxels`` mask voxels (a few voxels of brain at the
    top of the head would make the ratio noise). Dividing by the truth removes the anatomy's own
    slice-to-slice variation, so what remains is what the method did to each slice's level.
    """
    out = np.full(pred.shape[0], np.nan)
    for i in range(pred.shape[0]):
        m = mask[i]
        if int(m.sum()) >= min_voxels:
            denominator = float(truth[i][m].astype(np.float64).sum())
            if denominator != 0.0:
                out[i] = float(pred[i][m].astype(np.float64).sum()) / denominator
    return out


def _edge_and_interior(n: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin-slice indices: the first and the last ``ceil(k / 2)`` (the half slice the output
    extrapolates beyond each outer acquired slice), and the interior (``k`` in from each end)."""
    half = max(1, int(np.ceil(factor / 2)))
    first = np.arange(0, min(half, n))
    last = np.arange(max(n - half, 0), n)
    interior = np.arange(factor, max(n - factor, factor))
    return first, last, interior


def slab_edge_error(
    pred: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    factor: int,
    min_voxels: int = 200,
) -> float:
    """Slab-edge level error in percent of the interior's mean: the worse end, signed.

    For each end E (the first or the last ``ceil(k/2)`` thin slices, i.e. those beyond the outer
    acquired slice's centre) the mean of ``pred - truth`` over its mask voxels, minus the same
    mean over the interior slices I (``k`` or more thin slices from either end), divided by the
    truth's mean over I: ``100 (mean_E(pred - truth) - mean_I(pred - truth)) / mean_I(truth)``.
    Returns the end with the larger magnitude: a bright band at the slab edge is positive, a
    dark one negative. A bias is divided by the interior's level rather than each end's own
    (a ratio per end), so that a dark end (CSF at the vertex) does not inflate the figure. NaN
    if neither end has ``min_voxels`` mask voxels.
    """
    first, last, interior = _edge_and_interior(pred.shape[0], factor)

    def bias(index: np.ndarray) -> float:
        m = mask[index]
        if int(m.sum()) < min_voxels:
            return float("nan")
        return float(np.mean(pred[index][m].astype(np.float64) - truth[index][m]))

    m_interior = mask[interior]
    if int(m_interior.sum()) < min_voxels:
        return float("nan")
    level = float(truth[interior][m_interior].astype(np.float64).mean())
    reference = bias(interior)
    values = [100.0 * (bias(e) - reference) / level for e in (first, last)]
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return float("nan")
    return float(max(values, key=abs))


def slab_edge_psnr_drop(
    pred: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    factor: int,
    peak: float | None = None,
    min_voxels: int = 200,
) -> float:
    """PSNR of the interior thin slices minus PSNR of the edge slices (both ends pooled), dB.

    Same slice sets as ``slab_edge_error``; the peak is the truth's maximum over the whole mask.
    Positive when the slab edges are worse than the interior, whatever the artefact's shape (a
    bright band next to a dark line cancels in the level error but not here).
    """
    first, last, interior = _edge_and_interior(pred.shape[0], factor)
    edges = np.concatenate([first, last])
    p = float(truth[mask].max()) if peak is None else peak
    if int(mask[edges].sum()) < min_voxels or int(mask[interior].sum()) < min_voxels:
        return float("nan")
    return psnr_in_mask(pred[interior], truth[interior], mask[interior], p) - psnr_in_mask(
        pred[edges], truth[edges], mask[edges], p
    )


def ripple_amplitude(
    pred: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    factor: int,
    min_voxels: int = 200,
) -> float:
    """Amplitude of the intensity ripple with a period of ``factor`` thin slices, in percent.

    ``r`` = ``slice_ratio_profile`` over the longest run of slices with ``min_voxels`` mask
    voxels, leaving out the ``factor`` thin slices at each end of the grid (slab edges have their
    own metric). ``r`` is detrended by subtracting its moving average over ``factor`` slices
    (which removes slow trends but keeps a period-``factor`` component whole), ``factor // 2``
    more slices are dropped at each end of the run (where the moving average is one-sided), and
    a sinusoid of period ``factor`` (phase free, referenced to the grid index) is fitted by least
    squares: its amplitude over the mean of ``r``, in percent. ``r_i = c (1 + a cos(2 pi i / k +
    phi))`` gives ``100 a``. NaN with fewer than two periods of usable slices.
    """
    from scipy.ndimage import uniform_filter1d

    n = pred.shape[0]
    r = slice_ratio_profile(pred, truth, mask, min_voxels)
    valid = np.isfinite(r)
    valid[: min(factor, n)] = False
    valid[max(n - factor, 0) :] = False
    best: tuple[int, int] = (0, 0)
    start = None
    for i in range(n + 1):
        if i < n and valid[i]:
            start = i if start is None else start
        elif start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    lo, hi = best
    if hi - lo < 2 * factor + 2 * (factor // 2):
        return float("nan")
    segment = r[lo:hi]
    detrended = segment - uniform_filter1d(segment, size=factor, mode="nearest")
    trim = factor // 2
    index = np.arange(lo, hi)[trim : len(segment) - trim]
    d = detrended[trim : len(segment) - trim]
    phase = 2.0 * np.pi * index / factor
    design = np.column_stack([np.cos(phase), np.sin(phase), np.ones_like(phase)])
    (c, s, _), *_ = np.linalg.lstsq(design, d, rcond=None)
    return float(100.0 * np.hypot(c, s) / float(np.mean(segment)))
