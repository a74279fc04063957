"""The kit's own database and audit backends, built from profiles by Infra."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from infrakit import Infra, load_settings
from infrakit.audit import AuditFilter, InMemoryAuditLogger, SqlAuditLogger
from infrakit.database import DatabaseSession
from infrakit.errors import AuditError


class TestProfilesBuildComponents:
    """`test` and `local` build a database and an audit log."""

    async def test_test_profile(self) -> None:
        async with Infra.from_profile("test", environ={}) as infra:
            assert isinstance(infra.database, DatabaseSession)
            assert isinstance(infra.audit, InMemoryAuditLogger)
            async with infra.database.session() as session:
                assert (await session.execute(text("SELECT 1"))).scalar() == 1
            await infra.audit.log_action("login", "session")
            assert await infra.audit.count() == 1

    async def test_local_profile_migrates_and_audits_to_sqlite(self, tmp_path: Path) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path}/.infrakit/local.db"
        async with Infra.from_profile("local", environ={"DATABASE_URL": url}) as infra:
            assert isinstance(infra.audit, SqlAuditLogger)
            entry = await infra.audit.log_action("login", "session", user_id="u1")
            assert await infra.audit.query(AuditFilter(user_id="u1")) == [entry]
        async with Infra.from_profile("local", environ={"DATABASE_URL": url}) as infra:
            assert await infra.audit.count() == 1  # durable across restarts
            assert (await infra.audit.verify()).ok

    async def test_sql_audit_without_migration_fails_start(self, tmp_path: Path) -> None:
        settings = load_settings(
            "local",
            environ={"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"},
            overrides={"database.auto_migrate": False},
        )
        infra = Infra(settings)
        with pytest.raises(AuditError, match="infrakit db upgrade"):
            await infra.start()
        # the database that had started was closed again
        assert infra.describe()[1].state == "configured"

    async def test_sql_audit_shares_the_database(self) -> None:
        settings = load_settings("test", environ={}, overrides={"audit.backend": "sql"})
        async with Infra(settings) as infra:
            audit = infra.audit
            assert isinstance(audit, SqlAuditLogger)
            assert audit._db is infra.database
