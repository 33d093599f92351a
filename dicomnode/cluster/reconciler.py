"""The publisher and reconciler of ``serve``: job ids to the broker, after commit, never lost.

Every ``publish_interval_seconds`` it takes the enhance jobs that need a message (``queued``
with ``published_at`` NULL, or ``processing`` under a lease that has expired), marks them
published in one committed transaction (``FOR UPDATE SKIP LOCKED``: several receivers share the
work, none publishes a job another is publishing) and only then publishes their ids, so a
worker never receives an id whose row is still being written. A publish the broker does not
confirm (broker down, connection cut) sets ``published_at`` back to NULL: the job is published
again on the next round, once the broker is back.

A message can also be lost after the broker confirmed it (a broker restarted without its disk,
a queue deleted by hand). Every ``republish_seconds / 2`` the reconciler compares the queued jobs
published more than ``republish_seconds`` ago and not yet claimed with the messages waiting in
the queue; when there are fewer messages than such jobs, the oldest of them are published again.
A duplicate costs nothing: the claim of an id whose job is no longer queued drops the message.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from celery import Celery
from sqlalchemy import and_, func, or_, select, update

from db.models import Job, JobState, utcnow
from db.session import Database
from dicomnode.cluster.broker import make_app, publish, ready_messages
from dicomnode.config import Config

log = logging.getLogger("dicomnode.cluster.reconciler")

BATCH = 200


class Reconciler:
    def __init__(self, database: Database, config: Config, app: Celery | None = None):
        self.database = database
        self.settings = config.cluster
        self.app = app or make_app(self.settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self.published = 0
        self.republished = 0

    def start(self) -> None:
        self._thread.start()
        log.info(
            "publishing queued jobs to the broker",
            extra={"queue": self.settings.queue},
        )

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def alive(self) -> dict[str, bool]:
        return {"reconciler": self._thread.is_alive()}

    def _loop(self) -> None:
        check_every = self.settings.republish_seconds / 2
        next_check = time.monotonic() + check_every
        while not self._stop.wait(self.settings.publish_interval_seconds):
            try:
                while self.publish_due() >= BATCH and not self._stop.is_set():
                    pass
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + check_every
                    self.find_lost()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("publishing queued jobs failed")

    def publish_due(self) -> int:
        """Publish the jobs that need a message; returns how many were taken this round."""
        now = utcnow()
        with self.database.session() as session:
            ids = list(
                session.scalars(
                    select(Job.id)
                    .where(
                        Job.action == "enhance",
                        Job.published_at.is_(None),
                        or_(
                            Job.state == JobState.QUEUED,
                            and_(Job.state == JobState.PROCESSING, Job.lease_until < now),
                        ),
                    )
                    .order_by(Job.id)
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                )
            )
            if ids:
                session.execute(update(Job).where(Job.id.in_(ids)).values(published_at=now))
        if not ids:
            return 0
        failed: list[int] = []
        error = None
        for job_id in ids:
            if failed:
                failed.append(job_id)
                continue
            try:
                publish(self.app, self.settings.queue, job_id)
                self.published += 1
            except Exception as exc:  # noqa: BLE001 - broker unreachable: all of them wait
                error = exc
                failed.append(job_id)
        if failed:
            with self.database.session() as session:
                session.execute(
                    update(Job)
                    .where(Job.id.in_(failed), Job.published_at == now)
                    .values(published_at=None)
                )
            log.warning(
                "broker unavailable; %d job(s) will be published when it is back: %s",
                len(failed),
                type(error).__name__,
                extra={"jobs": failed[:20]},
            )
        else:
            log.info("jobs published", extra={"jobs": ids})
        return len(ids)

    def find_lost(self) -> int:
        """Publish again the oldest unclaimed queued jobs that have no message waiting."""
        cutoff = utcnow() - dt.timedelta(seconds=self.settings.republish_seconds)
        with self.database.session() as session:
            unclaimed = session.scalar(
                select(func.count()).where(
                    Job.action == "enhance",
                    Job.state == JobState.QUEUED,
                    Job.published_at.is_not(None),
                )
            )
            old = list(
                session.scalars(
                    select(Job.id)
                    .where(
                        Job.action == "enhance",
                        Job.state == JobState.QUEUED,
                        Job.published_at < cutoff,
                    )
                    .order_by(Job.published_at, Job.id)
                )
            )
        if not old:
            return 0
        ready = ready_messages(self.app, self.settings.queue)
        if ready is None:
            return 0
        missing = min(len(old), (unclaimed or 0) - ready)
        if missing <= 0:
            return 0
        lost = old[:missing]
        with self.database.session() as session:
            session.execute(
                update(Job)
                .where(Job.id.in_(lost), Job.state == JobState.QUEUED)
                .values(published_at=None)
            )
        self.republished += len(lost)
        log.warning(
            "queued jobs without a message in the broker; publishing them again",
            extra={"jobs": lost[:20], "count": len(lost), "ready": ready},
        )
        return len(lost)
