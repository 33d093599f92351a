"""The node as a service: /healthz and /metrics, systemd notifications, the unit file's checks."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dicomnode.config import load_config
from tests.conftest import free_port, require_tool
from tests.delivery.helpers import forward_rules
from tests.node.helpers import BIN, RunningNode, storescu
from tests.node.series_files import write_lowfield_series

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dicomnode.service"
SMALL = {"rows": 64, "pixel_spacing": 3.6, "slices": 8}


def _http_port(node: RunningNode) -> int:
    for line in node.log_path.read_text().splitlines():
        if '"node ready"' in line:
            return int(json.loads(line)["http_port"])
    raise AssertionError("no ready line")


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_healthz_metrics_and_unwritable_spool(tmp_path, brain, orthanc):
    require_tool("storescu")
    node = RunningNode(
        tmp_path / "node", free_port(), rules=forward_rules({"pacs": orthanc.dicom_port})
    ).start()
    try:
        port = _http_port(node)
        status, body = _get(port, "/healthz")
        health = json.loads(body)
        assert status == 200 and health["healthy"] is True
        processes = load_config(node.config_path).node.listener_processes()
        receivers = {f"receiver-{i}": True for i in range(processes)} if processes > 1 else {}
        assert health["workers"] == {"monitor": True, "delivery-pacs": True, **receivers}
        storescu(node.port, write_lowfield_series(brain, tmp_path / "s", seed=51, **SMALL))
        node.wait_for(lambda: [j for j in node.jobs() if j["state"] == "delivered"])
        status, body = _get(port, "/metrics")
        text = body.decode()
        assert status == 200
        assert "dicomnode_instances_received_total 8.0" in text
        assert 'dicomnode_jobs{state="delivered"} 1.0' in text
        assert 'dicomnode_deliveries{destination="pacs",state="sent"} 8.0' in text
        assert "dicomnode_delivery_seconds_count 1.0" in text
        assert "dicomnode_free_disk_bytes" in text
        summary = node.json_lines("status")[0]
        assert summary["listening"] == f"IQTNODE@127.0.0.1:{node.port}"
        assert summary["queue_depth"] == 0 and summary["jobs"] == {"delivered": 1}
        assert summary["destinations"][0]["sent"] == 8
        assert summary["destinations"][0]["last_success"] is not None
        assert node.cli("status").returncode == 0
        # the spool stops being writable (root ignores permissions, so a file takes its place)
        tmp_dir = node.data_dir / "spool" / ".tmp"
        tmp_dir.rename(tmp_dir.with_name(".tmp-away"))
        tmp_dir.write_text("not a directory")
        try:
            status, body = _get(port, "/healthz")
            health = json.loads(body)
            assert status == 503 and health["healthy"] is False
            assert health["spool_writable"] is not True and health["database"] is True
        finally:
            tmp_dir.unlink()
            tmp_dir.with_name(".tmp-away").rename(tmp_dir)
        assert _get(port, "/healthz")[0] == 200
        assert _get(port, "/nothing")[0] == 404
    finally:
        node.stop()


def test_systemd_notifications(tmp_path, monkeypatch):
    address = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(address))
    listener.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    node = RunningNode(tmp_path / "node", free_port(), rules="").start()
    try:
        messages = [listener.recv(4096).decode() for _ in range(2)]
        assert messages[0].startswith("READY=1")
        assert messages[1] == "WATCHDOG=1"
    finally:
        node.stop()
    rest = []
    listener.settimeout(2)
    try:
        while True:
            rest.append(listener.recv(4096).decode())
    except TimeoutError:
        pass
    listener.close()
    assert "STOPPING=1" in rest


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's executable (verify wants it to exist)."""
    require_tool("systemd-analyze")
    assert BIN.exists()
    copy = tmp_path / "dicomnode.service"
    copy.write_text(UNIT.read_text().replace("/opt/dicomnode/bin/dicomnode", str(BIN)))
    return copy


def test_unit_verifies(unit):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "dicomnode.service" not in result.stderr, result.stderr  # no warnings about it


def test_unit_security_exposure_at_most_2_5(unit):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(line for line in result.stdout.splitlines() if "Overall exposure level" in line)
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.5, result.stdout
    text = UNIT.read_text()
    for setting in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=dicomnode",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/dicomnode",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet=\n",
    ):
        assert setting in text, setting
    assert shutil.which("systemd-analyze")


def test_gpu_drop_in_verifies_and_keeps_exposure_at_most_2_5(unit):
    """The NVIDIA drop-in opens only the GPU device nodes; merged, the unit stays hardened."""
    drop_in = UNIT.parent / "dicomnode.service.d" / "gpu.conf"
    merged = unit.parent / "merged" / "dicomnode.service"
    merged.parent.mkdir()
    merged.write_text(unit.read_text() + "\n" + drop_in.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(merged)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "dicomnode.service" not in result.stderr, result.stderr
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(merged)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(line for line in result.stdout.splitlines() if "Overall exposure level" in line)
    assert float(line.split(":")[1].split()[0]) <= 2.5, result.stdout
    assert "DevicePolicy=closed" in merged.read_text()
