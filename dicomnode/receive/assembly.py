"""Series completion: deciding when a series has stopped arriving, and what happens next.

A series is complete when (first that applies):

1. ``expected-count``: the expected number of instances arrived; expected comes from
   ImagesInAcquisition, or from an enhanced / legacy-converted multi-frame object, which carries
   all its frames (NumberOfFrames) in one instance;
2. ``instance-numbers``: no expected count, the sender released its association, and the
   InstanceNumbers received are exactly 1..N;
3. ``quiet-period``: ``quiet_seconds`` passed without a new instance.

A late instance reopens a complete series; its next completion queues a job that supersedes the
earlier one instead of adding a duplicate. So does an instance sent again after retention purged
the series' originals (intake stores it again); the series is then counted afresh. Every
completion and reopening is a ``series_events`` row with its reason.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import pydicom
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Instance, Series, SeriesEvent, SeriesState, utcnow
from db.session import Database
from dicomnode.jobs import RoutingDecision, queue_job
from dicomnode.receive.routing import (
    RuleLike,
    attributes_for_routing,
    route,
    rule_keys,
)

log = logging.getLogger("dicomnode.receive.assembly")

ENHANCED_MULTIFRAME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
}


class SeriesAssembler:
    """Owns the series state machine; thread-safe through database row locks."""

    def __init__(self, database: Database, rules: Sequence[RuleLike], quiet_seconds: float):
        self.database = database
        self.rules = list(rules)
        self.quiet_seconds = quiet_seconds
        self._keys = rule_keys(self.rules) | {"Modality", "SeriesDescription", "ImageType"}

    # --- triggers -------------------------------------------------------------------------
    def after_store(self, series_id: int) -> None:
        """Inline after the instance that reached the expected count: complete the series.

        The routing decision reads the first instance's file; it is made before the series row
        is locked, because on SQLite that lock is the database's write lock, which every other
        association storing an instance waits for.
        """
        decision = self._decide(series_id)
        with self.database.session() as session:
            series = _locked(session, series_id)
            if series is None or series.state != SeriesState.RECEIVING:
                return
            if series.expected_instances and series.instances >= series.expected_instances:
                reason = (
                    f"expected-count: {series.instances} of {series.expected_instances} "
                    f"({series.expected_source})"
                )
                self._complete(session, series, reason, decision)

    def after_release(self, series_ids: Iterable[int]) -> None:
        """After the sender released its association: complete by InstanceNumber 1..N."""
        for series_id in set(series_ids):
            with self.database.session() as session:
                series = _locked(session, series_id)
                if series is None or series.state != SeriesState.RECEIVING:
                    continue
                if series.expected_instances:
                    continue  # an announced count is more trustworthy; wait for it or quiet
                numbers = list(  # of the instances with a file: not those retention purged
                    session.scalars(
                        select(Instance.instance_number).where(
                            Instance.series_id == series_id, Instance.path.is_not(None)
                        )
                    )
                )
                if (
                    numbers
                    and None not in numbers
                    and sorted(numbers) == list(range(1, len(numbers) + 1))
                ):
                    reason = f"instance-numbers: 1..{len(numbers)} after association release"
                    self._complete(session, series, reason)

    def complete_quiet(self, now: dt.datetime | None = None) -> int:
        """Periodic: complete every series quiet for ``quiet_seconds``."""
        now = now or utcnow()
        cutoff = now - dt.timedelta(seconds=self.quiet_seconds)
        with self.database.session() as session:
            candidates = list(
                session.scalars(
                    select(Series.id).where(
                        Series.state == SeriesState.RECEIVING, Series.last_received < cutoff
                    )
                )
            )
        done = 0
        for series_id in candidates:
            with self.database.session() as session:
                series = _locked(session, series_id)
                if series is None or series.state != SeriesState.RECEIVING:
                    continue
                if _aware(series.last_received) >= cutoff:
                    continue
                reason = f"quiet-period: no instance for {self.quiet_seconds:g} s"
                self._complete(session, series, reason)
                done += 1
        return done

    # --- state changes -------------------------------------------------------------------
    def _complete(
        self,
        session: Session,
        series: Series,
        reason: str,
        decision: RoutingDecision | None = None,
    ) -> None:
        series.state = SeriesState.COMPLETE
        series.completed_at = utcnow()
        series.completion_reason = reason
        session.add(
            SeriesEvent(
                series_id=series.id,
                event="completed",
                reason=reason,
                instances=series.instances,
                generation=series.generation,
            )
        )
        if decision is None:
            decision = self._decide(series.id, session)
        series.rule = decision.rule
        extra = {"series_uid": series.series_uid, "reason": reason, "rule": decision.rule}
        if decision.ignored:
            series.state = SeriesState.IGNORED
            session.add(
                SeriesEvent(
                    series_id=series.id,
                    event="ignored",
                    reason="no rule matched",
                    instances=series.instances,
                    generation=series.generation,
                )
            )
            log.info("series complete, no rule matched: ignored", extra=extra)
            return
        job = queue_job(session, series, decision)
        log.info("series complete, job queued", extra={**extra, "job_id": job.id})

    def _decide(self, series_id: int, session: Session | None = None) -> RoutingDecision:
        """The rule for a series, from its calling AE and its first instance's header; the
        file is read after a session of our own ends, or within the caller's."""
        if session is None:
            with self.database.session() as own:
                calling_ae, path = _first_instance(own, series_id)
        else:
            calling_ae, path = _first_instance(session, series_id)
        if path is None:
            return RoutingDecision(None, None)
        header = pydicom.dcmread(Path(path), stop_before_pixels=True)
        return route(self.rules, attributes_for_routing(header, calling_ae, self._keys))


def _first_instance(session: Session, series_id: int) -> tuple[str | None, str | None]:
    """(calling AE of the series, spool path of its first stored instance)."""
    row = session.execute(
        select(Series.calling_ae, Instance.path)
        .join(Instance, Instance.series_id == Series.id)
        .where(Series.id == series_id, Instance.path.is_not(None))
        .order_by(Instance.id)
        .limit(1)
    ).first()
    return (None, None) if row is None else (row[0], row[1])


def reopen(session: Session, series: Series) -> None:
    """A late instance for a finished series: receive again, under a new generation.

    A series whose originals retention purged is counted afresh: only the instances that have a
    file again count (none yet; the one being stored is counted next), so it completes once
    the instances are back (its expected count, InstanceNumbers 1..N of the files, or quiet)
    rather than on the first one; and it is no longer purged, so that retention deletes the new
    files in their turn. The purged rows of instances not sent again keep path NULL.
    """
    previous = series.state
    why = f"late instance after the series was {previous}"
    if series.purged_at is not None:
        kept = session.execute(
            select(func.count(Instance.id), func.coalesce(func.sum(Instance.frames), 0)).where(
                Instance.series_id == series.id, Instance.path.is_not(None)
            )
        ).one()
        series.instances, series.frames = int(kept[0]), int(kept[1])
        series.purged_at = None
        why = f"instance received again after retention purged the {previous} series"
    series.state = SeriesState.RECEIVING
    series.generation += 1
    series.completed_at = None
    session.add(
        SeriesEvent(
            series_id=series.id,
            event="reopened",
            reason=why,
            instances=series.instances,
            generation=series.generation,
        )
    )
    log.info("series reopened by a late instance", extra={"series_uid": series.series_uid})


def _locked(session: Session, series_id: int) -> Series | None:
    return session.get(Series, series_id, with_for_update=True)


def _aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; they were stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
