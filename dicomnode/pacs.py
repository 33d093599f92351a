"""A local Orthanc (the Debian package) as the PACS of the demo, the benchmarks and the tests.

The demo must show the whole path ending where radiologists look, a PACS, on a fresh machine
with nothing but apt-get; the benchmarks need the same peer to compare against; the tests need
it as the real receiving end. One implementation serves all three so they cannot drift apart.

Each instance gets its own folder (configuration JSON, storage, index, log) and free loopback
ports. Orthanc listens on every interface (it has no bind option), so callers only ever send
to 127.0.0.1, and its REST API refuses other hosts (``RemoteAccessAllowed`` false).
``TCP_NODELAY=1`` is in its environment: without it Orthanc ingests about 20 instances/s
(DESIGN.md, measured), with it about 450/s.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ORTHANC = "/usr/sbin/Orthanc"
"""Where the Debian package installs the server."""

ORTHANC_PACKAGE = "orthanc"

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
"""Orthanc's DICOMweb plugin (Debian ``orthanc-dicomweb``): QIDO-RS, as OHIF queries a study."""


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_orthanc() -> str | None:
    """The Orthanc binary: on ``PATH``, else the Debian package's path, else None."""
    found = shutil.which("Orthanc")
    if found:
        return found
    return ORTHANC if os.access(ORTHANC, os.X_OK) else None


class OrthancError(RuntimeError):
    """Orthanc did not start, or exited; the message carries the tail of its log."""


@dataclass
class Orthanc:
    """One Orthanc server owned by this process: ``start()`` it, talk REST to it, ``stop()`` it."""

    folder: Path
    aet: str = "ORTHANC"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    name: str = "dicomnode-pacs"
    binary: str = ORTHANC
    plugins: list[str] = field(default_factory=list)
    """Plugin files to load (e.g. ``DICOMWEB_PLUGIN``); none by default."""

    # --- life cycle ------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.folder / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.folder / "orthanc.log"

    def configuration(self) -> dict[str, Any]:
        """Orthanc's JSON configuration: the plugins asked for, no authentication, any AE."""
        return {
            "Name": self.name,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": list(self.plugins),
        }

    def start(self, timeout: float = 20.0) -> Orthanc:
        """Write the configuration, start the server and return once its REST API answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.configuration(), indent=2))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll ``/system`` until it answers; raise with the log if Orthanc exits or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise OrthancError(f"Orthanc exited at start:\n{self.log_tail()}")
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.1)
        raise OrthancError(f"Orthanc did not answer within {timeout:g} s:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate (Orthanc flushes its index on SIGTERM), kill if it does not exit in time."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- REST -------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def explorer_url(self) -> str:
        """Orthanc Explorer, the web viewer shipped in the Debian package."""
        return f"{self.base_url}/app/explorer.html"

    def series_url(self, orthanc_id: str) -> str:
        return f"{self.explorer_url}#series?uuid={orthanc_id}"

    def instance_url(self, orthanc_id: str) -> str:
        """One instance in Orthanc Explorer, where its tags (SeriesDescription, ...) are listed."""
        return f"{self.explorer_url}#instance?uuid={orthanc_id}"

    def _open(self, path: str, method: str = "GET") -> bytes:
        request = urllib.request.Request(f"{self.base_url}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def get(self, path: str) -> Any:
        """GET a REST path and decode its JSON."""
        return json.loads(self._open(path))

    def file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file of one instance, byte for byte."""
        return self._open(f"/instances/{orthanc_id}/file")

    def instances(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc id of everything stored."""
        return {
            item["MainDicomTags"]["SOPInstanceUID"]: item["ID"]
            for item in self.get("/instances?expand")
        }

    def series(self) -> dict[str, dict[str, Any]]:
        """Series Instance UID -> Orthanc's expanded series (ID, MainDicomTags, Instances)."""
        return {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in self.get("/series?expand")}

    def download(self, series: dict[str, Any], folder: Path) -> list[Path]:
        """Write every instance of an (expanded) series into ``folder``, as the PACS holds it."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, instance in enumerate(series["Instances"]):
            path = folder / f"{index:04d}.dcm"
            path.write_bytes(self.file(instance))
            paths.append(path)
        return paths

    def qido(self, path: str) -> list[dict[str, Any]]:
        """A QIDO-RS query (needs ``DICOMWEB_PLUGIN``), answered as DICOM JSON (PS3.18 F.2)."""
        return self.get(f"/dicom-web/{path.lstrip('/')}")

    def count(self) -> int:
        return int(self.statistics()["CountInstances"])

    def statistics(self) -> dict[str, Any]:
        return self.get("/statistics")
