"""A PostgreSQL that restarts or dies under an open DatabaseSession."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from infrakit.audit import SqlAuditLogger
from infrakit.database import DatabaseSession, upgrade
from infrakit.errors import AuditError
from tests.integration.conftest import _start_or_fail
from tests.integration.pgcluster import PgCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    pg: PgCluster = _start_or_fail(PgCluster, "a test-owned PostgreSQL")
    try:
        yield pg
    finally:
        pg.destroy()


async def one(db: DatabaseSession) -> int:
    async with db.session() as s:
        return int((await s.execute(sa.text("SELECT 1"))).scalar_one())


class TestRestart:
    """The next session after a restart works, with no process restart."""

    async def test_pre_ping_recovers_after_restart(self, cluster: PgCluster) -> None:
        db = DatabaseSession(cluster.url, pool_size=2, connect_timeout_s=3)
        try:
            assert await one(db) == 1  # a pooled connection now exists
            await asyncio.to_thread(cluster.stop)
            await asyncio.to_thread(cluster.start)
            assert await one(db) == 1  # pre-ping replaced the dead connection
        finally:
            await db.aclose()

    async def test_audit_write_while_down_raises_then_recovers(self, cluster: PgCluster) -> None:
        db = DatabaseSession(cluster.url, connect_timeout_s=2)
        try:
            await upgrade(db)
            audit = SqlAuditLogger(db)
            await audit.log_action("before", "x")
            await asyncio.to_thread(cluster.stop)
            with pytest.raises(AuditError, match="writing 1 audit entry") as exc:
                await audit.log_action("while.down", "x")
            assert exc.value.__cause__ is not None
            await asyncio.to_thread(cluster.start)
            await audit.log_action("after", "x")
            assert await audit.count() == 2
            assert (await audit.verify()).ok
        finally:
            await db.aclose()

    async def test_writers_through_a_restart_get_an_answer_and_one_chain(
        self, cluster: PgCluster
    ) -> None:
        """Concurrent writers (group commit) across a restart: every call either
        returns (and its entry is stored, once) or raises AuditError; the chain
        stays whole and writing resumes with no process restart."""
        db = DatabaseSession(cluster.url, pool_size=4, connect_timeout_s=2)
        audit = SqlAuditLogger(db)
        acknowledged: list[str] = []
        failures = 0
        running = True
        target = 0
        reached = asyncio.Event()

        async def writer(w: int) -> None:
            nonlocal failures
            while running:
                try:
                    stored = await audit.log_action("write", "doc", user_id=f"w{w}")
                except AuditError:
                    failures += 1
                    await asyncio.sleep(0.02)
                else:
                    acknowledged.append(stored.id)
                    if len(acknowledged) >= target:
                        reached.set()

        async def until_acknowledged(count: int) -> None:
            nonlocal target
            target = count
            reached.clear()
            if len(acknowledged) < count:
                await asyncio.wait_for(reached.wait(), 120)  # hang protection only

        try:
            await upgrade(db)
            tasks = [asyncio.create_task(writer(w)) for w in range(16)]
            try:
                await until_acknowledged(200)
                await asyncio.to_thread(cluster.stop)
                await asyncio.to_thread(cluster.start)
                failed_before = failures
                await until_acknowledged(len(acknowledged) + 200)
            finally:
                running = False
                await asyncio.gather(*tasks)
            await audit.aclose()
            assert failed_before > 0  # the restart was seen by writers
            async with db.engine.connect() as conn:
                stored_ids = list(
                    (await conn.execute(sa.text("SELECT id FROM infrakit_audit_log"))).scalars()
                )
            assert len(stored_ids) == len(set(stored_ids))
            assert len(acknowledged) == len(set(acknowledged))
            assert set(acknowledged) <= set(stored_ids)  # acknowledged means stored
            result = await audit.verify()
            assert result.ok, result
        finally:
            await db.aclose()
