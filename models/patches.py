"""Patch library: simulated low-field draws of each brain, cut into (input, target) pairs.

One draw = one brain, one random slice axis, optional affine/bias augmentation, one simulated
acquisition with an SNR drawn from the profile; drawing several per brain per epoch is the
"probabilistic" part of the decimation simulator. Patches that are mostly background are
rejected, since they teach the network nothing but to output zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.augment import flip_pair, random_affine, smooth_bias_field
from models.brains import Brain
from models.normalize import robust_scale
from models.profile import FieldProfile
from models.simulate import TissueMaps, simulate_low_field


@dataclass(frozen=True)
class DrawSettings:
    """How one simulated acquisition is produced."""

    factor: int
    profile: FieldProfile
    noise: str = "gaussian"
    thickness_ratio: float = 1.0
    slice_axes: tuple[int, ...] = (2, 1, 0)
    augment: bool = True
    hf_gm_scale: tuple[float, float] = (1.0, 1.0)


def simulate_pair(
    brain: Brain,
    settings: DrawSettings,
    rng: np.random.Generator,
    *,
    axis: int | None = None,
    snr: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(low-field input, high-field target), both divided by the input's robust scale.

    The target is cropped to ``n_thick * k`` slices so that input slice ``i`` is centred on
    target slices ``i*k .. i*k+k-1``.
    """
    axis = int(rng.choice(settings.slice_axes)) if axis is None else axis
    b = brain.with_slice_axis(axis)
    t1, gm, wm = b.t1, b.tissue.gm, b.tissue.wm
    if settings.augment:
        t1, gm, wm = random_affine([t1, gm, wm], rng)
        t1 = t1 * smooth_bias_field(t1.shape, rng)
    lo, hi = settings.hf_gm_scale
    if (lo, hi) != (1.0, 1.0):
        # High-field contrast augmentation: templates are averages of many subjects, so their
        # GM/WM contrast is lower than a single subject's; scaling grey matter in the target
        # (the simulator resets the low-field contrast from the SNR draw) widens it.
        t1 = t1 * (1.0 + np.clip(gm, 0.0, 1.0) * (rng.uniform(lo, hi) - 1.0))
    sim = simulate_low_field(
        t1,
        TissueMaps(gm, wm),
        settings.factor,
        settings.profile,
        rng,
        thickness_ratio=settings.thickness_ratio,
        snr=snr,
        noise=settings.noise,
    )
    n = sim.low_field.shape[0] * settings.factor
    scale = robust_scale(sim.low_field)
    return sim.low_field / scale, t1[:n] / scale


def sample_patches(
    low: np.ndarray,
    high: np.ndarray,
    factor: int,
    count: int,
    rng: np.random.Generator,
    *,
    in_plane: int = 32,
    out_slices: int = 32,
    min_foreground: float = 0.3,
    flips: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` pairs: inputs (count, 1, out_slices/k, p, p), targets (count, 1, out_slices, p, p).

    A candidate is kept when at least ``min_foreground`` of its input voxels exceed 0.1 (the
    head, on the normalised scale); after many misses the rejection gives up and keeps what it
    finds so a small volume still yields patches.
    """
    d = out_slices // factor
    n_thick, rows, cols = low.shape
    if n_thick < d or rows < in_plane or cols < in_plane:
        raise ValueError(f"volume {low.shape} smaller than patch ({d}, {in_plane}, {in_plane})")
    xs, ys = [], []
    tries = 0
    while len(xs) < count:
        tries += 1
        i = int(rng.integers(0, n_thick - d + 1))
        r = int(rng.integers(0, rows - in_plane + 1))
        c = int(rng.integers(0, cols - in_plane + 1))
        x = low[i : i + d, r : r + in_plane, c : c + in_plane]
        if (x > 0.1).mean() < min_foreground and tries < 50 * count:
            continue
        y = high[i * factor : (i + d) * factor, r : r + in_plane, c : c + in_plane]
        if flips:
            x, y = flip_pair(x, y, rng)
        xs.append(x)
        ys.append(y)
    return (
        np.stack(xs)[:, None].astype(np.float32),
        np.stack(ys)[:, None].astype(np.float32),
    )
