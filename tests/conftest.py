"""Shared fixtures: real brains as DICOM series, databases (SQLite and PostgreSQL), real peers."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; .ci/run installs it (apt-get)")
    return path


@pytest.fixture(scope="session")
def brain():
    from pipeline.sample import load_brain

    return load_brain()


def _postgres_schema_url(base: str) -> Iterator[str]:
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path: Path) -> Iterator[str]:
    """Every database test runs on the embedded default and on PostgreSQL (a schema of its own
    in `postgres_base`: DICOMNODE_TEST_POSTGRES, else the run's throw-away cluster)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.sqlite3'}"
    else:
        # asked for here, not as an argument, so a run of SQLite tests starts no cluster
        yield from _postgres_schema_url(request.getfixturevalue("postgres_base"))


@pytest.fixture
def postgres_url(request) -> Iterator[str]:
    yield from _postgres_schema_url(request.getfixturevalue("postgres_base"))


# Fixtures kept in their own modules, registered here so every test folder can ask for them.
from tests.pki import pki  # noqa: E402,F401
from tests.postgres import postgres_base  # noqa: E402,F401
