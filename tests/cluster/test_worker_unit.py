"""systemd/dicomnode-worker.service: verifies, and is hardened like the node's unit (with and
without the GPU drop-in)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.node.helpers import BIN

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "dicomnode-worker.service"
NODE_UNIT = SYSTEMD / "dicomnode.service"


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    require_tool("systemd-analyze")
    copy = tmp_path / "dicomnode-worker.service"
    copy.write_text(UNIT.read_text().replace("/opt/dicomnode/bin/dicomnode", str(BIN)))
    return copy


def _exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(line for line in result.stdout.splitlines() if "Overall exposure level" in line)
    return float(line.split(":")[1].split()[0])


def _verify(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert unit.name not in result.stderr, result.stderr


def test_worker_unit_verifies_and_is_hardened_like_the_node(unit):
    _verify(unit)
    assert _exposure(unit) <= 2.5
    text, node = UNIT.read_text(), NODE_UNIT.read_text()
    hardening = [
        line
        for line in node.split("# Hardening", 1)[1].split("[Install]")[0].splitlines()[1:]
        if "=" in line and not line.startswith("#")
    ]
    assert hardening and all(line in text.splitlines() for line in hardening)
    for setting in ("Type=notify", "WatchdogSec=", "KillMode=mixed", "worker --config"):
        assert setting in text


def test_worker_gpu_drop_in_keeps_it_hardened(unit):
    drop_in = SYSTEMD / "dicomnode-worker.service.d" / "gpu.conf"
    merged = unit.parent / "merged" / unit.name
    merged.parent.mkdir()
    merged.write_text(unit.read_text() + "\n" + drop_in.read_text())
    _verify(merged)
    assert _exposure(merged) <= 2.5
    assert "DeviceAllow=/dev/nvidiactl rw" in merged.read_text()
