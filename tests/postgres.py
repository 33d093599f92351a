"""A throw-away PostgreSQL cluster for the test run, from Debian's `postgresql` package.

Unless `DICOMNODE_TEST_POSTGRES` names a server (an SQLAlchemy URL), the first test that needs
PostgreSQL starts one: `initdb` into a temporary folder (trust auth, fsync off), `postgres` on a
free 127.0.0.1 port with its socket in that folder, and a database `test`. It is stopped and the
folder removed when the run ends. PostgreSQL refuses to run as root; as root the cluster runs as
the `postgres` system user that the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ENV = "DICOMNODE_TEST_POSTGRES"
DRIVER = "postgresql+psycopg"
INSTALL_HINT = (
    "install Debian's postgresql package (apt-get install postgresql; scripts/test.sh does), "
    f"or set {ENV} to the SQLAlchemy URL of a running server, "
    f"e.g. {DRIVER}://postgres@127.0.0.1:5432/test"
)


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name  # /usr/lib/postgresql/<version>/bin/initdb
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def find_bindir() -> Path:
    """The newest Debian PostgreSQL server's bin folder, else the one of `initdb` on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).parent
    pytest.fail(
        "PostgreSQL's initdb is not installed (looked in /usr/lib/postgresql/*/bin and on "
        f"PATH): {INSTALL_HINT}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One PostgreSQL cluster in a temporary folder, run as an unprivileged user."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(
                    "PostgreSQL refuses to run as root and there is no 'postgres' system user "
                    f"to run the test cluster as: {INSTALL_HINT}"
                )
            self.as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self.root = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
        if self.as_user:
            os.chown(self.root, self.as_user["user"], self.as_user["group"])
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = 0

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # cwd: the server's user must be able to enter it (root's may be closed to it)
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C", "PGTZ": "UTC"},
            **self.as_user,
        )

    def _failure(self, what: str, result: subprocess.CompletedProcess[str]) -> str:
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        return (
            f"{what} failed (exit {result.returncode}) in {self.root}:\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}{log}"
        )

    def start(self) -> str:
        """initdb, start on a free port, create database `test`; returns its URL."""
        result = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        if result.returncode != 0:
            pytest.fail(self._failure("initdb", result))
        # a free port can be taken between choosing it and binding it: try a few
        for _attempt in range(5):
            self.port = _free_port()
            options = " ".join(
                [
                    f"-p {self.port}",
                    f"-k {self.root}",
                    "-c listen_addresses=127.0.0.1",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=200",
                ]
            )
            result = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                "-w", "-t", "120", "start",
            )  # fmt: skip
            if result.returncode == 0:
                break
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        else:
            pytest.fail(self._failure("starting postgres (pg_ctl start)", result))
        self._create_database("test")
        return f"{DRIVER}://postgres@127.0.0.1:{self.port}/test"

    def _create_database(self, name: str) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(
            f"{DRIVER}://postgres@127.0.0.1:{self.port}/postgres", isolation_level="AUTOCOMMIT"
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with engine.connect() as conn:
                        conn.execute(sa.text(f"CREATE DATABASE {name}"))
                    return
                except sa.exc.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            engine.dispose()

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_base() -> Iterator[str]:
    """The SQLAlchemy URL of the PostgreSQL database the tests use (`DICOMNODE_TEST_POSTGRES`,
    else a throw-away cluster started for this run); each test gets its own schema in it."""
    named = os.environ.get(ENV, "").strip()
    if named:
        yield named
        return
    cluster = Cluster(find_bindir())
    try:
        yield cluster.start()
    finally:
        cluster.stop()
