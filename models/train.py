"""Training of the ANISO U-Net on simulated low-field draws (``dicomnode train CONFIG``).

Seeded and resumable: the checkpoint holds model, optimiser, schedule, step, history and the
random generators' states, so ``--resume`` continues the same run (the current patch buffer is
redrawn, so a resumed run is statistically, not bit-for-bit, the same as an uninterrupted one).
The learning rate warms up linearly then follows a cosine to 5% of its peak.
"""

from __future__ import annotations

import json
import math
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from models.aniso_unet import AnisoUNet, UNetConfig
from models.augment import GridDraw
from models.brains import HELD_OUT_BRAINS, TRAIN_BRAINS, Brain, load_brain
from models.contrast.draw import ContrastDraw
from models.patches import DrawSettings, sample_patches, simulate_pair
from models.profile import PROFILE_NAMES, load_profile


@dataclass
class DataConfig:
    train_brains: list[str] = field(default_factory=lambda: list(TRAIN_BRAINS))
    val_brains: list[str] = field(default_factory=lambda: list(HELD_OUT_BRAINS))
    profile: str = "0.36T"
    noise: str = "gaussian"
    thickness_ratio: float = 1.0
    slice_axes: list[int] = field(default_factory=lambda: [2, 1, 0])
    draws_per_brain: int = 2
    patches_per_draw: int = 128
    patch_in_plane: int = 32
    min_foreground: float = 0.3
    augment: bool = True
    hf_gm_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    val_patches: int = 64
    # Release 0.2 (see models.patches.DrawSettings and models.augment.GridDraw):
    regions: dict[str, str] = field(default_factory=dict)
    val_regions: dict[str, str] = field(default_factory=dict)
    random_grid: bool = False
    in_plane_mm: list[float] = field(default_factory=lambda: [0.9, 1.5])
    thin_mm: list[float] = field(default_factory=lambda: [0.75, 1.5])
    max_rotation_deg: float = 15.0
    max_scale: float = 0.1
    elastic_mm: float = 3.0
    thickness_ratios: list[float] = field(default_factory=list)
    target_contrast: bool = False
    normalisation: str = "head-p99"
    shading: float = 0.15
    shading_target: str = "keep"
    csf_jitter: float = 0.0
    loss_margin_mm: float = 5.0
    outside_weight: float = 1.0
    edge_fraction: float = 0.0
    # Contrast-agnostic networks (iqt-mc; models.contrast.draw): "random" renders each draw in
    # one of ``profiles`` (registry names) with jittered tissue signals; "t1" is the brain's T1.
    contrast: str = "t1"
    profiles: list[str] = field(default_factory=list)
    contrast_jitter: float = 0.15
    random_contrast_probability: float = 0.1
    scalp_gain: list[float] = field(default_factory=lambda: [0.3, 1.5])
    scalp_gamma: list[float] = field(default_factory=lambda: [0.6, 1.6])


@dataclass
class OptimConfig:
    steps: int = 3000
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 100
    loss: str = "mse"
    seed: int = 0
    threads: int = 1
    val_every: int = 200
    checkpoint_every: int = 200
    log_every: int = 50
    max_minutes: float = 0.0
    init_from: str = ""
    draw_workers: int = 0
    # Exponential moving average of the weights (0: off), kept beside the trained weights and
    # saved in model.pt as "ema". Why: the loss swings with each refill's draws (a few brains,
    # one acquisition each), so the last step's weights carry that refill's noise; the average
    # over the last ~1/(1 - decay) steps does not.
    ema_decay: float = 0.0


@dataclass
class TrainConfig:
    model: UNetConfig
    data: DataConfig
    train: OptimConfig

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        raw = tomllib.loads(Path(path).read_text())
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        def build(kind, section: str):  # type: ignore[no-untyped-def]
            values = raw.get(section, {})
            known = set(kind.__dataclass_fields__)
            unknown = set(values) - known
            if unknown:
                raise ValueError(f"unknown keys in [{section}]: {sorted(unknown)}")
            return kind(**values)

        return cls(
            build(UNetConfig, "model"), build(DataConfig, "data"), build(OptimConfig, "train")
        )

    def to_dict(self) -> dict:
        return {"model": asdict(self.model), "data": asdict(self.data), "train": asdict(self.train)}


def initial_weights(
    path: str | Path, device: torch.device, config: UNetConfig | None = None
) -> dict[str, torch.Tensor]:
    """A state dict from a run's ``model.pt`` or a released (float16) ``.safetensors`` file,
    so a later session continues from the weights committed at the end of the last one.

    When ``config`` asks for more base filters than the file has (and nothing else differs),
    the network is widened (``models.widen``) so the wider run starts from the same function.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from models.release import load_weights

        model = load_weights(path, None)
    else:
        saved = torch.load(path, weights_only=False, map_location="cpu")
        model = AnisoUNet(UNetConfig(**saved["config"]["model"]))
        model.load_state_dict(saved["model"])
    if config is not None and config.base_filters != model.config.base_filters:
        from models.widen import widen, widened_config

        if widened_config(model.config, config.base_filters) != config:
            raise ValueError(f"{path.name}: {model.config} cannot be widened to {config}")
        model = widen(model, config.base_filters)
    return {k: v.to(device) for k, v in model.state_dict().items()}


def lr_factor(step: int, cfg: OptimConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def loss_fn(
    pred: torch.Tensor, target: torch.Tensor, kind: str, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared or absolute error, weighted voxel by voxel when ``weight`` is given."""
    if kind == "mse":
        err = (pred - target) ** 2
    elif kind == "l1":
        err = (pred - target).abs()
    else:
        raise ValueError(f"loss must be 'mse' or 'l1', got {kind!r}")
    if weight is None:
        return err.mean()
    return (err * weight).sum() / weight.sum().clamp_min(1e-6)


def draw_settings(cfg: TrainConfig, *, augment: bool | None = None) -> DrawSettings:
    """The simulator settings a configuration describes (training, or validation without
    augmentation)."""
    d = cfg.data
    grid = None
    if d.random_grid:
        grid = GridDraw(
            in_plane_mm=(float(d.in_plane_mm[0]), float(d.in_plane_mm[1])),
            thin_mm=(float(d.thin_mm[0]), float(d.thin_mm[1])),
            max_rotation_deg=d.max_rotation_deg,
            max_scale=d.max_scale,
            elastic_mm=d.elastic_mm,
        )
    ratios = d.thickness_ratios
    contrast = contrast_draw(d)
    return DrawSettings(
        factor=cfg.model.factor,
        profile=contrast.profiles[0] if contrast else load_profile(d.profile),
        noise=d.noise,
        thickness_ratio=d.thickness_ratio,
        slice_axes=tuple(d.slice_axes),
        augment=d.augment if augment is None else augment,
        hf_gm_scale=(float(d.hf_gm_scale[0]), float(d.hf_gm_scale[1])),
        grid=grid,
        thickness_ratios=(float(ratios[0]), float(ratios[1])) if ratios else None,
        target_contrast=d.target_contrast,
        normalisation=d.normalisation,
        shading=d.shading,
        shading_target=d.shading_target,
        csf_jitter=d.csf_jitter,
        loss_margin_mm=d.loss_margin_mm,
        outside_weight=d.outside_weight,
        threads=max(1, cfg.train.threads),
        contrast=contrast,
    )


def contrast_draw(d: DataConfig) -> ContrastDraw | None:
    """The random-contrast draw ``[data] contrast = "random"`` asks for (None for "t1")."""
    if d.contrast == "t1":
        return None
    if d.contrast != "random":
        raise ValueError(f"[data] contrast must be 't1' or 'random', not {d.contrast!r}")
    unknown = sorted(set(d.profiles) - set(PROFILE_NAMES))
    if not d.profiles or unknown:
        raise ValueError(
            f"[data] profiles must list registry profiles ({', '.join(PROFILE_NAMES)}); "
            f"got {d.profiles}"
        )
    return ContrastDraw(
        tuple(load_profile(name) for name in d.profiles),
        jitter=d.contrast_jitter,
        random_probability=d.random_contrast_probability,
        scalp_gain=(float(d.scalp_gain[0]), float(d.scalp_gain[1])),
        scalp_gamma=(float(d.scalp_gamma[0]), float(d.scalp_gamma[1])),
    )


def load_region(name: str, regions: dict[str, str]) -> Brain:
    """A shipped brain, cut to the hemisphere the configuration names for it (if any)."""
    return load_brain(name).hemisphere(regions.get(name, "whole"))


_WORKER_STATE: dict[str, object] = {}


def _init_draw_worker(brains: list, settings: DrawSettings, patch_args: dict) -> None:
    """Runs once in each draw process: keeps the brains and settings for every later task."""
    torch.set_num_threads(1)
    _WORKER_STATE.update(brains=brains, settings=settings, patch_args=patch_args)


def _draw_patches(brain_index: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One simulated acquisition of one brain, cut into patches (in a draw process)."""
    brains = _WORKER_STATE["brains"]
    settings = _WORKER_STATE["settings"]
    rng = np.random.default_rng(seed)
    low, high, weight = simulate_pair(brains[brain_index], settings, rng)  # type: ignore[index,arg-type]
    return sample_patches(low, high, rng=rng, weight=weight, **_WORKER_STATE["patch_args"])  # type: ignore[arg-type]


class PatchStream:
    """Endless shuffled batches, refilled with fresh simulated draws of every training brain.

    With ``train.draw_workers`` > 0 the draws are simulated in that many processes, one refill
    ahead of the training loop (a GPU trains faster than one core can simulate); each draw then
    gets its own seed from the stream's generator, so a run stays reproducible.
    """

    def __init__(self, cfg: TrainConfig, rng: np.random.Generator, brains: list | None = None):
        self.cfg = cfg
        self.rng = rng
        d = cfg.data
        self.brains = (
            brains if brains is not None else [load_region(n, d.regions) for n in d.train_brains]
        )
        self.settings = draw_settings(cfg)
        self.patch_args = {
            "factor": cfg.model.factor,
            "count": d.patches_per_draw,
            "in_plane": d.patch_in_plane,
            "out_slices": d.patch_in_plane,
            "min_foreground": d.min_foreground,
            "edge_fraction": d.edge_fraction,
        }
        self.x = np.empty((0,))
        self.y = np.empty((0,))
        self.w = np.empty((0,))
        self.pos = 0
        self.pool = None
        self.pending: list = []
        if cfg.train.draw_workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(
                cfg.train.draw_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_draw_worker,
                initargs=(self.brains, self.settings, self.patch_args),
            )
            self.pending = self._submit_round()

    def _submit_round(self) -> list:
        assert self.pool is not None
        jobs = [
            (i, int(self.rng.integers(2**63)))
            for i in range(len(self.brains))
            for _ in range(self.cfg.data.draws_per_brain)
        ]
        return [self.pool.submit(_draw_patches, i, seed) for i, seed in jobs]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def refill(self) -> None:
        xs, ys, ws = [], [], []
        if self.pool is not None:
            done, self.pending = self.pending, self._submit_round()
            for future in done:
                x, y, w = future.result()
                xs.append(x)
                ys.append(y)
                ws.append(w)
        else:
            for brain in self.brains:
                for _ in range(self.cfg.data.draws_per_brain):
                    low, high, weight = simulate_pair(brain, self.settings, self.rng)
                    x, y, w = sample_patches(
                        low, high, rng=self.rng, weight=weight, **self.patch_args
                    )
                    xs.append(x)
                    ys.append(y)
                    ws.append(w)
        order = self.rng.permutation(sum(len(x) for x in xs))
        self.x = np.concatenate(xs)[order]
        self.y = np.concatenate(ys)[order]
        self.w = np.concatenate(ws)[order]
        self.pos = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = self.cfg.train.batch_size
        if self.pos + b > len(self.x):
            self.refill()
        sl = slice(self.pos, self.pos + b)
        self.pos += b
        return (
            torch.from_numpy(self.x[sl]),
            torch.from_numpy(self.y[sl]),
            torch.from_numpy(self.w[sl]),
        )


def validation_set(cfg: TrainConfig, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed patches of the held-out brains (or halves): axial, mean SNR, no augmentation;
    with random contrast, each listed profile at its own contrast and mean SNR."""
    if not cfg.data.val_brains:
        return torch.empty(0), torch.empty(0)
    rng = np.random.default_rng(seed)
    settings = draw_settings(cfg, augment=False)
    profiles = settings.contrast.profiles if settings.contrast else (settings.profile,)
    xs, ys = [], []
    per = max(1, cfg.data.val_patches // (len(cfg.data.val_brains) * len(profiles)))
    for name in cfg.data.val_brains:
        brain = load_region(name, cfg.data.val_regions)
        for profile in profiles:
            low, high, _ = simulate_pair(
                brain, settings, rng, axis=2, snr=profile.snr_mean, profile=profile
            )
            x, y, _ = sample_patches(
                low,
                high,
                cfg.model.factor,
                per,
                rng,
                in_plane=cfg.data.patch_in_plane,
                out_slices=cfg.data.patch_in_plane,
                min_foreground=cfg.data.min_foreground,
                flips=False,
            )
            xs.append(x)
            ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


@torch.no_grad()
def validate(model: AnisoUNet, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """MSE and PSNR (peak 1 on the normalised scale) of the model and of linear interpolation."""
    from models.aniso_unet import upsample_slices_linear

    model.eval()
    mse = float(
        sum(
            F.mse_loss(model(x[i : i + 8]), y[i : i + 8], reduction="sum")
            for i in range(0, len(x), 8)
        )
        / y.numel()
    )
    base = float(F.mse_loss(upsample_slices_linear(x, model.config.factor), y))
    model.train()
    return {
        "val_mse": mse,
        "val_psnr": 10 * math.log10(1.0 / max(mse, 1e-12)),
        "val_psnr_linear": 10 * math.log10(1.0 / max(base, 1e-12)),
    }


def plot_curves(history: dict, path: Path) -> None:
    """Training loss (running mean) and validation PSNR against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    steps = np.asarray(history["step"])
    loss = np.asarray(history["loss"])
    if len(loss):
        w = min(50, len(loss))
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        a.semilogy(steps[w - 1 :], smooth)
    a.set_xlabel("step")
    a.set_ylabel("training loss (running mean)")
    if history["val_step"]:
        b.plot(history["val_step"], history["val_psnr"], label="network")
        if history.get("val_psnr_ema"):
            b.plot(history["val_step"], history["val_psnr_ema"], label="network, weight average")
        b.plot(history["val_step"], history["val_psnr_linear"], "--", label="linear interp.")
        b.legend()
    b.set_xlabel("step")
    b.set_ylabel("validation PSNR (dB, patches)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _progress(total: int, initial: int):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        desc="train",
    )


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    brains: list | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) and write ``checkpoint.pt``, ``model.pt``, ``history.json``,
    ``curves.png`` into ``out_dir``. Returns the history. ``brains``/``val`` let tests pass
    small synthetic data instead of loading the shipped brains."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    torch.set_num_threads(max(1, t.threads))
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AnisoUNet(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    ema: AveragedModel | None = None
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t))
    history: dict = {
        "step": [],
        "loss": [],
        "val_step": [],
        "val_psnr": [],
        "val_psnr_linear": [],
        "seconds": 0.0,
    }
    start = 0
    ckpt_path = out / "checkpoint.pt"
    if t.init_from:
        # Warm start (fine-tuning): weights only; optimiser, schedule and step start afresh.
        model.load_state_dict(initial_weights(t.init_from, device, cfg.model))
    if t.ema_decay:
        # After the warm start, so the average begins at the weights the run starts from.
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay))
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False, map_location=device)
        model.load_state_dict(ck["model"])
        if ema is not None and "ema" in ck:
            ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history = ck["history"]
        start = ck["step"]
        rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    stream = PatchStream(cfg, rng, brains)
    vx, vy = val if val is not None else validation_set(cfg)
    vx, vy = vx.to(device), vy.to(device)
    bar = _progress(t.steps, start) if progress else None
    began = time.time() - history["seconds"]
    log = open(out / "train.log", "a")  # noqa: SIM115 - closed in finally

    def save(step: int) -> None:
        history["seconds"] = time.time() - began
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "history": history,
                "step": step,
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "config": cfg.to_dict(),
                **({"ema": ema.state_dict()} if ema is not None else {}),
            },
            ckpt_path,
        )
        (out / "history.json").write_text(json.dumps(history))

    def record_validation(step: int) -> dict[str, float]:
        v = validate(model, vx, vy)
        if ema is not None:
            v["val_psnr_ema"] = validate(ema.module, vx, vy)["val_psnr"]
        history["val_step"].append(step)
        for key in ("val_psnr", "val_psnr_linear", "val_psnr_ema"):
            if key in v:
                history.setdefault(key, []).append(v[key])
        return v

    model.train()
    done = start  # steps completed (optimiser stepped), what a checkpoint resumes from
    try:
        for step in range(start, t.steps):
            x, y, w = stream.next_batch()
            x, y, w = x.to(device), y.to(device), w.to(device)
            loss = loss_fn(model(x), y, t.loss, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            done = step + 1
            history["step"].append(step)
            history["loss"].append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history['loss'][-1]:.2e}", refresh=False)
            if (step + 1) % t.log_every == 0:
                recent = float(np.mean(history["loss"][-t.log_every :]))
                log.write(
                    f"step {step + 1} loss {recent:.4e} lr {sched.get_last_lr()[0]:.2e} "
                    f"elapsed {time.time() - began:.0f}s\n"
                )
                log.flush()
            if len(vx) and ((step + 1) % t.val_every == 0 or step + 1 == t.steps):
                v = record_validation(step + 1)
                log.write(
                    f"step {step + 1} val_psnr {v['val_psnr']:.2f} dB "
                    f"(linear {v['val_psnr_linear']:.2f} dB"
                    + (f", average {v['val_psnr_ema']:.2f} dB" if "val_psnr_ema" in v else "")
                    + ")\n"
                )
                log.flush()
            if (step + 1) % t.checkpoint_every == 0:
                save(step + 1)
                plot_curves(history, out / "curves.png")
            if t.max_minutes and time.time() - began > 60 * t.max_minutes:
                log.write(f"stopping at step {step + 1}: max_minutes {t.max_minutes} reached\n")
                break
        if len(vx) and (not history["val_step"] or history["val_step"][-1] != done):
            record_validation(done)
    finally:
        stream.close()
        if bar is not None:
            bar.close()
        history["steps_done"] = done
        save(done)
        torch.save(
            {
                "model": {k: v.cpu() for k, v in model.state_dict().items()},
                "config": cfg.to_dict(),
                "history": history,
                **(
                    {"ema": {k: v.cpu() for k, v in ema.module.state_dict().items()}}
                    if ema is not None
                    else {}
                ),
            },
            out / "model.pt",
        )
        (out / "history.json").write_text(json.dumps(history))
        plot_curves(history, out / "curves.png")
        log.close()
    return history
