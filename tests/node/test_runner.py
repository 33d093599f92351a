"""The job runner's outcomes on SQLite and PostgreSQL: what operators read (issue 15, items 5-6).

A refusal's reason carries its code once, a failed job is logged at WARNING, a worker that dies
under a job is retried automatically up to ``worker_died_retries`` times (counted on the job),
and an unexpected error reaches the job and the log without the value that caused it. The
runner's own ``finish`` is driven with the worker's real ``process`` results; no model is loaded
(the series are refused before one is needed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Job, JobEvent, JobState, Series
from db.session import Database
from dicomnode.config import parse_config
from dicomnode.deliver import delivery
from dicomnode.jobs import transition
from dicomnode.process.runner import JobRunner, WorkerSlot
from dicomnode.process.worker import EngineCache, ModelSpec, WorkRequest, WorkResult, process
from pipeline.sample import Acquisition, build_series, write_series
from pipeline.settings import PipelineSettings

SPEC = ModelSpec(1, "iqt-t1", "0.1.0", 4, "/nonexistent", "0" * 64)
SECRET_BIRTH_DATE = "31.12.1931"


@pytest.fixture
def runner(database_url: str, tmp_path: Path):
    database = Database(database_url)
    upgrade(database)
    config = parse_config(
        {
            "node": {"data_dir": str(tmp_path / "data")},
            "runner": {"gpu": "off", "cpu_workers": 1, "worker_died_retries": 1},
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}
            ],
            "rules": [
                {
                    "name": "lowfield-t1",
                    "match": {"Modality": "MR"},
                    "action": "enhance",
                    "destinations": ["pacs"],
                }
            ],
        }
    )
    yield JobRunner(database, config), WorkerSlot("cpu-0", "cpu", 1, config)
    database.dispose()


def _processing_job(database: Database, series_uid: str = "1.2.3.4") -> int:
    with database.session() as session:
        series = Series(series_uid=series_uid, study_uid="1.2.3", state="complete")
        session.add(series)
        session.flush()
        job = Job(
            series_id=series.id,
            series_uid=series_uid,
            action="enhance",
            rule="lowfield-t1",
            destinations=["pacs"],
            state=JobState.QUEUED,
        )
        session.add(job)
        session.flush()
        transition(session, job, JobState.PROCESSING, "on cpu-0")
        return job.id


def _request(job_id: int, files: list[Path], tmp_path: Path) -> WorkRequest:
    return WorkRequest(
        job_id=job_id,
        series_uid="1.2.3.4",
        files=[str(f) for f in files],
        models={4: SPEC},
        pipeline=PipelineSettings().model_dump(mode="json"),
        output_dir=str(tmp_path / f"job-{job_id}"),
    )


def _job(database: Database, job_id: int) -> tuple[Job, list[JobEvent]]:
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)))
        session.expunge_all()
        return job, events


def _series_with_localizer(tmp_path: Path) -> list[Path]:
    datasets = build_series(Acquisition(rows=64, columns=64, pixel_spacing=3.6, slices=8, seed=5))
    datasets[3].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return write_series(datasets, tmp_path / "series")


def test_refusal_reason_names_its_code_once_and_fails_at_warning(runner, tmp_path, caplog):
    job_runner, slot = runner
    job_id = _processing_job(job_runner.database)
    request = _request(job_id, _series_with_localizer(tmp_path), tmp_path)
    outcome = process(request, EngineCache("cpu", 1))
    assert outcome.reason == "localizer" and not outcome.message.startswith("[")
    caplog.set_level(logging.INFO)
    job_runner.finish(slot, request, outcome)
    job, events = _job(job_runner.database, job_id)
    assert job.state == JobState.FAILED
    assert job.reason.startswith("[localizer] a localizer")
    assert "[localizer] [localizer]" not in job.reason
    failed = [r for r in caplog.records if r.getMessage() == f"job {job_id} -> failed"]
    assert failed and failed[0].levelno == logging.WARNING
    others = [r for r in caplog.records if r.getMessage().endswith("-> processing")]
    assert all(r.levelno == logging.INFO for r in others)


def _died(job_id: int) -> WorkResult:
    return WorkResult(
        job_id,
        ok=False,
        reason="worker-died",
        message="worker process cpu-0 died (exit code -9); a fresh one takes the next job",
    )


def test_worker_death_is_retried_automatically_then_fails(runner, tmp_path, caplog):
    job_runner, slot = runner
    database = job_runner.database
    job_id = _processing_job(database)
    request = _request(job_id, [], tmp_path)
    caplog.set_level(logging.INFO)

    job_runner.finish(slot, request, _died(job_id))
    job, events = _job(database, job_id)
    assert job.state == JobState.QUEUED and job.worker_deaths == 1
    assert events[-1].reason.startswith("[worker-died] worker process cpu-0 died")
    assert "queued again automatically (retry 1 of 1)" in events[-1].reason

    with database.session() as session:  # the runner claims it again; the worker dies again
        transition(session, session.get(Job, job_id), JobState.PROCESSING, "on cpu-0")
    job_runner.finish(slot, request, _died(job_id))
    job, events = _job(database, job_id)
    assert job.state == JobState.FAILED and job.worker_deaths == 2
    assert job.reason.startswith("[worker-died] ") and "worker_died_retries = 1" in job.reason
    failed = [r for r in caplog.records if r.getMessage() == f"job {job_id} -> failed"]
    assert [r.levelno for r in failed] == [logging.WARNING]

    with database.session() as session:  # a person retries: the automatic retries start afresh
        delivery.retry(session, job_id)
    job, _ = _job(database, job_id)
    assert job.state == JobState.QUEUED and job.worker_deaths == 0


def test_unexpected_error_reaches_job_and_log_without_its_value(
    runner, tmp_path, caplog, monkeypatch
):
    job_runner, slot = runner
    job_id = _processing_job(job_runner.database)

    def read_volume(*_args: object, **_kwargs: object) -> None:
        raise ValueError(f"Unable to convert '{SECRET_BIRTH_DATE}' to 'DA' object")

    monkeypatch.setattr("pipeline.volume.read_volume", read_volume)
    request = _request(job_id, _series_with_localizer(tmp_path), tmp_path)
    caplog.set_level(logging.DEBUG)
    outcome = process(request, EngineCache("cpu", 1))
    job_runner.finish(slot, request, outcome)
    job, events = _job(job_runner.database, job_id)
    assert job.state == JobState.FAILED
    assert job.reason.startswith("[internal-error] ValueError at node/test_runner.py:")
    stored = " ".join([job.reason, repr(job.result)] + [e.reason or "" for e in events])
    assert SECRET_BIRTH_DATE not in stored
    assert SECRET_BIRTH_DATE not in caplog.text
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged and "read_volume" in logged[0].getMessage()  # where it failed is kept


def test_an_illegal_job_transition_is_refused_and_writes_nothing(runner):
    """The legal moves live in one table (dicomnode.jobs.TRANSITIONS); a delivered or cancelled
    job never moves again, and a queued job cannot skip processing and its outbox."""
    from dicomnode.jobs import TRANSITIONS, JobError

    database = runner[0].database
    job_id = _processing_job(database)
    with database.session() as session:
        job = session.get(Job, job_id)
        with pytest.raises(JobError, match="processing -> received is not a legal transition"):
            transition(session, job, JobState.RECEIVED, "backwards")
        transition(session, job, JobState.CANCELLED, "by test")
        with pytest.raises(JobError, match="cancelled -> queued"):
            transition(session, job, JobState.QUEUED, "again")
    job, events = _job(database, job_id)
    assert job.state == JobState.CANCELLED
    assert [e.to_state for e in events] == [JobState.PROCESSING, JobState.CANCELLED]
    assert JobState.DELIVERED not in TRANSITIONS[JobState.QUEUED]
    assert not TRANSITIONS[JobState.DELIVERED] and not TRANSITIONS[JobState.CANCELLED]
    states = {v for k, v in vars(JobState).items() if k.isupper() and isinstance(v, str)}
    assert set(TRANSITIONS) == states
