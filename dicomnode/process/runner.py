"""The job runner: queued ``enhance`` jobs -> worker processes -> derived series in the outbox.

One worker slot per visible GPU (one job at a time each) plus a bounded CPU pool; each slot owns
a worker process (``dicomnode.process.worker``) that keeps its models loaded between jobs. A slot's
thread claims the oldest queued job, resolves the active model of the job's profile from the
registry *at claim time* (so ``dicomnode models activate`` applies to the next job without a
restart, and never to one already running), sends the work to its process and waits at most
``job_timeout_seconds``. The outcome is committed in one transaction: outputs into the outbox
and the job ``stored`` (or ``failed`` with the pipeline's reason, or forwarded/ignored when no
model fits, as the rule says).

Every state change is a ``job_events`` row. At start, jobs left ``processing`` by a crash go back
to ``queued`` and run again; derived UIDs are deterministic and the outbox is unique per job,
instance and destination, so the PACS receives each enhanced instance once.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from pathlib import Path

from prometheus_client import Histogram
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Instance, Job, JobState, ModelVersion
from db.session import Database
from dicomnode.config import Config
from dicomnode.deliver.delivery import OutboxFile, enqueue, fail_unknown_destinations
from dicomnode.jobs import JobError, transition
from dicomnode.process import registry
from dicomnode.process.worker import (
    NO_MODEL,
    JobProgress,
    ModelSpec,
    OutputFile,
    WorkRequest,
    WorkResult,
    worker_main,
)
from pipeline.settings import PipelineSettings

log = logging.getLogger("dicomnode.process.runner")

PROCESSING_SECONDS = Histogram(
    "dicomnode_processing_seconds",
    "Seconds a worker spent enhancing one series (volume to derived instances written)",
    buckets=(1, 2, 5, 10, 20, 30, 60, 90, 120, 300, 600, 1800),
    registry=None,
)

OUTPUTS_SUBDIR = "outputs"

WORKER_DIED = "worker-died"
"""``WorkResult.reason`` when the worker process died under the job (retried automatically)."""


class _Parked:
    """The node is stopping: the job goes back to the queue and runs again at the next start."""


PARKED = _Parked()


def spec_of(row: ModelVersion) -> ModelSpec:
    settings = row.settings or {}
    return ModelSpec(
        row.id,
        row.name,
        row.version,
        row.factor,
        row.path,
        row.sha256,
        tile=settings.get("tile"),
        consistency_correction=bool(settings.get("consistency_correction", False)),
    )


class WorkerSlot:
    """One place a job can run: a device and the process that keeps models loaded on it."""

    def __init__(self, name: str, device: str, threads: int | None, config: Config):
        self.name = name
        self.device = device
        self.threads = threads
        self.config = config
        self.process: multiprocessing.process.BaseProcess | None = None
        self.connection: Connection | None = None
        self.thread: threading.Thread | None = None
        self.current_job: int | None = None

    def ensure_process(self, preload: list[ModelSpec]) -> None:
        if self.process is not None and self.process.is_alive():
            return
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        node = self.config.node
        self.process = context.Process(
            target=worker_main,
            args=(child, self.device, self.threads, node.log_level, node.log_format),
            name=f"dicomnode-worker-{self.name}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.connection = parent
        log.info("worker process started", extra={"worker": self.name, "pid": self.process.pid})
        if preload:
            parent.send(preload)

    def execute(
        self,
        request: WorkRequest,
        timeout: float,
        stop: threading.Event,
        on_progress: Callable[[str], None] | None = None,
    ) -> WorkResult | _Parked:
        """Run ``request`` in the worker process; a timeout or a stop kills the process.
        Progress lines the process sends on the way go to ``on_progress``."""
        self.ensure_process([])
        assert self.connection is not None and self.process is not None
        self.connection.send(request)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.connection.poll(0.2):
                    message = self.connection.recv()
                    if not isinstance(message, JobProgress):
                        return message
                    if on_progress is not None:
                        on_progress(message.text)
                    continue
            except (EOFError, OSError):
                pass  # the process died; reported below
            if not self.process.is_alive():
                code = self.process.exitcode
                self.kill()
                return WorkResult(
                    request.job_id,
                    ok=False,
                    reason=WORKER_DIED,
                    message=f"worker process {self.name} died (exit code {code}); "
                    "a fresh one takes the next job",
                )
            if stop.is_set():
                self.kill()
                return PARKED
            if time.monotonic() > deadline:
                self.kill()
                return WorkResult(
                    request.job_id,
                    ok=False,
                    reason="timeout",
                    message=f"no result after {timeout:g} s on {self.name}; worker restarted",
                )

    def kill(self) -> None:
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(5)
        if self.connection is not None:
            self.connection.close()
        self.process = None
        self.connection = None

    def close(self, timeout: float = 5.0) -> None:
        """Ask the process to exit, then make sure it has."""
        if self.connection is not None and self.process is not None and self.process.is_alive():
            try:
                self.connection.send(None)
                self.process.join(timeout)
            except (OSError, BrokenPipeError):
                pass
        self.kill()


def cuda_devices() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no usable CUDA is simply no GPU slot
        return 0


def plan_slots(config: Config) -> list[WorkerSlot]:
    """GPU slots (one per device) and the CPU pool, as ``[runner]`` asks."""
    settings = config.runner
    gpus = cuda_devices() if settings.gpu == "auto" else 0
    cpu_workers = settings.cpu_workers if settings.cpu_workers is not None else (0 if gpus else 1)
    threads = settings.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, cpu_workers))
    slots = [WorkerSlot(f"cuda:{i}", f"cuda:{i}", None, config) for i in range(gpus)]
    slots += [WorkerSlot(f"cpu-{i}", "cpu", threads, config) for i in range(cpu_workers)]
    return slots


def runner_pipeline_settings(config: Config) -> PipelineSettings:
    """``[pipeline]`` with what ``[runner]`` decides about the output (format, review marking)."""
    settings = config.pipeline_settings()
    runner = config.runner
    output = {
        "review_below_db": runner.consistency_threshold_db,
        "review_marker": runner.review_marker,
    }
    if runner.output_format:
        output["format"] = runner.output_format
    return settings.model_copy(update={"output": settings.output.model_copy(update=output)})


class JobRunner:
    def __init__(
        self,
        database: Database,
        config: Config,
        *,
        on_stored: Callable[[], None] | None = None,
        on_forward: Callable[[], None] | None = None,
    ):
        self.database = database
        self.config = config
        self.settings = config.runner
        self.outputs_root = config.node.data_dir / OUTPUTS_SUBDIR
        self.on_stored = on_stored or (lambda: None)
        self.on_forward = on_forward or (lambda: None)
        self.pipeline = runner_pipeline_settings(config)
        self.slots: list[WorkerSlot] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._claim_lock = threading.Lock()

    # --- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        resumed = self.recover()
        if resumed:
            log.warning("jobs interrupted while processing queued again", extra={"jobs": resumed})
        self.slots = plan_slots(self.config)
        preload = self.active_specs()
        for slot in self.slots:
            slot.ensure_process(preload)
            slot.thread = threading.Thread(
                target=self._slot_loop, args=(slot,), name=f"runner-{slot.name}", daemon=True
            )
            slot.thread.start()
        log.info("job runner started", extra={"workers": [s.name for s in self.slots]})

    def stop(self, timeout: float = 10.0) -> bool:
        """Park running jobs (back to ``queued``) and stop the worker processes."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        clean = True
        for slot in self.slots:
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - time.monotonic()))
                clean = clean and not slot.thread.is_alive()
            slot.close()
        return clean

    def wake(self) -> None:
        self._wake.set()

    def alive(self) -> dict[str, bool]:
        return {
            f"runner-{s.name}": s.thread is not None and s.thread.is_alive() for s in self.slots
        }

    def recover(self) -> list[int]:
        """Jobs a crash left ``processing`` run again (their outputs are rewritten identically)."""
        with self.database.session() as session:
            jobs = list(session.scalars(select(Job).where(Job.state == JobState.PROCESSING)))
            for job in jobs:
                transition(
                    session,
                    job,
                    JobState.QUEUED,
                    f"interrupted while processing on {job.worker or 'a worker'} "
                    "(node stopped or crashed); queued to run again",
                )
            return [job.id for job in jobs]

    # --- one slot ---------------------------------------------------------------------------------
    def _slot_loop(self, slot: WorkerSlot) -> None:
        while not self._stop.is_set():
            try:
                request = self.claim(slot)
            except Exception:  # noqa: BLE001 - a bad moment of the database must not end the slot
                log.exception("claiming a job failed", extra={"worker": slot.name})
                self._stop.wait(self.settings.poll_interval_seconds * 4)
                continue
            if request is None:
                self._wake.wait(self.settings.poll_interval_seconds)
                self._wake.clear()
                continue
            slot.current_job = request.job_id
            try:
                outcome = slot.execute(
                    request,
                    self.settings.job_timeout_seconds,
                    self._stop,
                    lambda text, job_id=request.job_id: self.record_progress(job_id, text),
                )
                self.finish(slot, request, outcome)
            except Exception:  # noqa: BLE001 - record it on the job, keep the slot running
                log.exception("job %s could not be finished", request.job_id)
                self._fail_quietly(request.job_id, "[internal-error] see the node's log")
            finally:
                slot.current_job = None

    def record_progress(self, job_id: int, text: str) -> None:
        """Keep the running job's last progress line (``jobs.progress``); a failure to write it
        never disturbs the job."""
        try:
            with self.database.session() as session:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == JobState.PROCESSING)
                    .values(progress=text[:200])
                )
        except Exception:  # noqa: BLE001 - progress is for operators only
            log.warning("could not record progress of job %s", job_id, exc_info=True)

    def claim(self, slot: WorkerSlot) -> WorkRequest | None:
        """Move the oldest queued ``enhance`` job to ``processing`` and build its request."""
        with self._claim_lock, self.database.session() as session:
            while True:
                job = session.scalars(
                    select(Job)
                    .where(Job.state == JobState.QUEUED, Job.action == "enhance")
                    .order_by(Job.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if job is None:
                    return None
                request = self._prepare(session, job, slot)
                if request is not None:
                    return request
                session.flush()  # the job was settled without a worker; look at the next one

    def prepare(self, session: Session, job: Job, slot: WorkerSlot) -> WorkRequest | None:
        """Move ``job`` (queued, locked by the caller) to ``processing`` on ``slot``; None when
        it was settled without a worker (no model, originals purged). ``dicomnode worker``
        claims jobs by id through this, with its lease."""
        return self._prepare(session, job, slot)

    def _configured_engine(self, profile: str) -> dict[int, ModelSpec]:
        """Factor -> spec of the weightless engine ``[profiles.NAME]`` names, if any: how a
        profile without a trained model (T2, FLAIR, 64 mT) is enhanced, by ``inr``."""
        configured = self.config.profiles.get(profile)
        if configured is None:
            return {}
        from pipeline.engines import build_engine

        engine = build_engine(configured.engine, **configured.options)
        info = engine.info
        return {
            k: ModelSpec(None, info.name, info.version, k, "", "", options=configured.options)
            for k in engine.supported_factors
        }

    def _prepare(self, session: Session, job: Job, slot: WorkerSlot) -> WorkRequest | None:
        profile = job.profile or self.settings.default_profile
        rows = registry.active_models(session, profile)
        specs = {k: spec_of(row) for k, row in rows.items()} or self._configured_engine(profile)
        if not specs:
            self._no_model(session, job, f"no active model for profile {profile!r}")
            return None
        instances = list(
            session.scalars(
                select(Instance)
                .where(Instance.series_id == job.series_id)
                .order_by(Instance.instance_number, Instance.id)
            )
        )
        purged = [i for i in instances if not i.path]
        if purged or not instances:
            reason = (
                f"[spool-missing] {len(purged)} original(s) already purged"
                if purged
                else "[empty] the series has no instances"
            )
            transition(session, job, JobState.FAILED, reason)
            return None
        models = ", ".join(f"{s.name}@{s.version}/k{s.factor}" for s in specs.values())
        job.attempts = (job.attempts or 0) + 1
        job.worker = slot.name[:32]
        transition(
            session, job, JobState.PROCESSING, f"on {slot.name}: profile {profile}, {models}"
        )
        return WorkRequest(
            job_id=job.id,
            series_uid=job.series_uid,
            files=[str(i.path) for i in instances],
            models=specs,
            pipeline=self.pipeline.model_dump(mode="json"),
            output_dir=str(self.outputs_root / f"job-{job.id}"),
        )

    # --- outcomes ---------------------------------------------------------------------------------
    def finish(
        self,
        slot: WorkerSlot,
        request: WorkRequest,
        outcome: WorkResult | _Parked,
        owner: str | None = None,
    ) -> None:
        """Commit ``outcome``. With ``owner`` (a cluster worker's lease), only while the job
        is still held by that lease: a run whose lease expired and was taken over records
        nothing, and leaves the output folder to the run that took it over."""
        with self.database.session() as session:
            job = session.get(Job, request.job_id, with_for_update=True)
            if job is None:
                return
            if owner is not None and job.lease_owner != owner:
                log.warning(
                    "job %s: the lease of %s was lost (now %s); this run's outcome is discarded",
                    job.id,
                    owner,
                    job.lease_owner or "free",
                    extra={"job_id": job.id, "series_uid": job.series_uid},
                )
                return
            if owner is not None:
                job.lease_owner = None
                job.lease_until = None
            if job.state != JobState.PROCESSING:
                log.warning(
                    "job %s became %s while processing; its outputs are discarded",
                    job.id,
                    job.state,
                    extra={"job_id": job.id, "series_uid": job.series_uid},
                )
                shutil.rmtree(request.output_dir, ignore_errors=True)
                return
            if isinstance(outcome, _Parked):
                transition(session, job, JobState.QUEUED, f"parked on {slot.name}: node stopping")
                return
            job.result = _result_record(outcome)
            if outcome.ok:
                self._stored(session, job, outcome)
            elif outcome.reason == NO_MODEL:
                self._no_model(session, job, outcome.message or "no model fits")
            elif outcome.reason == WORKER_DIED:
                self._worker_died(session, job, outcome)
            else:
                transition(session, job, JobState.FAILED, f"[{outcome.reason}] {outcome.message}")
        if isinstance(outcome, WorkResult) and outcome.ok:
            PROCESSING_SECONDS.observe(outcome.seconds)
            self.on_stored()

    def _stored(self, session: Session, job: Job, outcome: WorkResult) -> None:
        spec = outcome.model
        assert spec is not None
        job.model_version_id = spec.id
        job.model_name = spec.name
        job.model_version = spec.version
        job.model_sha256 = spec.sha256
        job.factor = outcome.factor
        job.consistency_psnr_db = outcome.consistency_psnr_db
        job.output_series_uid = outcome.series_instance_uid
        score = (
            "not measured"
            if outcome.consistency_psnr_db is None
            else f"{outcome.consistency_psnr_db:.1f} dB"
        )
        summary = (
            f"{len(outcome.outputs)} enhanced instance(s) by {spec.name}@{spec.version}/k"
            f"{spec.factor} on {outcome.device} in {outcome.seconds:.1f} s; consistency {score}"
        )
        if outcome.fallbacks:
            summary += "; " + "; ".join(outcome.fallbacks)
        if fail_unknown_destinations(session, job, self.config):
            return
        threshold = self.settings.consistency_threshold_db
        if outcome.needs_review:
            job.review = "held" if self.settings.below_threshold == "hold" else "flagged"
        if job.review == "held":
            transition(
                session,
                job,
                JobState.STORED,
                f"{summary}; held for review: below the consistency threshold {threshold:g} dB; "
                f"deliver with `dicomnode jobs release {job.id}`",
            )
            return
        note = (
            f"; below the consistency threshold {threshold:g} dB, marked for review"
            if (job.review == "flagged")
            else ""
        )
        enqueue(session, job, _outbox_files(outcome.outputs), reason=summary + note)

    def _worker_died(self, session: Session, job: Job, outcome: WorkResult) -> None:
        """Queue the job again after its worker died, up to ``worker_died_retries`` times.

        The kernel's OOM killer or a crash in native code ends the process, not the series' hope:
        another run usually succeeds (the memory pressure was elsewhere, a fresh process is
        clean). The count lives on the job, so a node restart does not reset it; past the limit
        the job fails and waits for a person (``dicomnode jobs retry``).
        """
        job.worker_deaths = (job.worker_deaths or 0) + 1
        allowed = self.settings.worker_died_retries
        if job.worker_deaths > allowed:
            transition(
                session,
                job,
                JobState.FAILED,
                f"[{WORKER_DIED}] {outcome.message}; the worker died {job.worker_deaths} time(s) "
                f"on this job, more than worker_died_retries = {allowed}",
            )
            return
        transition(
            session,
            job,
            JobState.QUEUED,
            f"[{WORKER_DIED}] {outcome.message}; queued again automatically "
            f"(retry {job.worker_deaths} of {allowed})",
        )
        self._wake.set()

    def _no_model(self, session: Session, job: Job, why: str) -> None:
        """No model fits: the rule's ``when_no_model`` decides, never another profile's model."""
        rule = next((r for r in self.config.rules if r.name == job.rule), None)
        mode = rule.when_no_model if rule is not None else "ignore"
        if mode == "forward":
            job.action = "forward"
            transition(
                session,
                job,
                JobState.QUEUED,
                f"no model fits: {why}; forwarding the originals as rule {job.rule!r} says",
            )
            self.on_forward()
        else:
            transition(
                session,
                job,
                JobState.CANCELLED,
                f"no model fits: {why}; not enhanced (rule {job.rule!r}: when_no_model = ignore)",
            )

    def _fail_quietly(self, job_id: int, reason: str) -> None:
        try:
            with self.database.session() as session:
                job = session.get(Job, job_id, with_for_update=True)
                if job is not None and job.state == JobState.PROCESSING:
                    transition(session, job, JobState.FAILED, reason)
        except Exception:  # noqa: BLE001
            log.exception("could not record the failure of job %s", job_id)

    def active_specs(self) -> list[ModelSpec]:
        """Every active registry version, for worker processes to load ahead of their first
        job (also ``dicomnode worker``'s); empty when the database cannot say."""
        try:
            with self.database.session() as session:
                return [
                    spec_of(row)
                    for profile in registry.profiles(session)
                    for row in registry.active_models(session, profile).values()
                ]
        except Exception:  # noqa: BLE001 - preloading is an optimisation only
            log.exception("could not list active models to preload")
            return []


def _outbox_files(outputs: Iterable[OutputFile]) -> list[OutboxFile]:
    return [
        OutboxFile(Path(o.path), o.sop_class_uid, o.sop_instance_uid, o.transfer_syntax_uid)
        for o in outputs
    ]


def _result_record(outcome: WorkResult) -> dict:
    """What the job keeps of a run: metadata, outputs, fallbacks, device; UIDs only."""
    record = dataclasses.asdict(outcome)
    record.pop("job_id", None)
    return record


def release(session: Session, job_id: int, by: str) -> Job:
    """Deliver a job held for review (``dicomnode jobs release ID``)."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise JobError(f"no job with id {job_id}")
    if job.state != JobState.STORED or job.review != "held":
        raise JobError(f"job {job_id} is {job.state} and not held for review; nothing to release")
    outputs = (job.result or {}).get("outputs") or []
    missing = [o["path"] for o in outputs if not Path(o["path"]).is_file()]
    if not outputs or missing:
        raise JobError(f"job {job_id}: {len(missing)} output file(s) missing; retry the job")
    job.review = "released"
    files = _outbox_files(OutputFile(**o) for o in outputs)
    enqueue(session, job, files, reason=f"released for delivery after review by {by}")
    return job
