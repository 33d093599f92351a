"""The node's durable state: what was received, when series completed, and every job transition.

Everything the node acknowledges on the wire is a row here before the acknowledgement leaves, so
a restart (or a crash) resumes from the database alone. Times are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: DateTime(timezone=True)}


class SeriesState:
    RECEIVING = "receiving"
    COMPLETE = "complete"
    IGNORED = "ignored"


class JobState:
    RECEIVED = "received"
    COMPLETE = "complete"
    QUEUED = "queued"
    PROCESSING = "processing"
    STORED = "stored"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"

    UNFINISHED = (RECEIVED, COMPLETE, QUEUED, PROCESSING, STORED, FAILED)
    ACTIVE = (RECEIVED, COMPLETE, QUEUED, PROCESSING, STORED)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(128))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING, index=True)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    expected_source: Mapped[str | None] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    rule: Mapped[str | None] = mapped_column(String(128))
    first_received: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    completed_at: Mapped[dt.datetime | None]
    completion_reason: Mapped[str | None] = mapped_column(String(64))
    purged_at: Mapped[dt.datetime | None]

    instance_rows: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer, default=1)
    path: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    association_id: Mapped[str | None] = mapped_column(String(36))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    generation: Mapped[int] = mapped_column(Integer, default=0)

    series: Mapped[Series] = relationship(back_populates="instance_rows")


class SeriesEvent(Base):
    """Completions, reopenings and purges of a series, each with its reason."""

    __tablename__ = "series_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    event: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=0)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    action: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(128))
    profile: Mapped[str | None] = mapped_column(String(64))
    destinations: Mapped[list] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    supersedes_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # What the enhancement used and produced (set by the job runner; empty for forward jobs).
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    model_name: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(64))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    factor: Mapped[int | None] = mapped_column(Integer)
    consistency_psnr_db: Mapped[float | None] = mapped_column(Float)
    review: Mapped[str | None] = mapped_column(String(16))
    output_series_uid: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Worker processes that died on this job (OOM killer, a crash in native code): the runner
    # queues the job again until ``[runner] worker_died_retries`` is spent, then fails it.
    worker_deaths: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result: Mapped[dict | None] = mapped_column(JSON)
    # Several machines (dicomnode.cluster): the worker holding a ``processing`` job and until
    # when (renewed while it runs; taken over only once expired), and when the job's id last
    # went to the broker (NULL: it needs a message; the reconciler publishes it).
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None]
    published_at: Mapped[dt.datetime | None]
    # The last progress line of the engine running the job (``inr`` fits for minutes), so an
    # operator sees that a long job moves; not an event (events are transitions).
    progress: Mapped[str | None] = mapped_column(String(200))

    events: Mapped[list[JobEvent]] = relationship(order_by="JobEvent.id")


class JobEvent(Base):
    """Every job state transition: the job's history, and what a restart resumes from."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)


class QuarantinedObject(Base):
    """A dataset refused on the wire, kept with the reason so that nothing vanishes silently."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text)


Index("ix_jobs_series_state", Job.series_id, Job.state)
Index("ix_jobs_state_lease", Job.state, Job.lease_until)


class DeliveryState:
    PENDING = "pending"  # waiting for its next attempt (next_attempt_at)
    SENT = "sent"  # success or warning status (see last_status / last_error)
    FAILED = "failed"  # gave up after max_attempts; `jobs retry` re-arms it

    TERMINAL = (SENT, FAILED)


class Delivery(Base):
    """The durable outbox: one row per instance and destination of a job.

    The retry schedule (attempts, next_attempt_at) lives here, so it survives restarts.
    """

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[dt.datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    converted: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None]
    # The sender holding the row for its batch (``FOR UPDATE SKIP LOCKED`` claim), so that two
    # senders, on one machine or several, never send the same row at once.
    claim_owner: Mapped[str | None] = mapped_column(String(128))
    claim_until: Mapped[dt.datetime | None]


Index("ix_deliveries_due", Delivery.destination, Delivery.state, Delivery.next_attempt_at)
Index(
    "ux_deliveries_job_instance_destination",
    Delivery.job_id,
    Delivery.sop_instance_uid,
    Delivery.destination,
    unique=True,
)


class ModelState:
    AVAILABLE = "available"  # registered, never active or deliberately set aside
    ACTIVE = "active"  # used for new jobs of its profile and factor
    RETIRED = "retired"  # was active, replaced by another version (rollback can return to it)
    REMOVED = "removed"  # file deleted; the row stays for the jobs and activations naming it


class ModelVersion(Base):
    """One weights file the node may run: a model name and version for one profile and factor
    (a file serving several profiles, ``iqt-mc``, is one row per profile, sharing ``path``).

    The file lives under ``data_dir/models`` (imported or copied from the released package), so
    an upgrade of the software never changes the bytes a registered version stands for; ``sha256``
    is checked when the file is loaded and by ``dicomnode models verify``.
    """

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    profile: Mapped[str] = mapped_column(String(64), index=True)
    factor: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    card: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    settings: Mapped[dict | None] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(16), default="imported")
    state: Mapped[str] = mapped_column(String(16), default=ModelState.AVAILABLE, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[dt.datetime | None]
    activated_by: Mapped[str | None] = mapped_column(String(128))


# One row per (profile, factor) a version serves (migration 0007): a contrast-agnostic file
# (``iqt-mc``) serves several profiles, each activated and rolled back on its own.
Index(
    "ux_model_versions_name_version_profile_factor",
    ModelVersion.name,
    ModelVersion.version,
    ModelVersion.profile,
    ModelVersion.factor,
    unique=True,
)


class ModelActivation(Base):
    """Each activation and rollback, with the version it replaced: what ``rollback`` walks back."""

    __tablename__ = "model_activations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    profile: Mapped[str] = mapped_column(String(64), index=True)
    factor: Mapped[int] = mapped_column(Integer)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    action: Mapped[str] = mapped_column(String(16))
    by: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)


class WorkerState:
    RUNNING = "running"
    DRAINING = "draining"  # SIGTERM: finishing (or returning) its job, taking no new one
    STOPPED = "stopped"


class Worker(Base):
    """One ``dicomnode worker`` (a Celery worker): what ``dicomnode status`` and ``/metrics``
    show. Written by the worker itself at start, at every heartbeat and at stop."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32))
    pool: Mapped[str] = mapped_column(String(16))
    concurrency: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    current_jobs: Mapped[list | None] = mapped_column(JSON)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    jobs_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    jobs_failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    jobs_returned: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    busy_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
