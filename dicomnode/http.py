"""HTTP on loopback (``[node] http_address:http_port``): ``/healthz`` and Prometheus ``/metrics``.

``/healthz`` answers 200 with the checks as JSON when the database is reachable, the spool is
writable, free disk is above the floor and every worker thread is alive; 503 otherwise.
``/metrics`` reads counts from the database at scrape time (so they survive restarts) and adds
the in-process delivery latency histogram.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from db.models import Delivery, Instance, Job, Series, SeriesState, Worker, WorkerState, utcnow
from dicomnode.deliver.delivery import DELIVERY_SECONDS
from dicomnode.process.runner import PROCESSING_SECONDS

if TYPE_CHECKING:
    from dicomnode.node import Node

log = logging.getLogger("dicomnode.http")


class NodeCollector:
    def __init__(self, node: Node):
        self.node = node

    def collect(self):  # type: ignore[no-untyped-def]
        database = self.node.database
        with database.session() as session:
            instances = session.scalar(select(func.count()).select_from(Instance)) or 0
            completed = (
                session.scalar(
                    select(func.count()).where(
                        Series.state.in_([SeriesState.COMPLETE, SeriesState.IGNORED])
                    )
                )
                or 0
            )
            jobs = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
            deliveries = session.execute(
                select(Delivery.destination, Delivery.state, func.count()).group_by(
                    Delivery.destination, Delivery.state
                )
            ).all()
            workers = list(session.scalars(select(Worker).order_by(Worker.name)))
        yield CounterMetricFamily(
            "dicomnode_instances_received", "Instances stored by the SCP", value=instances
        )
        yield CounterMetricFamily(
            "dicomnode_series_completed", "Series completed (routed or ignored)", value=completed
        )
        family = GaugeMetricFamily("dicomnode_jobs", "Jobs by state", labels=["state"])
        for state, count in jobs:
            family.add_metric([state], count)
        yield family
        family = GaugeMetricFamily(
            "dicomnode_deliveries",
            "Outbox rows (instance x destination) by destination and state",
            labels=["destination", "state"],
        )
        for destination, state, count in deliveries:
            family.add_metric([destination, state], count)
        yield family
        yield from _worker_families(workers, self.node.config.cluster.lease_seconds)
        health = self.node.health()
        yield GaugeMetricFamily(
            "dicomnode_free_disk_bytes",
            "Free bytes on the spool's filesystem",
            value=float(health.get("free_bytes", 0) or 0),  # type: ignore[arg-type]
        )
        yield GaugeMetricFamily(
            "dicomnode_healthy", "1 when /healthz passes", value=1.0 if health["healthy"] else 0.0
        )


def _worker_families(workers: list[Worker], lease_seconds: float):  # type: ignore[no-untyped-def]
    """Per-worker figures of a cluster (``dicomnode worker`` rows; none on one machine)."""
    now = utcnow()
    up = GaugeMetricFamily(
        "dicomnode_worker_up",
        "1 when the worker's heartbeat is younger than a lease and it has not stopped",
        labels=["worker", "device"],
    )
    age = GaugeMetricFamily(
        "dicomnode_worker_heartbeat_age_seconds",
        "Seconds since the worker's last heartbeat",
        labels=["worker"],
    )
    busy = GaugeMetricFamily(
        "dicomnode_worker_running_jobs", "Jobs the worker runs now", labels=["worker"]
    )
    jobs = CounterMetricFamily(
        "dicomnode_worker_jobs",
        "Jobs each worker finished, by outcome (stored, failed, returned to the queue)",
        labels=["worker", "outcome"],
    )
    seconds = CounterMetricFamily(
        "dicomnode_worker_busy_seconds", "Seconds each worker spent running jobs", labels=["worker"]
    )
    for w in workers:
        beat = w.heartbeat_at if w.heartbeat_at.tzinfo else w.heartbeat_at.replace(tzinfo=dt.UTC)
        seconds_ago = max(0.0, (now - beat).total_seconds())
        alive = w.state != WorkerState.STOPPED and seconds_ago <= lease_seconds
        up.add_metric([w.name, w.device], 1.0 if alive else 0.0)
        age.add_metric([w.name], seconds_ago)
        busy.add_metric([w.name], float(len(w.current_jobs or [])) if alive else 0.0)
        jobs.add_metric([w.name, "stored"], w.jobs_done)
        jobs.add_metric([w.name, "failed"], w.jobs_failed)
        jobs.add_metric([w.name, "returned"], w.jobs_returned)
        seconds.add_metric([w.name], w.busy_seconds)
    yield from (up, age, busy, jobs, seconds)


class HealthServer:
    def __init__(self, node: Node):
        self.node = node
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node))
        self.registry.register(DELIVERY_SECONDS)
        self.registry.register(PROCESSING_SECONDS)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        settings = self.node.config.node
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                try:
                    if self.path.split("?")[0] == "/healthz":
                        health = owner.node.health()
                        body = json.dumps(health, default=str).encode()
                        self._answer(200 if health["healthy"] else 503, body, "application/json")
                    elif self.path.split("?")[0] == "/metrics":
                        self._answer(200, generate_latest(owner.registry), CONTENT_TYPE_LATEST)
                    else:
                        self._answer(404, b"not found\n", "text/plain")
                except Exception as exc:  # noqa: BLE001
                    log.exception("http handler failed")
                    self._answer(500, f"{type(exc).__name__}\n".encode(), "text/plain")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((settings.http_address, settings.http_port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="http", daemon=True).start()
        port = int(self._server.server_address[1])
        log.info("http listening", extra={"address": settings.http_address, "http_port": port})
        return port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
