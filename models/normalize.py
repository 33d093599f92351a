"""Intensity normalisation the network was trained with, and that inference applies itself.

Network input scale: the volume is divided by the 99th percentile of its head foreground, so
bright brain tissue (white matter on T1) sits near 0.8-1.0 and the background near 0. The
foreground is every voxel above 10% of the volume's 99.5th percentile. The engine applies this
itself and multiplies the prediction back, so callers may pass any non-negative scale (the
pipeline's own normalisation is then harmless); the same function is used in training, on the
simulated low-field input, with the target divided by the same number.
"""

from __future__ import annotations

import numpy as np

FOREGROUND_FRACTION = 0.10
SCALE_PERCENTILE = 99.0


def robust_scale(volume: np.ndarray) -> float:
    """The number the volume is divided by before it enters the network."""
    v = np.asarray(volume, dtype=np.float32)
    top = float(np.percentile(v, 99.5))
    if not np.isfinite(top) or top <= 0:
        return 1.0
    fg = v[v > FOREGROUND_FRACTION * top]
    if fg.size == 0:
        return 1.0
    scale = float(np.percentile(fg, SCALE_PERCENTILE))
    return scale if scale > 0 else 1.0


def head_mask(volume: np.ndarray) -> np.ndarray:
    """Foreground (head) mask: above 10% of the robust scale, holes filled slice by slice."""
    from scipy import ndimage

    v = np.asarray(volume, dtype=np.float32)
    mask = v > FOREGROUND_FRACTION * robust_scale(v)
    mask = ndimage.binary_opening(mask, iterations=1)
    return np.stack([ndimage.binary_fill_holes(s) for s in mask]) if mask.ndim == 3 else mask
