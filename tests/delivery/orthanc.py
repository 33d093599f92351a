"""Orthanc (Debian package) as the PACS under test: free loopback ports, its own storage folder.

Orthanc listens on every interface (it has no bind option); tests only ever send to 127.0.0.1.
``TCP_NODELAY=1`` in its environment, as DESIGN.md measured (20/s without it).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port

ORTHANC = "/usr/sbin/Orthanc"


@dataclass
class Orthanc:
    folder: Path
    aet: str = "ORTHANC"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [],
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [ORTHANC, str(self.folder / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _open(self, path: str, method: str = "GET") -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def get(self, path: str):  # type: ignore[no-untyped-def]
        return json.loads(self._open(path))

    def file(self, orthanc_id: str) -> bytes:
        return self._open(f"/instances/{orthanc_id}/file")

    def instances(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc id of everything stored."""
        found = {}
        for item in self.get("/instances?expand"):
            found[item["MainDicomTags"]["SOPInstanceUID"]] = item["ID"]
        return found

    def count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def statistics(self) -> dict:
        return self.get("/statistics")
