"""Where the remaining error of an enhanced series lies: the decomposition of issue 13.

``bench/bench_quality.py --limits`` adds, to every case, three figures that say what an
enhancement could still gain and from what, so that "what limits the model" is measured rather
than argued:

- **Clean interpolation** (``clean_res_psnr``, ``clean_psnr``): the same acquisition simulated
  once more with the noise taken away (both SNRs multiplied by 1e6, which keeps the low-field
  contrast, since the simulator sets contrast from their ratio) and without shading, written
  and read back as DICOM like the real one, then cubic B-spline onto the derived grid. That is
  what a perfect denoiser and bias corrector would give with no super-resolution at all.
  Scored like everything else: resolution-only PSNR against the low-field truth after the cubic
  intensity polynomial, and PSNR against the high-field target after the best cubic polynomial
  of its intensities (so that it is also credited with the best global contrast map; a map
  applied after the slice profile has mixed the tissues, so it cannot equal a transfer that
  knows the tissues). In resolution-only PSNR, a method above it has restored through-plane
  detail that interpolation cannot; below it, noise, shading or its own errors cost more than
  the detail it restored.
- **Global-map ceiling** (``global_map_db``): the method's PSNR after the best cubic intensity
  polynomial minus after the affine match: all that any global recalibration of its contrast
  could still add.
- **Smooth share of the error** (``smooth_error_share``): the part of the method's squared
  error (after the affine match) that survives a Gaussian of ``SMOOTH_MM``: intensity slopes
  over centimetres, i.e. shading left in the image (or a truth's own bias).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from models import metrics
from pipeline.sample import Acquisition, Head, build_series, simulate_acquisition
from pipeline.volume import read_volume

if TYPE_CHECKING:  # bench_quality imports this module
    from bench.bench_quality import Truth

NOISE_FREE_SNR_FACTOR = 1e6
"""Both SNRs are multiplied by this: sigma falls to 1e-6 of its value, the contrast (their
ratio) stays. The 12-bit rounding remains (half a unit against a white-matter level of 600)."""
SMOOTH_MM = 4.0


def clean_interpolation(head: Head, acq: Acquisition, grid: sitk.Image) -> np.ndarray:
    """Cubic B-spline, on ``grid``, of ``acq`` acquired without noise and without shading."""
    snr_wm, snr_gm = acq.snr_wm_gm or (acq.snr, 0.84 * acq.snr)
    clean_acq = dataclasses.replace(
        acq,
        snr_wm_gm=(snr_wm * NOISE_FREE_SNR_FACTOR, snr_gm * NOISE_FREE_SNR_FACTOR),
        snr=acq.snr * NOISE_FREE_SNR_FACTOR,
        shading=None,
    )
    sim = simulate_acquisition(head, clean_acq)
    volume = read_volume(build_series(clean_acq, pixels=sim.pixels)).image
    out = sitk.Resample(volume, grid, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def smooth_error_share(
    matched: np.ndarray, target: np.ndarray, mask: np.ndarray, spacing_mm: tuple[float, ...]
) -> float:
    """Fraction of the squared error in ``mask`` carried by its ``SMOOTH_MM`` Gaussian part
    (a normalised convolution, so the region's border does not pull the smooth part to 0)."""
    error = np.where(mask, matched.astype(np.float64) - target, 0.0)
    sigma = [SMOOTH_MM / s for s in spacing_mm]
    weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma)
    smooth = ndimage.gaussian_filter(error, sigma) / np.maximum(weight, 1e-6)
    total = float(np.mean(error[mask] ** 2))
    return float(np.mean(smooth[mask] ** 2)) / total if total > 0 else float("nan")


def limits(
    output: np.ndarray,
    matched: np.ndarray,
    clean: np.ndarray,
    truth: Truth,
    region: str,
    spacing_mm: tuple[float, ...],
) -> dict[str, float]:
    """The figures of the module docstring for one output in one region: ``matched`` is the
    output after the scoring's affine match (``bench_quality.score``), all arrays cropped like
    ``truth``; ``spacing_mm`` in array-axis order."""
    target, low_field, mask = truth.target, truth.low_field, truth.regions[region]
    peak = float(target[mask].max())
    best_map = metrics.polynomial_match(output, target, mask)
    return {
        "clean_res_psnr": metrics.psnr_in_mask(
            metrics.polynomial_match(clean, low_field, mask), low_field, mask
        ),
        "clean_psnr": metrics.psnr_in_mask(
            metrics.polynomial_match(clean, target, mask), target, mask, peak
        ),
        "global_map_db": metrics.psnr_in_mask(best_map, target, mask, peak)
        - metrics.psnr_in_mask(matched, target, mask, peak),
        "smooth_error_share": smooth_error_share(matched, target, mask, spacing_mm),
    }
