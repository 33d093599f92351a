"""Core statements compiled once per dialect and run straight on the driver's connection.

The intake runs the same two or three statements for every received instance. Through a
SQLAlchemy ``Connection`` each costs ~0.1-0.2 ms of execution-context work around a driver call
of ~0.02 ms, a large share of what receiving an instance costs. Compiling once keeps SQLAlchemy
as the author of the SQL (dialect, quoting, parameter style, type conversions of the bound
values) while the per-call work is only the driver's.

Rows come back as the driver returns them; use it for columns whose driver values are already
what Python wants (integers, text), not for types that need result processing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler


@dataclass(frozen=True)
class _Compiled:
    sql: str
    positions: tuple[str, ...] | None  # None: the driver takes named parameters
    fixed: dict[str, Any]  # literals SQLAlchemy bound itself: the 1 of ``instances + 1``
    processors: dict[str, Callable[[Any], Any]]
    dbapi_error: type[Exception]


class PreparedStatement:
    """One statement, compiled for each dialect the first time it runs there."""

    def __init__(self, statement: Executable):
        self.statement = statement
        self._by_dialect: dict[str, _Compiled] = {}

    def rows(self, driver: Any, dialect: Dialect, values: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Run on a driver (DBAPI) connection inside the caller's transaction; return its rows.

        Driver errors are raised as SQLAlchemy's wrappers (``IntegrityError`` and so on), as
        they would be through a ``Connection``, so that callers catch one family of errors.
        """
        compiled = self._compiled(dialect)
        merged = {**compiled.fixed, **values}
        for name, process in compiled.processors.items():
            merged[name] = process(merged[name])
        parameters: Sequence[Any] | Mapping[str, Any] = (
            merged if compiled.positions is None else [merged[n] for n in compiled.positions]
        )
        cursor = driver.cursor()
        try:
            cursor.execute(compiled.sql, parameters)
            return list(cursor.fetchall()) if cursor.description else []
        except compiled.dbapi_error as exc:
            raise DBAPIError.instance(compiled.sql, parameters, exc, compiled.dbapi_error) from exc
        finally:
            cursor.close()

    def first(self, driver: Any, dialect: Dialect, values: Mapping[str, Any]) -> Any:
        rows = self.rows(driver, dialect, values)
        return rows[0] if rows else None

    def prepare(self, dialect: Dialect) -> None:
        """Compile now (a few ms) rather than while the first caller waits."""
        self._compiled(dialect)

    def _compiled(self, dialect: Dialect) -> _Compiled:
        key = f"{dialect.name}+{dialect.driver}"
        found = self._by_dialect.get(key)
        if found is None:
            found = self._by_dialect[key] = _compile(self.statement, dialect)
        return found


def _compile(statement: Executable, dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    if dialect.paramstyle not in ("qmark", "numeric", "format", "named", "pyformat"):
        raise ValueError(f"unsupported parameter style {dialect.paramstyle}")
    prefetched = [*compiled.insert_prefetch, *compiled.update_prefetch]
    if prefetched:  # Python-side defaults run in SQLAlchemy's execution context, not here
        names = ", ".join(column.name for column in prefetched)
        raise ValueError(f"give the statement values for the defaulted columns: {names}")
    binds = compiled.binds
    if any(bind.expanding or bind.literal_execute for bind in binds.values()):
        raise ValueError("statements with expanding or literal-execute parameters stay on Core")
    positions = tuple(compiled.positiontup) if compiled.positiontup is not None else None
    used = set(positions if positions is not None else compiled.bind_names.values())
    processors: dict[str, Callable[[Any], Any]] = {}
    for name in used:
        process = binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors[name] = process
    fixed = {name: binds[name].value for name in used if not binds[name].required}
    return _Compiled(compiled.string, positions, fixed, processors, dialect.loaded_dbapi.Error)
