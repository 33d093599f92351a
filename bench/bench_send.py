"""Instances per second sent by our C-STORE sender against dcmtk's storescu: same files, same
Orthanc (fresh storage for each run), same machine, same run; one association, then four.

Rows: ``storescu`` (TCP_NODELAY=1), ``pynetdicom send_c_store`` (a plain pynetdicom sender, the
40-60/s baseline) and ``dicomnode sender`` (``dicomnode.deliver.sender`` over
``dicomnode.net.scu``: what the node uses). The node takes each file's SOP class, instance and
transfer syntax from its outbox rows, so our sender's item list is read from the files before
the clock starts; storescu and the plain pynetdicom sender read their files inside the timing,
as they must.

    .venv/bin/python bench/bench_send.py [--series 8] [--rows 256] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402
from pynetdicom import AE  # noqa: E402

from bench.common import write_bench_series  # noqa: E402
from dicomnode.config import Destination  # noqa: E402
from dicomnode.deliver.sender import FAILURE, Item, Sender  # noqa: E402
from tests.delivery.helpers import items_of  # noqa: E402
from tests.delivery.orthanc import Orthanc  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def storescu(pacs: Orthanc, files: list[Path]) -> None:
    result = subprocess.run(
        [
            "storescu",
            "-aet",
            "BENCH",
            "-aec",
            pacs.aet,
            "127.0.0.1",
            str(pacs.dicom_port),
            *map(str, files),
        ],
        env=ENV,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)


def plain_pynetdicom(pacs: Orthanc, files: list[Path]) -> None:
    ae = AE(ae_title="BENCH")
    sop_class = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPClassUID)
    ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    assert assoc.is_established
    try:
        for path in files:
            status = assoc.send_c_store(path)
            assert status.Status == 0
    finally:
        assoc.release()


def our_sender(pacs: Orthanc, items: list[Item]) -> None:
    dest = Destination(name="pacs", ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port)
    failures = []

    def record(result):  # type: ignore[no-untyped-def]
        if result.outcome == FAILURE:
            failures.append(result)

    Sender("BENCH", dest).send(items, record)
    if failures:
        raise RuntimeError(f"{len(failures)} failed: {failures[0]}")


def timed(method, pacs: Orthanc, groups: list) -> float:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def one(files: list) -> None:
        try:
            method(pacs, files)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(g,)) for g in groups]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=8, help="series of 30 instances")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs per cell")
    args = parser.parse_args()
    for tool in ("storescu", "/usr/sbin/Orthanc"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (apt-get install dcmtk orthanc)")
    work = Path(tempfile.mkdtemp(prefix="bench-send-"))
    data = write_bench_series(work / "series", args.series, args.rows, first_seed=200)
    total, flat, four = data.total, data.one_association[0], data.four_associations
    methods = {
        "storescu": storescu,
        "pynetdicom send_c_store": plain_pynetdicom,
        "dicomnode sender": our_sender,
    }
    results: dict[str, dict[str, float]] = {}
    run = 0
    for label, groups in (("1 assoc", [flat]), ("4 assocs", four)):
        item_groups = [items_of(files) for files in groups]
        # Round robin, so that each sender meets the disk in the same state (the previous
        # Orthanc's storage being deleted, its writeback) as often as the others.
        for _ in range(args.repeat):
            for name, method in methods.items():
                run += 1
                pacs = Orthanc(work / f"pacs{run}").start()
                try:
                    inputs = item_groups if method is our_sender else groups
                    elapsed = timed(method, pacs, inputs)
                    assert pacs.count() == total, (name, pacs.count())
                finally:
                    pacs.stop()
                    shutil.rmtree(work / f"pacs{run}", ignore_errors=True)
                row = results.setdefault(name, {})
                row[label] = max(row.get(label, 0.0), total / elapsed)
    print(
        f"{total} instances of {args.rows}x{args.rows} 16-bit MR into Orthanc (TCP_NODELAY=1), "
        f"best of {args.repeat}"
    )
    print(f"{'sender':28}{'1 assoc/s':>12}{'x storescu':>12}{'4 assocs/s':>12}{'x storescu':>12}")
    ref = results["storescu"]
    for name, row in results.items():
        print(
            f"{name:28}{row['1 assoc']:12.0f}{row['1 assoc'] / ref['1 assoc']:12.2f}"
            f"{row['4 assocs']:12.0f}{row['4 assocs'] / ref['4 assocs']:12.2f}"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
