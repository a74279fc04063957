"""SqlAuditLogger beyond the contract: tamper evidence, own transactions, failures.

The same checks run on PostgreSQL in tests/integration/test_audit_postgres.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC
from pathlib import Path

import pytest
import sqlalchemy as sa

from infrakit.audit import AuditFilter, SqlAuditLogger
from infrakit.audit.sql import AUDIT_TABLE
from infrakit.cli import main as cli_main
from infrakit.database import DatabaseSession
from infrakit.errors import AuditError


@pytest.fixture
async def audit(database: DatabaseSession) -> SqlAuditLogger:
    logger = SqlAuditLogger(database)
    await logger.start()
    for n in range(6):
        await logger.log_action("act", "doc", user_id="u", resource_id=str(n), details={"n": n})
    return logger


async def ids_in_order(db: DatabaseSession) -> list[str]:
    async with db.engine.connect() as conn:
        return list(
            (await conn.execute(sa.text(f"SELECT id FROM {AUDIT_TABLE} ORDER BY seq"))).scalars()
        )


class TestTamperEvidence:
    """verify() names the first entry that was edited, removed or moved."""

    async def test_intact(self, audit: SqlAuditLogger) -> None:
        result = await audit.verify()
        assert (result.ok, result.checked) == (True, 6)

    async def test_edited_row(self, audit: SqlAuditLogger, database: DatabaseSession) -> None:
        ids = await ids_in_order(database)
        async with database.engine.begin() as conn:
            await conn.execute(
                sa.text(f"UPDATE {AUDIT_TABLE} SET result = 'failure' WHERE id = :id"),
                {"id": ids[2]},
            )
        result = await audit.verify()
        assert not result.ok
        assert result.first_bad_id == ids[2]
        assert "edited" in (result.reason or "")

    async def test_deleted_row(self, audit: SqlAuditLogger, database: DatabaseSession) -> None:
        ids = await ids_in_order(database)
        async with database.engine.begin() as conn:
            await conn.execute(sa.text(f"DELETE FROM {AUDIT_TABLE} WHERE id = :id"), {"id": ids[3]})
        result = await audit.verify()
        assert not result.ok
        assert result.first_bad_id == ids[4]
        assert "removed or reordered" in (result.reason or "")

    async def test_reordered_rows(self, audit: SqlAuditLogger, database: DatabaseSession) -> None:
        ids = await ids_in_order(database)
        async with database.engine.begin() as conn:
            seqs = {
                row.id: row.seq
                for row in await conn.execute(sa.text(f"SELECT id, seq FROM {AUDIT_TABLE}"))
            }
            # swap the positions of entries 1 and 2
            await conn.execute(
                sa.text(f"UPDATE {AUDIT_TABLE} SET seq = -1 WHERE id = :id"), {"id": ids[1]}
            )
            await conn.execute(
                sa.text(f"UPDATE {AUDIT_TABLE} SET seq = :s WHERE id = :id"),
                {"s": seqs[ids[1]], "id": ids[2]},
            )
            await conn.execute(
                sa.text(f"UPDATE {AUDIT_TABLE} SET seq = :s WHERE id = :id"),
                {"s": seqs[ids[2]], "id": ids[1]},
            )
        result = await audit.verify()
        assert not result.ok
        assert result.first_bad_id == ids[2]

    async def test_cli_exits_1_on_a_broken_chain(
        self,
        audit: SqlAuditLogger,
        database: DatabaseSession,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path}/audit.db"
        argv = [
            "audit",
            "verify",
            "local",
            "--set",
            f"database.url={url}",
            "--set",
            "logging.level=ERROR",
        ]
        # the CLI runs its own event loop, so it gets a thread of its own here
        assert await asyncio.to_thread(cli_main, argv) == 0
        assert "ok: 6 audit entries verified" in capsys.readouterr().out
        ids = await ids_in_order(database)
        async with database.engine.begin() as conn:
            await conn.execute(
                sa.text(f"UPDATE {AUDIT_TABLE} SET user_id = 'mallory' WHERE id = :id"),
                {"id": ids[0]},
            )
        assert await asyncio.to_thread(cli_main, argv) == 1
        assert f"BROKEN: audit chain fails at entry {ids[0]}" in capsys.readouterr().err


class TestWrites:
    """Own transactions; failures are loud."""

    async def test_survives_the_requests_rollback(
        self, audit: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        async with database.session() as session:
            await session.execute(sa.text("CREATE TABLE orders (id INTEGER)"))
        with pytest.raises(RuntimeError, match="request failed"):
            async with database.session() as session:
                # SQLite has one writer at a time, so this request only reads
                # before auditing; PostgreSQL's test writes first (integration).
                await session.execute(sa.text("SELECT count(*) FROM orders"))
                await audit.log_action("order.create", "order", result="failure")
                raise RuntimeError("request failed")
        assert await audit.count(AuditFilter(action="order.create", result="failure")) == 1
        assert (await audit.verify()).ok

    async def test_timestamps_come_back_utc_aware(self, audit: SqlAuditLogger) -> None:
        written = await audit.log_action("t", "x")
        (read,) = await audit.query(AuditFilter(action="t"))
        assert read.timestamp.tzinfo is UTC
        assert read.timestamp == written.timestamp

    async def test_missing_table_says_how_to_fix(self, tmp_path: Path) -> None:
        db = DatabaseSession(f"sqlite+aiosqlite:///{tmp_path}/empty.db")
        with pytest.raises(AuditError, match="run `infrakit db upgrade PROFILE`"):
            await SqlAuditLogger(db).start()
        await db.aclose()

    async def test_write_to_a_dead_database_raises(self) -> None:
        db = DatabaseSession("postgresql+asyncpg://app:pw@127.0.0.1:9/db", connect_timeout_s=2)
        logger = SqlAuditLogger(db)
        with pytest.raises(AuditError, match="writing 1 audit entry") as exc:
            await logger.log_action("login", "session")
        assert exc.value.__cause__ is not None
        assert "pw@" not in str(exc.value)
        await db.aclose()

    async def test_chain_off(self, database: DatabaseSession) -> None:
        logger = SqlAuditLogger(database, hash_chain=False)
        stored = await logger.log_action("a", "b")
        assert stored.hash is None
        assert stored.prev_hash is None
        result = await logger.verify()
        assert result.ok
        assert result.reason == "hash chain disabled"

    def test_audit_sql_needs_the_database_component(self) -> None:
        from infrakit.registry import get_backend

        backend = get_backend("audit", "sql")
        assert backend is not None
        assert backend.requires == ("database",)
