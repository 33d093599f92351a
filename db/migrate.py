"""Schema migrations with Alembic, callable from ``dicomnode db upgrade`` and at ``serve`` start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from db.session import Database

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x64636D6E  # pg_advisory_lock key held while migrating ("dcmn")


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
        elif database.dialect == "postgresql":
            # Several machines start at once (receivers and workers all migrate at start): one
            # migrates, the others wait for it and then find the schema at head.
            connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
            connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
        finally:
            if database.dialect == "postgresql":
                connection.rollback()
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
                connection.commit()
    return current_revision(database)


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(database: Database) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database)).get_current_head()
