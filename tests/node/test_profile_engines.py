"""A profile without a trained model is enhanced by the weightless engine its configuration names
(``[profiles."T2-0.36T"] engine = "inr"``), through the runner's claim, the worker and the
outcome, exactly as the node runs it; a trained model activated for the profile would win."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from db.migrate import upgrade
from db.models import Instance, Job, JobState, Series
from db.session import Database
from dicomnode.config import ConfigError, parse_config
from dicomnode.process.runner import JobRunner, WorkerSlot
from pipeline.sample import Acquisition, build_series, write_series

FAST_INR = {"iterations": 4, "batch": 256, "tv_points": 256, "hidden": 16, "layers": 2}


def _config(tmp_path: Path, profiles: dict) -> dict:
    return {
        "node": {"data_dir": str(tmp_path / "data")},
        "runner": {"gpu": "off", "cpu_workers": 1},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}],
        "rules": [
            {
                "name": "lowfield-t2",
                "match": {"Modality": "MR"},
                "action": "enhance",
                "profile": "T2-0.36T",
                "destinations": ["pacs"],
            }
        ],
        "profiles": profiles,
    }


def _queued_job(database: Database, files: list[Path]) -> int:
    with database.session() as session:
        series = Series(series_uid="1.2.3.4", study_uid="1.2.3", state="complete")
        session.add(series)
        session.flush()
        for number, path in enumerate(files, start=1):
            session.add(
                Instance(
                    sop_instance_uid=f"1.2.3.4.{number}",
                    series_id=series.id,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    instance_number=number,
                    path=str(path),
                    size_bytes=path.stat().st_size,
                )
            )
        job = Job(
            series_id=series.id,
            series_uid="1.2.3.4",
            action="enhance",
            rule="lowfield-t2",
            profile="T2-0.36T",
            destinations=["pacs"],
            state=JobState.QUEUED,
        )
        session.add(job)
        session.flush()
        return job.id


def test_configured_inr_enhances_a_profile_without_a_model(database_url, tmp_path):
    database = Database(database_url)
    upgrade(database)
    config = parse_config(_config(tmp_path, {"T2-0.36T": {"engine": "inr", "options": FAST_INR}}))
    runner, slot = JobRunner(database, config), WorkerSlot("cpu-0", "cpu", 1, config)
    acquisition = Acquisition(
        rows=64, columns=64, pixel_spacing=1.5, slices=8, series_description="T2 AX", seed=3
    )
    files = write_series(build_series(acquisition), tmp_path / "series")
    job_id = _queued_job(database, files)

    request = runner.claim(slot)
    assert request is not None and request.job_id == job_id
    assert {s.name for s in request.models.values()} == {"inr"}
    assert all(s.id is None and not s.path for s in request.models.values())
    # in the slot's own worker process, as the node runs it; its progress reaches the job
    lines: list[str] = []

    def on_progress(text: str) -> None:
        lines.append(text)
        runner.record_progress(job_id, text)

    try:
        outcome = slot.execute(request, 300, threading.Event(), on_progress)
    finally:
        slot.kill()
    assert outcome.ok, outcome.message
    assert outcome.factor == 4 and outcome.outputs
    assert lines and lines[-1].startswith("fit 4/4 iterations, data consistency L1 ")
    with database.session() as session:
        assert session.get(Job, job_id).progress == lines[-1]
    runner.finish(slot, request, outcome)
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job.state == JobState.STORED
        assert job.model_name == "inr" and job.model_version_id is None
    database.dispose()


def test_progress_lines_are_rate_limited_but_the_last_always_comes(tmp_path):
    """The engine calls back every few iterations; the worker passes at most one line per
    PROGRESS_INTERVAL_SECONDS, and always the final one."""
    from dicomnode.process.worker import _with_progress

    class Engine:
        progress = None

    engine, lines = Engine(), []

    def run() -> str:
        for done in range(1, 101):
            engine.progress(done, 100, 0.5)
        return "ran"

    assert _with_progress(engine, lines.append, run) == "ran"
    assert lines == [
        "fit 1/100 iterations, data consistency L1 0.5",
        "fit 100/100 iterations, data consistency L1 0.5",
    ]
    assert engine.progress is None


def test_a_profile_with_neither_model_nor_engine_has_no_model(database_url, tmp_path):
    database = Database(database_url)
    upgrade(database)
    config = parse_config(_config(tmp_path, {}))
    runner, slot = JobRunner(database, config), WorkerSlot("cpu-0", "cpu", 1, config)
    files = write_series(build_series(Acquisition(rows=32, columns=32, slices=4)), tmp_path / "s")
    job_id = _queued_job(database, files)
    assert runner.claim(slot) is None
    with database.session() as session:
        job = session.get(Job, job_id)
        assert "no active model for profile 'T2-0.36T'" in (job.reason or "")
    database.dispose()


@pytest.mark.parametrize(
    "profile, expected",
    [
        ({"engine": "nonesuch"}, "no engine named 'nonesuch'"),
        ({"engine": "inr", "options": {"iteration": 5}}, "iteration"),
        ({"engine": "iqt-t1"}, "runs trained weights"),
    ],
)
def test_a_wrong_profile_engine_is_refused_when_the_configuration_is_read(
    tmp_path, profile, expected
):
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(tmp_path, {"T2-0.36T": profile}))
    assert expected in str(caught.value)


def test_classical_interpolation_as_a_profile_engine_runs_in_the_worker(tmp_path):
    """The worker passes its slot's device and threads only to weightless engines that take
    them (``inr``), never to classical interpolation, which takes none."""
    from dicomnode.process.worker import EngineCache, ModelSpec
    from pipeline.engines import engine_takes

    assert engine_takes("inr", "device") and not engine_takes("bspline", "device")
    engine = EngineCache("cpu", 1).get(ModelSpec(None, "bspline", "1.0.0", 4, "", "", options={}))
    assert engine.info.name == "bspline"
    inr = EngineCache("cpu", 1).get(ModelSpec(None, "inr", "0.1.0", 4, "", "", options=FAST_INR))
    assert inr.settings.device == "cpu" and inr.settings.threads == 1
