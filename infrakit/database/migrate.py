"""Apply the migrations of the kit's tables with Alembic.

The database package owns the runner (this module and the Alembic
environment); each backend that keeps a table owns its migrations and names
their directory in its :class:`~infrakit.registry.Backend` (the SQL audit log
does). ``await upgrade(database)`` applies every registered backend's
migrations, or those of the backends a profile uses; it works inside a running
event loop (the async connection hands a sync one to Alembic through
``run_sync``; no ``asyncio.run``, no ``fileConfig``, so the application's
loggers are left alone). The kit keeps its own version table, so an
application's Alembic history in ``alembic_version`` is never touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from infrakit import registry
from infrakit.database.session import DatabaseSession
from infrakit.errors import DatabaseError
from infrakit.scrub import scrub_text

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from infrakit.settings.models import InfraSettings

__all__ = ["VERSION_TABLE", "current_revision", "migration_locations", "upgrade", "upgrade_sync"]

VERSION_TABLE = "infrakit_alembic_version"
SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
# Any fixed 64-bit number: the advisory lock that serialises concurrent upgrades.
_PG_MIGRATION_LOCK = 0x1F2A_0001
_log = structlog.get_logger("infrakit.database")


def migration_locations(settings: InfraSettings | None = None) -> list[str]:
    """The migration directories of the backends ``settings`` selects (of every
    registered backend when None), as ``"package:dir"`` strings."""
    if settings is not None:
        chosen = [registry.get_backend(c, settings.backend_name(c)) for c in registry.COMPONENTS]
    else:
        chosen = [b for c in registry.COMPONENTS for b in registry.backends(c).values()]
    return sorted({b.migrations for b in chosen if b is not None and b.migrations})


def _directory(location: str) -> str:
    import importlib.resources

    package, _, folder = location.partition(":")
    return str(importlib.resources.files(package) / folder)


def _config(connection: Connection, locations: Iterable[str]) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("version_locations", " ".join(_directory(loc) for loc in locations))
    config.set_main_option("path_separator", "space")
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection, revision: str, locations: list[str]) -> None:
    from alembic import command
    from sqlalchemy import text

    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    command.upgrade(_config(connection, locations), revision)


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    heads = context.get_current_heads()
    return ",".join(sorted(heads)) if heads else None


def _session_for(target: DatabaseSession | InfraSettings) -> tuple[DatabaseSession, bool]:
    if isinstance(target, DatabaseSession):
        return target, False
    return DatabaseSession(target.database), True  # type: ignore[arg-type]


async def upgrade(
    target: DatabaseSession | InfraSettings,
    revision: str = "heads",
    *,
    locations: Iterable[str] | None = None,
) -> str | None:
    """Bring the kit's tables up to ``revision``; a no-op when already there.

    ``target`` is a :class:`DatabaseSession` or the settings of a profile (then
    the migrations of the backends it selects run, on its database). Returns
    the revision the database is at afterwards.
    """
    from sqlalchemy import exc

    database, owned = _session_for(target)
    if locations is None:
        locations = migration_locations(None if isinstance(target, DatabaseSession) else target)
    wanted = list(locations)
    database.prepare_storage()
    try:
        async with database.engine.connect() as conn:
            before = await conn.run_sync(_current)
        if wanted:
            async with database.engine.begin() as conn:
                await conn.run_sync(_upgrade, revision, wanted)
        async with database.engine.connect() as conn:
            after: str | None = await conn.run_sync(_current)
    except (exc.SQLAlchemyError, OSError) as error:
        raise DatabaseError(
            f"migrating {database.url} failed: {type(error).__name__}: "
            f"{scrub_text(str(error).splitlines()[0])}"
        ) from error
    finally:
        if owned:
            await database.aclose()
    if after != before:
        _log.info("infrakit.migrated", database=database.url, before=before, after=after)
    return after


async def current_revision(database: DatabaseSession) -> str | None:
    """The kit's migration revision in this database (None before the first upgrade)."""
    async with database.engine.connect() as conn:
        return await conn.run_sync(_current)


def upgrade_sync(target: DatabaseSession | InfraSettings, revision: str = "heads") -> str | None:
    """:func:`upgrade` for code with no event loop of its own (the CLI)."""
    return asyncio.run(upgrade(target, revision))
