"""Augmentation of high-field volumes before simulation, and of patch pairs after.

Why before simulation: a random affine or bias field changes the anatomy the scanner sees, so the
low-field input and the high-field target must both come from the deformed volume; flips and
intensity scaling commute with the simulator and are cheaper on patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class GridDraw:
    """Ranges of one random acquisition grid and anatomy deformation (release 0.2 training).

    Why: real series come with 0.9-1.5 mm pixels, any thin-slice spacing the factor implies
    (0.75-1.5 mm), heads of every size and a tilt of their own; a network trained on the
    templates' own 1 mm grid learns that grid. Rotations and scalings act in millimetres
    (SimpleITK physical space), so an anisotropic grid is never sheared, and intensities are
    resampled with cubic B-splines (tissue maps and the brain mask linearly).
    """

    in_plane_mm: tuple[float, float] = (0.9, 1.5)
    thin_mm: tuple[float, float] = (0.75, 1.5)
    max_rotation_deg: float = 15.0
    max_scale: float = 0.1
    elastic_mm: float = 3.0
    elastic_mesh: int = 4


# Output direction per slice axis (NIfTI axis 0=x, 1=y, 2=z): the columns are the physical axes
# of the output's sitk index axes (i, j, k), and k (array axis 0) is the slice axis. They match
# ``models.brains.Brain.with_slice_axis``.
_SLICE_AXIS_DIRECTION = {
    2: ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    1: ((1, 0, 0), (0, 0, 1), (0, 1, 0)),
    0: ((0, 1, 0), (0, 0, 1), (1, 0, 0)),
}


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = (math.cos(a) for a in angles)
    sx, sy, sz = (math.sin(a) for a in angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def resample_on_random_grid(
    volumes: dict[str, np.ndarray],
    voxel_mm: float,
    slice_axis: int,
    rng: np.random.Generator,
    draw: GridDraw | None = None,
    *,
    augment: bool = True,
    threads: int = 1,
) -> tuple[dict[str, np.ndarray], tuple[float, float, float]]:
    """Resample (z, y, x) volumes on a random grid whose array axis 0 is ``slice_axis``.

    ``volumes["t1"]`` is resampled with cubic B-splines, every other entry linearly. Returns the
    resampled arrays (slice axis first) and the grid's spacing (slice, row, column) in mm.
    Without ``augment`` the grid is the brain's own 1:1 spacing, only re-oriented.
    """
    import SimpleITK as sitk

    draw = draw or GridDraw()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))
    names = list(volumes)
    shape = volumes[names[0]].shape
    t1 = sitk.GetImageFromArray(np.ascontiguousarray(volumes["t1"], dtype=np.float32))
    t1.SetSpacing((voxel_mm,) * 3)
    others = [n for n in names if n != "t1"]
    maps = None
    if others:
        stacked = np.stack([volumes[n].astype(np.float32, copy=False) for n in others], -1)
        maps = sitk.GetImageFromArray(stacked, isVector=True)
        maps.SetSpacing((voxel_mm,) * 3)
    extent = np.asarray(shape[::-1], float) * voxel_mm  # physical size along x, y, z
    centre = (extent - voxel_mm) / 2.0
    if augment:
        p = float(rng.uniform(*draw.in_plane_mm))
        t = float(rng.uniform(*draw.thin_mm))
        angles = np.deg2rad(rng.uniform(-draw.max_rotation_deg, draw.max_rotation_deg, 3))
        scales = 1.0 + rng.uniform(-draw.max_scale, draw.max_scale, 3)
        matrix = _rotation(angles) @ np.diag(1.0 / scales)
    else:
        p = t = voxel_mm
        matrix = np.eye(3)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(float(c) for c in centre))
    affine.SetMatrix(tuple(float(v) for v in matrix.ravel()))
    columns = np.asarray(_SLICE_AXIS_DIRECTION[slice_axis], float).T  # columns = axis vectors
    spacing = (p, p, t)
    size = [max(8, round(float(extent @ np.abs(columns[:, i])) / spacing[i])) for i in range(3)]
    origin = centre - columns @ ((np.asarray(size, float) - 1) * np.asarray(spacing) / 2.0)
    direction = tuple(float(v) for v in columns.ravel())
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetDirection(direction)
    reference.SetOrigin(tuple(float(v) for v in origin))
    transform: sitk.Transform = affine
    if augment and draw.elastic_mm > 0:
        bspline = sitk.BSplineTransformInitializer(t1, [draw.elastic_mesh] * 3, 3)
        params = rng.normal(0.0, draw.elastic_mm, len(bspline.GetParameters()))
        bspline.SetParameters(tuple(float(v) for v in params))
        composite = sitk.CompositeTransform(3)
        composite.AddTransform(affine)
        composite.AddTransform(bspline)
        # Evaluating the B-spline transform at every voxel costs 3x the resampling itself; a
        # displacement field on a grid 4x coarser (linear between its nodes) differs from it by
        # 0.3 % of the mean intensity and costs nothing.
        coarse = [s * 4 for s in spacing]
        coarse_size = [int(np.ceil(n / 4)) + 2 for n in size]
        coarse_origin = origin - columns @ np.asarray(spacing)
        field = sitk.TransformToDisplacementField(
            composite,
            sitk.sitkVectorFloat64,
            coarse_size,
            tuple(float(v) for v in coarse_origin),
            coarse,
            direction,
        )
        transform = sitk.DisplacementFieldTransform(field)
    out = {
        "t1": sitk.GetArrayFromImage(
            sitk.Resample(t1, reference, transform, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
        )
    }
    np.maximum(out["t1"], 0.0, out=out["t1"])  # cubic overshoot below zero is not MR signal
    if maps is not None:
        resampled = sitk.GetArrayFromImage(
            sitk.Resample(maps, reference, transform, sitk.sitkLinear, 0.0)
        ).reshape((*size[::-1], len(others)))
        for i, name in enumerate(others):
            out[name] = np.ascontiguousarray(resampled[..., i])
    return out, (t, p, p)
