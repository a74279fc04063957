"""Apply the kit's own migrations (the audit log table) with Alembic.

``await upgrade(target)`` works inside a running event loop: the async
connection hands a sync one to Alembic through ``run_sync``; no
``asyncio.run`` and no ``fileConfig`` (the application's loggers are left
alone). The kit keeps its own version table, so an application's Alembic
history in ``alembic_version`` is never touched.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import exc, text

from infrakit.errors import DatabaseError
from infrakit.scrub import scrub_text

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from infrakit.database.session import DatabaseSession
    from infrakit.settings.models import InfraSettings

__all__ = ["HEAD", "VERSION_TABLE", "current_revision", "upgrade", "upgrade_sync"]

VERSION_TABLE = "infrakit_alembic_version"
HEAD = "0001_audit_log"
SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
# Any fixed 64-bit number: the advisory lock that serialises concurrent upgrades.
_PG_MIGRATION_LOCK = 0x1F2A_0001
_log = structlog.get_logger("infrakit.database")


def _config(connection: Connection) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    command.upgrade(_config(connection), revision)


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _session_for(target: DatabaseSession | InfraSettings) -> tuple[DatabaseSession, bool]:
    from infrakit.database.session import DatabaseSession, from_settings

    if isinstance(target, DatabaseSession):
        return target, False
    return from_settings(target, auto_migrate=False), True


async def upgrade(target: DatabaseSession | InfraSettings, revision: str = "head") -> str | None:
    """Bring the kit's tables up to ``revision``; a no-op when already there.

    ``target`` is a :class:`DatabaseSession` or the settings of a profile.
    Returns the revision the database is at afterwards.
    """
    database, owned = _session_for(target)
    database.prepare_storage()
    try:
        async with database.engine.connect() as conn:
            before = await conn.run_sync(_current)
        async with database.engine.begin() as conn:
            await conn.run_sync(_upgrade, revision)
        async with database.engine.connect() as conn:
            after: str | None = await conn.run_sync(_current)
    except (exc.SQLAlchemyError, OSError) as error:
        raise DatabaseError(
            f"migrating {database.url} failed: {type(error).__name__}: "
            f"{scrub_text(str(error).splitlines()[0])}"
        ) from error
    finally:
        if owned:
            await database.close()
    if after != before:
        _log.info("infrakit.migrated", database=database.url, before=before, after=after)
    return after


async def current_revision(database: DatabaseSession) -> str | None:
    """The kit's migration revision in this database (None before the first upgrade)."""
    async with database.engine.connect() as conn:
        return await conn.run_sync(_current)


def upgrade_sync(target: DatabaseSession | InfraSettings, revision: str = "head") -> str | None:
    """:func:`upgrade` for code with no event loop of its own (the CLI)."""
    return asyncio.run(upgrade(target, revision))
