"""The receiving node against dcmtk's storescu, with the node running as ``dicomnode serve``."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.conftest import free_port, require_tool
from tests.node.helpers import RunningNode, storescu
from tests.node.series_files import write_lowfield_series


@pytest.fixture
def node(tmp_path: Path):
    require_tool("storescu")
    running = RunningNode(tmp_path / "node", free_port(), quiet_seconds=30).start()
    yield running
    running.stop()


def _db_instances(node: RunningNode) -> list[tuple[str, str]]:
    with sqlite3.connect(node.data_dir / "dicomnode.sqlite3") as conn:
        return conn.execute("select sop_instance_uid, path from instances").fetchall()


def test_series_completes_by_count_and_job_is_queued(node, brain, tmp_path):
    files = write_lowfield_series(brain, tmp_path / "s", seed=1)
    storescu(node.port, files)
    series = node.wait_for(
        lambda: [s for s in node.series() if s["state"] == "complete"], what="completion"
    )
    assert len(series) == 1
    assert series[0]["instances"] == 30
    assert series[0]["rule"] == "lowfield-t1"
    assert series[0]["completion"].startswith("expected-count: 30 of 30")
    jobs = node.jobs()
    assert [(j["series_uid"], j["action"], j["state"]) for j in jobs] == [
        (series[0]["series_uid"], "enhance", "queued")
    ]
    stored = _db_instances(node)
    assert len(stored) == 30
    sent = {pydicom.dcmread(f).SOPInstanceUID: f.read_bytes() for f in files}
    for sop_uid, path in stored:
        # the spool keeps the dataset exactly as sent (storescu sends it unchanged)
        assert (
            pydicom.dcmread(path).PixelData
            == pydicom.dcmread(
                [f for f in files if pydicom.dcmread(f).SOPInstanceUID == sop_uid][0]
            ).PixelData
        )
    assert set(sent) == {uid for uid, _ in stored}


def test_completion_by_instance_numbers_after_release(node, brain, tmp_path):
    files = write_lowfield_series(brain, tmp_path / "s", seed=2, announce_count=False)
    storescu(node.port, files)
    series = node.wait_for(
        lambda: [s for s in node.series() if s["state"] == "complete"], what="completion"
    )
    assert series[0]["completion"].startswith("instance-numbers: 1..30")


def test_completion_by_quiet_period(tmp_path, brain):
    # quiet period long enough that a CLI call on a loaded machine still sees it receiving
    node = RunningNode(tmp_path / "node", free_port(), quiet_seconds=6).start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=3, announce_count=False)
        storescu(node.port, files[1:])  # instance 1 missing: numbers are not 1..N
        assert node.series()[0]["state"] == "receiving"
        series = node.wait_for(
            lambda: [s for s in node.series() if s["state"] == "complete"],
            timeout=30,
            what="quiet completion",
        )
        assert series[0]["completion"].startswith("quiet-period")
        assert series[0]["instances"] == 29
        assert len(node.jobs()) == 1
    finally:
        node.stop()


def test_late_instance_reopens_and_supersedes(node, brain, tmp_path):
    files = write_lowfield_series(brain, tmp_path / "s", seed=4, announce_count=False)
    storescu(node.port, files[:-1])
    node.wait_for(lambda: [j for j in node.jobs() if j["state"] == "queued"], what="first job")
    storescu(node.port, files[-1:])
    jobs = node.wait_for(
        lambda: (lambda js: js if len(js) == 2 else None)(node.jobs()), what="2nd job"
    )
    by_id = {j["id"]: j for j in jobs}
    newest, oldest = max(by_id), min(by_id)
    assert by_id[newest]["state"] == "queued"
    assert by_id[newest]["supersedes_job_id"] == oldest
    assert by_id[oldest]["state"] == "cancelled"
    assert "superseded" in by_id[oldest]["reason"]
    series = node.series()
    assert len(series) == 1 and series[0]["instances"] == 30 and series[0]["generation"] == 1


def test_duplicate_instance_stored_once(node, brain, tmp_path):
    files = write_lowfield_series(brain, tmp_path / "s", seed=5)
    storescu(node.port, files[:3])
    result = storescu(node.port, files[:3])
    assert result.stderr.count("Received Store Response (Success)") == 3
    assert len(_db_instances(node)) == 3
    assert node.series()[0]["instances"] == 3


def test_unknown_calling_ae_is_rejected(tmp_path, brain):
    node = RunningNode(
        tmp_path / "node", free_port(), accept='calling_ae_titles = ["SCANNER"]'
    ).start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=6)
        result = storescu(node.port, files[:1], calling="INTRUDER", check=False)
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stderr + result.stdout
        assert "calling AE title not allowed" in node.log_path.read_text()
        assert node.series() == []
        storescu(node.port, files[:1], calling="SCANNER")
        assert len(node.series()) == 1
    finally:
        node.stop()


def test_source_network_not_allowed_is_rejected(tmp_path, brain):
    node = RunningNode(
        tmp_path / "node", free_port(), accept='source_networks = ["10.99.0.0/16"]'
    ).start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=7)
        result = storescu(node.port, files[:1], check=False)
        assert result.returncode != 0
        assert "Association Rejected" in result.stderr + result.stdout
        assert "source address not allowed" in node.log_path.read_text()
        assert node.series() == []
    finally:
        node.stop()


def test_corrupt_dataset_is_quarantined_and_good_series_completes(node, brain, tmp_path):
    good = write_lowfield_series(brain, tmp_path / "good", seed=8)
    bad_source = write_lowfield_series(brain, tmp_path / "bad", seed=9)[0]
    corrupt = pydicom.dcmread(bad_source)
    corrupt.PixelData = corrupt.PixelData[:1000]  # inconsistent with Rows x Columns
    corrupt_path = tmp_path / "corrupt.dcm"
    corrupt.save_as(corrupt_path)
    result = storescu(node.port, [corrupt_path, bad_source], extra=["--no-halt"], check=False)
    text = result.stderr + result.stdout
    assert "Received Store Response (Error: DataSetDoesNotMatchSOPClass)" in text
    assert "Received Store Response (Success)" in text  # the association carried on
    storescu(node.port, good)
    node.wait_for(
        lambda: [s for s in node.series() if s["state"] == "complete" and s["instances"] == 30],
        what="good series",
    )
    quarantined = list((node.data_dir / "quarantine").glob("*.dcm"))
    reasons = list((node.data_dir / "quarantine").glob("*.reason.txt"))
    assert len(quarantined) == 1 and len(reasons) == 1
    assert "PixelData holds" in reasons[0].read_text()
    assert not list((node.data_dir / "spool" / ".tmp").iterdir())  # no temp file left behind


def test_free_space_floor_answers_out_of_resources(tmp_path, brain):
    node = RunningNode(tmp_path / "node", free_port(), min_free_mb=1e12).start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=10)
        result = storescu(node.port, files[:2], extra=["--no-halt"], check=False)
        text = result.stderr + result.stdout
        assert text.count("Received Store Response (Refused: OutOfResources)") == 2
        assert "Received Store Response (Success)" not in text
        assert node.series() == []
        assert not list((node.data_dir / "spool").glob("*/*.dcm"))
    finally:
        node.stop()


def test_sigkill_mid_series_loses_nothing_acknowledged(tmp_path, brain):
    node = RunningNode(tmp_path / "node", free_port()).start()
    files = write_lowfield_series(brain, tmp_path / "s", seed=11)
    first = storescu(node.port, files[:17])
    acknowledged = first.stderr.count("Received Store Response (Success)")
    assert acknowledged == 17
    node.kill()
    assert len(_db_instances(node)) == 17
    node.start()
    try:
        assert node.series()[0]["instances"] == 17
        storescu(node.port, files[17:])
        node.wait_for(
            lambda: [s for s in node.series() if s["state"] == "complete"], what="completion"
        )
        series = node.series()
        assert series[0]["instances"] == 30
        assert len(node.jobs()) == 1
    finally:
        node.stop()


def test_node_on_postgresql(tmp_path, brain, postgres_url):
    node = RunningNode(tmp_path / "node", free_port(), database_url=postgres_url).start()
    try:
        files = write_lowfield_series(brain, tmp_path / "s", seed=12)
        storescu(node.port, files)
        series = node.wait_for(
            lambda: [s for s in node.series() if s["state"] == "complete"], what="completion"
        )
        assert series[0]["instances"] == 30
        assert node.jobs()[0]["state"] == "queued"
    finally:
        node.stop()


def test_commits_lost_to_a_power_cut_are_recovered_from_the_spool(tmp_path, brain):
    """SQLite runs with synchronous=NORMAL: the spooled files, not the commits, are the truth."""
    node = RunningNode(tmp_path / "node", free_port()).start()
    files = write_lowfield_series(brain, tmp_path / "s", seed=12)
    storescu(node.port, files[:5])
    node.stop()
    with sqlite3.connect(node.data_dir / "dicomnode.sqlite3") as conn:
        lost = [row[0] for row in conn.execute("select id from instances order by id desc limit 2")]
        conn.execute(f"delete from instances where id in ({lost[0]}, {lost[1]})")
        conn.execute("update series set instances = instances - 2, frames = frames - 2")
    assert len(_db_instances(node)) == 3
    node.start()
    try:
        assert "spooled files missing from the database re-recorded" in node.log_path.read_text()
        assert len(_db_instances(node)) == 5
        assert node.series()[0]["instances"] == 5
        result = storescu(node.port, files[3:5])  # the sender retries them: stored once
        assert result.stderr.count("Received Store Response (Success)") == 2
        storescu(node.port, files[5:])
        node.wait_for(
            lambda: [s for s in node.series() if s["state"] == "complete"], what="completion"
        )
        assert node.series()[0]["instances"] == 30
        assert len(_db_instances(node)) == 30
    finally:
        node.stop()


def test_echo_and_garbage_on_the_wire(node, brain, tmp_path):
    """echoscu gets C-ECHO; a connection sending junk is aborted and the node carries on."""
    require_tool("echoscu")
    echo = subprocess.run(
        ["echoscu", "-v", "-aet", "SCANNER", "-aec", "IQTNODE", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert echo.returncode == 0, echo.stderr
    assert "Received Echo Response (Success)" in echo.stderr + echo.stdout
    for junk in (b"\x01\x00\x00\x00\x00\x08garbage!", b"\x04\x00\x00\x00\x00\x02\x00\x00"):
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
            sock.sendall(junk)
            answer = sock.recv(64)
        assert answer[:1] == b"\x07"  # A-ABORT
    files = write_lowfield_series(brain, tmp_path / "s", seed=13)
    result = storescu(node.port, files[:2])
    assert result.stderr.count("Received Store Response (Success)") == 2
    log = node.log_path.read_text()
    assert "malformed A-ASSOCIATE-RQ" in log
    assert "unexpected PDU type 0x04 where an A-ASSOCIATE-RQ belongs" in log
