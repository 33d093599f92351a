"""Tissue maps (GM, WM, CSF) for brains that do not ship their own.

Atropos (ANTs) is a Gaussian-mixture EM with a spatial prior; for the clean, bias-free
high-field templates used here a 3-class Gaussian mixture on T1 intensity inside the brain mask
gives the same classes without adding ANTsPy (about 100 MB) as a dependency. Only the simulator
(GM rescaling) and the contrast metric use the maps, and both threshold them at 0.5.
"""

from __future__ import annotations

import numpy as np

from models.simulate import TissueMaps


def gmm_tissue_maps(t1: np.ndarray, brain_mask: np.ndarray, seed: int = 0) -> TissueMaps:
    """Posterior GM/WM/CSF probabilities from a 3-class GMM (ordered CSF < GM < WM on T1)."""
    from sklearn.mixture import GaussianMixture

    vals = t1[brain_mask].astype(np.float64)[:, None]
    rng = np.random.default_rng(seed)
    sample = vals[rng.choice(len(vals), size=min(len(vals), 200_000), replace=False)]
    gmm = GaussianMixture(3, random_state=seed, n_init=2).fit(sample)
    order = np.argsort(gmm.means_.ravel())
    post = gmm.predict_proba(vals)[:, order].astype(np.float32)
    maps = []
    for c in range(3):
        m = np.zeros(t1.shape, np.float32)
        m[brain_mask] = post[:, c]
        maps.append(m)
    csf, gm, wm = maps
    return TissueMaps(gm=gm, wm=wm, csf=csf)
