"""Augmentation of high-field volumes before simulation, and of patch pairs after.

Why before simulation: a random affine or bias field changes the anatomy the scanner sees, so the
low-field input and the high-field target must both come from the deformed volume; flips and
intensity scaling commute with the simulator and are cheaper on patches.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F


def random_affine(
    volumes: list[np.ndarray],
    rng: np.random.Generator,
    max_rotation_deg: float = 10.0,
    max_scale: float = 0.1,
) -> list[np.ndarray]:
    """Apply one random rotation + anisotropic scaling about the centre to every volume."""
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    scales = 1.0 + rng.uniform(-max_scale, max_scale, 3)
    cx, cy, cz = (math.cos(a) for a in angles)
    sx, sy, sz = (math.sin(a) for a in angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    matrix = (rz @ ry @ rx) @ np.diag(1.0 / scales)
    theta = torch.zeros(1, 3, 4, dtype=torch.float32)
    theta[0, :, :3] = torch.from_numpy(matrix.astype(np.float32))
    stack = torch.from_numpy(np.stack(volumes)[None].astype(np.float32))
    grid = F.affine_grid(theta, list(stack.shape), align_corners=False)
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return [np.ascontiguousarray(v) for v in out[0].numpy()]


def smooth_bias_field(
    shape: tuple[int, int, int], rng: np.random.Generator, strength: float = 0.15
) -> np.ndarray:
    """Multiplicative field exp(f), f a trilinear upsampling of a 4x4x4 random grid."""
    coarse = torch.from_numpy(rng.normal(0.0, strength, (1, 1, 4, 4, 4)).astype(np.float32))
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    return np.exp(field[0, 0].numpy())


def flip_pair(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips of an (input, target) patch pair along each axis.

    A slice-axis flip is safe because the grid convention is symmetric: thick slice ``i`` sits
    at the centre of thin slices ``i*k .. i*k+k-1``.
    """
    for axis in range(3):
        if rng.random() < 0.5:
            x = np.flip(x, axis)
            y = np.flip(y, axis)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)
