"""Schema migrations with Alembic, callable from ``dicomnode db upgrade`` and at ``serve`` start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from db.session import Database

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(database: Database) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return config


def upgrade(database: Database, revision: str = "head") -> str | None:
    """Bring the schema to ``revision``; returns the revision now in force."""
    config = alembic_config(database)
    with database.engine.connect() as connection:
        if database.dialect == "sqlite":
            connection.exec_driver_sql("COMMIT") if connection.in_transaction() else None
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()
    return current_revision(database)


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(database: Database) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database)).get_current_head()
