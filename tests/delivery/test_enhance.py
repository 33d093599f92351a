"""The whole node: storescu -> ``dicomnode serve`` (job runner, released model) -> Orthanc.

Series are small (128x128 at 1.8 mm, 16 slices of 5 mm every 6 mm: k = 4) so that each
enhancement takes seconds on a CPU; the path is the one a full-size series takes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
import sqlalchemy as sa

from db.models import Base
from tests.conftest import free_port, require_tool
from tests.delivery.orthanc import Orthanc
from tests.node.helpers import RunningNode, storescu
from tests.node.series_files import write_lowfield_series

SMALL = {"rows": 128, "pixel_spacing": 1.8, "slices": 16}
PROFILE = "T1-0.36T"
RUNNER = 'gpu = "off"\ncpu_workers = 1\ncpu_threads = 2\njob_timeout_seconds = 300'


def enhance_rules(
    port: int,
    *,
    forward_originals: bool = True,
    profile: str = PROFILE,
    when_no_model: str = "ignore",
) -> str:
    return f"""
[delivery]
initial_backoff_seconds = 0.3
max_backoff_seconds = 1.0
poll_interval_seconds = 0.1
connect_timeout_seconds = 2

[[destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {port}

[[rules]]
name = "lowfield-t1"
match = {{ Modality = "MR", MagneticFieldStrength = "<1.0", SeriesDescription = "(?i)t1" }}
action = "enhance"
profile = "{profile}"
when_no_model = "{when_no_model}"
forward_originals = {"true" if forward_originals else "false"}
destinations = ["pacs"]
"""


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("storescu")


def _node(
    tmp_path: Path,
    orthanc: Orthanc,
    runner: str = RUNNER,
    database_url: str | None = None,
    **rules: object,
) -> RunningNode:
    return RunningNode(
        tmp_path / "node",
        free_port(),
        database_url=database_url,
        quiet_seconds=2,
        rules=enhance_rules(orthanc.dicom_port, **rules),  # type: ignore[arg-type]
        runner=runner,
    )


def _series(brain, folder: Path, seed: int, **overrides: object) -> list[Path]:  # type: ignore[no-untyped-def]
    return write_lowfield_series(brain, folder, seed=seed, **{**SMALL, **overrides})


def _enhance_job(node: RunningNode, series_uid: str, state: str, timeout: float = 180) -> dict:
    def found() -> dict | None:
        for job in node.jobs():
            if job["series_uid"] == series_uid and job["action"] == "enhance":
                if job["state"] == state:
                    return job
                if job["state"] in ("failed", "cancelled") and state not in ("failed", "cancelled"):
                    raise AssertionError(f"job ended {job['state']}: {job['reason']}")
        return None

    return node.wait_for(found, timeout=timeout, what=f"enhance job of {series_uid} {state}")


def _uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def _log_lines(node: RunningNode, message: str) -> list[dict]:
    """The node's JSON log lines whose message is ``message``, oldest first."""
    lines = [json.loads(line) for line in node.log_path.read_text().splitlines() if line[:1] == "{"]
    return [line for line in lines if line.get("msg") == message]


def _database_text(node: RunningNode) -> str:
    """Every row of every table of the node's database, as text."""
    engine = sa.create_engine(f"sqlite:///{node.data_dir / 'dicomnode.sqlite3'}")
    try:
        with engine.connect() as connection:
            return "\n".join(
                repr(connection.execute(sa.select(table)).all())
                for table in Base.metadata.sorted_tables
            )
    finally:
        engine.dispose()


def _models(node: RunningNode, *args: str) -> subprocess.CompletedProcess:
    result = node.cli("models", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_enhanced_series_and_original_reach_the_pacs_with_provenance(tmp_path, brain, orthanc):
    node = _node(tmp_path, orthanc).start()
    try:
        files = _series(brain, tmp_path / "in", seed=61)
        storescu(node.port, files)
        source_uid = _uid(files)
        job = _enhance_job(node, source_uid, "delivered")
        show = node.json_lines("jobs", "show", str(job["id"]))[0]
        active = {  # the T1 profile's (iqt-mc rows serve the other profiles)
            m["factor"]: m
            for m in node.json_lines("models", "list")
            if m["state"] == "active" and m["profile"] == PROFILE
        }
        assert show["model"] == f"iqt-t1@{active[4]['version']}"
        assert show["model_sha256"] == active[4]["sha256"] and show["factor"] == 4
        assert show["consistency_psnr_db"] > 10
        assert [e["to"] for e in show["events"]][-4:] == [
            "queued",
            "processing",
            "stored",
            "delivered",
        ]
        node.wait_for(
            lambda: all(j["state"] == "delivered" for j in node.jobs()), what="the forward job"
        )

        stored = orthanc.series()
        assert set(stored) == {source_uid, show["output_series_uid"]}
        assert len(stored[source_uid]["Instances"]) == 16
        enhanced = stored[show["output_series_uid"]]
        assert len(enhanced["Instances"]) == 64

        paths = orthanc.download(enhanced, tmp_path / "out")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "out")))
        image = reader.Execute()
        assert image.GetSize() == (128, 128, 64)
        assert image.GetSpacing() == pytest.approx((1.8, 1.8, 1.5), abs=1e-3)

        ds = pydicom.dcmread(paths[0])
        assert ds.SeriesDescription.endswith("IQT iqt-t1 x4")
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        source = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source_uid
        processing = ds.ContributingEquipmentSequence[-1]
        description = str(processing.ContributionDescription)
        assert f"version {active[4]['version']}" in description
        assert active[4]["sha256"] in description and "data consistency" in description
        assert active[4]["sha256"] in ds.DerivationDescription
        verdict = subprocess.run(["dciodvfy", str(paths[0])], capture_output=True, text=True)
        assert "Error" not in verdict.stdout + verdict.stderr, verdict.stderr
    finally:
        node.stop()


def test_activation_applies_to_the_next_job_and_rollback_returns(tmp_path, brain, orthanc):
    node = _node(tmp_path, orthanc, forward_originals=False).start()
    try:
        listed = node.json_lines("models", "list")
        released = [
            m
            for m in listed
            if m["factor"] == 4 and m["state"] == "active" and m["profile"] == PROFILE
        ][0]
        _models(node, "import", released["path"], "--version", "0.2.0-site", "--profile", PROFILE)
        first = _series(brain, tmp_path / "a", seed=62)
        storescu(node.port, first)
        _enhance_job(node, _uid(first), "processing", timeout=60)
        _models(node, "activate", "iqt-t1@0.2.0-site/k4")  # while the first job runs
        second = _series(brain, tmp_path / "b", seed=63)
        storescu(node.port, second)
        job_a = _enhance_job(node, _uid(first), "delivered")
        job_b = _enhance_job(node, _uid(second), "delivered")
        assert node.json_lines("jobs", "show", str(job_a["id"]))[0]["model"] == (
            f"iqt-t1@{released['version']}"
        )
        assert node.json_lines("jobs", "show", str(job_b["id"]))[0]["model"] == "iqt-t1@0.2.0-site"

        _models(node, "rollback", PROFILE)
        third = _series(brain, tmp_path / "c", seed=64)
        storescu(node.port, third)
        job_c = _enhance_job(node, _uid(third), "delivered")
        show_c = node.json_lines("jobs", "show", str(job_c["id"]))[0]
        assert show_c["model"] == f"iqt-t1@{released['version']}"
        out = orthanc.series()[show_c["output_series_uid"]]
        ds = pydicom.dcmread(
            orthanc.download({"Instances": out["Instances"][:1]}, tmp_path / "o")[0]
        )
        assert f"iqt-t1 {released['version']}" in list(
            ds.ContributingEquipmentSequence[-1].SoftwareVersions
        )
    finally:
        node.stop()


def test_sigkill_during_processing_enhances_and_delivers_exactly_once(tmp_path, brain, orthanc):
    node = _node(tmp_path, orthanc, forward_originals=False).start()
    files = _series(brain, tmp_path / "in", seed=65)
    storescu(node.port, files)
    _enhance_job(node, _uid(files), "processing", timeout=60)
    node.kill()
    node.start()
    try:
        job = _enhance_job(node, _uid(files), "delivered")
        show = node.json_lines("jobs", "show", str(job["id"]))[0]
        reasons = [e["reason"] or "" for e in show["events"]]
        assert any("interrupted while processing" in r for r in reasons)
        assert [e["to"] for e in show["events"]].count("stored") == 1
        assert len(node.jobs()) == 1
        stored = orthanc.series()
        assert list(stored) == [show["output_series_uid"]]
        assert len(stored[show["output_series_uid"]]["Instances"]) == 64
        assert orthanc.count() == 64
    finally:
        node.stop()


def test_refused_series_fails_with_its_reason_and_the_next_succeeds(tmp_path, brain, orthanc):
    node = _node(tmp_path, orthanc, forward_originals=False).start()
    try:
        broken = _series(brain, tmp_path / "broken", seed=66, announce_count=False)
        del broken[7]  # a slice lost on the way: the volume has a gap
        storescu(node.port, broken)
        good = _series(brain, tmp_path / "good", seed=67)
        storescu(node.port, good)
        failed = _enhance_job(node, _uid(broken), "failed", timeout=120)
        assert failed["reason"].startswith("[missing-slices] ")
        assert "[missing-slices] [missing-slices]" not in failed["reason"]
        assert _log_lines(node, f"job {failed['id']} -> failed")[0]["level"] == "WARNING"
        _enhance_job(node, _uid(good), "delivered")
        assert node.cli("jobs", "retry", str(failed["id"])).returncode == 0
        _enhance_job(node, _uid(broken), "failed", timeout=120)  # refused again, clearly
    finally:
        node.stop()


def test_two_scanners_sending_at_once_both_get_their_results(tmp_path, brain, orthanc):
    node = _node(tmp_path, orthanc, forward_originals=False).start()
    try:
        series = [_series(brain, tmp_path / f"s{i}", seed=70 + i) for i in range(2)]
        results: list[subprocess.CompletedProcess] = []
        senders = [
            threading.Thread(
                target=lambda f=f, aet=aet: results.append(storescu(node.port, f, calling=aet))
            )
            for f, aet in zip(series, ("LOWFIELD1", "LOWFIELD2"), strict=True)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        assert len(results) == 2 and all(r.returncode == 0 for r in results)
        jobs = [_enhance_job(node, _uid(files), "delivered") for files in series]
        outputs = {
            node.json_lines("jobs", "show", str(j["id"]))[0]["output_series_uid"] for j in jobs
        }
        stored = orthanc.series()
        assert outputs <= set(stored) and len(outputs) == 2
    finally:
        node.stop()


def test_below_threshold_is_held_for_review_then_released(tmp_path, brain, orthanc):
    runner = RUNNER + '\nconsistency_threshold_db = 99.0\nbelow_threshold = "hold"'
    node = _node(tmp_path, orthanc, runner=runner, forward_originals=False).start()
    try:
        files = _series(brain, tmp_path / "in", seed=68)
        storescu(node.port, files)
        job = _enhance_job(node, _uid(files), "stored")
        assert job["review"] == "held" and "held for review" in job["reason"]
        assert orthanc.count() == 0
        released = node.cli("jobs", "release", str(job["id"]), "--by", "dr-test")
        assert released.returncode == 0, released.stderr
        _enhance_job(node, _uid(files), "delivered")
        out = next(iter(orthanc.series().values()))
        assert out["MainDicomTags"]["SeriesDescription"].endswith("x4 REVIEW")
    finally:
        node.stop()


def test_series_no_model_fits_is_forwarded_as_the_rule_says(tmp_path, brain, orthanc):
    node = _node(
        tmp_path, orthanc, forward_originals=False, profile="T2-0.064T", when_no_model="forward"
    ).start()
    try:
        files = _series(brain, tmp_path / "in", seed=69)
        storescu(node.port, files)
        job = node.wait_for(
            lambda: next((j for j in node.jobs() if j["state"] == "delivered"), None),
            timeout=60,
            what="the job forwarded",
        )
        assert job["action"] == "forward"
        show = node.json_lines("jobs", "show", str(job["id"]))[0]
        assert any("no model fits" in (e["reason"] or "") for e in show["events"])
        assert show["model"] is None
        assert set(orthanc.series()) == {_uid(files)}
    finally:
        node.stop()


def test_runner_on_postgresql_resumes_and_delivers(tmp_path, brain, orthanc, postgres_url):
    """The same claim, resume and outbox path on PostgreSQL (row locks instead of SQLite's
    single writer)."""
    node = _node(tmp_path, orthanc, database_url=postgres_url, forward_originals=False).start()
    files = _series(brain, tmp_path / "in", seed=75)
    storescu(node.port, files)
    _enhance_job(node, _uid(files), "processing", timeout=60)
    node.stop()  # SIGTERM while processing: the job is parked, not lost
    node.start()
    try:
        job = _enhance_job(node, _uid(files), "delivered")
        show = node.json_lines("jobs", "show", str(job["id"]))[0]
        assert any("parked" in (e["reason"] or "") for e in show["events"])
        assert orthanc.count() == 64
    finally:
        node.stop()


def test_invalid_birth_date_is_delivered_and_never_in_the_log_or_database(tmp_path, brain, orthanc):
    """A scanner's "31.12.1931" (not a DA) neither fails the job nor leaks: the log and the
    database name the attribute, never the value; the PACS gets the value the original has."""
    secret = "31.12.1931"
    node = _node(tmp_path, orthanc, forward_originals=False).start()
    try:
        files = _series(brain, tmp_path / "in", seed=77, patient_name="SECRET^BIRTHDAY")
        for path in files:
            ds = pydicom.dcmread(path)
            ds.PatientBirthDate = secret
            ds.save_as(path)
        storescu(node.port, files)
        job = _enhance_job(node, _uid(files), "delivered")
        out = orthanc.series()[job["output_series_uid"]]
        ds = pydicom.dcmread(
            orthanc.download({"Instances": out["Instances"][:1]}, tmp_path / "o")[0]
        )
        assert ds.PatientBirthDate == secret and ds.StudyDescription == "BRAIN"
        log = node.log_path.read_text()
        assert secret not in log and "SECRET" not in log
        named = [line for line in log.splitlines() if "PatientBirthDate" in line]
        assert named and all('"level": "WARNING"' in line for line in named)
        assert _uid(files) in named[0]
        database = _database_text(node)
        assert secret not in database and "SECRET" not in database
    finally:
        node.stop()


def test_worker_killed_under_a_job_is_retried_automatically(tmp_path, brain, orthanc):
    """The OOM killer's SIGKILL of a worker costs one attempt, counted on the job, not the job."""
    runner = RUNNER + "\nworker_died_retries = 1"
    node = _node(tmp_path, orthanc, runner=runner, forward_originals=False).start()
    try:
        files = _series(brain, tmp_path / "in", seed=78)
        storescu(node.port, files)
        _enhance_job(node, _uid(files), "processing", timeout=60)
        worker = _log_lines(node, "worker process started")[-1]["pid"]
        os.kill(worker, signal.SIGKILL)
        job = _enhance_job(node, _uid(files), "delivered")
        show = node.json_lines("jobs", "show", str(job["id"]))[0]
        assert show["worker_deaths"] == 1
        reasons = [e["reason"] or "" for e in show["events"]]
        retried = [r for r in reasons if r.startswith("[worker-died] ")]
        assert len(retried) == 1 and "queued again automatically (retry 1 of 1)" in retried[0]
        assert [e["to"] for e in show["events"]].count("processing") == 2
        assert orthanc.count() == 64
    finally:
        node.stop()
