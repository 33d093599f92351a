"""Patch library: simulated low-field draws of each brain, cut into (input, target) pairs.

One draw = one brain, one random slice axis, optional affine/bias augmentation, one simulated
acquisition with an SNR drawn from the profile; drawing several per brain per epoch is the
"probabilistic" part of the decimation simulator. Patches that are mostly background are
rejected, since they teach the network nothing but to output zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.augment import (
    GridDraw,
    random_affine,
    resample_on_random_grid,
    smooth_bias_field,
)
from models.brains import Brain
from models.contrast.draw import Contrast, ContrastDraw, draw_contrast, render_head
from models.normalize import input_scale
from models.profile import FieldProfile
from models.simulate import Simulation, TissueMaps, scale_grey_matter, simulate_low_field
from models.target import render_target


@dataclass(frozen=True)
class DrawSettings:
    """How one simulated acquisition is produced.

    ``grid`` (release 0.2): resample every draw on a random grid (pixel size, thin-slice
    spacing, rotation and scaling in mm, elastic deformation; ``models.augment.GridDraw``) instead
    of the brain's own 1 mm grid with a voxel-space affine. ``target_contrast``: train towards
    the fixed high-field contrast of ``models.target``. ``normalisation``: the input scale the
    release records (``models.normalize.NORMALISERS``). ``thickness_ratio`` is drawn uniformly
    from ``thickness_ratios`` when that is given (slice gaps). ``csf_jitter``: the input's CSF
    level is scaled by U(1 - j, 1 + j) (scanners differ in T1 weighting; the target keeps its
    own). ``loss_margin_mm``: the loss weight is 1 in the brain dilated by this margin and
    ``outside_weight`` elsewhere, so scalp and air do not dominate what the network optimises.
    ``shading_target``: ``"keep"`` (releases up to 0.4) multiplies the anatomy by the smooth
    field before both input and target, so the network learns to keep a coil's shading;
    ``"remove"`` (release 0.5) shades the input only, with a strength drawn from
    U(0, ``shading``), so it learns to return the unshaded anatomy: intensities are normalised
    on the white-matter peak, so a patch's white matter away from 1 tells it the local gain,
    which a whole-head bias estimator (N4) could not tell from anatomy on these heads.
    ``contrast`` (the contrast-agnostic ``iqt-mc``): instead of the brain's T1, each draw
    renders one of its profiles from the tissue maps (``models.contrast.draw``), simulates that
    profile's acquisition, and trains towards the same rendering noise-free; ``None`` (every
    T1 release) leaves the T1 path exactly as it was.
    """

    factor: int
    profile: FieldProfile
    noise: str = "gaussian"
    thickness_ratio: float = 1.0
    slice_axes: tuple[int, ...] = (2, 1, 0)
    augment: bool = True
    hf_gm_scale: tuple[float, float] = (1.0, 1.0)
    grid: GridDraw | None = None
    thickness_ratios: tuple[float, float] | None = None
    target_contrast: bool = False
    normalisation: str = "head-p99"
    shading: float = 0.15
    shading_target: str = "keep"
    csf_jitter: float = 0.0
    loss_margin_mm: float = 5.0
    outside_weight: float = 1.0
    threads: int = 1
    contrast: ContrastDraw | None = None

    def __post_init__(self) -> None:
        if self.shading_target not in ("keep", "remove"):
            raise ValueError(
                f"shading_target must be 'keep' or 'remove', not {self.shading_target!r}"
            )
        if self.contrast is not None and (
            self.target_contrast or self.csf_jitter > 0 or self.hf_gm_scale != (1.0, 1.0)
        ):
            # each of these gives the target another contrast than the input's: a transfer
            # to high-field T1, which no rendered contrast has
            raise ValueError(
                "random contrast trains towards the input's own contrast: target_contrast, "
                "csf_jitter and hf_gm_scale are T1 options"
            )


def _loss_weight(
    brain: np.ndarray, spacing: tuple[float, float, float], settings: DrawSettings
) -> np.ndarray:
    if settings.outside_weight >= 1.0:
        return np.ones(brain.shape, np.float32)
    from scipy import ndimage

    inside = ndimage.distance_transform_edt(brain < 0.5, sampling=spacing) <= (
        settings.loss_margin_mm
    )
    return np.where(inside, 1.0, settings.outside_weight).astype(np.float32)


def _contrast_snr(
    contrast: Contrast, rng: np.random.Generator, snr: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The SNR pair of a random-intensity draw: the profile's draw for its fixed tissue, the
    other tissue's from the drawn levels, so the simulator's rescaling keeps the random
    contrast instead of resetting it to the profile's (None: the simulator draws as usual)."""
    if snr is not None or not contrast.random:
        return snr
    wm, gm = contrast.profile.draw_snr(rng)
    ratio = contrast.levels["gm"] / contrast.levels["wm"]
    return (wm, wm * ratio) if contrast.profile.fixed_tissue == "wm" else (gm / ratio, gm)


def _as_simulated(image: np.ndarray, gm: np.ndarray, wm: np.ndarray, sim: Simulation) -> np.ndarray:
    """The rendered target with the simulator's tissue rescaling (Lin et al.'s low-field
    contrast, ``simulate_low_field``), so input and target carry one contrast."""
    out = scale_grey_matter(image, gm, sim.gm_scale)
    return scale_grey_matter(out, wm, float(sim.params.get("wm_scale", 1.0)))


def simulate_pair(
    brain: Brain,
    settings: DrawSettings,
    rng: np.random.Generator,
    *,
    axis: int | None = None,
    snr: tuple[float, float] | None = None,
    profile: FieldProfile | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low-field input, high-field target, loss weight); input and target divided by the
    input's scale (``settings.normalisation``).

    The target is cropped to ``n_thick * k`` slices so that input slice ``i`` is centred on
    target slices ``i*k .. i*k+k-1``. ``profile`` replaces ``settings.profile`` (with
    ``settings.contrast``: the profile rendered, instead of a random one of its list).
    """
    axis = int(rng.choice(settings.slice_axes)) if axis is None else axis
    mc = settings.contrast
    if settings.grid is not None:
        volumes = {"t1": brain.t1, "gm": brain.tissue.gm, "wm": brain.tissue.wm}
        volumes["brain"] = brain.brain_mask.astype(np.float32)
        if brain.tissue.csf is not None:
            volumes["csf"] = brain.tissue.csf
        grid, spacing = resample_on_random_grid(
            volumes,
            brain.voxel_mm,
            axis,
            rng,
            settings.grid,
            augment=settings.augment,
            threads=settings.threads,
        )
        t1, gm, wm, mask = grid["t1"], grid["gm"], grid["wm"], grid["brain"]
        csf = grid.get("csf")
    else:
        b = brain.with_slice_axis(axis)
        t1, gm, wm, csf = b.t1, b.tissue.gm, b.tissue.wm, b.tissue.csf
        mask = b.brain_mask.astype(np.float32)
        spacing = (brain.voxel_mm,) * 3
        if settings.augment and mc is not None and csf is not None:
            t1, gm, wm, mask, csf = random_affine([t1, gm, wm, mask, csf], rng)
        elif settings.augment:
            t1, gm, wm, mask = random_affine([t1, gm, wm, mask], rng)
    contrast = None
    if mc is not None:
        if csf is None:
            raise ValueError(f"{brain.name}: random contrast needs a CSF map")
        contrast = draw_contrast(mc, rng, augment=settings.augment, profile=profile)
        # from here on ``t1`` is the head in the drawn contrast: shading, slices, loss weights
        # and patches treat it exactly as they treat the T1
        t1 = render_head(t1, TissueMaps(gm, wm, csf), contrast)
        profile = contrast.profile
    coil = None
    if settings.augment and settings.shading > 0:
        if settings.shading_target == "remove":
            coil = smooth_bias_field(t1.shape, rng, float(rng.uniform(0.0, settings.shading)))
        else:
            t1 = t1 * smooth_bias_field(t1.shape, rng, settings.shading)
    lo, hi = settings.hf_gm_scale
    if (lo, hi) != (1.0, 1.0):
        # High-field contrast augmentation (release 0.1): scaling grey matter in the target
        # (the simulator resets the low-field contrast from the SNR draw) widens it.
        t1 = t1 * (1.0 + np.clip(gm, 0.0, 1.0) * (rng.uniform(lo, hi) - 1.0))
    target = render_target(t1, gm, wm) if settings.target_contrast else t1
    source = t1
    if settings.csf_jitter > 0 and csf is not None:
        j = settings.csf_jitter
        source = t1 * (1.0 + np.clip(csf, 0.0, 1.0) * (rng.uniform(1 - j, 1 + j) - 1.0))
    if coil is not None:
        source = source * coil
    ratio = settings.thickness_ratio
    if settings.thickness_ratios is not None:
        ratio = float(rng.uniform(*settings.thickness_ratios))
    if contrast is not None:
        snr = _contrast_snr(contrast, rng, snr)
    sim = simulate_low_field(
        source,
        TissueMaps(gm, wm),
        settings.factor,
        profile or settings.profile,
        rng,
        thickness_ratio=ratio,
        snr=snr,
        noise=settings.noise,
    )
    if contrast is not None:
        target = _as_simulated(target, gm, wm, sim)
    n = sim.low_field.shape[0] * settings.factor
    acquired = (spacing[0] * settings.factor, spacing[1], spacing[2])
    scale = input_scale(settings.normalisation, sim.low_field, acquired)
    weight = _loss_weight(mask[:n], spacing, settings)
    return sim.low_field / scale, target[:n] / scale, weight


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
    weight: np.ndarray | None = None,
    edge_fraction: float = 0.0,
    edge_margin: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` triples: inputs (count, 1, out_slices/k, p, p), targets and loss weights
    (count, 1, out_slices, p, p).

    A candidate is kept when at least ``min_foreground`` of its input voxels exceed 0.1 (the
    head, on the normalised scale); after many misses the rejection gives up and keeps what it
    finds so a small volume still yields patches.

    ``edge_fraction`` of the patches sit at the first acquired slice, with ``edge_margin``
    slices of reflected padding in front exactly as inference pads a volume
    (``models.infer``), and zero loss weight on the padding: without them the network never
    saw a slab's first or last slice, and made a bright band and a dark line there. A random
    slice-axis flip turns half of them into last-slice patches.
    """
    d = out_slices // factor
    n_thick, rows, cols = low.shape
    if n_thick < d or rows < in_plane or cols < in_plane:
        raise ValueError(f"volume {low.shape} smaller than patch ({d}, {in_plane}, {in_plane})")
    if weight is None:
        weight = np.ones(high.shape, np.float32)
    m = min(edge_margin, d - 1, n_thick - 1)
    xs, ys, ws = [], [], []
    tries = 0
    while len(xs) < count:
        tries += 1
        edge = m > 0 and rng.random() < edge_fraction
        i = 0 if edge else int(rng.integers(0, n_thick - d + 1))
        r = int(rng.integers(0, rows - in_plane + 1))
        c = int(rng.integers(0, cols - in_plane + 1))
        cols_ = slice(c, c + in_plane)
        rows_ = slice(r, r + in_plane)
        if edge:
            x = np.concatenate([low[1 : m + 1, rows_, cols_][::-1], low[: d - m, rows_, cols_]])
            pad = np.zeros((m * factor, in_plane, in_plane), np.float32)
            y = np.concatenate([pad, high[: (d - m) * factor, rows_, cols_]])
            w = np.concatenate([pad, weight[: (d - m) * factor, rows_, cols_]])
        else:
            x = low[i : i + d, rows_, cols_]
            y = high[i * factor : (i + d) * factor, rows_, cols_]
            w = weight[i * factor : (i + d) * factor, rows_, cols_]
        if (x > 0.1).mean() < min_foreground and tries < 50 * count:
            continue
        if flips:
            for axis in range(3):
                if rng.random() < 0.5:
                    x, y, w = np.flip(x, axis), np.flip(y, axis), np.flip(w, axis)
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
        ws.append(np.ascontiguousarray(w))
    return (
        np.stack(xs)[:, None].astype(np.float32),
        np.stack(ys)[:, None].astype(np.float32),
        np.stack(ws)[:, None].astype(np.float32),
    )
