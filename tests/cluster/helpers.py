"""Nodes of a cluster under test: ``dicomnode serve`` and ``dicomnode worker`` as processes.

Each node has its own folder (configuration, log) and its own ports; all share one PostgreSQL
schema, one broker queue and one ``data_dir``, as machines of a real cluster share the
database, the broker and an NFS path.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import free_port
from tests.node.helpers import BIN

BROKER_URL = os.environ.get("DICOMNODE_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")


def enhance_rules(pacs_port: int) -> str:
    return f"""
[[destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {pacs_port}

[[rules]]
name = "lowfield-t1"
match = {{ Modality = "MR", MagneticFieldStrength = "<1.0", SeriesDescription = "(?i)t1" }}
action = "enhance"
destinations = ["pacs"]
"""


@dataclass
class ClusterNode:
    """One process of the cluster: ``role`` is ``serve`` or ``worker``."""

    role: str
    workdir: Path
    data_dir: Path
    database_url: str
    queue: str
    pacs_port: int
    broker_url: str = BROKER_URL
    name: str = ""
    cluster: str = ""
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.role}.log"
        self.config_path.write_text(
            f"""
[node]
ae_title = "IQTNODE"
port = {self.port}
bind_address = "127.0.0.1"
data_dir = "{self.data_dir}"
database_url = "{self.database_url}"
http_port = 0
min_free_mb = 1
receiver_processes = 1

[completion]
quiet_seconds = 3
check_interval_seconds = 0.2

[delivery]
initial_backoff_seconds = 0.3
max_backoff_seconds = 1.0
poll_interval_seconds = 0.1
connect_timeout_seconds = 2

[runner]
gpu = "off"
cpu_threads = 1
job_timeout_seconds = 300

[cluster]
enabled = true
broker_url = "{self.broker_url}"
queue = "{self.queue}"
publish_interval_seconds = 0.2
{self.cluster}
{enhance_rules(self.pacs_port)}
"""
        )

    @property
    def config_path(self) -> Path:
        return self.workdir / "node.toml"

    def start(self, timeout: float = 60.0) -> ClusterNode:
        args = [str(BIN), self.role, "--config", str(self.config_path)]
        if self.role == "worker":
            args += ["--device", "cpu", "--name", self.name or self.workdir.name]
        log = self.log_path.open("ab")
        earlier = log.tell()
        # its own session: a SIGKILL of the group takes the worker process with it, as a
        # machine that dies takes all of its processes
        self.process = subprocess.Popen(
            [*args, *self.extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
            start_new_session=True,
        )
        ready = b'"node ready"' if self.role == "serve" else b'"worker ready"'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.role} exited at start:\n{self.log_path.read_text()}")
            with self.log_path.open("rb") as current:
                current.seek(earlier)
                if ready in current.read():
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.role} did not become ready:\n{self.log_path.read_text()}")

    def terminate(self, timeout: float = 60.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the node and every process it started (its session)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return f"--- {self.workdir.name} ---\n" + self.log_path.read_text()[-chars:]
        except OSError:
            return ""


class Database:
    """The test's own view of the cluster's PostgreSQL schema."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url)

    def rows(self, query: str, **params: object) -> list[dict]:
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(sa.text(query), params)]

    def jobs(self) -> list[dict]:
        return self.rows("SELECT * FROM jobs ORDER BY id")

    def events(self, job_id: int) -> list[dict]:
        return self.rows("SELECT * FROM job_events WHERE job_id = :j ORDER BY id", j=job_id)

    def close(self) -> None:
        self.engine.dispose()


def wait_for(predicate, timeout: float, what: str, logs=()):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    tails = "\n".join(node.log_tail() for node in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


class TcpProxy:
    """A loopback TCP relay to a server, whose connections the test can cut and restore:
    the broker's connection cut without touching the machine's RabbitMQ."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                # a connection accepted while cut() ran must not outlive the cut: closing a
                # listening socket does not stop an accept() another thread is blocked in
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Close the listener and every relayed connection: the broker is gone."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            except OSError:
                pass
            listener.close()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.start()
