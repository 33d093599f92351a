"""Job leases in the database: who runs a job, until when, and how often it was tried.

A worker claims a job by id (the broker's message) with ``SELECT ... FOR UPDATE SKIP LOCKED``:
two workers handed the same id (a message redelivered, published twice) never both get it.
The claim writes ``lease_owner`` and ``lease_until``; the worker renews the lease while it runs.
A ``processing`` job is taken over only when its lease has expired: a second worker starting,
or a receiver restarting, never takes a job from a live worker. Each claim counts an attempt
in ``jobs.attempts``, so a job that kills its worker every time fails after
``[cluster] max_attempts`` claims instead of going round for ever.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Mapping

from sqlalchemy import select, update

from db.models import Job, JobState, Worker, WorkerState, utcnow
from db.session import Database
from dicomnode.config import ClusterSettings
from dicomnode.jobs import transition
from dicomnode.process.runner import JobRunner, WorkerSlot
from dicomnode.process.worker import WorkRequest

log = logging.getLogger("dicomnode.cluster.leases")

ATTEMPTS = "attempts"
"""The reason code of a job failed for having been claimed ``max_attempts`` times."""


class Refusal(enum.Enum):
    """Why a message's job was not claimed."""

    GONE = "gone"  # finished, cancelled, not an enhance job, or settled without a worker
    HELD = "held"  # processing under a live lease: its worker is alive (or not yet expired)
    LOCKED = "locked"  # another transaction holds the row this instant (a publisher, a claim)
    MISSING = "missing"  # no such job


def aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def claim(
    database: Database,
    runner: JobRunner,
    slot: WorkerSlot,
    job_id: int,
    owner: str,
    settings: ClusterSettings,
) -> WorkRequest | Refusal:
    """Claim job ``job_id`` for ``owner`` on ``slot``: its work request, or why not."""
    now = utcnow()
    with database.session() as session:
        job = session.scalars(
            select(Job).where(Job.id == job_id).with_for_update(skip_locked=True)
        ).first()
        if job is None:
            exists = session.scalar(select(Job.id).where(Job.id == job_id))
            return Refusal.LOCKED if exists is not None else Refusal.MISSING
        if job.action != "enhance":
            return Refusal.GONE
        if job.state == JobState.PROCESSING:
            if job.lease_until is not None and aware(job.lease_until) > now:
                return Refusal.HELD
            transition(
                session,
                job,
                JobState.QUEUED,
                f"lease of {job.lease_owner or 'a worker'} expired"
                + (f" at {aware(job.lease_until):%H:%M:%S} UTC" if job.lease_until else "")
                + f"; taken over by {owner}",
            )
        elif job.state != JobState.QUEUED:
            return Refusal.GONE
        job.lease_owner = None
        job.lease_until = None
        if (job.attempts or 0) >= settings.max_attempts:
            transition(
                session,
                job,
                JobState.FAILED,
                f"[{ATTEMPTS}] claimed {job.attempts} time(s) without an outcome (its worker "
                f"was lost each time), [cluster] max_attempts = {settings.max_attempts}; "
                f"`dicomnode jobs retry {job.id}` runs it again",
            )
            return Refusal.GONE
        request = runner.prepare(session, job, slot)
        if request is None:
            return Refusal.GONE
        job.lease_owner = owner
        job.lease_until = now + dt.timedelta(seconds=settings.lease_seconds)
        job.published_at = None  # its message is consumed; a lost lease needs a new one
        return request


def renew(database: Database, held: Mapping[int, str], lease_seconds: float) -> set[int]:
    """Extend the leases ``held`` (job id -> owner); returns the jobs whose lease was lost."""
    if not held:
        return set()
    until = utcnow() + dt.timedelta(seconds=lease_seconds)
    lost = set()
    with database.session() as session:
        for job_id, owner in held.items():
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.lease_owner == owner,
                    Job.state == JobState.PROCESSING,
                )
                .values(lease_until=until)
            )
            if result.rowcount == 0:
                lost.add(job_id)
    return lost


def return_job(database: Database, job_id: int, owner: str, why: str) -> bool:
    """Give a job back to the queue (the worker drains or lost its slot); True if it was ours."""
    with database.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.lease_owner != owner or job.state != JobState.PROCESSING:
            return False
        job.lease_owner = None
        job.lease_until = None
        job.published_at = None
        transition(session, job, JobState.QUEUED, why)
        return True


# --- the workers table ----------------------------------------------------------------------------
def register_worker(
    database: Database,
    name: str,
    *,
    hostname: str,
    pid: int,
    device: str,
    pool: str,
    concurrency: int,
) -> None:
    """Record (or take back, after a restart under the same name) the row of worker ``name``."""
    now = utcnow()
    with database.session() as session:
        row = session.get(Worker, name, with_for_update=True)
        if row is None:
            row = Worker(name=name)
            session.add(row)
            row.jobs_done = row.jobs_failed = row.jobs_returned = 0
            row.busy_seconds = 0.0
        row.hostname, row.pid, row.device, row.pool = hostname, pid, device, pool
        row.concurrency = concurrency
        row.state = WorkerState.RUNNING
        row.current_jobs = []
        row.started_at = now
        row.heartbeat_at = now


def heartbeat(
    database: Database,
    name: str,
    state: str,
    current_jobs: list[int],
    done: int = 0,
    failed: int = 0,
    returned: int = 0,
    busy_seconds: float = 0.0,
) -> None:
    """The worker is alive: its state, current jobs and the counts since the last beat."""
    with database.session() as session:
        session.execute(
            update(Worker)
            .where(Worker.name == name)
            .values(
                state=state,
                current_jobs=current_jobs,
                heartbeat_at=utcnow(),
                jobs_done=Worker.jobs_done + done,
                jobs_failed=Worker.jobs_failed + failed,
                jobs_returned=Worker.jobs_returned + returned,
                busy_seconds=Worker.busy_seconds + busy_seconds,
            )
        )


STOPPED = WorkerState.STOPPED
