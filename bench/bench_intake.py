"""Instances per second received by our node against Orthanc, same files, same machine, same run.

Both receivers fsync (Orthanc's SyncStorageArea defaults to true); both senders are dcmtk's
storescu with TCP_NODELAY=1. One association, then four in parallel (one series each).

    .venv/bin/python bench/bench_intake.py [--series 8] [--rows 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_bench_series  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.delivery.orthanc import Orthanc  # noqa: E402
from tests.node.helpers import RunningNode  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def send(port: int, aec: str, groups: list[list[Path]]) -> float:
    """Send each group over its own association, all in parallel; return elapsed seconds."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port), *map(str, g)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for g in groups
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(err.decode())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=8, help="series of 30 instances per run")
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args()
    for tool in ("storescu", "Orthanc"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (apt-get install dcmtk orthanc)")
    work = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    data = write_bench_series(work / "series", args.series, args.rows, first_seed=100)
    total = data.total
    results: dict[str, dict[str, float]] = {}
    for name in ("orthanc", "dicomnode"):
        for label, groups in (
            ("1 association", data.one_association),
            ("4 associations", data.four_associations),
        ):
            folder = work / f"{name}-{label[0]}"
            folder.mkdir()
            if name == "orthanc":
                pacs = Orthanc(folder).start()  # SyncStorageArea defaults to true: fdatasync
                port, aec, stop = pacs.dicom_port, pacs.aet, pacs.stop
            else:
                node = RunningNode(folder, free_port(), min_free_mb=64).start()
                port, aec, stop = node.port, "IQTNODE", node.stop
            try:
                elapsed = send(port, aec, groups)
            finally:
                stop()
            results.setdefault(label, {})[name] = total / elapsed
    print(f"{total} instances of {args.rows}x{args.rows} 16-bit MR, fsync on both receivers")
    print(f"{'':16}{'orthanc/s':>12}{'dicomnode/s':>14}{'ratio':>8}")
    for label, row in results.items():
        ratio = row["dicomnode"] / row["orthanc"]
        print(f"{label:16}{row['orthanc']:12.0f}{row['dicomnode']:14.0f}{ratio:8.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
