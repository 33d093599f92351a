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
