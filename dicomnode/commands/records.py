"""``series list|show`` and ``jobs list|show|retry|release|cancel``: what the node did."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import func, select

from db.models import Delivery, Instance, Job, JobEvent, Series, SeriesEvent
from dicomnode.commands.common import ConfigOption, JsonOption, emit, emit_one, fail, load_or_exit
from dicomnode.jobs import JobError, cancel

series_app = typer.Typer(help="Received series.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs created by routing rules.", no_args_is_help=True)

SERIES_COLUMNS = [
    "series_uid",
    "state",
    "instances",
    "expected",
    "rule",
    "completion",
    "last_received",
]
JOB_COLUMNS = ["id", "series_uid", "action", "rule", "state", "reason", "updated_at"]


def _database(config: ConfigOption):  # type: ignore[no-untyped-def]
    from dicomnode.node import open_database

    return open_database(load_or_exit(config))


def series_row(series: Series) -> dict[str, object]:
    return {
        "series_uid": series.series_uid,
        "study_uid": series.study_uid,
        "state": series.state,
        "instances": series.instances,
        "expected": series.expected_instances,
        "rule": series.rule,
        "modality": series.modality,
        "description": series.description,
        "calling_ae": series.calling_ae,
        "generation": series.generation,
        "completion": series.completion_reason,
        "first_received": series.first_received,
        "last_received": series.last_received,
        "completed_at": series.completed_at,
        "purged_at": series.purged_at,
    }


def job_row(job: Job) -> dict[str, object]:
    return {
        "id": job.id,
        "series_uid": job.series_uid,
        "action": job.action,
        "rule": job.rule,
        "profile": job.profile,
        "destinations": job.destinations,
        "state": job.state,
        "reason": job.reason,
        "progress": job.progress,
        "generation": job.generation,
        "supersedes_job_id": job.supersedes_job_id,
        "model": f"{job.model_name}@{job.model_version}" if job.model_name else None,
        "model_version_id": job.model_version_id,
        "model_sha256": job.model_sha256,
        "factor": job.factor,
        "consistency_psnr_db": job.consistency_psnr_db,
        "review": job.review,
        "output_series_uid": job.output_series_uid,
        "worker": job.worker,
        "attempts": job.attempts,
        "worker_deaths": job.worker_deaths,
        "lease_owner": job.lease_owner,
        "lease_until": job.lease_until,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


@series_app.command("list")
def series_list(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    state: Annotated[str | None, typer.Option(help="Only series in this state.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 200,
) -> None:
    """List received series, newest first."""
    database = _database(config)
    with database.session() as session:
        query = select(Series).order_by(Series.last_received.desc()).limit(limit)
        if state:
            query = query.where(Series.state == state)
        rows = [series_row(s) for s in session.scalars(query)]
    emit(rows, as_json, "Series", SERIES_COLUMNS)


@series_app.command("show")
def series_show(
    series_uid: Annotated[str, typer.Argument(help="Series Instance UID.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One series with its completion history and jobs."""
    database = _database(config)
    with database.session() as session:
        series = session.scalars(select(Series).where(Series.series_uid == series_uid)).first()
        if series is None:
            raise fail(f"no series {series_uid}")
        row = series_row(series)
        row["transfer_syntaxes"] = sorted(
            session.scalars(
                select(func.distinct(Instance.transfer_syntax_uid)).where(
                    Instance.series_id == series.id
                )
            )
        )
        row["events"] = [
            {"at": e.at, "event": e.event, "reason": e.reason, "instances": e.instances}
            for e in session.scalars(
                select(SeriesEvent)
                .where(SeriesEvent.series_id == series.id)
                .order_by(SeriesEvent.id)
            )
        ]
        row["jobs"] = [
            {"id": j.id, "action": j.action, "state": j.state, "reason": j.reason}
            for j in session.scalars(select(Job).where(Job.series_id == series.id).order_by(Job.id))
        ]
    emit_one(row, as_json)


@jobs_app.command("list")
def jobs_list(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 200,
) -> None:
    """List jobs, newest first."""
    database = _database(config)
    with database.session() as session:
        query = select(Job).order_by(Job.id.desc()).limit(limit)
        if state:
            query = query.where(Job.state == state)
        rows = [job_row(j) for j in session.scalars(query)]
    emit(rows, as_json, "Jobs", JOB_COLUMNS)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One job with every state transition."""
    database = _database(config)
    with database.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise fail(f"no job with id {job_id}")
        row = job_row(job)
        row["events"] = [
            {"at": e.at, "from": e.from_state, "to": e.to_state, "reason": e.reason}
            for e in session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        ]
        row["deliveries"] = delivery_summary(session, job_id)
        result = job.result or {}
        if result:
            metadata = result.get("metadata") or {}
            row["timings_s"] = metadata.get("timings_s")
            row["device"] = result.get("device")
            row["fallbacks"] = result.get("fallbacks") or []
            row["outputs"] = len(result.get("outputs") or [])
    emit_one(row, as_json)


def delivery_summary(session, job_id: int) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Per destination and state: instances, attempts (max), last status and error."""
    rows = session.execute(
        select(
            Delivery.destination,
            Delivery.state,
            func.count(),
            func.max(Delivery.attempts),
            func.sum(Delivery.attempts),
            func.max(Delivery.last_attempt_at),
        )
        .where(Delivery.job_id == job_id)
        .group_by(Delivery.destination, Delivery.state)
        .order_by(Delivery.destination, Delivery.state)
    ).all()
    summary = []
    for destination, state, count, max_attempts, total_attempts, last_attempt in rows:
        last = session.scalars(
            select(Delivery)
            .where(
                Delivery.job_id == job_id,
                Delivery.destination == destination,
                Delivery.state == state,
            )
            .order_by(Delivery.last_attempt_at.desc(), Delivery.id.desc())
            .limit(1)
        ).first()
        summary.append(
            {
                "destination": destination,
                "state": state,
                "instances": count,
                "max_attempts": max_attempts,
                "attempts": total_attempts,
                "last_attempt_at": last_attempt,
                "last_status": None
                if last is None or last.last_status is None
                else f"0x{last.last_status:04X}",
                "last_error": None if last is None else last.last_error,
            }
        )
    return summary


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    config: ConfigOption = None,
) -> None:
    """Re-arm a failed job: its undelivered instances are sent again at once (by the node)."""
    from dicomnode.deliver.delivery import retry

    database = _database(config)
    try:
        with database.session() as session:
            job, rearmed = retry(session, job_id)
            state = job.state
    except JobError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"job {job_id}: {state} ({rearmed} delivery(ies) re-armed)")


@jobs_app.command("release")
def jobs_release(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    config: ConfigOption = None,
    by: Annotated[str | None, typer.Option(help="Who reviewed it (default: your login).")] = None,
) -> None:
    """Deliver an enhanced series held back for review (consistency below the threshold)."""
    import getpass

    from dicomnode.process.runner import release

    database = _database(config)
    try:
        with database.session() as session:
            job = release(session, job_id, by or getpass.getuser())
            state = job.state
    except JobError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"job {job_id}: {state}, released for delivery")


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[int, typer.Argument(help="Job id.")],
    config: ConfigOption = None,
    reason: Annotated[str, typer.Option(help="Recorded with the cancellation.")] = (
        "cancelled by administrator"
    ),
) -> None:
    """Cancel a job that has not been delivered yet."""
    database = _database(config)
    try:
        with database.session() as session:
            job = cancel(session, job_id, reason)
            state = job.state
    except JobError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"job {job_id}: {state}")
