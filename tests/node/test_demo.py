"""``dicomnode demo`` as a user runs it: a subprocess with real storescu and a real Orthanc.

The demo is the first thing a hospital runs, so it is tested as a whole: exit status, the
report (job delivered, model and version, weights hash), the preview PNG, and that it leaves no
Orthanc behind. The series is 128x128 (``--rows 128``, same field of view) so that the CPU
processing takes seconds; the path is the full-size one.
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from dicomnode.pacs import ORTHANC
from models.release import MODEL_NAME, released_entry
from tests.conftest import free_port, require_tool
from tests.node.helpers import BIN

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("storescu")


def run_demo(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN), "demo", "--workdir", str(workdir), "--port", str(free_port()), "--rows", "128"]
        + list(extra),
        capture_output=True,
        text=True,
        timeout=240,
    )


def released_k4(directory: Path | None = None) -> dict:
    """The newest released ``iqt-t1`` k = 4 entry of ``directory`` (default: the package): what
    a fresh installation runs for the demo's T1 series (``iqt-mc`` files serve other profiles)."""
    return released_entry(4, directory, name=MODEL_NAME)[1]


def nothing_listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_demo_delivers_the_enhanced_series_to_orthanc_and_writes_a_preview(tmp_path):
    require_tool(ORTHANC)
    result = run_demo(tmp_path / "demo")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    released = released_k4()
    assert re.search(r"job \d+: delivered", output), output
    assert f"{MODEL_NAME}@{released['version']} (k = 4)" in output
    assert released["sha256"] in output
    assert "end to end" in output and "pipeline: engine" in output
    assert 'AI label "AI-enhanced": first words of the enhanced series' in output
    assert re.search(
        r"see one instance's tags: http://127\.0\.0\.1:\d+/app/explorer\.html#instance", output
    )

    png = tmp_path / "demo" / "demo-preview.png"
    assert f"preview (input top, enhanced bottom): {png}" in output
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert len(list((tmp_path / "demo" / "from-pacs").glob("*.dcm"))) == 120  # 30 x 4

    web = re.search(r"http://127\.0\.0\.1:(\d+)/app/explorer\.html", output)
    assert web is not None, output
    assert nothing_listens(int(web.group(1))), "Orthanc was left running"


def test_demo_without_a_pacs_leaves_the_result_in_the_outbox(tmp_path):
    result = run_demo(tmp_path / "demo", "--no-pacs")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"job \d+: stored", output), output
    assert "120 enhanced instance(s) wait in the node's outbox" in output
    assert 'AI label "AI-enhanced"' in output and "see one instance: " in output
    assert (tmp_path / "demo" / "demo-preview.png").read_bytes()[:8] == PNG_MAGIC


def test_demo_runs_a_64_mt_t2_series_through_the_trained_mc_model(tmp_path):
    """The demo simulates a T2 series at 64 mT; the shipped iqt-mc release serves that profile,
    so the registry's active model enhances it rather than the inr fallback the demo's
    configuration names for the profile (tests/node/test_mixed_release.py runs inr)."""
    result = subprocess.run(
        [str(BIN), "demo", "--workdir", str(tmp_path / "demo"), "--port", str(free_port())]
        + ["--no-pacs", "--profile", "T2-64mT"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "simulating a T2-64mT axial series" in output
    assert "iqt-mc@0.1.0/k4" in output, output
    assert re.search(r"job \d+: stored, model iqt-mc@0\.1\.0", output), output
    assert "fitted to this series alone" not in output
    assert (tmp_path / "demo" / "demo-preview.png").read_bytes()[:8] == PNG_MAGIC


def test_demo_refuses_an_unknown_profile(tmp_path):
    result = run_demo(tmp_path / "demo", "--no-pacs", "--profile", "T5-3T")
    assert result.returncode != 0
    assert "--profile 'T5-3T' is not one of T1-0.36T" in result.stdout + result.stderr
