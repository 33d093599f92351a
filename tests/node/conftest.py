"""Fixtures shared by several node test files: a migrated database, an in-process listener, an
intake stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def database(database_url: str) -> Iterator:  # type: ignore[type-arg]
    """The node's database at ``database_url`` (SQLite and PostgreSQL), migrated to head."""
    from db.migrate import upgrade
    from db.session import Database

    db = Database(database_url)
    upgrade(db)
    yield db
    db.dispose()


@pytest.fixture
def listen() -> Iterator:  # type: ignore[type-arg]
    """``listen(handler=None, **settings)`` starts an in-process listener on a free loopback
    port (5 s deadlines unless overridden); every one started is stopped afterwards."""
    from dicomnode.net.scp import ListenerSettings, StoreSCP
    from tests.node.test_net_listener import NODE, Recorder

    started: list[StoreSCP] = []

    def start(handler: Recorder | None = None, **settings: object) -> StoreSCP:
        options: dict[str, object] = {
            "bind_address": "127.0.0.1",
            "port": 0,
            "network_timeout_seconds": 5.0,
            "association_request_timeout_seconds": 5.0,
            **settings,
        }
        scp = StoreSCP(ListenerSettings(NODE, **options), handler or Recorder())  # type: ignore[arg-type]
        scp.start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.fixture
def stack(database_url: str, tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """(database, intake, assembler) on a migrated database of each kind, with a spool in
    ``tmp_path`` and the enhance rule of test_database (quiet period 5 s)."""
    from db.migrate import upgrade
    from db.session import Database
    from dicomnode.receive.assembly import SeriesAssembler
    from dicomnode.receive.intake import Intake
    from dicomnode.receive.spool import SpoolLayout
    from tests.node.test_database import RULES

    database = Database(database_url)
    upgrade(database)
    layout = SpoolLayout(tmp_path / "spool", tmp_path / "quarantine")
    layout.ensure()
    intake = Intake(database, layout, min_free_bytes=0)
    assembler = SeriesAssembler(database, RULES, quiet_seconds=5)
    yield database, intake, assembler
    database.dispose()
