"""Intake, completion, routing to jobs and retention on SQLite and on PostgreSQL.

These drive the node's own classes in-process (no network) so that each database runs the same
state machine; the network path is covered against storescu in test_receive.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydicom.uid import MRImageStorage
from sqlalchemy import func, select

from db.migrate import head_revision, upgrade
from db.models import Instance, Job, JobEvent, Series, SeriesEvent
from dicomnode.config import parse_config
from dicomnode.receive.assembly import SeriesAssembler
from dicomnode.receive.intake import SUCCESS, Intake, Received
from dicomnode.retention import purge
from pipeline.sample import Acquisition, build_series

RULES = parse_config(
    {
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}],
        "rules": [
            {
                "name": "lowfield-t1",
                "match": {"Modality": "MR", "MagneticFieldStrength": "<1.0"},
                "action": "enhance",
                "destinations": ["pacs"],
            }
        ],
    }
).rules


def _encoded(ds) -> bytes:  # type: ignore[no-untyped-def]
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _send(intake: Intake, assembler: SeriesAssembler, datasets, calling="SCANNER") -> list[int]:  # type: ignore[no-untyped-def]
    statuses = []
    for ds in datasets:
        outcome = intake.receive(
            Received(
                _encoded(ds), MRImageStorage, str(ds.SOPInstanceUID), calling, "127.0.0.1", "a1"
            )
        )
        statuses.append(outcome.status)
        if outcome.series_id is not None and not outcome.duplicate:
            assembler.after_store(outcome.series_id)
    return statuses


def _small(seed: int, announce: bool = True):  # type: ignore[no-untyped-def]
    datasets = build_series(
        Acquisition(rows=64, columns=64, pixel_spacing=3.6, slices=8, seed=seed)
    )
    if not announce:
        for ds in datasets:
            del ds.ImagesInAcquisition
    return datasets


def test_migrations_reach_head(stack):
    database, _, _ = stack
    assert head_revision(database) is not None
    assert upgrade(database) == head_revision(database)  # idempotent


def test_count_completion_queues_one_job_with_full_history(stack):
    database, intake, assembler = stack
    assert _send(intake, assembler, _small(1)) == [SUCCESS] * 8
    with database.session() as session:
        series = session.scalars(select(Series)).one()
        assert (series.state, series.instances, series.rule) == ("complete", 8, "lowfield-t1")
        job = session.scalars(select(Job)).one()
        assert job.state == "queued" and job.action == "enhance"
        states = [e.to_state for e in session.scalars(select(JobEvent).order_by(JobEvent.id))]
        assert states == ["received", "complete", "queued"]


def test_duplicates_are_stored_once(stack):
    database, intake, assembler = stack
    datasets = _small(2)
    _send(intake, assembler, datasets[:3])
    assert _send(intake, assembler, datasets[:3]) == [SUCCESS] * 3
    with database.session() as session:
        assert session.scalar(select(func.count(Instance.id))) == 3


def test_quiet_completion_and_late_instance_supersedes(stack):
    database, intake, assembler = stack
    datasets = _small(3, announce=False)
    _send(intake, assembler, datasets[1:])
    assert assembler.complete_quiet() == 0  # not quiet yet
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6)
    assert assembler.complete_quiet(now=later) == 1
    _send(intake, assembler, datasets[:1])  # the late instance reopens the series
    with database.session() as session:
        assert session.scalars(select(Series)).one().state == "receiving"
    assembler.complete_quiet(now=later + dt.timedelta(seconds=6))
    with database.session() as session:
        jobs = list(session.scalars(select(Job).order_by(Job.id)))
        assert [j.state for j in jobs] == ["cancelled", "queued"]
        assert jobs[1].supersedes_job_id == jobs[0].id
        events = [e.event for e in session.scalars(select(SeriesEvent).order_by(SeriesEvent.id))]
        assert events == ["completed", "reopened", "completed"]


def test_instance_numbers_complete_after_release(stack):
    database, intake, assembler = stack
    datasets = _small(4, announce=False)
    _send(intake, assembler, datasets)
    with database.session() as session:
        series_id = session.scalars(select(Series.id)).one()
    assembler.after_release([series_id])
    with database.session() as session:
        assert session.get(Series, series_id).completion_reason.startswith("instance-numbers")


def test_unmatched_series_is_ignored(stack):
    database, intake, assembler = stack
    datasets = _small(5)
    for ds in datasets:
        ds.MagneticFieldStrength = "3"
    _send(intake, assembler, datasets)
    with database.session() as session:
        assert session.scalars(select(Series)).one().state == "ignored"
        assert session.scalar(select(func.count(Job.id))) == 0


def test_retention_spares_unfinished_jobs(stack):
    database, intake, assembler = stack
    _send(intake, assembler, _small(6))  # routed: queued job (unfinished)
    ignored = _small(7)
    for ds in ignored:
        ds.Modality = "CT"
    _send(intake, assembler, ignored)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    assert purge(database, days=7, now=future) == 1
    with database.session() as session:
        kept = session.scalars(select(Series).where(Series.state == "complete")).one()
        gone = session.scalars(select(Series).where(Series.state == "ignored")).one()
        assert kept.purged_at is None and gone.purged_at is not None
        paths = dict(session.execute(select(Instance.series_id, Instance.path)).all())
        assert paths[gone.id] is None and Path(paths[kept.id]).exists()
    assert purge(database, days=7, now=dt.datetime.now(dt.UTC)) == 0


def test_retention_removes_the_outputs_of_finished_jobs(stack, tmp_path):
    from dicomnode.jobs import transition

    database, intake, assembler = stack
    _send(intake, assembler, _small(8))
    with database.session() as session:
        job = session.scalars(select(Job)).one()
        for state in ("processing", "stored", "delivered"):
            transition(session, job, state, f"test: {state}")
        job_id = job.id
    outputs = tmp_path / "outputs"
    written = outputs / f"job-{job_id}" / "1.2.3.dcm"
    written.parent.mkdir(parents=True)
    written.write_bytes(b"derived")
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    assert purge(database, days=7, now=future, outputs_root=outputs) == 1
    assert not written.parent.exists() and outputs.exists()


def test_undecodable_optional_attribute_is_stored_as_absent(stack, caplog):
    """A scanner's malformed InstanceNumber costs the attribute, not the image."""
    database, intake, _ = stack
    ds = _small(7)[0]
    ds.InstanceNumber = 77
    data = _encoded(ds)
    element = b"\x20\x00\x13\x00IS\x02\x0077"
    assert data.count(element) == 1
    item = Received(
        data.replace(element, element[:-2] + b"x7"),
        MRImageStorage,
        str(ds.SOPInstanceUID),
        "SCANNER",
        "127.0.0.1",
        "a1",
    )
    assert intake.receive(item).status == SUCCESS
    with database.session() as session:
        assert session.scalars(select(Instance.instance_number)).one() is None
    assert "InstanceNumber is not an integer" in caplog.text
    assert "x7" not in caplog.text  # names the attribute, never repeats the value
