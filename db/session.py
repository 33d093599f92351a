"""Database engines and sessions for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode so that readers (the CLI, health checks) never block the SCP's writes,
with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the lock instead of failing halfway
through a transaction, and ``synchronous=NORMAL``: a process crash loses nothing committed, and
the spool files (fsynced before commit) let start-up recover what a power cut might take.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection

SQLITE_BUSY_TIMEOUT_MS = 30_000
BEGIN_RETRY_FIRST_SECONDS = 0.0001
BEGIN_RETRY_MAX_SECONDS = 0.001
DRIVER_CONNECTIONS = 4  # SQLite connections kept checked out for driver transactions


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=8,
            max_overflow=16,
        )
        _configure_sqlite(engine)
        return engine
    if parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))
    return create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        # Straight to the driver: through SQLAlchemy this statement cost ~0.1 ms per transaction.
        begin_immediate(connection.connection.driver_connection)


def begin_immediate(driver: sqlite3.Connection) -> None:
    """Take SQLite's write lock, retrying every 0.1-1 ms until the busy timeout.

    SQLite's own busy handler sleeps 1, 2, 5, 10... ms between attempts, which is longer than
    the ~1 ms write transactions it waits for: with four associations storing at once, waiting
    for the lock took ~6.5 ms per instance. The lock is free again far sooner; asking often
    finds it, from other threads and other receiver processes alike.
    """
    driver.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        pause = BEGIN_RETRY_FIRST_SECONDS
        while True:
            try:
                driver.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 1.5, BEGIN_RETRY_MAX_SECONDS)
    finally:
        driver.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")


class Database:
    """One engine and its session factory, shared by every thread of the node."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Driver connections kept checked out for driver_transaction; see there.
        self._drivers: queue.SimpleQueue[PoolProxiedConnection] = queue.SimpleQueue()
        self._drivers_held = 0
        self._drivers_limit = DRIVER_CONNECTIONS if self.dialect == "sqlite" else 0
        self._drivers_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any exception."""
        with self._sessions() as session:
            with session.begin():
                yield session

    @contextmanager
    def driver_transaction(self) -> Iterator[Any]:
        """A write transaction on a pooled driver (DBAPI) connection, for ``PreparedStatement``.

        Committed on success, rolled back on any exception. On SQLite it starts with the write
        lock taken (``begin_immediate``), as the engine's own transactions do.
        """
        pooled, kept = self._take_driver()
        try:
            driver = pooled.driver_connection
            if self.dialect == "sqlite":
                begin_immediate(driver)
            try:
                yield driver
            except BaseException:
                driver.rollback()
                raise
            driver.commit()
        except BaseException:
            # Back to the pool, which resets it and (PostgreSQL) pings it before the next use.
            if kept:
                with self._drivers_lock:
                    self._drivers_held -= 1
            pooled.close()
            raise
        if kept:
            self._drivers.put(pooled)
        else:
            pooled.close()

    def _take_driver(self) -> tuple[PoolProxiedConnection, bool]:
        """A connection for one driver transaction; True when it is kept out of the pool after.

        Checking a connection out of SQLAlchemy's pool and back in costs ~0.05 ms, a fifth of
        the intake's database time per instance, so on SQLite up to DRIVER_CONNECTIONS stay
        checked out between transactions. Beyond that (more associations at once) they come
        from the pool and go back to it, which keeps room in the pool for sessions. A server's
        connection (PostgreSQL) always goes back: after hours without a scan it may be gone,
        and the pool pings it before handing it out, where a kept one would fail an instance.
        """
        try:
            return self._drivers.get_nowait(), True
        except queue.Empty:
            pass
        pooled = self.engine.raw_connection()
        with self._drivers_lock:
            if self._drivers_held < self._drivers_limit:
                self._drivers_held += 1
                return pooled, True
        return pooled, False

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A Core transaction, where ORM sessions cost milliseconds per call; the per-instance
        statements use ``driver_transaction`` instead."""
        with self.engine.begin() as connection:
            yield connection

    def dispose(self) -> None:
        while True:
            try:
                pooled = self._drivers.get_nowait()
            except queue.Empty:
                break
            pooled.close()
        with self._drivers_lock:
            self._drivers_held = 0
        self.engine.dispose()
