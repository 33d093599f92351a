"""The unsupervised engine ``inr``: a coordinate network fitted to one acquired series alone.

After Indrakanti & Simpson (2025), built for low-field sites where no high-field training data
of the right contrast exists (T2 and FLAIR at 64 mT): nothing is learned beforehand, so there
are no weights; each series gets its own small network, fitted to that series only.

- **Representation**: a multilayer perceptron of WIRE-style complex Gabor wavelet activations
  (Saragadam et al. 2023, ``exp(j w0 z - |s0 z|^2)``) maps a position (z, y, x in millimetres,
  scaled to about [-1, 1]) to an image value and to tissue logits (background and three
  intensity classes of the input). The image head is a residual over cubic B-spline
  interpolation of the acquired slices (``models.baseline``): the in-plane detail of a
  256x256 slice is already in the data, and a network fitted for a few hundred steps on a CPU
  would blur it; what the network has to find is the through-plane structure, which the
  residual carries. ``residual = False`` fits the image from the coordinates alone (the paper).
- **Loss** on random acquired voxels: L1 data consistency of the prediction re-acquired with
  the acquisition's own slice profile and sampling (``models.simulate.slice_profile_matrix``,
  the operator of ``models.trust`` and the simulator); Dice plus cross-entropy of the
  re-acquired tissue probabilities against a Gaussian-mixture segmentation of the input
  (``segment``: fitted in the head's core, so scalp fat does not take a class);
  and anisotropic total variation of the thin-slice image at random points.
- **Contrast step** (optional, ``contrast_gains``): a tissue contrast vector ``c`` is fitted to
  the predicted image over the predicted probabilities by bounded least squares
  (``scipy.optimize.lsq_linear``, intensities >= 0), and the image moves by ``P (c' - c)``,
  where ``c'`` multiplies each named class's level relative to ``bright`` by its gain: tissue
  contrast changes, structure stays. Gains, not target ratios, because a 3-class mixture of
  blurred thick slices is not pure tissue (its "mid" class mixes GM with partial volume), so
  only the change is meaningful: for T1 at 0.36 T to the high-field target,
  ``{"mid": 0.66 / 0.84}`` (``models.target`` over the profile's GM/WM SNR ratio).

It stops after ``iterations`` steps or ``time_budget_s`` seconds, whichever comes first
(configurable, so a job fits its timeout), runs on CUDA when there is one, and reports its
progress through a callback and the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from models.baseline import cubic_bspline_upsample
from models.engine import EngineInfo, EngineResult, low_field_mr
from models.normalize import head_core, head_mask
from models.simulate import slice_profile_matrix
from models.trust import consistency_psnr

log = logging.getLogger(__name__)

NAME = "inr"
VERSION = "0.1.0"
CLASSES = ("background", "dark", "mid", "bright")
"""Tissue classes of the input's segmentation, by intensity on the acquired contrast (on T1:
CSF, GM, WM; on T2: WM, GM, CSF; on FLAIR: CSF, WM, GM)."""

Progress = Callable[[int, int, float], None]
"""``progress(iteration, iterations, data_consistency_l1)``."""


@dataclass(frozen=True)
class INRSettings:
    """How long and how hard to fit. Defaults fit a 256x256x30 series within a 900 s job."""

    iterations: int = 400
    time_budget_s: float = 300.0
    """Fitting stops at this many seconds even if ``iterations`` are not done."""
    hidden: int = 48
    layers: int = 3
    omega0: float = 10.0
    scale0: float = 10.0
    learning_rate: float = 2e-3
    batch: int = 2048
    """Acquired voxels per step (each re-acquired through all its thin slices)."""
    seg_weight: float = 0.1
    tv_weight: float = 0.02
    tv_points: int = 2048
    residual: bool = True
    contrast_gains: Mapping[str, float] | None = None
    """Factor on each class's level relative to ``bright`` (``{"mid": 0.79}``); None: off."""
    seed: int = 0
    device: str | None = None
    """``cuda``/``cpu``; None: CUDA when available."""
    threads: int | None = None
    chunk: int = 1 << 16
    """Points per forward pass when the whole volume is evaluated."""


@dataclass
class FitReport:
    """What the fit did, for the job's notes and the tests."""

    iterations: int
    seconds: float
    device: str
    dc_l1_start: float
    dc_l1_end: float
    history: list[float] = field(default_factory=list)


def _torch():
    import torch

    return torch


class _GaborNet:
    """Builds the torch module lazily so ``import models.inr`` stays free of torch."""

    @staticmethod
    def build(settings: INRSettings, out_features: int):
        torch = _torch()
        nn = torch.nn

        class ComplexGabor(nn.Module):
            """WIRE layer: z = W x + b (complex), out = exp(j w0 z - |s0 z|^2)."""

            def __init__(self, n_in: int, n_out: int, first: bool) -> None:
                super().__init__()
                dtype = torch.float32 if first else torch.cfloat
                self.linear = nn.Linear(n_in, n_out, dtype=dtype)
                self.first = first

            def forward(self, x):
                z = self.linear(x)
                return torch.exp(1j * settings.omega0 * z - (settings.scale0 * z).abs().square())

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                width = settings.hidden
                blocks = [ComplexGabor(3, width, True)]
                blocks += [ComplexGabor(width, width, False) for _ in range(settings.layers - 1)]
                self.blocks = nn.Sequential(*blocks)
                self.out = nn.Linear(width, out_features, dtype=torch.cfloat)
                with torch.no_grad():  # start near zero: the residual starts at cubic
                    self.out.weight.mul_(0.1)
                    self.out.bias.zero_()

            def forward(self, x):
                return self.out(self.blocks(x)).real

        return Net()


def segment(
    acquired: np.ndarray,
    seed: int = 0,
    spacing_mm: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Soft labels (4, n, rows, cols) of ``CLASSES``: outside the head, and a 3-class Gaussian
    mixture of intensity fitted in the head's core (``models.normalize.head_core``, 18 mm
    inside the surface: brain, not scalp fat or muscle, which would otherwise take a class)
    and evaluated over the whole head."""
    from sklearn.mixture import GaussianMixture

    head = head_mask(acquired)
    if head.sum() < 30:
        head = acquired > 0
    core = head_core(acquired, spacing_mm or (1.0, 1.0, 1.0)) & head
    if core.sum() < 30:
        core = head
    rng = np.random.default_rng(seed)
    fit_values = acquired[core].astype(np.float64)[:, None]
    if fit_values.shape[0] > 200_000:
        fit_values = fit_values[rng.choice(fit_values.shape[0], 200_000, replace=False)]
    gmm = GaussianMixture(3, random_state=seed, n_init=2).fit(fit_values)
    order = np.argsort(gmm.means_.ravel())
    posterior = gmm.predict_proba(acquired[head].astype(np.float64)[:, None])[:, order]
    labels = np.zeros((len(CLASSES),) + acquired.shape, np.float32)
    labels[0] = ~head
    for c in range(3):
        labels[c + 1][head] = posterior[:, c]
    return labels


class INREngine:
    """``ThroughPlaneEngine`` that fits an implicit neural representation per series."""

    def __init__(
        self, settings: INRSettings | None = None, *, progress: Progress | None = None
    ) -> None:
        self.settings = settings or INRSettings()
        self.progress = progress
        self.last_report: FitReport | None = None

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name=NAME,
            version=VERSION,
            weights_sha256=None,
            description=(
                "unsupervised implicit neural representation (Indrakanti & Simpson 2025), "
                "fitted per case to this series only; no training data, no weights"
            ),
            learned=True,
            unsupervised=True,
        )

    @property
    def supported_factors(self) -> tuple[int, ...]:
        return (2, 3, 4, 5, 6, 7, 8)

    @property
    def device(self) -> str:
        torch = _torch()
        if self.settings.device:
            return self.settings.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def upsample(
        self,
        volume: np.ndarray,
        factor: int,
        slice_thickness_ratio: float = 1.0,
        spacing_mm: tuple[float, float, float] | None = None,
    ) -> EngineResult:
        """Fit to ``volume`` (n, rows, cols) and evaluate on the (n * factor) thin grid."""
        if factor not in self.supported_factors:
            raise ValueError(f"{NAME} supports factors {self.supported_factors}, not {factor}")
        v = np.asarray(volume, dtype=np.float32)
        if v.ndim != 3 or not np.isfinite(v).all():
            raise ValueError("expected a finite (slices, rows, cols) volume")
        fit = _Fit(v, factor, slice_thickness_ratio, spacing_mm, self.settings, self.device)
        report = fit.run(self.progress)
        out, probabilities = fit.evaluate()
        notes: dict[str, object] = {
            "method": "unsupervised per-case INR (WIRE Gabor MLP), residual over cubic"
            if self.settings.residual
            else "unsupervised per-case INR (WIRE Gabor MLP)",
            "iterations": report.iterations,
            "fit_seconds": round(report.seconds, 1),
            "device": report.device,
            "dc_l1_start": report.dc_l1_start,
            "dc_l1_end": report.dc_l1_end,
            "settings": {k: v for k, v in asdict(self.settings).items() if k != "device"},
        }
        if self.settings.contrast_gains:
            # fitted where the segmentation was: the head's core (brain), not the scalp
            core = head_core(v, spacing_mm or (float(factor), 1.0, 1.0))
            out, vectors = contrast_step(
                out,
                probabilities,
                self.settings.contrast_gains,
                np.repeat(core, factor, axis=0),
            )
            notes["contrast_vector"] = vectors
        np.maximum(out, 0.0, out=out)
        self.last_report = report
        score = consistency_psnr(out, v, factor, slice_thickness_ratio)
        return EngineResult(out, consistency_psnr_db=score, notes=notes)


def contrast_step(
    image: np.ndarray,
    probabilities: np.ndarray,
    gains: Mapping[str, float],
    fit_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Change tissue contrast by ``gains`` (on each class's level relative to ``bright``),
    keeping structure.

    ``c`` = argmin ||P c - image|| with c >= 0 (``scipy.optimize.lsq_linear``) over the voxels
    of ``fit_mask`` (default: wherever ``background`` is below one half); ``c'`` = ``c`` with
    each named class multiplied by its gain; the image becomes ``image + P (c' - c)``.
    """
    from scipy.optimize import lsq_linear

    unknown = set(gains) - set(CLASSES[1:-1])
    if unknown:
        raise ValueError(f"contrast gains for classes {sorted(unknown)}; use dark or mid")
    p = probabilities.reshape(len(CLASSES), -1).T
    y = image.reshape(-1)
    head = p[:, 0] < 0.5 if fit_mask is None else np.asarray(fit_mask, bool).reshape(-1)
    rng = np.random.default_rng(0)
    index = np.flatnonzero(head)
    if index.size > 200_000:
        index = rng.choice(index, 200_000, replace=False)
    fit = lsq_linear(p[index].astype(np.float64), y[index].astype(np.float64), bounds=(0, np.inf))
    c = fit.x
    target = c.copy()
    for name, gain in gains.items():
        target[CLASSES.index(name)] = float(gain) * c[CLASSES.index(name)]
    moved = image + (p @ (target - c)).reshape(image.shape).astype(np.float32)
    return moved.astype(np.float32), {"fitted": c.tolist(), "target": target.tolist()}


class _Fit:
    """One fit: the data, the forward model as gather indices, the network and its optimiser."""

    def __init__(
        self,
        acquired: np.ndarray,
        factor: int,
        thickness_ratio: float,
        spacing_mm: tuple[float, float, float] | None,
        settings: INRSettings,
        device: str,
    ) -> None:
        torch = _torch()
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.s = settings
        self.device = device
        self.factor = factor
        n, rows, cols = acquired.shape
        self.thin = n * factor
        self.shape = (self.thin, rows, cols)
        generator = torch.Generator().manual_seed(settings.seed)
        self.generator = generator
        torch.manual_seed(settings.seed)

        # Forward model: thick slice i = sum_j A[i, j] thin slice j (models.simulate).
        a = slice_profile_matrix(self.thin, factor, thickness_ratio)
        # Taps below 1 % of a row's peak carry under 0.5 % of its weight; dropping them (and
        # renormalising) halves the network evaluations of each step.
        a = np.where(a >= 0.01 * a.max(axis=1, keepdims=True), a, 0.0)
        a /= a.sum(axis=1, keepdims=True)
        taps = int((a > 0).sum(axis=1).max())
        tap_index = np.zeros((n, taps), np.int64)
        tap_weight = np.zeros((n, taps), np.float32)
        for i in range(n):
            nz = np.flatnonzero(a[i] > 0)
            tap_index[i, : nz.size], tap_weight[i, : nz.size] = nz, a[i, nz]
        self.tap_index = torch.from_numpy(tap_index).to(device)
        self.tap_weight = torch.from_numpy(tap_weight).to(device)

        # Positions in mm, scaled so the largest half-extent is 1 (isotropic frequencies).
        dz, dy, dx = spacing_mm or (float(factor), 1.0, 1.0)
        thin_dz = dz / factor
        half = max(self.thin * thin_dz, rows * dy, cols * dx) / 2.0
        self.steps = torch.tensor([thin_dz, dy, dx], dtype=torch.float32, device=device) / half
        self.centre = torch.tensor(
            [(self.thin - 1) / 2.0, (rows - 1) / 2.0, (cols - 1) / 2.0], device=device
        )

        self.acquired = torch.from_numpy(acquired).to(device)
        base = (
            cubic_bspline_upsample(acquired, factor, "mirror")
            if settings.residual
            else np.zeros(self.shape, np.float32)
        )
        self.base = torch.from_numpy(np.ascontiguousarray(base)).to(device)
        self.labels = torch.from_numpy(segment(acquired, settings.seed, spacing_mm)).to(device)
        # Sample acquired voxels from the head mostly (3 in 4), so air does not dominate.
        head = (self.labels[0] < 0.5).reshape(-1)
        self.head_index = torch.nonzero(head).squeeze(1)
        self.all_count = acquired.size
        self.net = _GaborNet.build(settings, 1 + len(CLASSES)).to(device)
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=settings.learning_rate)
        # One fixed batch measures data consistency before and after the fit, on equal terms.
        self.probe = self._sample(settings.batch)

    def _coords(self, z, y, x):
        torch = _torch()
        idx = torch.stack([z, y, x], dim=-1).to(torch.float32)
        return (idx - self.centre) * self.steps

    def _predict(self, z, y, x):
        """Image and class logits at thin-grid indices (any matching shapes)."""
        out = self.net(self._coords(z, y, x))
        image = out[..., 0] + self.base[z, y, x]
        return image, out[..., 1:]

    def _sample(self, count: int):
        torch = _torch()
        g = self.generator
        n_head = min(count * 3 // 4, int(self.head_index.numel()))
        pick_head = self.head_index[
            torch.randint(int(self.head_index.numel()), (n_head,), generator=g).to(self.device)
        ]
        pick_any = torch.randint(self.all_count, (count - n_head,), generator=g).to(self.device)
        flat = torch.cat([pick_head, pick_any])
        _, rows, cols = self.acquired.shape
        i, rest = flat // (rows * cols), flat % (rows * cols)
        return i, rest // cols, rest % cols

    def _reacquire(self, i, r, c):
        """The prediction re-acquired at acquired voxels (i, r, c): values and probabilities."""
        torch = _torch()
        z = self.tap_index[i]  # (B, T)
        w = self.tap_weight[i]
        rr, cc = r[:, None].expand_as(z), c[:, None].expand_as(z)
        image, logits = self._predict(z, rr, cc)
        probs = torch.softmax(logits, dim=-1)
        return (w * image).sum(dim=1), (w[..., None] * probs).sum(dim=1)

    def probe_dc(self) -> float:
        """L1 data consistency on the fixed probe batch."""
        torch = _torch()
        i, r, c = self.probe
        with torch.no_grad():
            reacquired, _ = self._reacquire(i, r, c)
        return float((reacquired - self.acquired[i, r, c]).abs().mean())

    def losses(self, batch: int):
        """(data consistency L1, segmentation loss, TV) on a random batch."""
        torch = _torch()
        i, r, c = self._sample(batch)
        reacquired, thick_probs = self._reacquire(i, r, c)
        dc = (reacquired - self.acquired[i, r, c]).abs().mean()

        thick_probs = thick_probs.clamp_min(1e-6)
        target = self.labels[:, i, r, c].T  # (B, C)
        ce = -(target * thick_probs.log()).sum(dim=1).mean()
        inter = (thick_probs * target).sum(dim=0)
        dice = 1.0 - ((2 * inter + 1e-3) / (thick_probs.sum(0) + target.sum(0) + 1e-3)).mean()
        seg = ce + dice

        g = self.generator
        nz, ny, nx = self.shape
        p = [
            torch.randint(m - 1, (self.s.tv_points,), generator=g).to(self.device)
            for m in self.shape
        ]
        centre, _ = self._predict(*p)
        tv = 0.0
        for axis in range(3):
            q = list(p)
            q[axis] = q[axis] + 1
            neighbour, _ = self._predict(*q)
            tv = tv + (neighbour - centre).abs().mean()
        return dc, seg, tv

    def run(self, progress: Progress | None) -> FitReport:
        s = self.s
        start_dc = self.probe_dc()
        started = time.perf_counter()
        history: list[float] = []
        done = 0
        every = max(1, s.iterations // 10)
        for step in range(s.iterations):
            if time.perf_counter() - started > s.time_budget_s:
                log.info("inr: time budget of %.0f s reached at step %d", s.time_budget_s, step)
                break
            dc, seg, tv = self.losses(s.batch)
            loss = dc + s.seg_weight * seg + s.tv_weight * tv
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
            history.append(float(dc.detach()))
            done = step + 1
            if done % every == 0 or done == 1:
                log.info(
                    "inr step %d/%d, data consistency L1 %.4f", done, s.iterations, history[-1]
                )
                if progress is not None:
                    progress(done, s.iterations, history[-1])
        seconds = time.perf_counter() - started
        return FitReport(
            iterations=done,
            seconds=seconds,
            device=self.device,
            dc_l1_start=start_dc,
            dc_l1_end=self.probe_dc(),
            history=history,
        )

    def evaluate(self) -> tuple[np.ndarray, np.ndarray]:
        """The thin-grid image and class probabilities, evaluated in chunks.

        Only inside the head (the input's head mask, widened by 3 voxels in-plane) does the
        network run: air stays the cubic interpolation (or 0 without the residual) and
        ``background``, which on a 256x256 slice halves the evaluation time.
        """
        from scipy import ndimage

        torch = _torch()
        nz, ny, nx = self.shape
        head = (self.labels[0] < 0.5).cpu().numpy()
        head = ndimage.binary_dilation(head, np.ones((1, 7, 7), bool))
        inside = np.flatnonzero(np.repeat(head, self.factor, axis=0))
        image = self.base.cpu().numpy().copy()
        probs = np.zeros((len(CLASSES),) + self.shape, np.float32)
        probs[0] = 1.0
        flat_image = image.reshape(-1)
        flat_probs = probs.reshape(len(CLASSES), -1)
        chunk = self.s.chunk
        with torch.no_grad():
            for start in range(0, inside.size, chunk):
                part = inside[start : start + chunk]
                flat = torch.from_numpy(part).to(self.device)
                z, rest = flat // (ny * nx), flat % (ny * nx)
                y, x = rest // nx, rest % nx
                img, logits = self._predict(z, y, x)
                flat_image[part] = img.cpu().numpy()
                flat_probs[:, part] = torch.softmax(logits, -1).T.cpu().numpy()
        return image, probs


def create_engine(**options: object) -> INREngine:
    """Factory for the pipeline's engine registry; ``options`` are ``INRSettings`` fields (a
    site's ``[profiles.NAME] options``), none for the defaults."""
    return INREngine(INRSettings(**options))  # type: ignore[arg-type]


def accepts_profile(profile: Mapping[str, object]) -> bool:
    """Low-field MR of any contrast (it needs no training data); a missing field is accepted."""
    return low_field_mr(profile)
