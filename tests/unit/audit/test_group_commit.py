"""Group commit on SQLite (the same checks run on PostgreSQL in tests/integration)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

import sqlalchemy as sa

from infrakit.audit import SqlAuditLogger
from infrakit.audit.sql import AUDIT_TABLE
from infrakit.database import DatabaseSession
from tests.unit.audit.group_commit import (
    POISON,
    Counter,
    GroupCommitChecks,
    counting_commits,
    rows_in_order,
    writer_tasks,
)


class TestGroupCommitOnSqlite(GroupCommitChecks):
    """Group commit on a SQLite file: one BEGIN IMMEDIATE transaction per group."""

    def transactions(self, db: DatabaseSession) -> contextlib.AbstractAsyncContextManager[Counter]:
        return counting_commits(db)

    @contextlib.asynccontextmanager
    async def refusing(self, db: DatabaseSession) -> AsyncIterator[None]:
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    f"CREATE TRIGGER refuse_poison BEFORE INSERT ON {AUDIT_TABLE} "
                    f"WHEN NEW.action = '{POISON}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        try:
            yield
        finally:
            async with db.engine.begin() as conn:
                await conn.execute(sa.text("DROP TRIGGER refuse_poison"))


class TestOtherEventLoops:
    """A call from another event loop than the writer's is written directly."""

    async def test_a_call_from_another_loop_goes_straight_to_the_database(
        self, database: DatabaseSession
    ) -> None:
        audit = SqlAuditLogger(database)
        queued = asyncio.create_task(audit.log_action("queued", "doc"))
        await asyncio.sleep(0)  # queued; this loop's writer exists but has not run
        assert writer_tasks()
        outcome: list[object] = []

        def elsewhere() -> None:
            outcome.append(asyncio.run(audit.log_action("elsewhere", "doc")))

        # Run the other loop while this one is blocked: the writer cannot have
        # finished, so the other loop's call must not join its queue.
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(60)
        assert not thread.is_alive()
        await queued
        await audit.aclose()
        assert [row["action"] for row in await rows_in_order(database)] == ["elsewhere", "queued"]
        assert (await audit.verify()).ok
