"""Instances per second received by our node against Orthanc, same files, same machine, same run.

Both receivers fsync (Orthanc's SyncStorageArea defaults to true); both senders are dcmtk's
storescu with TCP_NODELAY=1. One association, then four in parallel (one series each).

    .venv/bin/python bench/bench_intake.py [--series 8] [--rows 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.sample import Acquisition, build_series, load_brain, write_series  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.node.helpers import RunningNode  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def start_orthanc(folder: Path) -> tuple[subprocess.Popen, int]:
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "SyncStorageArea": True,  # fdatasync per stored file, like our fsync discipline
        "Plugins": [],
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        ["Orthanc", str(folder / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=1)
            return process, dicom_port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("Orthanc did not start")


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
    brain = load_brain()
    series = [
        write_series(
            build_series(Acquisition(rows=args.rows, columns=args.rows, seed=100 + i), brain),
            work / f"s{i}",
        )
        for i in range(args.series)
    ]
    total = sum(len(s) for s in series)
    flat = [f for s in series for f in s]
    quarter = max(1, len(series) // 4)
    four = [sum(series[i : i + quarter], []) for i in range(0, len(series), quarter)][:4]
    results: dict[str, dict[str, float]] = {}
    for name in ("orthanc", "dicomnode"):
        for label, groups in (("1 association", [flat]), ("4 associations", four)):
            folder = work / f"{name}-{label[0]}"
            folder.mkdir()
            if name == "orthanc":
                proc, port = start_orthanc(folder)
                aec = "ORTHANC"
                stop = proc.terminate
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
