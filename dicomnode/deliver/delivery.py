"""Delivery: the durable outbox and one sending worker per destination.

A job's files become outbox rows (``deliveries``: one per instance and destination) in the same
transaction that moves the job to ``stored``; from then on the rows alone drive sending, and the
retry schedule (``attempts``, ``next_attempt_at``) lives in the database, so a restart resumes
where it stopped. Each destination has its own worker thread, so a destination that is down only
delays its own rows, never the others nor intake.

A row is ``sent`` on a success or warning status (the warning is kept in ``last_error``). A
failure status that no retry can change (``sender.permanent_failure``: 0xA9xx, 0xCxxx, 0x0122)
fails the row at once, after that one attempt. Any other outcome counts an attempt and
schedules the next after an exponential backoff (``[delivery] initial_backoff_seconds``
doubling up to ``max_backoff_seconds``); after ``max_attempts`` the row is ``failed``. When an
association is lost mid-batch (the destination aborts, stalls past the DIMSE timeout or closes
on one instance), only that instance counts the attempt: the rows behind it were never sent, so
they are due again at once with their count unchanged, and an instance a destination cannot
take never walks the innocent rows of its batch towards ``max_attempts``. When no association
can be established at all, every due row of the destination counts the attempt. When no row of
a job is pending any more the job becomes ``delivered`` (all sent) or ``failed`` with the
reason; ``dicomnode jobs retry ID`` re-arms it.

Results are committed in small groups (at most ``FLUSH_EVERY`` instances or ``FLUSH_SECONDS``)
and always before a worker stops, so SIGTERM loses nothing; after a hard kill at most that many
instances already stored by the destination may be sent again, with the same UIDs (DICOM stores
are idempotent by SOP Instance UID).

``forward`` jobs send the spooled originals unchanged; the job runner (enhance) will call
``enqueue`` with its derived files.

A sender claims its batch (``FOR UPDATE SKIP LOCKED`` and ``claim_owner``/``claim_until``,
renewed at each commit of results, released when it stops), so several senders (receivers on
several machines, ``[cluster]``) never send the same row at once; a dead sender's rows are due
to the others once its claim runs out (``[delivery] claim_seconds``). On one machine the node
clears its own stale claims at start.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Histogram
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from db.models import Delivery, DeliveryState, Instance, Job, JobState, utcnow
from db.session import Database
from dicomnode.config import Config, DeliverySettings, Destination
from dicomnode.deliver.sender import (
    FAILURE,
    REFUSED,
    UNSENT,
    WARNING,
    AssociationFailed,
    Item,
    Result,
    Sender,
    batch_fitting_contexts,
)
from dicomnode.jobs import JobError, transition

log = logging.getLogger("dicomnode.deliver.delivery")

DELIVERY_SECONDS = Histogram(
    "dicomnode_delivery_seconds",
    "Seconds from a job's files entering the outbox to the job being delivered",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400),
    registry=None,
)

FLUSH_EVERY = 32
FLUSH_SECONDS = 0.25


@dataclass(frozen=True)
class OutboxFile:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


# --- the outbox API (used by forwarding now, by the job runner later) --------------------------
def enqueue(
    session: Session,
    job: Job,
    files: Sequence[OutboxFile],
    destinations: Sequence[str] | None = None,
    reason: str | None = None,
) -> int:
    """Put ``files`` in the outbox for each destination and move ``job`` to ``stored``."""
    destinations = list(job.destinations if destinations is None else destinations)
    now = utcnow()
    count = 0
    for name in destinations:
        for f in files:
            session.add(
                Delivery(
                    job_id=job.id,
                    destination=name,
                    sop_instance_uid=f.sop_instance_uid,
                    sop_class_uid=f.sop_class_uid,
                    transfer_syntax_uid=f.transfer_syntax_uid,
                    path=str(f.path),
                    state=DeliveryState.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    converted=False,
                    created_at=now,
                )
            )
            count += 1
    session.flush()
    transition(
        session,
        job,
        JobState.STORED,
        reason or f"{len(files)} instance(s) in the outbox for {', '.join(destinations) or '-'}",
    )
    if count == 0:
        transition(session, job, JobState.DELIVERED, "nothing to deliver (no destination)")
    return count


def fail_unknown_destinations(session: Session, job: Job, config: Config) -> bool:
    """Fail ``job`` if it names destinations the configuration no longer defines (the file was
    edited since the job was queued); True when it did. Its rows would otherwise wait forever."""
    known = {d.name for d in config.destinations}
    unknown = [d for d in job.destinations if d not in known]
    if unknown:
        transition(session, job, JobState.FAILED, f"unknown destination(s) {unknown}")
    return bool(unknown)


def forward_queued(database: Database, config: Config) -> list[int]:
    """Put the originals of every queued ``forward`` job in the outbox; returns the job ids."""
    with database.session() as session:
        ids = list(
            session.scalars(
                select(Job.id)
                .where(Job.action == "forward", Job.state == JobState.QUEUED)
                .order_by(Job.id)
            )
        )
    done = []
    for job_id in ids:
        with database.session() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.state != JobState.QUEUED or job.action != "forward":
                continue
            if fail_unknown_destinations(session, job, config):
                continue
            rows = list(
                session.scalars(
                    select(Instance)
                    .where(Instance.series_id == job.series_id)
                    .order_by(Instance.instance_number, Instance.id)
                )
            )
            missing = [r.sop_instance_uid for r in rows if not r.path]
            if missing or not rows:
                transition(
                    session,
                    job,
                    JobState.FAILED,
                    f"{len(missing)} spooled original(s) no longer on disk (purged)"
                    if missing
                    else "series has no instances",
                )
                continue
            files = [
                OutboxFile(Path(r.path), r.sop_class_uid, r.sop_instance_uid, r.transfer_syntax_uid)
                for r in rows
                if r.path
            ]
            enqueue(
                session,
                job,
                files,
                reason=f"forward: {len(files)} original(s) in the outbox for "
                f"{', '.join(job.destinations)}",
            )
            done.append(job_id)
    return done


def settle(session: Session, job_id: int) -> str | None:
    """Finish a ``stored`` job whose rows are no longer pending; returns its new state."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.state != JobState.STORED:
        return None
    counts = dict(
        session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.job_id == job_id)
            .group_by(Delivery.state)
        ).all()
    )
    if counts.get(DeliveryState.PENDING, 0):
        return None
    sent = counts.get(DeliveryState.SENT, 0)
    failed = counts.get(DeliveryState.FAILED, 0)
    if failed == 0:
        warnings = session.scalar(
            select(func.count()).where(Delivery.job_id == job_id, Delivery.last_error.is_not(None))
        )
        note = f", {warnings} with a warning status" if warnings else ""
        stored_at = (
            job.updated_at if job.updated_at.tzinfo else job.updated_at.replace(tzinfo=dt.UTC)
        )
        DELIVERY_SECONDS.observe(max(0.0, (utcnow() - stored_at).total_seconds()))
        transition(
            session,
            job,
            JobState.DELIVERED,
            f"{sent} instance-destination deliveries succeeded{note}",
        )
        return JobState.DELIVERED
    example = session.scalars(
        select(Delivery)
        .where(Delivery.job_id == job_id, Delivery.state == DeliveryState.FAILED)
        .order_by(Delivery.id)
        .limit(1)
    ).one()
    by_dest = dict(
        session.execute(
            select(Delivery.destination, func.count())
            .where(Delivery.job_id == job_id, Delivery.state == DeliveryState.FAILED)
            .group_by(Delivery.destination)
        ).all()
    )
    where = ", ".join(f"{n} to {d}" for d, n in sorted(by_dest.items()))
    transition(
        session,
        job,
        JobState.FAILED,
        f"delivery failed after {example.attempts} attempt(s): {where} of {sent + failed}; "
        f"last error: {example.last_error}",
    )
    return JobState.FAILED


def retry(session: Session, job_id: int) -> tuple[Job, int]:
    """Re-arm a failed job (or hurry a stored one): its failed/pending rows become due now."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise JobError(f"no job with id {job_id}")
    if job.state not in (JobState.FAILED, JobState.STORED):
        raise JobError(f"job {job_id} is {job.state}; only failed (or stored) jobs can be retried")
    now = utcnow()
    rows = list(
        session.scalars(
            select(Delivery).where(Delivery.job_id == job_id, Delivery.state != DeliveryState.SENT)
        )
    )
    for row in rows:
        row.state = DeliveryState.PENDING
        row.attempts = 0
        row.next_attempt_at = now
    outbox = session.scalar(select(func.count()).where(Delivery.job_id == job_id))
    for row in rows:
        row.claim_owner = None
        row.claim_until = None
    if job.state == JobState.FAILED:
        if outbox:
            transition(session, job, JobState.STORED, f"retry: {len(rows)} delivery(ies) re-armed")
        else:
            job.worker_deaths = 0  # a person asked again: the automatic retries start afresh
            job.attempts = 0  # and so do the claims counted against [cluster] max_attempts
            job.published_at = None
            transition(session, job, JobState.QUEUED, "retry: queued again")
    return job, len(rows)


# --- workers -------------------------------------------------------------------------------------
class DestinationWorker:
    """Sends one destination's due outbox rows, batch by batch, one association per batch."""

    def __init__(self, database: Database, config: Config, destination: Destination):
        self.database = database
        self.settings: DeliverySettings = config.delivery
        self.destination = destination
        self.sender = Sender(
            config.node.ae_title,
            destination,
            connect_timeout=self.settings.connect_timeout_seconds,
            dimse_timeout=self.settings.dimse_timeout_seconds,
        )
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"delivery-{destination.name}", daemon=True
        )
        # who holds claimed outbox rows: unique per process and destination, on any machine
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{destination.name}"[:128]
        self.last_success: dt.datetime | None = None
        self.last_failure: dt.datetime | None = None
        self.last_error: str | None = None
        self.heartbeat = time.monotonic()
        self._pending: list[Result] = []
        self._unsent = 0
        self._last_flush = time.monotonic()

    @property
    def name(self) -> str:
        return self.destination.name

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            self.heartbeat = time.monotonic()
            try:
                worked = self.run_once()
            except Exception:  # noqa: BLE001 - the worker must outlive a bad moment
                log.exception("delivery worker error", extra={"destination": self.name})
                worked = False
            if not worked:
                self.wake.wait(self.settings.poll_interval_seconds)
                self.wake.clear()
        try:
            self.release_claims()
        except Exception:  # noqa: BLE001 - the claims run out by themselves
            log.exception("could not release outbox claims", extra={"destination": self.name})

    def due(self, limit: int) -> list[Item]:
        """Claim up to ``limit`` due rows for this sender and return them.

        ``FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite's write lock serialises the same
        transaction) and the claim columns mean that another sender, in this process or on
        another machine, neither waits for these rows nor sends them while the claim lasts.
        """
        now = utcnow()
        with self.database.session() as session:
            rows = session.execute(
                select(
                    Delivery.id,
                    Delivery.path,
                    Delivery.sop_class_uid,
                    Delivery.sop_instance_uid,
                    Delivery.transfer_syntax_uid,
                )
                .join(Job, Job.id == Delivery.job_id)
                .where(
                    Delivery.destination == self.name,
                    Delivery.state == DeliveryState.PENDING,
                    Delivery.next_attempt_at <= now,
                    or_(Delivery.claim_until.is_(None), Delivery.claim_until < now),
                    Job.state == JobState.STORED,
                )
                .order_by(Delivery.id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=Delivery)
            ).all()
            if rows:
                session.execute(
                    update(Delivery)
                    .where(Delivery.id.in_([r[0] for r in rows]))
                    .values(claim_owner=self.owner, claim_until=self._claim_deadline(now))
                )
        return [Item(r[0], Path(r[1]), r[2], r[3], r[4]) for r in rows]

    def _claim_deadline(self, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=self.settings.claim_seconds)

    def release_claims(self) -> None:
        """Give back the rows this sender still holds (it stops): due again for any sender."""
        with self.database.session() as session:
            session.execute(
                update(Delivery)
                .where(Delivery.claim_owner == self.owner)
                .values(claim_owner=None, claim_until=None)
            )

    def run_once(self) -> bool:
        """Send one batch of due rows; returns whether there was anything to do."""
        items = self.due(self.settings.batch_size)
        if not items:
            return False
        items = batch_fitting_contexts(items)
        started = time.monotonic()
        self._unsent = 0
        try:
            self.sender.send(items, self._on_result, self.stop_event.is_set)
        except AssociationFailed as exc:
            self._association_failed(str(exc))
            return False
        finally:
            self._flush()
        if self._unsent:
            log.warning(
                "association lost mid-batch; the rest of the batch is due again without an "
                "attempt counted",
                extra={"destination": self.name, "instances": self._unsent},
            )
        log.info(
            "batch sent",
            extra={
                "destination": self.name,
                "instances": len(items),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return True

    def _on_result(self, result: Result) -> None:
        if result.outcome == UNSENT:
            self._unsent += 1
        self._pending.append(result)
        if (
            len(self._pending) >= FLUSH_EVERY
            or time.monotonic() - self._last_flush >= FLUSH_SECONDS
        ):
            self._flush()

    def _flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        results, self._pending = self._pending, []
        now = utcnow()
        jobs: set[int] = set()
        with self.database.session() as session:
            for result in results:
                row = session.get(Delivery, result.key)
                if row is None or row.state != DeliveryState.PENDING:
                    continue
                row.claim_owner = None
                row.claim_until = None
                if result.outcome == UNSENT:  # never on the wire: no attempt, due again now
                    row.next_attempt_at = now
                    continue
                jobs.add(row.job_id)
                row.attempts += 1
                row.last_attempt_at = now
                row.last_status = result.status
                row.converted = row.converted or result.converted
                if result.outcome == REFUSED:  # the same bytes will never be taken
                    self._fail_now(row, result.error or "refused", now)
                elif result.outcome != FAILURE:
                    row.state = DeliveryState.SENT
                    row.sent_at = now
                    row.last_error = result.error if result.outcome == WARNING else None
                    self.last_success = now
                else:
                    self._schedule_retry(row, result.error or "failure", now)
            for job_id in sorted(jobs):
                settle(session, job_id)
            # the rest of the batch is still being sent: keep holding it
            session.execute(
                update(Delivery)
                .where(Delivery.claim_owner == self.owner, Delivery.state == DeliveryState.PENDING)
                .values(claim_until=self._claim_deadline(now))
            )

    def _fail_now(self, row: Delivery, error: str, now: dt.datetime) -> None:
        row.last_error = error
        row.state = DeliveryState.FAILED
        self.last_failure = now
        self.last_error = error
        log.warning(
            "instance refused by the destination; not retried",
            extra={
                "destination": self.name,
                "delivery_id": row.id,
                "job_id": row.job_id,
                "sop_instance_uid": row.sop_instance_uid,
                "status": f"0x{row.last_status:04X}" if row.last_status is not None else None,
            },
        )

    def _schedule_retry(self, row: Delivery, error: str, now: dt.datetime) -> None:
        row.last_error = error
        self.last_failure = now
        self.last_error = error
        if row.attempts >= self.settings.max_attempts:
            row.state = DeliveryState.FAILED
        else:
            row.next_attempt_at = now + dt.timedelta(seconds=self.settings.backoff(row.attempts))

    def _association_failed(self, error: str) -> None:
        """Every due row of this destination counts the attempt (one association tried)."""
        now = utcnow()
        log.warning("destination unavailable: %s", error, extra={"destination": self.name})
        with self.database.session() as session:
            rows = list(
                session.scalars(
                    select(Delivery)
                    .join(Job, Job.id == Delivery.job_id)
                    .where(
                        Delivery.destination == self.name,
                        Delivery.state == DeliveryState.PENDING,
                        Delivery.next_attempt_at <= now,
                        or_(
                            Delivery.claim_owner == self.owner,
                            Delivery.claim_until.is_(None),
                            Delivery.claim_until < now,
                        ),
                        Job.state == JobState.STORED,
                    )
                    .with_for_update(skip_locked=True, of=Delivery)
                )
            )
            jobs = set()
            for row in rows:
                row.claim_owner = None
                row.claim_until = None
                row.attempts += 1
                row.last_attempt_at = now
                row.last_status = None
                self._schedule_retry(row, f"association failed: {error}", now)
                jobs.add(row.job_id)
            for job_id in sorted(jobs):
                settle(session, job_id)


class DeliveryService:
    """The forwarding dispatcher and the destination workers of a running node."""

    def __init__(self, database: Database, config: Config):
        self.database = database
        self.config = config
        self.workers = {d.name: DestinationWorker(database, config, d) for d in config.destinations}
        self._stop = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatch", daemon=True)

    def start(self) -> None:
        if not self.config.cluster.enabled:
            # one machine, one sender per destination: claims left by a crash of this node
            # are its own, so they need not run out before sending resumes
            with self.database.session() as session:
                session.execute(
                    update(Delivery)
                    .where(Delivery.claim_owner.is_not(None))
                    .values(claim_owner=None, claim_until=None)
                )
        for worker in self.workers.values():
            worker.start()
        self._dispatcher.start()

    def wake(self) -> None:
        for worker in self.workers.values():
            worker.wake.set()

    def _dispatch(self) -> None:
        interval = self.config.delivery.poll_interval_seconds
        while not self._stop.wait(interval):
            try:
                if forward_queued(self.database, self.config):
                    self.wake()
            except Exception:  # noqa: BLE001
                log.exception("forwarding dispatch failed")

    def stop(self, timeout: float | None = None) -> bool:
        """Stop sending after the instance in flight; results are committed. True if clean."""
        timeout = self.config.delivery.stop_timeout_seconds if timeout is None else timeout
        self._stop.set()
        for worker in self.workers.values():
            worker.stop_event.set()
            worker.wake.set()
        deadline = time.monotonic() + timeout
        clean = True
        for thread in [self._dispatcher, *(w.thread for w in self.workers.values())]:
            if thread.is_alive() or thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
                clean = clean and not thread.is_alive()
        return clean

    def alive(self) -> dict[str, bool]:
        return {name: w.alive() for name, w in self.workers.items()}
