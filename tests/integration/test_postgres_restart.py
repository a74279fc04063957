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
