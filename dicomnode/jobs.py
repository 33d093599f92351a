"""The job record shared by every stage: creation, the legal state transitions, events.

Every transition is a ``job_events`` row: the runner (and a restart) trusts these rows alone,
so nothing here changes a job's state without writing its event in the same transaction.
Intake creates jobs, processing and delivery move them on; all three import this module and
none imports another for it, which keeps the stages' import direction one way
(docs/architecture.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Job, JobEvent, JobState, Series, utcnow

log = logging.getLogger("dicomnode.jobs")


class JobError(Exception):
    """A request about a job that cannot be honoured (unknown id, wrong state)."""


@dataclass(frozen=True)
class RoutingDecision:
    """What the first matching rule decided for a series: the recipe of its job(s).

    Lives here, not beside the rules, because a job is made from it and every stage reads jobs.
    """

    rule: str | None
    action: str | None
    destinations: tuple[str, ...] = ()
    profile: str | None = None
    forward_originals: bool = False

    @property
    def ignored(self) -> bool:
        return self.rule is None


#: Every legal move of a job, in one place. A move not listed is a bug in the caller, and
#: ``transition`` refuses it rather than write a history that the runner's recovery and the
#: operators' ``jobs`` commands would misread. QUEUED -> QUEUED re-queues a job as a
#: ``forward`` when no model fits; FAILED -> STORED / QUEUED is ``dicomnode jobs retry``;
#: PROCESSING -> QUEUED is recovery after a crash, a parked job at shutdown, or a worker death;
#: STORED -> STORED is a job held for review put in the outbox by ``dicomnode jobs release``.
TRANSITIONS: dict[str, frozenset[str]] = {
    JobState.RECEIVED: frozenset({JobState.COMPLETE, JobState.CANCELLED}),
    JobState.COMPLETE: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset(
        {JobState.QUEUED, JobState.PROCESSING, JobState.STORED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.PROCESSING: frozenset(
        {JobState.QUEUED, JobState.STORED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.STORED: frozenset(
        {JobState.STORED, JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.FAILED: frozenset({JobState.STORED, JobState.QUEUED, JobState.CANCELLED}),
    JobState.DELIVERED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def transition(session: Session, job: Job, to_state: str, reason: str | None = None) -> None:
    if to_state not in TRANSITIONS.get(job.state, frozenset()):
        raise JobError(f"job {job.id}: {job.state} -> {to_state} is not a legal transition")
    event = JobEvent(job_id=job.id, from_state=job.state, to_state=to_state, reason=reason)
    session.add(event)
    job.state = to_state
    job.reason = reason
    job.updated_at = utcnow()
    # A failed job needs a person (`dicomnode jobs retry`): WARNING, so that it shows in
    # `journalctl -p warning` and in alerting on the log level.
    log.log(
        logging.WARNING if to_state == JobState.FAILED else logging.INFO,
        "job %s -> %s",
        job.id,
        to_state,
        extra={"job_id": job.id, "series_uid": job.series_uid, "state": to_state, "reason": reason},
    )


def active_jobs(session: Session, series_id: int) -> list[Job]:
    query = select(Job).where(Job.series_id == series_id, Job.state.in_(JobState.ACTIVE))
    return list(session.scalars(query))


def queue_job(session: Session, series: Series, decision: RoutingDecision) -> Job:
    """Create the job of a complete, routed series; still-active earlier jobs are superseded.

    An ``enhance`` rule with ``forward_originals`` also gets a ``forward`` job for the same
    series, so the originals reach the PACS even when the enhancement fails or waits.
    """
    earlier = active_jobs(session, series.id)
    job = _new_job(session, series, decision, decision.action or "", earlier)
    if decision.action == "enhance" and decision.forward_originals:
        _new_job(session, series, decision, "forward", earlier)
    for old in earlier:
        transition(
            session,
            old,
            JobState.CANCELLED,
            f"superseded by job {job.id}: series reopened by a late instance",
        )
    return job


def _new_job(
    session: Session, series: Series, decision: RoutingDecision, action: str, earlier: list[Job]
) -> Job:
    superseded = [old.id for old in earlier if old.action == action]
    job = Job(
        series_id=series.id,
        series_uid=series.series_uid,
        generation=series.generation,
        action=action,
        rule=decision.rule or "",
        profile=decision.profile,
        destinations=list(decision.destinations),
        state=JobState.RECEIVED,
        supersedes_job_id=superseded[-1] if superseded else None,
    )
    session.add(job)
    session.flush()
    session.add(
        JobEvent(
            job_id=job.id,
            at=series.first_received,
            from_state=None,
            to_state=JobState.RECEIVED,
            reason=f"{series.instances} instance(s) received",
        )
    )
    transition(session, job, JobState.COMPLETE, series.completion_reason)
    note = " (the originals of an enhance rule)" if action != decision.action else ""
    transition(session, job, JobState.QUEUED, f"rule {decision.rule!r}: {action}{note}")
    return job


def cancel(session: Session, job_id: int, reason: str = "cancelled by administrator") -> Job:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise JobError(f"no job with id {job_id}")
    if job.state in (JobState.DELIVERED, JobState.CANCELLED):
        raise JobError(f"job {job_id} is already {job.state}; nothing to cancel")
    transition(session, job, JobState.CANCELLED, reason)
    return job
