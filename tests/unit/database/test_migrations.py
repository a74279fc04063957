from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from infrakit.audit.sql import AUDIT_TABLE, metadata
from infrakit.database import DatabaseSession, current_revision, upgrade, upgrade_sync
from infrakit.database.migrate import VERSION_TABLE
from infrakit.settings import load_settings

HEAD = "0001_audit_log"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[DatabaseSession]:
    database = DatabaseSession(f"sqlite+aiosqlite:///{tmp_path}/m.db")
    yield database
    await database.aclose()


class TestUpgrade:
    """The kit's migrations: idempotent, loop-friendly, polite to the app."""

    async def test_upgrade_inside_a_running_loop_twice(self, db: DatabaseSession) -> None:
        assert await current_revision(db) is None
        assert await upgrade(db) == HEAD
        assert await upgrade(db) == HEAD  # a no-op the second time
        async with db.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert {AUDIT_TABLE, VERSION_TABLE} <= set(tables)

    async def test_existing_loggers_stay_enabled(self, db: DatabaseSession) -> None:
        app_logger = logging.getLogger("my.app.module")
        await upgrade(db)
        assert app_logger.disabled is False
        assert logging.getLogger("my.other").disabled is False

    async def test_applications_alembic_history_is_untouched(self, db: DatabaseSession) -> None:
        async with db.engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            await conn.execute(sa.text("INSERT INTO alembic_version VALUES ('app_rev_7')"))
        await upgrade(db)
        async with db.engine.connect() as conn:
            assert (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).scalar() == "app_rev_7"

    async def test_schema_matches_the_table_the_code_uses(self, db: DatabaseSession) -> None:
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        await upgrade(db)

        def diff(conn: sa.Connection) -> list[object]:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return [
                d for d in compare_metadata(context, metadata) if "alembic_version" not in str(d)
            ]

        async with db.engine.connect() as conn:
            assert await conn.run_sync(diff) == []

    def test_upgrade_from_settings_outside_a_loop(self, tmp_path: Path) -> None:
        settings = load_settings(
            "test",
            environ={},
            overrides={
                "database.url": f"sqlite+aiosqlite:///{tmp_path}/s/x.db",
                "audit.backend": "sql",
            },
        )
        assert upgrade_sync(settings) == HEAD
        assert (tmp_path / "s" / "x.db").exists()
