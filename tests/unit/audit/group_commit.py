"""Group commit checks shared by SQLite (tests/unit) and PostgreSQL (tests/integration).

A subclass provides the ``database`` fixture (migrated, empty audit table) and
the two database-specific hooks: how to count the transactions that wrote some
rows, and how to make an insert fail through a real database condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from infrakit.audit import AuditEntry, SqlAuditLogger, load_checkpoints
from infrakit.audit.chain import CheckpointPolicy
from infrakit.audit.sql import AUDIT_TABLE
from infrakit.database import DatabaseSession
from infrakit.errors import AuditError
from tests.unit.audit.scenarios import keyring

POISON = "poison"  # the action the failure hook makes the database refuse

#: Reads how many transactions wrote the rows added since the counting began.
Counter = Callable[[], Awaitable[int]]


async def rows_in_order(db: DatabaseSession) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        result = await conn.execute(sa.text(f"SELECT * FROM {AUDIT_TABLE} ORDER BY seq"))
        return [dict(row._mapping) for row in result]


def writer_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "infrakit-audit-writer"]


class GroupCommitChecks:
    """Concurrent writes of one logger share transactions; each caller gets its own answer."""

    def transactions(self, db: DatabaseSession) -> contextlib.AbstractAsyncContextManager[Counter]:
        """An async context yielding a :data:`Counter` of the transactions that write rows."""
        raise NotImplementedError

    def refusing(self, db: DatabaseSession) -> contextlib.AbstractAsyncContextManager[None]:
        """An async context inside which the database refuses rows whose action is POISON."""
        raise NotImplementedError

    async def test_concurrent_callers_share_one_transaction(
        self, database: DatabaseSession
    ) -> None:
        audit = SqlAuditLogger(database)
        async with self.transactions(database) as count:
            stored = await asyncio.gather(
                *(audit.log_action("write", "doc", user_id=f"c{n:03d}") for n in range(200))
            )
            # Every call was queued before the writer first ran: one group.
            assert await count() == 1
        rows = await rows_in_order(database)
        assert len(rows) == 200
        assert len({row["id"] for row in rows}) == 200
        # Committed in call order, each caller's answer being its row as stored.
        assert [row["user_id"] for row in rows] == [f"c{n:03d}" for n in range(200)]
        assert [(e.id, e.prev_hash, e.hash) for e in stored] == [
            (row["id"], row["prev_hash"], row["hash"]) for row in rows
        ]
        result = await audit.verify()
        assert (result.ok, result.checked) == (True, 200)
        await audit.aclose()

    async def test_max_group_entries_caps_a_group_but_never_splits_a_call(
        self, database: DatabaseSession
    ) -> None:
        audit = SqlAuditLogger(database, max_group_entries=16)
        async with self.transactions(database) as count:
            await asyncio.gather(*(audit.log_action("write", "doc") for _ in range(100)))
            assert await count() == math.ceil(100 / 16)
        async with self.transactions(database) as count:
            batch = await audit.log_many([_entry(n) for n in range(40)])
            assert await count() == 1
        assert [e.id for e in batch] == [row["id"] for row in (await rows_in_order(database))[100:]]
        assert (await audit.verify()).ok
        await audit.aclose()

    async def test_a_failed_group_fails_every_caller_in_it(self, database: DatabaseSession) -> None:
        audit = SqlAuditLogger(database, max_group_entries=5)
        actions = [POISON if n == 7 else "write" for n in range(20)]
        async with self.refusing(database):
            outcomes = await asyncio.gather(
                *(audit.log_action(a, "doc", user_id=f"c{n}") for n, a in enumerate(actions)),
                return_exceptions=True,
            )
        # Groups of five in call order: the second one (callers 5..9) held the poison.
        failed = [n for n, o in enumerate(outcomes) if isinstance(o, BaseException)]
        assert failed == [5, 6, 7, 8, 9]
        for n in failed:
            error = outcomes[n]
            assert isinstance(error, AuditError)
            assert "writing 1 audit entry" in str(error)
            assert "none of the group was written" in str(error)
            assert error.__cause__ is not None
        rows = await rows_in_order(database)
        assert [row["user_id"] for row in rows] == [f"c{n}" for n in range(20) if n not in failed]
        assert (await audit.verify()).ok
        # The logger recovers: the next writes go through and extend the same chain.
        await asyncio.gather(*(audit.log_action("after", "doc") for _ in range(10)))
        result = await audit.verify()
        assert (result.ok, result.checked) == (True, 25)
        await audit.aclose()

    async def test_a_value_too_wide_fails_its_caller_alone(self, database: DatabaseSession) -> None:
        audit = SqlAuditLogger(database)
        outcomes = await asyncio.gather(
            *(audit.log_action("write", "doc", user_id=f"c{n}") for n in range(3)),
            audit.log_action("x" * 129, "doc", user_id="wide"),
            *(audit.log_action("write", "doc", user_id=f"c{n}") for n in range(3, 6)),
            return_exceptions=True,
        )
        error = outcomes[3]
        assert isinstance(error, ValueError)
        assert "AuditEntry.action is 129 characters" in str(error)
        assert "at most 128" in str(error)
        assert all(isinstance(o, AuditEntry) for n, o in enumerate(outcomes) if n != 3)
        rows = await rows_in_order(database)
        assert [row["user_id"] for row in rows] == [f"c{n}" for n in range(6)]
        await audit.aclose()

    async def test_a_caller_cancelled_while_queued_is_not_written(
        self, database: DatabaseSession
    ) -> None:
        audit = SqlAuditLogger(database)
        tasks = [
            asyncio.create_task(audit.log_action("write", "doc", user_id=f"c{n}"))
            for n in range(10)
        ]
        await asyncio.sleep(0)  # every call is queued; the writer has not run yet
        tasks[3].cancel()
        tasks[6].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert [n for n, o in enumerate(outcomes) if isinstance(o, BaseException)] == [3, 6]
        assert all(isinstance(outcomes[n], asyncio.CancelledError) for n in (3, 6))
        rows = await rows_in_order(database)
        assert [row["user_id"] for row in rows] == [f"c{n}" for n in range(10) if n not in (3, 6)]
        stored = [o for o in outcomes if isinstance(o, AuditEntry)]
        assert [e.id for e in stored] == [row["id"] for row in rows]
        assert (await audit.verify()).ok
        await audit.aclose()

    async def test_aclose_commits_what_is_queued_and_ends_the_writer(
        self, database: DatabaseSession
    ) -> None:
        audit = SqlAuditLogger(database, max_group_entries=7)
        tasks = [asyncio.create_task(audit.log_action("write", "doc")) for _ in range(30)]
        await asyncio.sleep(0)  # queued, nothing written yet
        assert writer_tasks()
        await audit.aclose()
        assert all(t.done() for t in tasks)
        assert all(isinstance(t.result(), AuditEntry) for t in tasks)
        assert writer_tasks() == []
        assert len(await rows_in_order(database)) == 30
        await audit.aclose()  # twice is fine
        # and the logger still writes afterwards
        await audit.log_action("after", "doc")
        await audit.aclose()
        assert (await audit.verify()).checked == 31

    async def test_two_loggers_on_one_database_form_one_chain(
        self, database: DatabaseSession
    ) -> None:
        first, second = SqlAuditLogger(database), SqlAuditLogger(database, max_group_entries=9)
        await asyncio.gather(
            *(first.log_action("a", "doc") for _ in range(60)),
            *(second.log_action("b", "doc") for _ in range(60)),
        )
        result = await first.verify()
        assert (result.ok, result.checked) == (True, 120)
        await first.aclose()
        await second.aclose()

    async def test_a_keyed_chain_written_in_groups(
        self, database: DatabaseSession, tmp_path: Path
    ) -> None:
        """Groups hash with the logger's key, the checkpointer counts every group,
        and aclose() commits the queue before the last checkpoint is written."""
        path = tmp_path / "checkpoints.jsonl"
        audit = SqlAuditLogger(
            database, keys=keyring(), checkpoints=CheckpointPolicy(1000, 0, path)
        )
        await audit.start()
        async with self.transactions(database) as count:
            await asyncio.gather(*(audit.log_action("write", "doc") for _ in range(100)))
            await asyncio.gather(*(audit.log_action("write", "doc") for _ in range(100)))
            assert await count() == 2
        await audit.checkpoint()  # the head now: seq 200
        # queued, not written yet: aclose() must commit them, then checkpoint them
        tasks = [asyncio.create_task(audit.log_action("late", "doc")) for _ in range(30)]
        await asyncio.sleep(0)
        await audit.aclose()
        assert all(isinstance(t.result(), AuditEntry) for t in tasks)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [line["seq"] for line in lines] == [200, 230]
        checkpoints = load_checkpoints(str(path))
        result = await audit.verify(checkpoints=checkpoints)
        assert (result.ok, result.checked, result.keyed, result.checkpoints) == (True, 230, 230, 2)
        unkeyed = await SqlAuditLogger(database).verify()
        assert not unkeyed.ok
        assert unkeyed.needs_key

    async def test_a_retried_batch_large_enough_for_copy(self, database: DatabaseSession) -> None:
        """A retry of a batch of COPY size (PostgreSQL) hitting stored ids: the stored
        come back, the new ones are written once, beside other callers."""
        audit = SqlAuditLogger(database)
        first = await audit.log_many([_entry(n) for n in range(100)])
        mixed = [_entry(n) for n in range(50, 150)]
        again, *others = await asyncio.gather(
            audit.log_many(mixed), *(audit.log_action("other", "doc") for _ in range(5))
        )
        assert isinstance(again, list)
        assert again[:50] == first[50:]
        assert [e.id for e in again] == [e.id for e in mixed]
        assert all(isinstance(o, AuditEntry) for o in others)
        rows = await rows_in_order(database)
        assert len(rows) == 155
        assert len({row["id"] for row in rows}) == 155
        assert (await audit.verify()).ok
        await audit.aclose()

    async def test_a_refused_copy_sized_group_is_an_audit_error(
        self, database: DatabaseSession
    ) -> None:
        """A group large enough for COPY refused by the database: every caller gets
        an AuditError with the driver's error chained, never the driver's error itself."""
        audit = SqlAuditLogger(database)
        batch = [_entry(n) for n in range(99)] + [_entry(99, action=POISON)]
        async with self.refusing(database):
            outcomes = await asyncio.gather(
                audit.log_many(batch), audit.log_action("write", "doc"), return_exceptions=True
            )
        for outcome in outcomes:
            assert isinstance(outcome, AuditError), repr(outcome)
            assert not outcome.outcome_unknown
            assert "none of the group was written" in str(outcome)
            assert outcome.__cause__ is not None
        assert await rows_in_order(database) == []
        await audit.aclose()


def _entry(n: int, **fields: Any) -> AuditEntry:
    from infrakit.testing.contracts import entry

    return entry(n, **fields)


def counting_commits(db: DatabaseSession) -> contextlib.AbstractAsyncContextManager[Counter]:
    """Count the commits SQLAlchemy makes on ``db`` (the SQLite write path)."""

    @contextlib.asynccontextmanager
    async def counting() -> AsyncIterator[Counter]:
        commits = 0

        def on_commit(_conn: object) -> None:
            nonlocal commits
            commits += 1

        async def count() -> int:
            return commits

        sa.event.listen(db.engine.sync_engine, "commit", on_commit)
        try:
            yield count
        finally:
            sa.event.remove(db.engine.sync_engine, "commit", on_commit)

    return counting()
