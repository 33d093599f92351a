"""Prepared statements on the driver behave as the same statements through SQLAlchemy Core,
on SQLite and on PostgreSQL: same stored values, same error types, same transactions."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from db.models import Series
from db.prepared import PreparedStatement
from db.session import DRIVER_CONNECTIONS, Database

_CREATE = PreparedStatement(
    insert(Series)
    .values(
        series_uid=bindparam("uid"),
        study_uid="1.2.3",
        state="receiving",
        instances=0,
        frames=0,
        generation=0,
        first_received=bindparam("now"),
        last_received=bindparam("now"),
    )
    .returning(Series.id)
)
_TOUCH = PreparedStatement(
    update(Series)
    .where(Series.series_uid == bindparam("uid"))
    .values(instances=Series.instances + 1, last_received=bindparam("now"))
    .returning(Series.instances)
)


def test_values_are_stored_as_core_stores_them(database: Database) -> None:
    when = dt.datetime(2026, 11, 22, 3, 4, 5, 0, tzinfo=dt.UTC)  # no microseconds: a format trap
    dialect = database.engine.dialect
    with database.driver_transaction() as driver:
        (series_id,) = _CREATE.first(driver, dialect, {"uid": "1.2.3.1", "now": when})
    with database.connection() as connection:
        connection.execute(
            insert(Series).values(
                series_uid="1.2.3.2",
                study_uid="1.2.3",
                state="receiving",
                instances=0,
                frames=0,
                generation=0,
                first_received=when,
                last_received=when,
            )
        )
    with database.connection() as connection:
        rows = dict(connection.execute(select(Series.series_uid, Series.last_received)).all())
        raw = connection.exec_driver_sql("SELECT series_uid, last_received FROM series").all()
    assert rows["1.2.3.1"] == rows["1.2.3.2"]
    stored = dict(raw)
    assert stored["1.2.3.1"] == stored["1.2.3.2"]  # byte for byte, not merely equal when read
    assert isinstance(series_id, int)


def test_errors_are_sqlalchemy_errors_and_roll_back(database: Database) -> None:
    dialect = database.engine.dialect
    now = dt.datetime.now(dt.UTC)
    with database.driver_transaction() as driver:
        _CREATE.rows(driver, dialect, {"uid": "1.2.3.9", "now": now})
    with pytest.raises(IntegrityError):
        with database.driver_transaction() as driver:
            assert _TOUCH.first(driver, dialect, {"uid": "1.2.3.9", "now": now}) == (1,)
            _CREATE.rows(driver, dialect, {"uid": "1.2.3.9", "now": now})
    with database.connection() as connection:
        count = connection.execute(select(Series.instances)).scalar_one()
    assert count == 0  # the increment went with the failed transaction
    with database.driver_transaction() as driver:
        assert _TOUCH.first(driver, dialect, {"uid": "1.2.3.9", "now": now}) == (1,)
        assert _TOUCH.first(driver, dialect, {"uid": "missing", "now": now}) is None


def test_columns_left_to_python_defaults_are_refused(database: Database) -> None:
    statement = PreparedStatement(insert(Series).values(series_uid=bindparam("uid")))
    with pytest.raises(ValueError, match="defaulted columns: .*first_received"):
        statement.prepare(database.engine.dialect)


def test_more_concurrent_transactions_than_kept_connections(database: Database) -> None:
    """Driver connections beyond the kept few come from the pool and go back to it."""
    dialect = database.engine.dialect
    now = dt.datetime.now(dt.UTC)
    with database.driver_transaction() as driver:
        _CREATE.rows(driver, dialect, {"uid": "1.2.3.7", "now": now})
    start = threading.Barrier(DRIVER_CONNECTIONS + 3)
    errors: list[BaseException] = []

    def touch() -> None:
        try:
            start.wait(timeout=10)
            for _ in range(20):
                with database.driver_transaction() as driver:
                    _TOUCH.rows(driver, dialect, {"uid": "1.2.3.7", "now": now})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=touch) for _ in range(DRIVER_CONNECTIONS + 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with database.connection() as connection:
        total = connection.execute(select(Series.instances)).scalar_one()
    assert total == 20 * (DRIVER_CONNECTIONS + 3)
    database.dispose()  # closes the kept connections too; the engine still works after
    with database.driver_transaction() as driver:
        assert _TOUCH.first(driver, dialect, {"uid": "1.2.3.7", "now": now}) == (total + 1,)
