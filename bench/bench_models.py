"""Inference time and peak memory of the IQT engine beside cubic B-spline (not a pass/fail test).

A 30-slice 256x256 input (the MNI152 head resampled, so tiles see real anatomy) is upsampled at
k = 4 and k = 8 by the released ``iqt-t1`` engine and by cubic B-spline in the same run. Each case
runs in a fresh child process so its peak resident memory (ru_maxrss) is its own; the figure
given is the peak minus the resident size just before the call (loading torch and the weights
excluded). Goals (issue 5): at most 60 s at k = 4 on CPU, at most 5 s on a GPU.
``--detail-weight W`` adds a row per factor with the per-series through-plane detail
(``models/smore.py``) blended at weight W, to show what it costs. Wall-clock seconds and the
process's CPU seconds are both given.

    .venv/bin/python bench/bench_models.py [--threads 2] [--device cpu|cuda] [--run DIR ...]
        [--detail-weight 0.3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPE = (30, 256, 256)


def _input():  # type: ignore[no-untyped-def]
    import numpy as np
    from scipy import ndimage

    from models.brains import load_brain

    t1 = load_brain("mni152-2009a").t1
    zoom = [s / t for s, t in zip(SHAPE, t1.shape, strict=True)]
    return ndimage.zoom(t1, zoom, order=1).astype(np.float32)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(
    method: str,
    factor: int,
    threads: int,
    device: str | None,
    runs: list[str],
    detail_weight: float = 0.0,
) -> dict:
    import torch

    torch.set_num_threads(threads)
    vol = _input()
    if method == "cubic":
        from models.baseline import cubic_bspline_upsample

        def call():  # type: ignore[no-untyped-def]
            return cubic_bspline_upsample(vol, factor)
    else:
        from models.iqt_engine import IQTEngine

        if runs:
            from models.evaluate import engine_from_runs

            engine = engine_from_runs([Path(r) for r in runs], device=device, threads=threads)
        else:
            engine = IQTEngine.from_release(factors=(factor,), device=device, threads=threads)
        if method == "iqt-t1+detail":
            engine.networks[factor].detail_weight = detail_weight  # type: ignore[attr-defined]

        def call():  # type: ignore[no-untyped-def]
            return engine.upsample(vol, factor).volume

    before = _rss_mb()
    t = time.perf_counter()
    cpu = time.process_time()
    out = call()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    cpu_seconds = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "method": method,
        "factor": factor,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 1),
        "peak_rss_mb": round(peak),
        "increase_mb": round(peak - before),
        "output": list(out.shape),
        "threads": threads,
        "device": device or "auto",
    }
    if device == "cuda":
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--run", action="append", default=[], help="training run dirs (model.pt)")
    ap.add_argument(
        "--detail-weight",
        type=float,
        default=0.0,
        help="also time the engine with per-series detail blended at this weight",
    )
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "FACTOR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = child(
            args.child[0],
            int(args.child[1]),
            args.threads,
            args.device,
            args.run,
            args.detail_weight,
        )
        print(json.dumps(res))
        return
    rows = []
    for factor in (4, 8):
        methods = ["cubic", "iqt-t1"] + (["iqt-t1+detail"] if args.detail_weight > 0 else [])
        for method in methods:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                method,
                str(factor),
                "--threads",
                str(args.threads),
                "--detail-weight",
                str(args.detail_weight),
            ]
            if args.device:
                cmd += ["--device", args.device]
            for r in args.run:
                cmd += ["--run", r]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"input {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} (slices x rows x cols)")
    print("| k | method | seconds | CPU seconds | peak RSS MB | increase MB | output |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['factor']} | {r['method']} | {r['seconds']} | {r['cpu_seconds']} "
            f"| {r['peak_rss_mb']} "
            f"| {r['increase_mb']} | {'x'.join(map(str, r['output']))} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
