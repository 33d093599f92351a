"""Several machines, for real: receivers and workers as separate processes sharing PostgreSQL,
RabbitMQ and one data_dir; Orthanc as the PACS, counted through its REST API.

Series are small (128x128, 16 slices: k = 4, 64 derived instances each) so that each
enhancement takes seconds on a CPU; the trained model runs as in production.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from pathlib import Path

import pydicom
import pytest

from tests.cluster.helpers import ClusterNode, Database, wait_for
from tests.node.helpers import BIN, storescu
from tests.node.series_files import write_lowfield_series

SMALL = {"rows": 128, "pixel_spacing": 1.8, "slices": 16}
DERIVED_PER_SERIES = 16 * 4


def _series(brain, folder: Path, seed: int) -> tuple[str, list[Path]]:  # type: ignore[no-untyped-def]
    files = write_lowfield_series(brain, folder, seed=seed, **SMALL)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID), files


class Cluster:
    """The nodes of one test, stopped (or killed) at the end whatever happened."""

    def __init__(self, tmp_path: Path, data_dir: Path, url: str, queue: str, pacs_port: int):
        self.tmp_path, self.data_dir, self.url = tmp_path, data_dir, url
        self.queue, self.pacs_port = queue, pacs_port
        self.nodes: list[ClusterNode] = []
        self.db = Database(url)

    def node(self, role: str, name: str, cluster: str = "", **kwargs: object) -> ClusterNode:
        node = ClusterNode(
            role,
            self.tmp_path / name,
            self.data_dir,
            self.url,
            self.queue,
            self.pacs_port,
            name=name,
            cluster=cluster,
            **kwargs,  # type: ignore[arg-type]
        )
        self.nodes.append(node)
        return node.start()

    def close(self) -> None:
        for node in self.nodes:
            node.terminate(timeout=30)
        self.db.close()

    def enhance_jobs(self) -> list[dict]:
        return [j for j in self.db.jobs() if j["action"] == "enhance"]

    def wait_delivered(self, count: int, timeout: float = 240) -> list[dict]:
        def done() -> list[dict] | None:
            jobs = self.enhance_jobs()
            bad = [j for j in jobs if j["state"] in ("failed", "cancelled")]
            assert not bad, f"jobs ended badly: {[(j['id'], j['reason']) for j in bad]}"
            finished = [j for j in jobs if j["state"] == "delivered"]
            return finished if len(finished) >= count else None

        return wait_for(done, timeout, f"{count} delivered enhance job(s)", self.nodes)

    def assert_exactly_once(self, jobs: list[dict], pacs) -> None:  # type: ignore[no-untyped-def]
        """Each job ran to ``stored`` once; each instance went to the PACS once."""
        for job in jobs:
            states = [e["to_state"] for e in self.db.events(job["id"])]
            assert states.count("stored") == 1, (job["id"], states)
            assert states.count("delivered") == 1, (job["id"], states)
        rows = self.db.rows("SELECT state, attempts, sop_instance_uid FROM deliveries")
        assert len(rows) == len(jobs) * DERIVED_PER_SERIES
        assert {r["state"] for r in rows} == {"sent"}
        assert {r["attempts"] for r in rows} == {1}, "an instance was sent more than once"
        assert len({r["sop_instance_uid"] for r in rows}) == len(rows)
        assert pacs.count() == len(jobs) * DERIVED_PER_SERIES
        series = pacs.series()
        assert len(series) == len(jobs)
        for item in series.values():
            assert len(item["Instances"]) == DERIVED_PER_SERIES


@pytest.fixture
def cluster(tmp_path, shared_data, postgres_url, queue_name, pacs):  # type: ignore[no-untyped-def]
    nodes = Cluster(tmp_path, shared_data, postgres_url, queue_name, pacs.dicom_port)
    yield nodes
    nodes.close()


def test_two_receivers_two_workers_four_scanners_exactly_once(cluster, brain, pacs, tmp_path):
    receivers = [cluster.node("serve", f"receiver-{i}") for i in range(2)]
    workers = [cluster.node("worker", f"worker-{i}") for i in range(2)]
    series = [_series(brain, tmp_path / f"scanner-{i}", seed=700 + i) for i in range(4)]
    errors: list[BaseException] = []

    def scanner(i: int) -> None:
        try:
            storescu(receivers[i % 2].port, series[i][1], calling=f"SCANNER{i}")
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=scanner, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    jobs = cluster.wait_delivered(4)
    assert {j["series_uid"] for j in jobs} == {uid for uid, _ in series}
    cluster.assert_exactly_once(jobs, pacs)
    # both workers took part, each claim counted once
    assert {j["attempts"] for j in jobs} == {1}
    ran_on = {e["reason"].split(":")[0] for j in jobs for e in cluster.db.events(j["id"])
              if e["to_state"] == "processing"}  # fmt: skip
    assert ran_on == {"on worker-0", "on worker-1"}, ran_on
    # operations: every worker with its device, heartbeat and counts, in status and /metrics
    result = subprocess.run(
        [str(BIN), "status", "--json", "--config", str(receivers[0].config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["queued"] == 0 and status["broker_ready_messages"] == 0
    shown = {w["name"]: w for w in status["workers"]}
    assert sorted(shown) == [w.name for w in workers]
    assert all(w["device"] == "cpu" and w["state"] == "running" for w in shown.values())
    assert all(w["heartbeat_age_s"] < 30 for w in shown.values())
    wait_for(
        lambda: sum(w["jobs_done"] for w in cluster.db.rows("SELECT jobs_done FROM workers")) == 4,
        30,
        "the workers' counts at their next heartbeat",
        cluster.nodes,
    )
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{_http_port(receivers[1])}/metrics").read()
    text = metrics.decode()
    for worker in workers:
        assert f'dicomnode_worker_up{{device="cpu",worker="{worker.name}"}} 1.0' in text
    assert "dicomnode_worker_jobs_total" in text


def _wait_processing(cluster: Cluster, timeout: float = 120) -> dict:
    def processing() -> dict | None:
        jobs = [j for j in cluster.enhance_jobs() if j["state"] == "processing"]
        return jobs[0] if jobs else None

    return wait_for(processing, timeout, "a job processing", cluster.nodes)


def _http_port(node: ClusterNode) -> int:
    for line in node.log_path.read_text().splitlines():
        if '"node ready"' in line:
            return int(json.loads(line)["http_port"])
    raise AssertionError("no 'node ready' line")


def test_sigkill_of_a_worker_mid_job_the_other_takes_over_after_the_lease(
    cluster, brain, pacs, tmp_path
):
    lease = "lease_seconds = 6\nheartbeat_seconds = 1"
    receiver = cluster.node("serve", "receiver", lease)
    workers = {name: cluster.node("worker", name, lease) for name in ("worker-a", "worker-b")}
    uid, files = _series(brain, tmp_path / "scan", seed=720)
    storescu(receiver.port, files)
    job = _wait_processing(cluster)
    holder = workers.pop(job["worker"])
    (other,) = workers.values()  # up all along: it must wait for the lease, not take the job
    holder.kill()  # the machine dies: the worker and its worker process
    (delivered,) = cluster.wait_delivered(1)
    assert delivered["series_uid"] == uid and delivered["attempts"] == 2
    events = cluster.db.events(delivered["id"])
    takeover = [e for e in events if e["from_state"] == "processing" and e["to_state"] == "queued"]
    assert len(takeover) == 1 and "expired" in takeover[0]["reason"]
    assert f"taken over by {other.name}" in takeover[0]["reason"]
    # not before the lease ran out (renewed every second until the kill)
    claimed = next(e for e in events if e["to_state"] == "processing")
    assert (takeover[0]["at"] - claimed["at"]).total_seconds() >= 5
    assert delivered["worker"] == other.name
    cluster.assert_exactly_once([delivered], pacs)


@pytest.mark.parametrize("drain", [0, 120])
def test_sigterm_drains_a_worker_it_finishes_or_returns_its_job(
    cluster, brain, pacs, tmp_path, drain
):
    receiver = cluster.node("serve", "receiver")
    names = ("worker-a", "worker-b") if drain == 0 else ("worker-a",)
    workers = {n: cluster.node("worker", n, f"drain_seconds = {drain}") for n in names}
    uid, files = _series(brain, tmp_path / "scan", seed=730 + drain)
    storescu(receiver.port, files)
    job = _wait_processing(cluster)
    holder = workers.pop(job["worker"])
    assert holder.terminate(timeout=90) == 0, holder.log_tail()
    (delivered,) = cluster.wait_delivered(1)
    events = cluster.db.events(delivered["id"])
    returned = [e for e in events if e["from_state"] == "processing" and e["to_state"] == "queued"]
    if drain == 0:  # returned at once, finished by the other worker
        assert len(returned) == 1
        assert f"returned by {holder.name}: draining" in returned[0]["reason"]
        (other,) = workers.values()
        assert delivered["worker"] == other.name
    else:  # finished before the worker stopped
        assert returned == []
        assert delivered["worker"] == holder.name
    (row,) = cluster.db.rows("SELECT * FROM workers WHERE name = :n", n=holder.name)
    assert row["state"] == "stopped"
    cluster.assert_exactly_once([delivered], pacs)


def test_broker_connection_cut_while_jobs_queue_nothing_lost_nothing_twice(
    cluster, brain, pacs, tmp_path, rabbitmq
):
    from tests.cluster.helpers import TcpProxy

    proxy = TcpProxy(5672).start()
    broker = f"amqp://guest:guest@127.0.0.1:{proxy.port}//"
    try:
        receiver = cluster.node("serve", "receiver", broker_url=broker)
        cluster.node("worker", "worker-a", broker_url=broker)
        proxy.cut()
        sent = [_series(brain, tmp_path / f"scan-{i}", seed=740 + i) for i in range(2)]
        for _uid, files in sent:
            storescu(receiver.port, files)  # intake needs no broker
        wait_for(
            lambda: len([j for j in cluster.enhance_jobs() if j["state"] == "queued"]) == 2,
            60,
            "two queued jobs",
            cluster.nodes,
        )
        wait_for(
            lambda: b"broker unavailable" in receiver.log_path.read_bytes(),
            30,
            "a failed publish",
            cluster.nodes,
        )
        assert all(j["published_at"] is None for j in cluster.enhance_jobs())
        proxy.restore()
        jobs = cluster.wait_delivered(2, timeout=300)
        assert {j["series_uid"] for j in jobs} == {uid for uid, _ in sent}
        assert {j["attempts"] for j in jobs} == {1}
        cluster.assert_exactly_once(jobs, pacs)
    finally:
        proxy.cut()


def _messages_waiting(broker_url: str, queue: str) -> int:
    """Messages in ``queue``; 0 while the queue does not exist yet."""
    from kombu import Connection

    with Connection(broker_url, connect_timeout=3) as connection:
        try:
            return int(connection.default_channel.queue_declare(queue, passive=True)[1])
        except connection.channel_errors:
            return 0


def test_a_message_lost_in_the_broker_is_published_again(
    cluster, brain, pacs, tmp_path, rabbitmq, queue_name
):
    from kombu import Connection

    receiver = cluster.node("serve", "receiver", "republish_seconds = 3")
    uid, files = _series(brain, tmp_path / "scan", seed=750)
    storescu(receiver.port, files)
    # published_at is committed before the message is sent: wait for the message itself
    wait_for(lambda: _messages_waiting(rabbitmq, queue_name) == 1, 60, "the message", cluster.nodes)
    with Connection(rabbitmq, connect_timeout=3) as connection:  # the broker loses it
        assert connection.default_channel.queue_purge(queue_name) == 1
    cluster.node("worker", "worker-a")
    (delivered,) = cluster.wait_delivered(1)
    assert delivered["series_uid"] == uid and delivered["attempts"] == 1
    assert b"without a message in the broker" in receiver.log_path.read_bytes()
    cluster.assert_exactly_once([delivered], pacs)


@pytest.fixture
def own_postgres():  # type: ignore[no-untyped-def]
    """A PostgreSQL cluster of this test's own, which it may stop and start again."""
    from tests.postgres import Cluster as PostgresCluster
    from tests.postgres import find_bindir

    server = PostgresCluster(find_bindir())
    url = server.start()
    yield server, url
    server.stop()


def _pg_ctl(server, action: str) -> None:  # type: ignore[no-untyped-def]
    if action == "stop":
        result = server._run("pg_ctl", "-D", str(server.data), "-m", "fast", "-w", "stop")
    else:
        options = (
            f"-p {server.port} -k {server.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        result = server._run(
            "pg_ctl", "-D", str(server.data), "-l", str(server.log), "-o", options, "-w", "start"
        )
    assert result.returncode == 0, result.stdout + result.stderr


def test_postgres_unavailable_during_intake_no_false_success_and_intake_resumes(
    tmp_path, shared_data, own_postgres, queue_name, pacs, brain
):
    server, url = own_postgres
    cluster = Cluster(tmp_path, shared_data, url, queue_name, pacs.dicom_port)
    try:
        receiver = cluster.node("serve", "receiver")
        cluster.node("worker", "worker-a")
        uid, files = _series(brain, tmp_path / "scan", seed=760)
        cluster.db.engine.dispose()
        _pg_ctl(server, "stop")
        try:
            during = storescu(receiver.port, files, check=False)
        finally:
            _pg_ctl(server, "start")
        text = during.stdout + during.stderr
        # nothing could be recorded, so nothing may have been acknowledged as stored
        assert "Received Store Response (Success)" not in text, text[-3000:]
        assert cluster.db.rows("SELECT count(*) AS n FROM instances")[0]["n"] == 0
        # intake resumes by itself: the same receiver, no restart
        again = wait_for(
            lambda: (
                r
                if "Received Store Response (Success)"
                in (r := storescu(receiver.port, files, check=False)).stdout + r.stderr
                else None
            ),
            60,
            "intake to accept again",
            cluster.nodes,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        (delivered,) = cluster.wait_delivered(1)
        assert delivered["series_uid"] == uid
        cluster.assert_exactly_once([delivered], pacs)
    finally:
        cluster.close()
