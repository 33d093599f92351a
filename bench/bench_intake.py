"""Instances per second received by our node against Orthanc, same files, same machine, same run.

Both receivers fsync (Orthanc's SyncStorageArea defaults to true); both senders are dcmtk's
storescu with TCP_NODELAY=1. One association, then four in parallel (one series each). Each
receiver first gets an untimed warm-up series over as many associations. Our node
runs once with one receiver process and once with ``--processes`` (default: one per core, as
the node's own default ``receiver_processes = 0`` starts up to four).

    .venv/bin/python bench/bench_intake.py [--series 8] [--rows 256] [--processes N]
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


def run_once(
    work: Path,
    name: str,
    multi: str,
    label: str,
    groups: list[list[Path]],
    warmup: list[Path],
    args: argparse.Namespace,
    round_number: int,
) -> float:
    """Start one receiver on an empty folder, warm it up, send, stop it; return the seconds
    the timed sending took.

    The warm-up series (other UIDs, not timed) goes to every receiver over as many
    associations as the timed run: the node is a service that runs for months, and what
    a fresh Python process does once (compiling SQL, importing codecs) is not its rate.
    """
    folder = work / f"{name.replace(' ', '')}-{label[0]}-{round_number}"
    folder.mkdir()
    if name == "orthanc":
        pacs = Orthanc(folder).start()  # SyncStorageArea defaults to true: fdatasync
        port, aec, stop = pacs.dicom_port, pacs.aet, pacs.stop
    else:
        processes = args.processes if name == multi else 1
        node = RunningNode(
            folder, free_port(), min_free_mb=64, node_extra=f"receiver_processes = {processes}"
        ).start()
        port, aec, stop = node.port, "IQTNODE", node.stop
    try:
        send(port, aec, [warmup[i :: len(groups)] for i in range(len(groups))])
        return send(port, aec, groups)
    finally:
        stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=8, help="series of 30 instances per run")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds; each receiver's best rate is kept"
    )
    args = parser.parse_args()
    for tool in ("storescu", "Orthanc"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (apt-get install dcmtk orthanc)")
    work = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    data = write_bench_series(work / "series", args.series, args.rows, first_seed=100)
    warmup = write_bench_series(work / "warmup", 1, args.rows, first_seed=900).series[0]
    total = data.total
    results: dict[str, dict[str, float]] = {}
    multi = f"dicomnode x{args.processes}"
    names = ["orthanc", "dicomnode x1"] + ([multi] if args.processes > 1 else [])
    # Round robin, best of N: this machine's disk and CPU speed drift by tens of percent
    # within minutes, and each receiver should meet every state of it.
    for round_number in range(args.repeat):
        for name in names:
            for label, groups in (
                ("1 association", data.one_association),
                ("4 associations", data.four_associations),
            ):
                seconds = run_once(work, name, multi, label, groups, warmup, args, round_number)
                rate = total / seconds
                row = results.setdefault(label, {})
                row[name] = max(row.get(name, 0.0), rate)
    print(
        f"{total} instances of {args.rows}x{args.rows} 16-bit MR, fsync on both receivers, "
        f"best of {args.repeat}"
    )
    print(f"{'':16}" + "".join(f"{name + '/s':>16}{'ratio':>8}" for name in names))
    for label, row in results.items():
        cells = "".join(f"{row[name]:16.0f}{row[name] / row['orthanc']:7.2f}x" for name in names)
        print(f"{label:16}{cells}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
