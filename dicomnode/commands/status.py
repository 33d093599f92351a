"""``dicomnode status``: one screen for an administrator."""

from __future__ import annotations

import datetime as dt
import shutil
import urllib.request

import typer
from sqlalchemy import func, select

from db.models import (
    Delivery,
    DeliveryState,
    Job,
    JobState,
    ModelState,
    ModelVersion,
    Worker,
    WorkerState,
    utcnow,
)
from dicomnode.commands.common import ConfigOption, JsonOption, console, emit_one, load_or_exit


def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Listening address, queue depth, jobs by state, active models, destinations, free disk."""
    from dicomnode.node import open_database

    settings = load_or_exit(config)
    node = settings.node
    database = open_database(settings)
    try:
        with database.session() as session:
            jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            active_models = [
                f"{m.profile}: {m.name}@{m.version}/k{m.factor}"
                for m in session.scalars(
                    select(ModelVersion)
                    .where(ModelVersion.state == ModelState.ACTIVE)
                    .order_by(ModelVersion.profile, ModelVersion.factor)
                )
            ]
            held = session.scalar(
                select(func.count()).where(Job.state == JobState.STORED, Job.review == "held")
            )
            workers = cluster_workers(session, settings)
            destinations = []
            for dest in settings.destinations:
                counts = dict(
                    session.execute(
                        select(Delivery.state, func.count())
                        .where(Delivery.destination == dest.name)
                        .group_by(Delivery.state)
                    ).all()
                )
                last_success = session.scalar(
                    select(func.max(Delivery.sent_at)).where(Delivery.destination == dest.name)
                )
                failure = session.scalars(
                    select(Delivery)
                    .where(Delivery.destination == dest.name, Delivery.last_error.is_not(None))
                    .where(Delivery.state != DeliveryState.SENT)
                    .order_by(Delivery.last_attempt_at.desc())
                    .limit(1)
                ).first()
                destinations.append(
                    {
                        "name": dest.name,
                        "peer": f"{dest.ae_title}@{dest.host}:{dest.port}",
                        "pending": counts.get(DeliveryState.PENDING, 0),
                        "failed": counts.get(DeliveryState.FAILED, 0),
                        "sent": counts.get(DeliveryState.SENT, 0),
                        "last_success": last_success,
                        "last_failure": failure.last_attempt_at if failure else None,
                        "last_error": failure.last_error if failure else None,
                    }
                )
    finally:
        database.dispose()
    try:
        free = shutil.disk_usage(node.data_dir).free
    except OSError:
        free = None
    health = "unknown"
    if node.http_port:
        url = f"http://{node.http_address}:{node.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                health = "healthy" if response.status == 200 else f"HTTP {response.status}"
        except OSError as exc:
            health = f"not answering ({getattr(exc, 'code', None) or exc})"
    row = {
        "listening": f"{node.ae_title}@{node.bind_address}:{node.port}"
        + (" (TLS)" if node.tls else ""),
        "health": health,
        "queue_depth": sum(jobs.get(s, 0) for s in JobState.ACTIVE),
        "jobs": {state: jobs.get(state, 0) for state in _STATES if jobs.get(state)},
        "held_for_review": held or 0,
        "active_models": active_models,
        "free_disk_mb": None if free is None else free // 2**20,
        "min_free_mb": node.min_free_mb,
        "destinations": destinations,
    }
    if settings.cluster.enabled:
        row["queued"] = jobs.get(JobState.QUEUED, 0)
        row["broker_ready_messages"] = _broker_depth(settings)
        row["workers"] = workers
    if not as_json:
        row["jobs"] = ", ".join(f"{k} {v}" for k, v in row["jobs"].items()) or "none"  # type: ignore[union-attr]
        row["active_models"] = ", ".join(active_models) or "none (run `dicomnode models list`)"
    emit_one(row, as_json)
    if not as_json and not destinations:
        console.print("no destinations configured")
    if not as_json and settings.cluster.enabled and not workers:
        console.print("no worker has ever started (`dicomnode worker` on a worker machine)")
    raise typer.Exit(0)


_STATES = [
    JobState.RECEIVED,
    JobState.COMPLETE,
    JobState.QUEUED,
    JobState.PROCESSING,
    JobState.STORED,
    JobState.DELIVERED,
    JobState.FAILED,
    JobState.CANCELLED,
]


def cluster_workers(session, settings) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """Every worker that ever started: device, current job(s), last heartbeat and its age.

    ``lost`` is a worker whose heartbeat is older than a lease: its jobs are being taken over.
    """
    now = utcnow()
    rows = []
    for w in session.scalars(select(Worker).order_by(Worker.name)):
        beat = w.heartbeat_at if w.heartbeat_at.tzinfo else w.heartbeat_at.replace(tzinfo=dt.UTC)
        age = (now - beat).total_seconds()
        state = w.state
        if state != WorkerState.STOPPED and age > settings.cluster.lease_seconds:
            state = "lost"
        rows.append(
            {
                "name": w.name,
                "host": w.hostname,
                "device": w.device,
                "pool": f"{w.pool}/{w.concurrency}",
                "state": state,
                "current_jobs": ",".join(str(j) for j in (w.current_jobs or [])) or None,
                "last_heartbeat": beat,
                "heartbeat_age_s": round(age, 1),
                "done": w.jobs_done,
                "failed": w.jobs_failed,
                "returned": w.jobs_returned,
            }
        )
    return rows


def _broker_depth(settings) -> int | None:  # type: ignore[no-untyped-def]
    """Messages waiting in the broker's queue (None when the broker does not answer)."""
    from dicomnode.cluster.broker import make_app, ready_messages

    return ready_messages(make_app(settings.cluster), settings.cluster.queue)
