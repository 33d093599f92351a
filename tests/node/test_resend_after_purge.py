"""Never lose a study: a series re-sent after retention purged its originals is stored again.

Retention deletes the spooled files of a finished series and keeps its instance rows with path
NULL. A scanner (or a PACS) that sends the series again after ``[retention] days`` used to be
answered Success for every instance and have each one discarded as a duplicate, so the series was
never processed again. Now a purged instance is stored again (spooled, its row's path set), the
series reopens as for a late instance and its next completion queues a new job; an instance
whose file is still there stays a duplicate, stored once. In-process, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydicom.uid import MRImageStorage
from sqlalchemy import func, select

from db.models import Instance, Job, Series, SeriesEvent
from db.session import Database
from dicomnode.jobs import transition
from dicomnode.receive.assembly import SeriesAssembler
from dicomnode.receive.intake import SUCCESS, Intake, Outcome, Received
from dicomnode.receive.spool import SpoolLayout
from dicomnode.retention import purge
from tests.node.test_database import _encoded, _small


def _send(intake: Intake, assembler: SeriesAssembler, datasets) -> list[Outcome]:  # type: ignore[no-untyped-def]
    outcomes = []
    for ds in datasets:
        outcome = intake.receive(
            Received(
                _encoded(ds), MRImageStorage, str(ds.SOPInstanceUID), "SCANNER", "127.0.0.1", "a"
            )
        )
        outcomes.append(outcome)
        if outcome.series_id is not None and not outcome.duplicate and outcome.count_reached:
            assembler.after_store(outcome.series_id)
    return outcomes


def _finish_jobs(database: Database) -> None:
    """Deliver every job, so that retention may purge the series."""
    with database.session() as session:
        for job in session.scalars(select(Job).where(Job.state == "queued")):
            for state in ("processing", "stored", "delivered"):
                transition(session, job, state, f"test: {state}")


def _purge(database: Database) -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    assert purge(database, days=7, now=future) == 1
    with database.session() as session:
        assert set(session.scalars(select(Instance.path))) == {None}


def _paths(database: Database) -> dict[str, str | None]:
    with database.session() as session:
        return dict(session.execute(select(Instance.sop_instance_uid, Instance.path)).all())


def test_a_series_resent_after_purge_is_stored_again_and_processed_again(stack):
    database, intake, assembler = stack
    datasets = _small(11)
    assert [o.status for o in _send(intake, assembler, datasets)] == [SUCCESS] * 8
    first_paths = _paths(database)
    _finish_jobs(database)
    _purge(database)
    assert not any(Path(p).exists() for p in first_paths.values() if p)

    outcomes = _send(intake, assembler, datasets)  # the scanner sends the series again

    assert [o.status for o in outcomes] == [SUCCESS] * 8
    assert not any(o.duplicate for o in outcomes)
    paths = _paths(database)
    assert len(paths) == 8  # the same rows, stored again
    for sop_uid, path in paths.items():
        assert path is not None and Path(path).read_bytes() == _encoded(
            next(ds for ds in datasets if ds.SOPInstanceUID == sop_uid)
        )
    with database.session() as session:
        series = session.scalars(select(Series)).one()
        assert (series.state, series.instances, series.generation) == ("complete", 8, 1)
        assert series.purged_at is None  # retention may purge it again later
        jobs = list(session.scalars(select(Job).order_by(Job.id)))
        assert [(j.state, j.generation) for j in jobs] == [("delivered", 0), ("queued", 1)]
        events = [e.event for e in session.scalars(select(SeriesEvent).order_by(SeriesEvent.id))]
        assert events == ["completed", "purged", "reopened", "completed"]

    # sent a third time, with the files there: true duplicates, stored once, no new job
    again = _send(intake, assembler, datasets)
    assert [o.status for o in again] == [SUCCESS] * 8 and all(o.duplicate for o in again)
    assert _paths(database) == paths
    with database.session() as session:
        assert session.scalar(select(func.count(Job.id))) == 2
        assert session.scalar(select(func.count(Instance.id))) == 8
        assert session.scalars(select(Series)).one().instances == 8

    # and the restored series is purged again after its next retention period
    _finish_jobs(database)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    assert purge(database, days=7, now=future) == 1
    assert not any(Path(p).exists() for p in paths.values() if p)


def test_a_partial_resend_counts_only_what_was_sent_again(stack):
    database, intake, assembler = stack
    datasets = _small(12, announce=False)
    _send(intake, assembler, datasets)
    with database.session() as session:
        series_id = session.scalars(select(Series.id)).one()
    assembler.after_release([series_id])  # InstanceNumbers 1..8: complete, job queued
    _finish_jobs(database)
    _purge(database)

    _send(intake, assembler, datasets[1:4])  # instances 2..4 of 8 again
    assembler.after_release([series_id])  # the purged rows do not make 1..N

    with database.session() as session:
        series = session.get(Series, series_id)
        assert (series.state, series.instances) == ("receiving", 3)
        assert session.scalar(select(func.count(Job.id))) == 1
    assert sum(p is not None for p in _paths(database).values()) == 3


def test_a_spooled_file_lost_otherwise_is_written_again(stack):
    """A row whose file vanished without retention (removed by hand): the re-sent bytes are
    kept at the row's path instead of being deleted as a duplicate's."""
    database, intake, assembler = stack
    datasets = _small(13)
    _send(intake, assembler, datasets)
    lost = Path(_paths(database)[datasets[2].SOPInstanceUID] or "")
    lost.unlink()

    (outcome,) = _send(intake, assembler, datasets[2:3])

    assert outcome.status == SUCCESS and outcome.duplicate
    assert lost.read_bytes() == _encoded(datasets[2])
    with database.session() as session:
        assert session.scalar(select(func.count(Job.id))) == 1


def test_spool_recovery_adopts_a_purged_instance_stored_again(stack, tmp_path):
    """The file of a re-sent purged instance was written but its commit lost (power cut): the
    spool recovery at the next start records it like the re-send would have."""
    database, intake, assembler = stack
    datasets = _small(14)
    _send(intake, assembler, datasets)
    _finish_jobs(database)
    _purge(database)
    ds = datasets[0]
    layout = SpoolLayout(tmp_path / "spool", tmp_path / "quarantine")
    path = layout.path_for(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encoded(ds))

    item = Received(_encoded(ds), MRImageStorage, str(ds.SOPInstanceUID), "", "spool", "rec")
    outcome = intake.adopt(item, path)

    assert outcome.status == SUCCESS and not outcome.duplicate
    assert _paths(database)[ds.SOPInstanceUID] == str(path) and path.exists()
    with database.session() as session:
        series = session.scalars(select(Series)).one()
        assert (series.state, series.instances, series.purged_at) == ("receiving", 1, None)
