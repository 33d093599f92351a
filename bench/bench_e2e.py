"""End-to-end latency and throughput, scanner to PACS, beside two peers in the same run.

What a radiologist waits for: from the scanner's last instance acknowledged (storescu exits) to
the last enhanced instance acknowledged by the PACS (the job's ``delivered`` event; Orthanc
answers each C-STORE once it has stored the file). Broken into stages from the job's events and
the pipeline's own timings: completion (the series announces ImagesInAcquisition, so it
completes on its last instance; no quiet period is waited), queue wait, volume, bias, engine,
derive, the worker's reading/writing, and store-to-delivered.

Rows, all into a fresh Orthanc (TCP_NODELAY=1) with the same series files:

- ``storescu -> PACS``: dcmtk straight into Orthanc, the floor (end to end 0 by definition);
- ``node forward``: the node as a plain router (``action = "forward"``);
- ``node enhance CPU``: ``[runner] gpu = "off"``, the default CPU pool (k = 4);
- ``node enhance GPU``: ``gpu = "auto"`` when CUDA is available (otherwise said and skipped).

Each node row starts with a warm-up series (model loaded, first inference done), as in a node
that has been running. Then ``--repeat`` single series one after another, then ``--scanners``
series sent at once by as many storescu processes (throughput: series per minute from the first
byte to the last series delivered, and each series' end-to-end latency).

    .venv/bin/python bench/bench_e2e.py [--rows 256] [--slices 30] [--scanners 4] [--repeat 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode import logs  # noqa: E402
from dicomnode.commands.demo import (  # noqa: E402
    FIELD_OF_VIEW_MM,
    PACS_AET,
    JobTimeline,
    Sent,
    demo_config,
    send_with_storescu,
    wait_for_job,
)
from dicomnode.node import Node  # noqa: E402
from dicomnode.pacs import Orthanc, find_orthanc, free_port  # noqa: E402
from dicomnode.process.runner import cuda_devices  # noqa: E402
from pipeline.sample import Acquisition, build_series, load_brain, write_series  # noqa: E402

JOB_TIMEOUT_S = 1800.0
GOALS = {"node enhance CPU": 90.0, "node enhance GPU": 10.0}
"""The issue's goals for one 256x256x30 series, last instance acked -> enhanced series in PACS."""


@dataclass(frozen=True)
class Mode:
    label: str
    action: str | None  # None: storescu straight into the PACS
    gpu: str = "off"
    cpu_workers: int | None = None


@dataclass
class Run:
    """One series: its send, and (through the node) its job as the database recorded it."""

    started_at: dt.datetime
    sent: Sent
    job: JobTimeline | None = None

    @property
    def end_to_end(self) -> float:
        if self.job is None:
            return 0.0  # the last ack came from the PACS itself
        seconds = self.job.end_to_end(self.sent.finished_at)
        assert seconds is not None, f"job {self.job.id} has no delivered event"
        return seconds

    @property
    def in_pacs_at(self) -> dt.datetime:
        return self.sent.finished_at + dt.timedelta(seconds=self.end_to_end)


@dataclass
class ModeResult:
    mode: Mode
    singles: list[Run] = field(default_factory=list)
    burst: list[Run] = field(default_factory=list)
    burst_started: dt.datetime | None = None

    @property
    def burst_seconds(self) -> float:
        assert self.burst_started is not None
        return (max(r.in_pacs_at for r in self.burst) - self.burst_started).total_seconds()

    @property
    def series_per_minute(self) -> float:
        return len(self.burst) / self.burst_seconds * 60.0


@dataclass
class Data:
    warmup: list[Path]
    singles: list[list[Path]]
    burst: list[list[Path]]
    instances_out: int = 0


# --- series ----------------------------------------------------------------------------------


def acquisition(rows: int, slices: int, seed: int) -> Acquisition:
    """The demo's 0.36 T axial T1 (230 mm field of view); distinct seeds give distinct UIDs."""
    return Acquisition(
        rows=rows, columns=rows, pixel_spacing=FIELD_OF_VIEW_MM / rows, slices=slices, seed=seed
    )


def write_data(folder: Path, rows: int, slices: int, repeat: int, scanners: int) -> Data:
    brain = load_brain()

    def one(name: str, acq: Acquisition) -> list[Path]:
        return write_series(build_series(acq, brain), folder / name)

    return Data(
        warmup=one("warmup", acquisition(64, 12, seed=900)),
        singles=[one(f"single{i}", acquisition(rows, slices, 300 + i)) for i in range(repeat)],
        burst=[one(f"burst{i}", acquisition(rows, slices, 400 + i)) for i in range(scanners)],
    )


# --- one row ---------------------------------------------------------------------------------


def send(port: int, called: str, files: list[Path], calling: str = "LOWFIELD01") -> Run:
    started = dt.datetime.now(dt.UTC)
    return Run(started, send_with_storescu("storescu", port, files, calling, called))


def send_at_once(port: int, called: str, groups: list[list[Path]]) -> list[Run]:
    """One storescu per series, all started together, as several scanners would."""
    runs: list[Run | None] = [None] * len(groups)
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            runs[index] = send(port, called, groups[index], calling=f"LOWFIELD{index + 1:02d}")
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(groups))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [r for r in runs if r is not None]


def series_uid(files: list[Path]) -> str:
    import pydicom

    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def delivered(node: Node, run: Run, files: list[Path]) -> Run:
    job = wait_for_job(node.database, series_uid(files), ("delivered",), JOB_TIMEOUT_S)
    if job.state != "delivered":
        raise RuntimeError(f"job {job.id} ended {job.state}: {job.reason}")
    run.job = job
    return run


def measure_direct(pacs: Orthanc, data: Data, result: ModeResult) -> None:
    for files in data.singles:
        result.singles.append(send(pacs.dicom_port, pacs.aet, files))
    result.burst_started = dt.datetime.now(dt.UTC)
    result.burst = send_at_once(pacs.dicom_port, pacs.aet, data.burst)


def measure_node(mode: Mode, pacs: Orthanc, data: Data, work: Path, result: ModeResult) -> None:
    assert mode.action is not None
    port = free_port()
    config = demo_config(
        work / "node",
        port,
        pacs.dicom_port,
        action=mode.action,
        forward_originals=False,
        quiet_seconds=30.0,
        gpu=mode.gpu,
        cpu_workers=mode.cpu_workers,
    )
    node = Node(config)
    node.start()
    try:
        delivered(node, send(port, "IQTNODE", data.warmup), data.warmup)
        for files in data.singles:
            result.singles.append(delivered(node, send(port, "IQTNODE", files), files))
        result.burst_started = dt.datetime.now(dt.UTC)
        runs = send_at_once(port, "IQTNODE", data.burst)
        result.burst = [delivered(node, r, f) for r, f in zip(runs, data.burst, strict=True)]
    finally:
        node.stop()


def measure(mode: Mode, data: Data, work: Path, orthanc: str) -> ModeResult:
    """A fresh Orthanc (and node) for each row, so no row inherits another's state."""
    folder = work / mode.label.replace(" ", "-")
    pacs = Orthanc(folder / "pacs", aet=PACS_AET, binary=orthanc).start()
    result = ModeResult(mode)
    print(f"  {mode.label} ...", file=sys.stderr, flush=True)
    try:
        if mode.action is None:
            measure_direct(pacs, data, result)
        else:
            measure_node(mode, pacs, data, folder, result)
    finally:
        pacs.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return result


# --- report ----------------------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def stage_rows(results: list[ModeResult]) -> list[tuple[str, Callable[[Run], float | None]]]:
    """Row label -> how to read it from one run, in pipeline order."""
    stages: list[str] = []
    for result in results:
        for run in result.singles:
            if run.job is not None:
                stages += [s for s in run.job.stage_seconds if s not in stages]

    def between(start: str, end: str) -> Callable[[Run], float | None]:
        return lambda r: r.job.between(start, end) if r.job else None

    def stage(name: str) -> Callable[[Run], float | None]:
        return lambda r: r.job.stage_seconds.get(name) if r.job else None

    def completion(r: Run) -> float | None:
        seconds = r.job.between(r.sent.finished_at, "complete") if r.job else None
        return None if seconds is None else max(0.0, seconds)

    def worker_other(r: Run) -> float | None:
        total = r.job.between("processing", "stored") if r.job else None
        if total is None or r.job is None or not r.job.stage_seconds:
            return None
        return total - sum(r.job.stage_seconds.values())

    return [
        ("send: storescu, first byte -> last ack", lambda r: r.sent.seconds),
        ("completion: last ack -> complete", completion),
        ("queue wait: queued -> processing", between("queued", "processing")),
        *[(f"  {name}", stage(name)) for name in stages],
        ("  read, write outputs, hand-over", worker_other),
        ("processing -> stored", between("processing", "stored")),
        ("store -> delivered (in PACS)", between("stored", "delivered")),
        ("END TO END: last ack -> last in PACS", lambda r: r.end_to_end),
        ("total: first byte -> last in PACS", lambda r: r.sent.seconds + r.end_to_end),
    ]


def fmt(value: float | None, width: int = 14, digits: int = 2) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_single(results: list[ModeResult], rows: int, slices: int, repeat: int) -> None:
    width = max(16, *(len(r.mode.label) + 2 for r in results))
    print(
        f"\nOne series {rows}x{rows}x{slices} ({slices} instances in; seconds, median of {repeat})"
    )
    print(f"{'stage':40}" + "".join(f"{r.mode.label:>{width}}" for r in results))
    for label, read in stage_rows(results):
        cells = [median([read(run) for run in r.singles]) for r in results]
        print(f"{label:40}" + "".join(fmt(c, width) for c in cells))
    by_label = {r.mode.label: r for r in results}
    forward = median([run.end_to_end for run in by_label["node forward"].singles])
    direct = median([run.sent.seconds for run in by_label["storescu -> PACS"].singles])
    ratio_forward, ratio_direct = [], []
    for r in results:
        e2e = median([run.end_to_end for run in r.singles]) or 0.0
        total = median([run.sent.seconds + run.end_to_end for run in r.singles]) or 0.0
        ratio_forward.append(e2e / forward if forward else None)
        ratio_direct.append(total / direct if direct else None)
    print(f"{'end to end x node forward':40}" + "".join(fmt(c, width, 1) for c in ratio_forward))
    print(f"{'total x storescu -> PACS':40}" + "".join(fmt(c, width, 1) for c in ratio_direct))
    outputs = [
        len(run.job.output_paths)
        for r in results
        for run in r.singles
        if run.job and run.job.factor
    ]
    factors = {run.job.factor for r in results for run in r.singles if run.job and run.job.factor}
    devices = {run.job.device for r in results for run in r.singles if run.job and run.job.factor}
    if outputs:
        print(
            f"enhanced: k = {sorted(factors)}, {outputs[0]} instances out, on {sorted(devices)}; "
            + ", ".join(f"goal for {k}: <= {v:g} s end to end" for k, v in GOALS.items())
        )


def print_burst(results: list[ModeResult], scanners: int) -> None:
    print(f"\n{scanners} scanners sending at once ({scanners} storescu processes, one series each)")
    print(
        f"{'':24}{'series/min':>12}{'x forward':>11}{'first byte -> all in PACS s':>29}"
        f"  end to end per series, s (last ack -> in PACS)"
    )
    forward = next(r for r in results if r.mode.label == "node forward").series_per_minute
    for r in results:
        per_series = "  ".join(f"{run.end_to_end:6.1f}" for run in r.burst)
        print(
            f"{r.mode.label:24}{r.series_per_minute:12.2f}{r.series_per_minute / forward:11.3f}"
            f"{r.burst_seconds:29.1f}  {per_series}"
        )


# --- main ------------------------------------------------------------------------------------


def modes() -> list[Mode]:
    found = [
        Mode("storescu -> PACS", None),
        Mode("node forward", "forward", gpu="off", cpu_workers=0),
        Mode("node enhance CPU", "enhance", gpu="off"),
    ]
    if cuda_devices():
        found.append(Mode("node enhance GPU", "enhance", gpu="auto"))
    else:
        print("no CUDA device here: the GPU row is skipped", file=sys.stderr)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=256, help="matrix (field of view 230 mm)")
    parser.add_argument("--slices", type=int, default=30, help="5 mm slices every 6 mm")
    parser.add_argument("--scanners", type=int, default=4, help="series sent at once")
    parser.add_argument("--repeat", type=int, default=1, help="single series per row (median)")
    args = parser.parse_args()
    orthanc = find_orthanc()
    if shutil.which("storescu") is None or orthanc is None:
        sys.exit("storescu and Orthanc are required (apt-get install dcmtk orthanc)")
    logs.configure("WARNING", "text")
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    started = time.perf_counter()
    try:
        data = write_data(work / "series", args.rows, args.slices, args.repeat, args.scanners)
        results = [measure(mode, data, work, orthanc) for mode in modes()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_single(results, args.rows, args.slices, args.repeat)
    print_burst(results, args.scanners)
    print(f"\n(benchmark wall time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
