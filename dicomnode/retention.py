"""Retention: spooled originals of finished or ignored series are deleted after N days, and with
them the enhanced outputs their jobs wrote (``outputs/job-ID``), which the PACS now holds.

A series is only purged when none of its jobs is unfinished (a failed job stays retryable and
so keeps its originals); the rows stay, marked purged, so the history remains queryable.
Purging forgets no study: an instance sent again later (a scanner re-sending the series after
``[retention] days``) is stored again by intake, its row taking the new file, and the series
reopens as for a late instance (no longer purged, counted afresh), so it is processed again
and its new files are purged in their turn.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

from sqlalchemy import exists, select, update

from db.models import Instance, Job, JobState, Series, SeriesEvent, SeriesState, utcnow
from db.session import Database

log = logging.getLogger("dicomnode.retention")


def purge(
    database: Database,
    days: float,
    now: dt.datetime | None = None,
    outputs_root: Path | None = None,
) -> int:
    """Delete the spooled files (and job outputs) of eligible series; returns how many."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=days)
    unfinished = exists().where(Job.series_id == Series.id, Job.state.in_(JobState.UNFINISHED))
    with database.session() as session:
        candidates = list(
            session.scalars(
                select(Series.id).where(
                    Series.purged_at.is_(None),
                    Series.state.in_([SeriesState.COMPLETE, SeriesState.IGNORED]),
                    Series.last_received < cutoff,
                    ~unfinished,
                )
            )
        )
    purged = 0
    for series_id in candidates:
        with database.session() as session:
            series = session.get(Series, series_id, with_for_update=True)
            if series is None or series.purged_at is not None:
                continue
            still_busy = session.scalar(
                select(Job.id).where(Job.series_id == series_id, Job.state.in_(JobState.UNFINISHED))
            )
            if still_busy is not None or series.state == SeriesState.RECEIVING:
                continue
            paths = list(
                session.scalars(
                    select(Instance.path).where(
                        Instance.series_id == series_id, Instance.path.is_not(None)
                    )
                )
            )
            for path in paths:
                Path(path).unlink(missing_ok=True)
            _remove_empty_parents(paths)
            if outputs_root is not None:
                for job_id in session.scalars(select(Job.id).where(Job.series_id == series_id)):
                    shutil.rmtree(outputs_root / f"job-{job_id}", ignore_errors=True)
            session.execute(
                update(Instance).where(Instance.series_id == series_id).values(path=None)
            )
            series.purged_at = now
            session.add(
                SeriesEvent(
                    series_id=series_id,
                    event="purged",
                    reason=f"retention: older than {days:g} days",
                    instances=series.instances,
                    generation=series.generation,
                )
            )
            purged += 1
            log.info("spooled files purged", extra={"series_uid": series.series_uid})
    return purged


def _remove_empty_parents(paths: list[str]) -> None:
    for folder in {Path(p).parent for p in paths}:
        try:
            folder.rmdir()
        except OSError:
            pass
