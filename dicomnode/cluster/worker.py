"""``dicomnode worker``: a Celery worker that runs enhance jobs claimed with a database lease.

One worker per GPU runs the solo pool with prefetch 1, so its model stays loaded in its one
worker process; a CPU worker runs a bounded thread pool, one worker process per thread. Each
job runs exactly as on a single machine (``dicomnode.process.runner``: the worker process
enhances, the outcome is committed in one transaction), with a lease around it:

1. the message's job id is claimed in PostgreSQL (``leases.claim``); a job that is gone or held
   by a live lease is dropped (its holder, or the reconciler once the lease runs out, sees it
   through), a job locked this instant is tried again shortly;
2. a heartbeat thread renews the leases of running jobs every ``heartbeat_seconds`` and writes
   the worker's row (``dicomnode status``). A lease that could not be renewed before it ran out
   (the database unreachable, or the job taken over) stops the job: its outcome is not recorded;
3. the message is acknowledged only when the task returns (``acks_late``).

SIGTERM drains: the worker takes no new job, and the running one finishes within
``[cluster] drain_seconds`` or goes back to the queue (the reconciler publishes it again).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from celery import Celery, signals
from celery.exceptions import Reject

from db.migrate import upgrade
from db.models import WorkerState, utcnow
from db.session import Database
from dicomnode.cluster import leases
from dicomnode.cluster.broker import TASK_NAME, make_app
from dicomnode.config import Config
from dicomnode.process.runner import PARKED, JobRunner, WorkerSlot, cuda_devices
from dicomnode.process.worker import WorkResult

log = logging.getLogger("dicomnode.cluster.worker")

LOCKED_RETRIES = 20
LOCKED_PAUSE_SECONDS = 0.1


@dataclass
class Holding:
    """A job this worker runs: the lease owner and how to stop it."""

    job_id: int
    owner: str
    lease_until: float  # time.monotonic() by which the lease must have been renewed
    abort: threading.Event = field(default_factory=threading.Event)
    why: str = ""


def resolve_device(device: str) -> str:
    """``auto``: the first CUDA device when there is one, else ``cpu``."""
    if device != "auto":
        return device
    return "cuda:0" if cuda_devices() else "cpu"


class ClusterWorker:
    """The state of one ``dicomnode worker`` process: its slots, leases and heartbeat."""

    def __init__(
        self,
        config: Config,
        name: str,
        device: str,
        concurrency: int,
        threads: int | None = None,
    ):
        self.config = config
        self.settings = config.cluster
        self.name = name
        self.device = device
        self.concurrency = concurrency
        self.pool = "solo" if concurrency == 1 else "threads"
        self.database = Database(config.node.resolved_database_url())
        self.runner = JobRunner(self.database, config)
        self.owner_prefix = f"{name}#{os.getpid()}"
        cpu_threads = threads or max(1, (os.cpu_count() or 1) // concurrency)
        self.slots: queue.SimpleQueue[WorkerSlot] = queue.SimpleQueue()
        self._all_slots = [
            WorkerSlot(
                name if concurrency == 1 else f"{name}-{i}",
                device,
                None if device.startswith("cuda") else cpu_threads,
                config,
            )
            for i in range(concurrency)
        ]
        for slot in self._all_slots:
            self.slots.put(slot)
        self.held: dict[int, Holding] = {}
        self._lock = threading.Lock()
        self._counts = _zero_counts()
        self.draining = threading.Event()
        self._drain_deadline: float | None = None
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self.last_beat = time.monotonic()

    # --- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        upgrade(self.database)
        leases.register_worker(
            self.database,
            self.name,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            device=self.device,
            pool=self.pool,
            concurrency=self.concurrency,
        )
        preload = self.runner.active_specs()
        for slot in self._all_slots:
            slot.ensure_process(preload)
        self._beat.start()
        log.info(
            "worker ready",
            extra={"worker": self.name, "device": self.device, "pool": self.pool},
        )

    def healthy(self) -> bool:
        """The heartbeat thread runs and reached the database within a lease (the watchdog)."""
        recent = time.monotonic() - self.last_beat < self.settings.lease_seconds
        return self._beat.is_alive() and recent

    def drain(self) -> None:
        """SIGTERM: take no new job; the running ones finish within drain_seconds or go back."""
        if not self.draining.is_set():
            self._drain_deadline = time.monotonic() + self.settings.drain_seconds
            self.draining.set()
            log.info(
                "worker draining",
                extra={
                    "worker": self.name,
                    "jobs": sorted(self.held),
                    "seconds": self.settings.drain_seconds,
                },
            )

    def close(self) -> None:
        self._stop.set()
        for holding in list(self.held.values()):
            holding.why = "worker stopping"
            holding.abort.set()
        self._beat.join(timeout=self.settings.heartbeat_seconds + 5)
        for slot in self._all_slots:
            slot.close()
        try:
            self._beat_once(WorkerState.STOPPED)
        except Exception:  # noqa: BLE001 - the row's old heartbeat says as much
            log.exception("could not record the worker's stop")
        self.database.dispose()

    # --- one job ---------------------------------------------------------------------------------
    def run_job(self, job_id: int) -> str:
        """Claim and run job ``job_id``; returns what happened (the task's result, unused)."""
        if self.draining.is_set():
            raise Reject("worker draining", requeue=True)
        slot = self.slots.get()
        try:
            return self._run_on(slot, job_id)
        finally:
            self.slots.put(slot)

    def _run_on(self, slot: WorkerSlot, job_id: int) -> str:
        owner = f"{self.owner_prefix}/{slot.name}"[:128]
        for _ in range(LOCKED_RETRIES):
            result = leases.claim(self.database, self.runner, slot, job_id, owner, self.settings)
            if result is not leases.Refusal.LOCKED:
                break
            time.sleep(LOCKED_PAUSE_SECONDS)
        if isinstance(result, leases.Refusal):
            log.info(
                "message dropped: job %s %s",
                job_id,
                result.value,
                extra={"job_id": job_id, "worker": self.name},
            )
            return result.value
        request = result
        holding = Holding(job_id, owner, time.monotonic() + self.settings.lease_seconds)
        with self._lock:
            self.held[job_id] = holding
        started = time.monotonic()
        try:
            outcome = slot.execute(
                request,
                self.config.runner.job_timeout_seconds,
                holding.abort,
                lambda text: self.runner.record_progress(request.job_id, text),
            )
            if outcome is PARKED:
                self._give_back(holding)
                return "returned"
            self.runner.finish(slot, request, outcome, owner=owner)
            ok = isinstance(outcome, WorkResult) and outcome.ok
            with self._lock:
                self._counts["done" if ok else "failed"] += 1
            return "stored" if ok else "failed"
        finally:
            with self._lock:
                self.held.pop(job_id, None)
                self._counts["busy"] += time.monotonic() - started

    def _give_back(self, holding: Holding) -> None:
        why = holding.why or "stopped"
        try:
            returned = leases.return_job(
                self.database, holding.job_id, holding.owner, f"returned by {self.name}: {why}"
            )
        except Exception:  # noqa: BLE001 - the lease runs out and the job is taken over
            log.exception("could not return job %s; its lease will expire", holding.job_id)
            returned = False
        if returned:
            with self._lock:
                self._counts["returned"] += 1

    # --- heartbeat and leases --------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_seconds
        next_beat = 0.0
        while not self._stop.wait(min(0.2, interval)):
            now = time.monotonic()
            self._enforce(now)
            if now < next_beat:
                continue
            next_beat = now + interval
            state = WorkerState.DRAINING if self.draining.is_set() else WorkerState.RUNNING
            try:
                self._beat_once(state)
            except Exception as exc:  # noqa: BLE001 - the lease deadline below decides
                log.warning("heartbeat failed: %s", type(exc).__name__, extra={"worker": self.name})

    def _enforce(self, now: float) -> None:
        """Stop jobs whose lease ran out unrenewed, and jobs past the drain deadline."""
        for holding in list(self.held.values()):
            if holding.abort.is_set():
                continue
            if now > holding.lease_until:
                holding.why = "its lease could not be renewed in time"
                log.warning(
                    "lease of job %s ran out; stopping the job",
                    holding.job_id,
                    extra={"job_id": holding.job_id, "worker": self.name},
                )
                holding.abort.set()
            elif self._drain_deadline is not None and now > self._drain_deadline:
                holding.why = f"draining: not finished within {self.settings.drain_seconds:g} s"
                holding.abort.set()

    def _beat_once(self, state: str) -> None:
        with self._lock:
            held = {h.job_id: h.owner for h in self.held.values() if not h.abort.is_set()}
            counts, self._counts = (
                self._counts,
                {"done": 0, "failed": 0, "returned": 0, "busy": 0.0},
            )
        renewed_at = time.monotonic()
        try:
            lost = leases.renew(self.database, held, self.settings.lease_seconds)
            for job_id in held:
                holding = self.held.get(job_id)
                if holding is None:
                    continue
                if job_id in lost:
                    holding.why = "its lease was lost"
                    holding.abort.set()
                else:
                    holding.lease_until = renewed_at + self.settings.lease_seconds
            self.last_beat = renewed_at
            leases.heartbeat(
                self.database,
                self.name,
                state,
                sorted(held),
                done=int(counts["done"]),
                failed=int(counts["failed"]),
                returned=int(counts["returned"]),
                busy_seconds=float(counts["busy"]),
            )
        except Exception:
            with self._lock:  # counted at the next beat that reaches the database
                for key, value in counts.items():
                    self._counts[key] += value
            raise


def _zero_counts() -> dict[str, float]:
    return {"done": 0, "failed": 0, "returned": 0, "busy": 0.0}


# --- Celery wiring -----------------------------------------------------------------------------
_ACTIVE: ClusterWorker | None = None


def _enhance(job_id: int) -> str:
    if _ACTIVE is None:
        raise Reject("worker not ready", requeue=True)
    return _ACTIVE.run_job(int(job_id))


def build_app(worker: ClusterWorker) -> Celery:
    app = make_app(worker.settings, solo=worker.pool == "solo")
    app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)(_enhance)
    return app


def run(worker: ClusterWorker, on_ready: Callable[[], None] | None = None) -> int:
    """Start ``worker`` and its Celery consumer; returns when it has stopped (SIGTERM).
    ``on_ready`` runs once the consumer takes messages (systemd's READY=1)."""
    global _ACTIVE
    worker.start()
    _ACTIVE = worker

    def _shutting_down(**_kwargs: object) -> None:
        worker.drain()

    def _ready(**_kwargs: object) -> None:
        if on_ready is not None:
            on_ready()

    signals.worker_shutting_down.connect(_shutting_down, weak=False)
    signals.worker_ready.connect(_ready, weak=False)
    app = build_app(worker)
    consumer = app.Worker(
        hostname=f"{worker.name}@{socket.gethostname()}",
        pool_cls=worker.pool,
        concurrency=worker.concurrency,
        loglevel=worker.config.node.log_level,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        optimization="fair",
        quiet=True,
        queues=[worker.settings.queue],
    )
    try:
        consumer.start()
    finally:
        _ACTIVE = None
        worker.close()
        log.info("worker stopped", extra={"worker": worker.name, "at": utcnow().isoformat()})
    return int(consumer.exitcode or 0)
