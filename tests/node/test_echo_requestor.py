"""``dicomnode echo`` speaks as the node does: our requestor (``dicomnode.net.scu``), our
implementation class UID and version name, the calling AE title of ``[node] ae_title``, and the
TLS settings of the destination it is pointed at.

Before, it ran pynetdicom's association code: pynetdicom's identity, no TLS, and a calling AE
title of IQTNODE whatever the configuration said. The peer is dcmtk's storescp (-d prints what
the requestor sent), with TLS (client certificate required) where TLS is tested.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicomnode.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.conftest import free_port, require_tool
from tests.node.helpers import BIN


@dataclass
class Storescp:
    port: int
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    require_tool("storescp")
    processes: list[subprocess.Popen] = []

    def start(*options: str) -> Storescp:
        port = free_port()
        log = tmp_path / f"storescp-{port}.log"
        folder = tmp_path / f"received-{port}"
        folder.mkdir()
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    ["storescp", "-d", "-aet", "PACS", "-od", str(folder), *options, str(port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        return Storescp(port, log)

    yield start
    for process in processes:
        process.kill()
        process.wait()


def _config(tmp_path: Path, ae_title: str, destinations: str = "") -> Path:
    path = tmp_path / "echo.toml"
    path.write_text(
        f"""
[node]
ae_title = "{ae_title}"
data_dir = "{tmp_path / "data"}"
{destinations}
"""
    )
    return path


def _echo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), "echo", *args], capture_output=True, text=True, timeout=60)


def test_echo_presents_our_identity_and_the_configured_ae_title(tmp_path, storescp):
    scp = storescp()
    config = _config(tmp_path, "ECHO NODE")
    result = _echo(f"PACS@127.0.0.1:{scp.port}", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "Success" in result.stdout and "calling AE ECHO NODE" in result.stdout
    log = scp.text()
    assert f"Their Implementation Class UID:    {IMPLEMENTATION_CLASS_UID}" in log
    assert f"Their Implementation Version Name: {IMPLEMENTATION_VERSION_NAME}" in log
    assert "Calling Application Name:    ECHO NODE" in log
    assert "Received Echo Request" in log


def test_the_calling_ae_option_overrides_the_configuration(tmp_path, storescp):
    scp = storescp()
    config = _config(tmp_path, "ECHO NODE")
    result = _echo(f"PACS@127.0.0.1:{scp.port}", "--config", str(config), "--calling-ae", "OTHER")
    assert result.returncode == 0, result.stderr
    assert "Calling Application Name:    OTHER" in scp.text()
    bad = _echo(f"PACS@127.0.0.1:{scp.port}", "--config", str(config), "--calling-ae", "A\\B")
    assert bad.returncode == 1 and "backslash" in bad.stderr


def test_echo_uses_the_destinations_tls_settings(tmp_path, storescp, pki):
    """storescp over TLS requires a client certificate from our CA: echo to the destination
    (by its name, or by its AE title, host and port) presents the destination's certificate;
    the same address outside the configuration gets plain TCP and fails."""
    require_tool("openssl")
    scp = storescp(
        "+tls",
        str(pki / "node.key"),
        str(pki / "node.pem"),
        "+cf",
        str(pki / "hospital-ca.pem"),
    )
    destination = f"""
[[destinations]]
name = "secure-pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = {scp.port}

[destinations.tls]
certificate = "{pki / "scanner.pem"}"
private_key = "{pki / "scanner.key"}"
ca_certificates = "{pki / "hospital-ca.pem"}"
"""
    config = _config(tmp_path, "ECHO NODE", destination)
    by_name = _echo("secure-pacs", "--config", str(config), "--timeout", "5")
    assert by_name.returncode == 0, by_name.stderr
    assert "over TLS" in by_name.stdout
    by_address = _echo(f"PACS@127.0.0.1:{scp.port}", "--config", str(config), "--timeout", "5")
    assert by_address.returncode == 0, by_address.stderr
    assert "over TLS" in by_address.stdout
    assert scp.text().count("Received Echo Request") == 2
    plain = _echo(
        f"PACS@127.0.0.1:{scp.port}", "--config", str(_config(tmp_path, "X")), "--timeout", "3"
    )
    assert plain.returncode == 1 and "failed" in plain.stderr


def test_an_unknown_destination_name_is_refused(tmp_path):
    result = _echo("nowhere", "--config", str(_config(tmp_path, "ECHO NODE")))
    assert result.returncode == 1
    assert "AET@HOST:PORT" in result.stderr and "destination" in result.stderr


def test_echo_to_nobody_listening_fails_fast(tmp_path):
    result = _echo(f"PACS@127.0.0.1:{free_port()}", "--config", str(_config(tmp_path, "N")))
    assert result.returncode == 1 and "failed" in result.stderr
