"""Self-supervised through-plane detail: a small 2D network trained on each series' own slices.

Why: the released networks learn little through-plane detail (``models/EVALUATION.md``), because
a few template heads are all the anatomy there is to train on. Every thick-slice series carries
its own high-resolution examples, though: its in-plane axes are sampled at the pixel size. In the
spirit of SMORE (Zhao et al. 2020), each in-plane slice is degraded along one in-plane axis
exactly as the scanner degraded the slice axis (Gaussian slice profile of the series'
thickness, sampling every slice spacing, the series' own noise put back), interpolated back with
the same cubic B-spline the node uses, and a small residual CNN learns to undo that. Applied to
the coronal and sagittal planes of the cubic-upsampled volume, whose vertical axis is the slice
axis, it is meant to restore through-plane detail learnt from the patient's own anatomy and
contrast. ``blend_detail`` mixes its output into a network's prediction; a weights file opts in
with ``detail_weight``.

Measured (``models/EVALUATION.md``, session 14): on the template brain, an average of many heads,
it alone gains +1.05 dB of resolution-only PSNR at k = 4; on a single real head nothing
measurable, and blended at 0.3 into 0.7.0's output about +0.05 dB PSNR on the held-out
hemisphere at four to six times the engine's CPU time. So no release turns it on; it stays for
GPU nodes and for a better per-series model.

Deterministic: fixed seeds and a fixed number of steps, so the same series gives the same
result (the node's deterministic UIDs and exactly-once delivery assume reruns agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from models.baseline import bspline_matrix, cubic_bspline_upsample
from models.infer import resolve_device
from models.simulate import FWHM_TO_SIGMA

HEAD_FRACTION = 0.1
"""Share of the series' 99th percentile (``head_scale``) above which a pixel counts as head, for
the noise estimate, the slices worth learning from and the patches' centres."""
GAIN_SIGMA_MM = 15.0
"""Width of the smooth gain matched between the detail volume and the prediction: wide
enough to leave anatomy alone, narrow enough to follow a receive coil's shading (chosen on the
template brain, models/EVALUATION.md)."""


@dataclass(frozen=True)
class DetailSettings:
    """How the per-series network is trained: ``max_steps`` steps (what the candidate's weight
    was tuned with; 2-4 minutes on one CPU thread for a whole head), fewer for a series so small
    that ``epochs`` passes over its slices take fewer, never below ``min_steps``. The network
    is small because it sees one series' slices only."""

    max_steps: int = 900
    min_steps: int = 20
    epochs: float = 16.0
    patch: int = 48
    batch: int = 8
    channels: int = 24
    layers: int = 6
    learning_rate: float = 1e-3
    seed: int = 0


class DetailNet(nn.Module):
    """Residual 2D CNN, kernels 5 along the degraded (slice) axis and 3 across it."""

    def __init__(self, channels: int = 24, layers: int = 6) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError("DetailNet needs at least 2 layers")
        blocks: list[nn.Module] = [nn.Conv2d(1, channels, (5, 3), padding=(2, 1)), nn.ReLU()]
        for _ in range(layers - 2):
            blocks += [nn.Conv2d(channels, channels, (5, 3), padding=(2, 1)), nn.ReLU()]
        blocks.append(nn.Conv2d(channels, 1, (5, 3), padding=(2, 1)))
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def head_scale(volume: np.ndarray) -> float:
    """The 99th percentile of the series (1 for an empty one), which ``HEAD_FRACTION`` scales."""
    return float(np.percentile(volume, 99.0)) or 1.0


def noise_sigma(volume: np.ndarray, scale: float | None = None) -> float:
    """Noise standard deviation of the in-plane pixels, from neighbour differences in the head.

    The median absolute difference of horizontal neighbours is dominated by noise where the
    anatomy is smooth, which is most of the head; edges are outliers the median ignores.
    """
    v = np.asarray(volume, dtype=np.float32)
    scale = head_scale(v) if scale is None else scale
    diff = np.diff(v, axis=2)
    inside = (v[:, :, 1:] > HEAD_FRACTION * scale) & (v[:, :, :-1] > HEAD_FRACTION * scale)
    if inside.sum() < 100:
        return 0.0
    return float(np.median(np.abs(diff[inside])) / 0.6745 / np.sqrt(2.0))


def degrade_axis(
    image: np.ndarray,
    factor: int,
    thickness_ratio: float,
    shift: int,
    zoom: float,
    noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Degrade axis 0 of a 2D ``image`` (on the thin grid, ``zoom`` thin rows per acquired
    pixel) as the scanner degrades the slice axis, and interpolate it back with the node's cubic
    B-spline.

    Thick sample ``i`` is centred at ``shift + i * factor + (factor - 1) / 2``, so row ``t`` of
    the result lies at row ``shift + t`` of ``image`` (the engine grid convention). The slice
    profile averages the pixels' noise away, while a real thick slice keeps the full in-plane
    noise ``noise``: the missing variance is added to the thick samples, before interpolation,
    as the scanner's noise is.
    """
    sigma = max(factor * thickness_ratio * FWHM_TO_SIGMA, 1e-3)
    blurred = ndimage.gaussian_filter1d(image, sigma, axis=0, mode="reflect", truncate=3.0)
    n = (image.shape[0] - shift) // factor
    rows = shift + np.arange(n) * factor + (factor - 1) / 2.0
    cols = np.arange(image.shape[1], dtype=np.float64)
    thick = ndimage.map_coordinates(
        blurred, np.meshgrid(rows, cols, indexing="ij"), order=3, mode="reflect"
    )
    # The profile in acquired pixels (the image's noise is white on that grid).
    sigma_px = sigma / zoom
    taps = np.exp(-0.5 * (np.arange(-int(3 * sigma_px) - 1, int(3 * sigma_px) + 2) / sigma_px) ** 2)
    kept = float((taps**2).sum() / taps.sum() ** 2)
    thick = thick + rng.normal(0.0, noise * np.sqrt(max(0.0, 1.0 - kept)), thick.shape)
    up = bspline_matrix(n, factor, "mirror") @ thick.astype(np.float32)
    return up.astype(np.float32)


def training_pairs(
    volume: np.ndarray,
    factor: int,
    thickness_ratio: float,
    spacing_mm: tuple[float, float, float],
    rng: np.random.Generator,
    scale: float | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(degraded, target) pairs from the in-plane slices of ``volume`` (slices, rows, cols),
    each with the degraded axis first, on the thin grid of the enhanced series."""
    thin = spacing_mm[0] / factor
    scale = head_scale(volume) if scale is None else scale
    sigma = noise_sigma(volume, scale)
    pairs = []
    for z in range(volume.shape[0]):
        section = volume[z]
        if (section > HEAD_FRACTION * scale).mean() < 0.05:
            continue
        for axis, pixel in ((0, spacing_mm[1]), (1, spacing_mm[2])):
            image = section if axis == 0 else section.T
            zoom = pixel / thin
            if abs(zoom - 1.0) > 1e-3:
                image = ndimage.zoom(image, (zoom, 1.0), order=3, mode="reflect", grid_mode=True)
            shift = int(rng.integers(factor))
            degraded = degrade_axis(image, factor, thickness_ratio, shift, zoom, sigma, rng)
            target = image[shift : shift + degraded.shape[0]].astype(np.float32)
            if min(target.shape) >= 16:
                pairs.append((degraded, target))
    return pairs


def _patches(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    size: int,
    count: int,
    threshold: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random patch pairs, centred in the head where ten tries find it (zero-padded
    where a slice is smaller than a patch)."""
    xs, ys = [], []
    while len(xs) < count:
        x, y = pairs[int(rng.integers(len(pairs)))]
        h, w = min(size, x.shape[0]), min(size, x.shape[1])
        for _ in range(10):
            r = int(rng.integers(x.shape[0] - h + 1))
            c = int(rng.integers(x.shape[1] - w + 1))
            if y[r + h // 2, c + w // 2] > threshold:
                break
        px = np.zeros((size, size), np.float32)
        py = np.zeros((size, size), np.float32)
        px[:h, :w] = x[r : r + h, c : c + w]
        py[:h, :w] = y[r : r + h, c : c + w]
        xs.append(px)
        ys.append(py)
    return np.stack(xs)[:, None], np.stack(ys)[:, None]


def fit_detail_net(
    volume: np.ndarray,
    factor: int,
    thickness_ratio: float,
    spacing_mm: tuple[float, float, float],
    settings: DetailSettings = DetailSettings(),
    threads: int | None = None,
    device: str | None = None,
) -> tuple[DetailNet, dict[str, float]]:
    """Train a DetailNet on the in-plane slices of one series (normalised, any scale), on
    ``device`` (default: the GPU when there is one, as for the engine's own inference)."""
    rng = np.random.default_rng(settings.seed)
    if threads:
        torch.set_num_threads(threads)
    scale = head_scale(volume)
    pairs = training_pairs(volume, factor, thickness_ratio, spacing_mm, rng, scale)
    if not pairs:
        raise ValueError("no in-plane slice holds enough head to learn through-plane detail from")
    # Seeded without touching the worker's global random state.
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        return _train(pairs, HEAD_FRACTION * scale, settings, rng, resolve_device(device))


def _train(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    threshold: float,
    settings: DetailSettings,
    rng: np.random.Generator,
    device: torch.device,
) -> tuple[DetailNet, dict[str, float]]:
    net = DetailNet(settings.channels, settings.layers).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    pixels = sum(x.size for x, _ in pairs)
    steps = int(
        np.clip(
            settings.epochs * pixels / (settings.batch * settings.patch**2),
            settings.min_steps,
            settings.max_steps,
        )
    )
    window = min(50, steps)
    first = last = 0.0
    for step in range(steps):
        x, y = _patches(pairs, settings.patch, settings.batch, threshold, rng)
        x_, y_ = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        loss = nn.functional.mse_loss(net(x_), y_)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step < window:
            first += loss.item() / window
        if step >= steps - window:
            last += loss.item() / window
    stats = {
        "steps": float(steps),
        "pairs": float(len(pairs)),
        "loss_first": first,
        "loss_last": last,
    }
    return net.eval(), stats


@torch.no_grad()
def apply_through_plane(net: DetailNet, upsampled: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Run ``net`` on the coronal and sagittal planes of ``upsampled`` (thin slices, rows, cols)
    and average the two; both planes have the slice axis as their first axis."""
    device = next(net.parameters()).device
    v = np.ascontiguousarray(upsampled, dtype=np.float32)
    out = np.zeros_like(v)

    def run(planes: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(planes)).to(device)
        return net(batch[:, None])[:, 0].cpu().numpy()

    for r in range(0, v.shape[1], chunk):  # coronal planes: (slices, cols) at each row
        out[:, r : r + chunk] += run(v[:, r : r + chunk].transpose(1, 0, 2)).transpose(1, 0, 2)
    for c in range(0, v.shape[2], chunk):  # sagittal planes: (slices, rows) at each column
        out[:, :, c : c + chunk] += run(v[:, :, c : c + chunk].transpose(2, 0, 1)).transpose(
            1, 2, 0
        )
    return out / 2


def detail_volume(
    volume: np.ndarray,
    factor: int,
    thickness_ratio: float,
    spacing_mm: tuple[float, float, float],
    settings: DetailSettings = DetailSettings(),
    threads: int | None = None,
    device: str | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """The series ``volume`` (slices, rows, cols) upsampled by ``factor`` with detail learnt
    from its own in-plane slices: the node's cubic B-spline, then the per-series network."""
    net, stats = fit_detail_net(
        volume, factor, thickness_ratio, spacing_mm, settings, threads, device
    )
    return apply_through_plane(net, cubic_bspline_upsample(volume, factor, "mirror")), stats


def blend_detail(
    prediction: np.ndarray,
    detail: np.ndarray,
    weight: float,
    spacing_mm: tuple[float, float, float],
    gain_sigma_mm: float = GAIN_SIGMA_MM,
) -> np.ndarray:
    """``(1 - weight) * prediction + weight * detail``, with ``detail`` first brought into the
    prediction's contrast and local intensity level (``spacing_mm``: of these arrays' voxels).

    The detail volume keeps the acquired (low-field) contrast, noise and coil shading, while the
    prediction has the high-field target contrast. A cubic polynomial fitted in the head maps
    one contrast onto the other; then the mapped detail is scaled by the ratio of the two
    volumes smoothed over ``gain_sigma_mm``, so that its local mean is the prediction's and
    only finer structure is carried over. (Matching the gain before the polynomial as well
    removes synthetic shading better but scored lower on the tuning heads.)
    """
    if weight <= 0.0:
        return prediction
    top = head_scale(detail)
    head = detail > 0.3 * top
    if head.sum() < 100:
        return prediction
    mapped = np.polynomial.Polynomial.fit(detail[head], prediction[head], 3)(detail)
    inside = head.astype(np.float32)
    sigma = [gain_sigma_mm / s for s in spacing_mm]
    floor = 1e-3 * top
    gain = (ndimage.gaussian_filter(prediction * inside, sigma) + floor) / (
        ndimage.gaussian_filter(mapped * inside, sigma) + floor
    )
    return ((1.0 - weight) * prediction + weight * mapped * gain).astype(np.float32)
