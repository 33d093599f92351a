"""A real node under test: ``dicomnode serve`` in a subprocess, fed by dcmtk's ``storescu``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).with_name("dicomnode")

DEFAULT_RULES = """
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 4242

[[rules]]
name = "lowfield-t1"
match = { Modality = "MR", MagneticFieldStrength = "<1.0", SeriesDescription = "(?i)t1" }
action = "enhance"
destinations = ["pacs"]

[[rules]]
name = "other-mr"
match = { Modality = "MR" }
action = "forward"
destinations = ["pacs"]
"""


@dataclass
class RunningNode:
    workdir: Path
    port: int
    database_url: str | None = None
    quiet_seconds: float = 30.0
    min_free_mb: float = 1.0
    accept: str = ""
    rules: str = DEFAULT_RULES
    node_extra: str = ""
    runner: str = 'gpu = "off"\ncpu_workers = 0'
    process: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "node.log"
        db_line = f'database_url = "{self.database_url}"' if self.database_url else ""
        self.config_path.write_text(
            f"""
[node]
ae_title = "IQTNODE"
port = {self.port}
bind_address = "127.0.0.1"
data_dir = "{self.workdir / "data"}"
http_port = 0
min_free_mb = {self.min_free_mb}
{db_line}
{self.node_extra}

[node.accept]
{self.accept}

[completion]
quiet_seconds = {self.quiet_seconds}
check_interval_seconds = 0.2

[runner]
{self.runner}
{self.rules}
"""
        )

    @property
    def config_path(self) -> Path:
        return self.workdir / "node.toml"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def start(self, timeout: float = 30.0) -> RunningNode:
        log = self.log_path.open("ab")
        earlier = log.tell()  # a restart must not take the last run's "node ready" for its own
        self.process = subprocess.Popen(
            [str(BIN), "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited at start:\n{self.log_path.read_text()}")
            with self.log_path.open("rb") as current:
                current.seek(earlier)
                ready = b'"node ready"' in current.read()
            if ready:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"node did not become ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN), *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def json_lines(self, *args: str) -> list[dict]:
        result = self.cli(*args, "--json")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def series(self) -> list[dict]:
        return self.json_lines("series", "list")

    def jobs(self) -> list[dict]:
        return self.json_lines("jobs", "list")

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.log_path.read_text()[-4000:]}")


def storescu(
    port: int,
    files: list[Path],
    calling: str = "SCANNER",
    extra: list[str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """dcmtk's storescu as the scanner; -v so that response statuses are printed."""
    command = [
        "storescu",
        "-v",
        "-aet",
        calling,
        "-aec",
        "IQTNODE",
        *(extra or []),
        "127.0.0.1",
        str(port),
        *[str(f) for f in files],
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"storescu failed ({result.returncode}):\n{result.stderr}\n{result.stdout}"
        )
    return result
