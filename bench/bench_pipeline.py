"""Per-stage times and peak memory of the pipeline on a 256x256x30 series at k=4 and k=8.

Run: ``.venv/bin/python bench/bench_pipeline.py`` (about a minute on 2 cores). Each factor runs in
its own child process so that its peak RSS (``ru_maxrss``, which includes SimpleITK's and
numpy's native buffers, unlike tracemalloc) is its own. Stages: read (dcmread of the files +
``pipeline.volume``), N4 (default settings), engine (``bspline`` incl. normalisation and output
grid), write (``pipeline.derive`` + saving the files). Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _one(factor: int, fmt: str, folder: Path) -> dict[str, object]:
    import pydicom

    from pipeline.bias import correct_bias
    from pipeline.derive import Provenance, derive_series
    from pipeline.engines import get_engine
    from pipeline.enhance import enhance_volume
    from pipeline.io import write_datasets
    from pipeline.settings import PipelineSettings
    from pipeline.volume import read_volume

    settings = PipelineSettings.model_validate(
        {"enhance": {"factor": factor}, "output": {"format": fmt}}
    )
    engine = get_engine("bspline")
    times: dict[str, float] = {}
    start = time.perf_counter()
    datasets = [pydicom.dcmread(p) for p in sorted((folder / "in").glob("*.dcm"))]
    volume = read_volume(datasets, settings.volume)
    times["read"] = time.perf_counter() - start

    start = time.perf_counter()
    bias = correct_bias(volume.image, settings.n4)
    times["n4"] = time.perf_counter() - start

    start = time.perf_counter()
    enhanced = enhance_volume(
        bias.corrected,
        engine,
        mask=bias.mask,
        thickness_ratio=volume.thickness_ratio,
        enhance=settings.enhance,
        intensity=settings.intensity,
    )
    times["engine"] = time.perf_counter() - start

    start = time.perf_counter()
    provenance = Provenance(enhanced.engine, enhanced.factor, "N4", volume.slice_spacing)
    derived = derive_series(enhanced.image, volume, provenance, settings)
    paths = write_datasets(derived, folder / f"out-k{factor}-{fmt}")
    times["write"] = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "factor": factor,
        "format": fmt,
        "output_size": list(enhanced.image.GetSize()),
        "instances": len(paths),
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "total_s": round(sum(times.values()), 2),
        "peak_rss_mib": round(peak_mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--factors", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--format", choices=["sc", "mr"], default="sc")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_one(args.factors[0], args.format, args.child)))
        return

    from pipeline.sample import Acquisition, build_series, write_series

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_series(build_series(Acquisition()), folder / "in")  # 256x256x30, 5 mm every 6 mm
        print(f"series 256x256x30 (0.9 mm, 6 mm slice spacing), format {args.format}")
        print(
            f"{'k':>2} {'read':>6} {'N4':>6} {'engine':>7} {'write':>6} {'total':>6} "
            f"{'peak RSS':>9}  output"
        )
        for factor in args.factors:
            run = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(folder),
                    "--factors",
                    str(factor),
                    "--format",
                    args.format,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(run.stdout.strip().splitlines()[-1])
            s = r["seconds"]
            print(
                f"{factor:>2} {s['read']:>5.2f}s {s['n4']:>5.2f}s {s['engine']:>6.2f}s "
                f"{s['write']:>5.2f}s {r['total_s']:>5.2f}s {r['peak_rss_mib']:>6.0f} MiB  "
                f"{'x'.join(map(str, r['output_size']))} ({r['instances']} instances)"
            )


if __name__ == "__main__":
    main()
