"""Several machines: series per minute and latency with 1, 2 and 4 workers, beside the
single-machine node in the same run, and the orchestration overhead per job.

Every node is a separate process, as in tests/cluster: ``dicomnode serve`` (one receiver) and
``dicomnode worker`` processes sharing PostgreSQL (a schema of its own per row), RabbitMQ (a
queue of its own per row) and one data_dir; the single-machine row is ``dicomnode serve`` with
its defaults (SQLite, in-process runner, one CPU worker with every core). Orthanc is the PACS.

Rows:

- ``single machine``: the single-machine node (one CPU worker with every core), and
  ``single machine x2``: its in-process runner with two CPU workers (``cpu_workers = 2``);
- ``cluster xN``: one receiver and N CPU workers (``cores // N`` threads each, at least 1).

Each row first enhances N warm-up series (models loaded), then ``--series`` series sent at once
by four scanners (four storescu processes, whole series per association). Figures:

- series/min: the burst's series over the time from the first byte sent to the last series
  delivered;
- latency: per series, the job's ``queued`` event to its ``delivered`` event (median, max);
- queue -> claim: the ``queued`` event to the ``processing`` event;
- overhead: with ``--engine bspline`` (classical interpolation, registered without weights so
  that compute does not hide the orchestration) one series at a time, idle workers: queue ->
  claim, and claim -> stored minus the pipeline's own seconds (IPC, outputs into the outbox,
  the commit).

    .venv/bin/python bench/bench_cluster.py [--series 8] [--workers 1,2,4] [--engine iqt|bspline]
        [--overhead 8] [--rows 128] [--slices 16]

This machine's core count bounds the scaling: more CPU workers than cores share the cores, so
the figure to compare is per worker and against ``cores x (1 / compute seconds per series)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from dicomnode.pacs import Orthanc, find_orthanc  # noqa: E402
from pipeline.sample import Acquisition, build_series, load_brain, write_series  # noqa: E402
from tests.cluster.helpers import BROKER_URL, ClusterNode, enhance_rules  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.node.helpers import RunningNode, storescu  # noqa: E402

PROFILE = "T1-0.36T"
POSTGRES = os.environ.get(
    "DICOMNODE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SCANNERS = 4
TIMEOUT_S = 1800.0


def _series(folder: Path, count: int, first_seed: int, rows: int, slices: int) -> list[list[Path]]:
    brain = load_brain()
    return [
        write_series(
            build_series(
                Acquisition(rows=rows, columns=rows, seed=first_seed + i, slices=slices,
                            pixel_spacing=1.8 * 128 / rows),
                brain,
            ),
            folder / f"s{first_seed + i}",
        )
        for i in range(count)
    ]  # fmt: skip


def _use_bspline(url: str) -> None:
    """Make classical interpolation the active "model" of the profile (no weights file)."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE model_versions SET state = 'available' WHERE profile = :p"),
            {"p": PROFILE},
        )
        for factor in (2, 3, 4):
            connection.execute(
                sa.text(
                    "INSERT INTO model_versions (name, version, profile, factor, path, sha256, "
                    "source, state, created_at) VALUES ('bspline', 'classical', :p, :f, '', '', "
                    "'imported', 'active', CURRENT_TIMESTAMP)"
                ),
                {"p": PROFILE, "f": factor},
            )
    engine.dispose()


def _timeline(url: str) -> dict[int, dict[str, float]]:
    """Per enhance job: the epoch seconds of its queued/processing/stored/delivered events, and
    the pipeline's own seconds."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        jobs = connection.execute(
            sa.text("SELECT id, state, result FROM jobs WHERE action = 'enhance'")
        ).all()
        events = connection.execute(
            sa.text("SELECT job_id, to_state, at FROM job_events ORDER BY id")
        ).all()
    engine.dispose()
    out: dict[int, dict[str, float]] = {}
    for job_id, state, result in jobs:
        record: dict[str, float] = {}
        if isinstance(result, str):
            result = json.loads(result)
        record["pipeline_s"] = float((result or {}).get("seconds") or 0.0)
        record["state"] = state  # type: ignore[assignment]
        out[job_id] = record
    for job_id, to_state, at in events:
        if job_id in out:
            if isinstance(at, str):  # SQLite through a text query
                at = dt.datetime.fromisoformat(at)
            stamp = at.timestamp() if at.tzinfo else at.replace(tzinfo=dt.UTC).timestamp()
            out[job_id][to_state] = stamp  # the last one of each state
            if to_state == "processing" and "first_processing" not in out[job_id]:
                out[job_id]["first_processing"] = stamp
    return out


def _wait_delivered(url: str, count: int, nodes: list) -> dict[int, dict[str, float]]:  # type: ignore[type-arg]
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        timeline = _timeline(url)
        bad = [j for j, r in timeline.items() if r["state"] in ("failed", "cancelled")]
        if bad:
            raise RuntimeError(f"jobs {bad} failed:\n" + "\n".join(n.log_tail() for n in nodes))
        if sum(1 for r in timeline.values() if r["state"] == "delivered") >= count:
            return timeline
        time.sleep(0.25)
    raise RuntimeError("timed out:\n" + "\n".join(n.log_tail() for n in nodes))


def _send_burst(port: int, series: list[list[Path]]) -> float:
    """Four scanners at once, whole series per association; returns the start (epoch s)."""
    groups = [series[i::SCANNERS] for i in range(SCANNERS)]
    started = time.time()
    threads = [
        threading.Thread(target=lambda g=g: [storescu(port, files) for files in g])
        for g in groups
        if g
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return started


class Row:
    """One configuration under measurement: its processes, database and the burst's figures."""

    def __init__(self, label: str, url: str, nodes: list, port: int):  # type: ignore[type-arg]
        self.label, self.url, self.nodes, self.port = label, url, nodes, port

    def measure(self, warmup: list[list[Path]], burst: list[list[Path]]) -> dict[str, object]:
        _send_burst(self.port, warmup)
        done = _wait_delivered(self.url, len(warmup), self.nodes)
        before = set(done)
        started = _send_burst(self.port, burst)
        timeline = _wait_delivered(self.url, len(warmup) + len(burst), self.nodes)
        jobs = [r for j, r in timeline.items() if j not in before]
        last = max(r["delivered"] for r in jobs)
        latency = [r["delivered"] - r["queued"] for r in jobs]
        claim = [r["first_processing"] - r["queued"] for r in jobs]
        compute = [r["pipeline_s"] for r in jobs]
        return {
            "row": self.label,
            "series_per_min": 60 * len(jobs) / (last - started),
            "latency_median_s": statistics.median(latency),
            "latency_max_s": max(latency),
            "queue_to_claim_median_s": statistics.median(claim),
            "compute_median_s": statistics.median(compute),
        }

    def overhead(self, series: list[list[Path]]) -> dict[str, object]:
        claim, rest = [], []
        for files in series:
            count = len(_timeline(self.url)) + 1
            storescu(self.port, files)
            timeline = _wait_delivered(self.url, count, self.nodes)
            record = timeline[max(timeline)]
            claim.append(record["first_processing"] - record["queued"])
            rest.append(record["stored"] - record["first_processing"] - record["pipeline_s"])
        return {
            "row": self.label,
            "queue_to_claim_median_ms": 1000 * statistics.median(claim),
            "queue_to_claim_max_ms": 1000 * max(claim),
            "claim_to_stored_minus_compute_median_ms": 1000 * statistics.median(rest),
            "pipeline_median_s": statistics.median(
                r["pipeline_s"] for r in _timeline(self.url).values()
            ),
        }

    def stop(self) -> None:
        for node in reversed(self.nodes):
            (node.terminate if hasattr(node, "terminate") else node.stop)()


def _schema(base: str) -> tuple[str, str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(base)
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {name}"))
    engine.dispose()
    return name, f"{base}?options=-csearch_path%3D{name}"


def _drop_schema(base: str, name: str) -> None:
    engine = sa.create_engine(base)
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))
    engine.dispose()


def _delete_queue(name: str) -> None:
    from kombu import Connection

    try:
        with Connection(BROKER_URL, connect_timeout=3) as connection:
            connection.default_channel.queue_delete(name)
            connection.default_channel.exchange_delete(name)
    except Exception:  # noqa: BLE001
        pass


def single_row(work: Path, pacs: Orthanc, engine: str, cores: int, workers: int = 1) -> Row:
    """The single-machine node: ``workers`` CPU workers of its in-process runner, the cores
    shared among them as the cluster rows share them."""
    threads = max(1, cores // workers)
    node = RunningNode(
        work / f"single{workers}",
        free_port(),
        quiet_seconds=3,
        rules=enhance_rules(pacs.dicom_port),
        runner=f'gpu = "off"\ncpu_workers = {workers}\ncpu_threads = {threads}\n'
        "job_timeout_seconds = 900",
        node_extra="receiver_processes = 1",
    ).start()
    url = f"sqlite:///{node.data_dir / 'dicomnode.sqlite3'}"
    if engine == "bspline":
        _use_bspline(url)
    label = "single machine" + (f" x{workers}" if workers > 1 else "")
    return Row(label, url, [node], node.port)


def cluster_row(
    work: Path, pacs: Orthanc, engine: str, workers: int, cores: int, url: str, queue: str
) -> Row:
    data = work / f"cluster{workers}-data"
    data.mkdir(parents=True)
    common = dict(data_dir=data, database_url=url, queue=queue, pacs_port=pacs.dicom_port)
    receiver = ClusterNode("serve", work / f"cluster{workers}-receiver", **common).start()  # type: ignore[arg-type]
    if engine == "bspline":
        _use_bspline(url)
    threads = max(1, cores // workers)
    nodes = [receiver]
    for i in range(workers):
        node = ClusterNode(
            "worker",
            work / f"cluster{workers}-worker{i}",
            name=f"worker-{i}",
            extra_args=["--threads", str(threads)],
            **common,  # type: ignore[arg-type]
        )
        nodes.append(node.start())
    return Row(f"cluster x{workers}", url, nodes, receiver.port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=8, help="series in the burst")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--engine", choices=["iqt", "bspline"], default="iqt")
    parser.add_argument("--overhead", type=int, default=8, help="series for the overhead rows")
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--slices", type=int, default=16)
    args = parser.parse_args()
    if find_orthanc() is None:
        sys.exit("Orthanc is not installed (apt-get install orthanc)")
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    counts = [int(x) for x in args.workers.split(",") if x]
    seed = 9000
    results: list[dict[str, object]] = []
    overhead: list[dict[str, object]] = []
    try:
        plans: list[tuple[str, int]] = [("single", 1), ("single", 2)]
        plans += [("cluster", n) for n in counts]
        for kind, n in plans:
            pacs = Orthanc(work / f"orthanc-{kind}{n}").start()
            schema = queue = None
            try:
                if kind == "single":
                    row = single_row(work, pacs, args.engine, cores, n)
                else:
                    schema, url = _schema(POSTGRES)
                    queue = f"bench-{uuid.uuid4().hex[:8]}"
                    row = cluster_row(work, pacs, args.engine, n, cores, url, queue)
                try:
                    warm = _series(work / "in", n, seed, args.rows, args.slices)
                    seed += 100
                    burst = _series(work / "in", args.series, seed, args.rows, args.slices)
                    seed += 100
                    results.append(row.measure(warm, burst))
                    print(results[-1], flush=True)
                finally:
                    row.stop()
            finally:
                pacs.stop()
                if schema:
                    _drop_schema(POSTGRES, schema)
                if queue:
                    _delete_queue(queue)
        # the orchestration, with compute out of the way: bspline, idle workers, one at a time
        for kind in ("single", "cluster"):
            pacs = Orthanc(work / f"orthanc-overhead-{kind}").start()
            schema = queue = None
            try:
                if kind == "single":
                    row = single_row(work / "overhead", pacs, "bspline", cores)
                else:
                    schema, url = _schema(POSTGRES)
                    queue = f"bench-{uuid.uuid4().hex[:8]}"
                    row = cluster_row(work / "overhead", pacs, "bspline", 1, cores, url, queue)
                try:
                    series = _series(work / "in", args.overhead, seed, args.rows, args.slices)
                    seed += 100
                    overhead.append(row.overhead(series))
                    print(overhead[-1], flush=True)
                finally:
                    row.stop()
            finally:
                pacs.stop()
                if schema:
                    _drop_schema(POSTGRES, schema)
                if queue:
                    _delete_queue(queue)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _report(results, overhead, args, cores)


def _report(results: list[dict], overhead: list[dict], args, cores: int) -> None:  # type: ignore[no-untyped-def, type-arg]
    """The table. ``bound``: the row's own compute bound, workers x 60 / (its median compute
    seconds per series, as measured inside the worker with the cores it had); ``of bound``: how
    much of it the row reached, the rest being orchestration, intake, delivery and idle gaps."""
    print(f"\n{cores} cores; engine {args.engine}; burst of {args.series} series "
          f"({args.rows}x{args.rows}x{args.slices}) from {SCANNERS} scanners")  # fmt: skip
    print(f"{'row':16} {'series/min':>10} {'per worker':>10} {'bound':>6} {'of bound':>8} "
          f"{'latency med/max s':>18} {'queue->claim s':>14} {'compute s':>9}")  # fmt: skip
    for r in results:
        workers = int(str(r["row"]).split("x")[-1]) if "x" in str(r["row"]) else 1
        bound = workers * 60 / float(r["compute_median_s"])
        print(
            f"{r['row']:16} {r['series_per_min']:10.1f} {r['series_per_min'] / workers:10.1f} "
            f"{bound:6.1f} {r['series_per_min'] / bound:8.0%} "
            f"{r['latency_median_s']:8.1f}/{r['latency_max_s']:<9.1f} "
            f"{r['queue_to_claim_median_s']:14.2f} {r['compute_median_s']:9.1f}"
        )
    print(
        f"{cores} cores bound every row: workers beyond the cores share them (compute seconds "
        "per series grow), so series/min cannot grow with workers past the cores"
    )
    for r in overhead:
        print(
            f"overhead {r['row']:16} queue->claim median {r['queue_to_claim_median_ms']:.0f} ms "
            f"(max {r['queue_to_claim_max_ms']:.0f}), claim->stored minus compute "
            f"{r['claim_to_stored_minus_compute_median_ms']:.0f} ms, bspline compute "
            f"{r['pipeline_median_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
