"""Probabilistic low-field simulator: Lin et al. (MLMIR 2019), Algorithm 1.

From a high-field isotropic volume (slice axis 0) and its tissue maps it makes a plausible
low-field acquisition of ``n // k`` thick slices:

1. each thick slice integrates the high-field voxels with a Gaussian slice profile along the slice
   axis whose FWHM equals the slice thickness (``k`` voxels times the thickness/spacing ratio);
   slices are taken every ``k`` voxels, so with a ratio below 1 the gap between them is never
   sampled;
2. the GM/WM/CSF maps are degraded the same way;
3. a target (SNR_WM, SNR_GM) is drawn from the field strength's bivariate Gaussian;
4. the noise level is set from the white-matter mean (sigma = mean_WM / SNR_WM) and grey matter
   is rescaled so that mean_GM / sigma = SNR_GM, which reproduces low-field GM/WM contrast
   (for a profile whose fixed tissue is grey matter, FLAIR after Lin et al. 2023, the roles
   swap: sigma = mean_GM / SNR_GM and white matter is rescaled);
5. Gaussian noise (as in the paper) or Rician noise (magnitude data) of that sigma is added.

The same slice-profile operator degrades predictions for the data-consistency score, so the
simulator and the trust score agree on what "acquired" means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.profile import FieldProfile

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def slice_centres(n_thick: int, factor: int) -> np.ndarray:
    """Thin-grid coordinate of each thick slice's centre (engine grid convention)."""
    return np.arange(n_thick) * factor + (factor - 1) / 2.0


def slice_profile_matrix(n_thin: int, factor: int, thickness_ratio: float = 1.0) -> np.ndarray:
    """Matrix ``A`` (n_thin // factor, n_thin): thick slice ``i`` = ``A[i] @ thin slices``.

    Gaussian profile of FWHM ``factor * thickness_ratio`` thin voxels centred on the thick
    slice, normalised to sum 1 over the voxels that exist (edges are renormalised rather than
    zero-padded, so the first and last slices are not darkened).
    """
    if factor < 1:
        raise ValueError("factor must be >= 1")
    n_thick = n_thin // factor
    sigma = max(factor * thickness_ratio * FWHM_TO_SIGMA, 1e-3)
    z = np.arange(n_thin)[None, :]
    c = slice_centres(n_thick, factor)[:, None]
    w = np.exp(-0.5 * ((z - c) / sigma) ** 2)
    w[w < 1e-6] = 0.0
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def degrade_slices(volume: np.ndarray, factor: int, thickness_ratio: float = 1.0) -> np.ndarray:
    """Thin slices (axis 0) -> thick slices with the Gaussian profile, every ``factor`` voxels."""
    a = slice_profile_matrix(volume.shape[0], factor, thickness_ratio)
    out = np.tensordot(a, volume.astype(np.float32, copy=False), axes=(1, 0))
    return out.astype(np.float32, copy=False)


@dataclass
class TissueMaps:
    """Soft tissue probabilities on the same grid as the image."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray | None = None

    def degraded(self, factor: int, thickness_ratio: float) -> TissueMaps:
        return TissueMaps(
            gm=degrade_slices(self.gm, factor, thickness_ratio),
            wm=degrade_slices(self.wm, factor, thickness_ratio),
            csf=None if self.csf is None else degrade_slices(self.csf, factor, thickness_ratio),
        )


@dataclass
class Simulation:
    """A simulated low-field acquisition and the parameters that produced it."""

    low_field: np.ndarray
    snr_wm: float
    snr_gm: float
    sigma: float
    gm_scale: float
    tissue: TissueMaps
    params: dict[str, object] = field(default_factory=dict)


def add_noise(
    image: np.ndarray, sigma: float, rng: np.random.Generator, kind: str = "gaussian"
) -> np.ndarray:
    """Gaussian (the paper) or Rician (magnitude of complex Gaussian) noise of std ``sigma``.

    The one noise model of the project: training draws, the quality bench's acquisitions and
    the test series (``pipeline.sample``) all call it.
    """
    if kind == "gaussian":
        return (image + rng.normal(0.0, sigma, image.shape)).astype(np.float32)
    if kind == "rician":
        re = image + rng.normal(0.0, sigma, image.shape)
        im = rng.normal(0.0, sigma, image.shape)
        return np.sqrt(re * re + im * im).astype(np.float32)
    raise ValueError(f"noise kind must be 'gaussian' or 'rician', got {kind!r}")


def scale_grey_matter(image: np.ndarray, gm: np.ndarray, gm_scale: float) -> np.ndarray:
    """The low-field grey/white contrast of Lin et al.: grey matter scaled by ``gm_scale``.

    Soft: a voxel that is p parts grey matter is scaled by 1 + p (s - 1), so partial volume at
    the GM/WM border blends smoothly instead of producing a step. Shared by the training
    simulator (thick slices, here) and the quality bench's patient-space acquisitions
    (``pipeline.sample.simulate_acquisition``, on the fine grid), so both apply one physics.
    """
    return image * (1.0 + np.clip(gm, 0.0, 1.0) * (gm_scale - 1.0))


def simulate_low_field(
    high_field: np.ndarray,
    tissue: TissueMaps,
    factor: int,
    profile: FieldProfile,
    rng: np.random.Generator,
    *,
    thickness_ratio: float = 1.0,
    snr: tuple[float, float] | None = None,
    noise: str = "gaussian",
) -> Simulation:
    """Algorithm 1 of Lin et al. on a volume whose slice axis is axis 0.

    ``snr`` fixes (SNR_WM, SNR_GM) instead of drawing it (evaluation at the mean and the tail).
    The high-field volume is cropped to a multiple of ``factor`` slices first.
    """
    n = (high_field.shape[0] // factor) * factor
    if n == 0:
        raise ValueError(f"need at least {factor} slices, got {high_field.shape[0]}")
    hf = high_field[:n].astype(np.float32, copy=False)
    maps = TissueMaps(tissue.gm[:n], tissue.wm[:n], None if tissue.csf is None else tissue.csf[:n])
    lf = degrade_slices(hf, factor, thickness_ratio)
    lf_maps = maps.degraded(factor, thickness_ratio)
    snr_wm, snr_gm = snr if snr is not None else profile.draw_snr(rng)

    wm_mask = lf_maps.wm > 0.5
    gm_mask = lf_maps.gm > 0.5
    if wm_mask.sum() < 10 or gm_mask.sum() < 10:
        raise ValueError("tissue maps leave too few GM/WM voxels after degradation")
    mean_wm = float(lf[wm_mask].mean())
    mean_gm = float(lf[gm_mask].mean())
    wm_scale = 1.0
    if profile.fixed_tissue == "gm":
        # Lin et al. 2023 for FLAIR: grey matter keeps its intensity and sets the noise; white
        # matter is rescaled (the same soft map scaling, on the WM map) to reach SNR_WM.
        sigma = mean_gm / snr_gm
        gm_scale = 1.0
        wm_scale = (snr_wm * sigma) / mean_wm
        lf = scale_grey_matter(lf, lf_maps.wm, wm_scale)
    else:
        sigma = mean_wm / snr_wm
        gm_scale = (snr_gm * sigma) / mean_gm
        lf = scale_grey_matter(lf, lf_maps.gm, gm_scale)
    lf = add_noise(lf, sigma, rng, noise)
    return Simulation(
        low_field=lf,
        snr_wm=float(snr_wm),
        snr_gm=float(snr_gm),
        sigma=float(sigma),
        gm_scale=float(gm_scale),
        tissue=lf_maps,
        params={
            "factor": factor,
            "thickness_ratio": thickness_ratio,
            "profile": profile.name,
            "noise": noise,
            "fixed_tissue": profile.fixed_tissue,
            "wm_scale": wm_scale,
        },
    )


def measured_snr(sim: Simulation, noise_free: np.ndarray) -> tuple[float, float]:
    """(SNR_WM, SNR_GM) measured on a simulation, given its noise-free counterpart."""
    residual = sim.low_field - noise_free
    sigma = float(residual.std())
    wm = sim.tissue.wm > 0.5
    gm = sim.tissue.gm > 0.5
    return float(noise_free[wm].mean() / sigma), float(noise_free[gm].mean() / sigma)
