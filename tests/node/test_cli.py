"""The administrator's commands against a running node: echo, series and jobs."""

from __future__ import annotations

import pytest

from tests.conftest import free_port, require_tool
from tests.node.helpers import BIN, RunningNode, storescu
from tests.node.series_files import write_lowfield_series


@pytest.fixture
def node(tmp_path):
    require_tool("storescu")
    running = RunningNode(tmp_path / "node", free_port()).start()
    yield running
    running.stop()


def test_echo_reaches_the_node_and_reports_failures(node):
    import subprocess

    ok = subprocess.run(
        [str(BIN), "echo", f"IQTNODE@127.0.0.1:{node.port}"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "Success" in ok.stdout
    closed = subprocess.run(
        [str(BIN), "echo", f"IQTNODE@127.0.0.1:{free_port()}", "--timeout", "2"],
        capture_output=True,
        text=True,
    )
    assert closed.returncode == 1 and "failed" in closed.stderr
    wrong = subprocess.run([str(BIN), "echo", "nonsense"], capture_output=True, text=True)
    assert wrong.returncode == 1 and "AET@HOST:PORT" in wrong.stderr


def test_series_and_jobs_commands(node, brain, tmp_path):
    files = write_lowfield_series(brain, tmp_path / "s", seed=30, rows=128)
    storescu(node.port, files)
    series = node.wait_for(lambda: [s for s in node.series() if s["state"] == "complete"])
    row = series[0]
    assert {"series_uid", "state", "instances", "rule"} <= set(row)
    shown = node.json_lines("series", "show", row["series_uid"])[0]
    assert shown["events"][0]["event"] == "completed"
    assert shown["transfer_syntaxes"] == ["1.2.840.10008.1.2.1"]
    job = node.jobs()[0]
    assert {"id", "series_uid", "action", "state"} <= set(job)
    detail = node.json_lines("jobs", "show", str(job["id"]))[0]
    assert [e["to"] for e in detail["events"]] == ["received", "complete", "queued"]
    cancelled = node.cli("jobs", "cancel", str(job["id"]))
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    again = node.cli("jobs", "cancel", str(job["id"]))
    assert again.returncode == 1 and "already cancelled" in again.stderr
    assert node.cli("jobs", "show", "999").returncode == 1
    # logs carry UIDs but never the patient's name or ID
    log = node.log_path.read_text()
    assert row["series_uid"] in log
    assert "DEMO^LOWFIELD" not in log and "LF0001" not in log
