"""Small synthetic heads so model tests run in seconds without loading shipped brains."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.brains import Brain
from models.simulate import TissueMaps


def phantom(shape: tuple[int, int, int] = (40, 48, 48), seed: int = 0) -> Brain:
    """Nested ellipsoids: scalp, CSF, grey matter shell, white matter core, plus a few blobs."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt((z / 0.9) ** 2 + (y / 0.85) ** 2 + (x / 0.8) ** 2)
    wobble = 0.04 * np.sin(6 * np.arctan2(y, x)) * np.cos(4 * z)
    head = r < 0.95
    brain = r < 0.8
    wm = (r + wobble < 0.55).astype(np.float32)
    gm = ((r + wobble >= 0.55) & brain).astype(np.float32)
    csf = (brain & ~(wm > 0) & ~(gm > 0)).astype(np.float32)
    t1 = np.where(head, 0.5, 0.0) + 0.35 * csf + 0.65 * gm + 0.85 * wm
    t1 = np.where(brain, 0.0, t1) + np.where(brain, 0.35 * csf + 0.65 * gm + 0.85 * wm, 0.0)
    t1 = t1 * (1 + 0.02 * rng.standard_normal(shape))
    return Brain("phantom", t1.astype(np.float32), brain, TissueMaps(gm, wm, csf), 1.0)


def ventricle_phantom(shape: tuple[int, int, int] = (40, 48, 48), voxel_mm: float = 1.0) -> Brain:
    """The phantom with a CSF ventricle in its white matter (the plain phantom's brain is grey
    and white matter only), so that contrasts with bright or dark CSF can be told apart."""
    brain = phantom(shape)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    csf = (np.sqrt(z**2 + y**2 + x**2) < 0.22).astype(np.float32)
    tissue = TissueMaps(brain.tissue.gm * (1 - csf), brain.tissue.wm * (1 - csf), csf)
    return replace(brain, tissue=tissue, voxel_mm=voxel_mm)


@pytest.fixture(scope="session")
def phantom_brain() -> Brain:
    return phantom()
