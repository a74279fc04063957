"""The audit log and database sessions on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
from collections.abc import AsyncIterator

import asyncpg
import pytest
import sqlalchemy as sa

from infrakit.audit import AuditEntry, AuditFilter, SqlAuditLogger
from infrakit.audit.sql import _PG_CHAIN_LOCK, AUDIT_TABLE, metadata
from infrakit.database import DatabaseSession, upgrade
from infrakit.database.migrate import VERSION_TABLE
from infrakit.errors import AuditError, AuditOutcomeUnknownError, DatabaseError
from infrakit.testing.contracts import AuditLoggerContract, MakeLogger, entry
from tests.integration.pgproxy import Moment, PgProxy, is_commit, parses
from tests.unit.audit.group_commit import POISON, Counter, GroupCommitChecks, rows_in_order
from tests.unit.audit.scenarios import TamperScenarios, keyring

pytestmark = pytest.mark.integration

HEAD = "0001_audit_log"


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[DatabaseSession]:
    db = DatabaseSession(pg_url, pool_size=4)
    await upgrade(db)
    async with db.engine.begin() as conn:
        await conn.execute(sa.text(f"TRUNCATE {AUDIT_TABLE} RESTART IDENTITY"))
    yield db
    await db.aclose()


class TestSqlAuditLoggerOnPostgres(AuditLoggerContract):
    """SqlAuditLogger on PostgreSQL keeps the contract."""

    @pytest.fixture
    def make_logger(self, pg: DatabaseSession) -> MakeLogger:
        async def make() -> SqlAuditLogger:
            logger = SqlAuditLogger(pg)
            await logger.start()
            return logger

        return make


class TestPostgresSpecifics:
    """Own transactions, tamper evidence and migrations on PostgreSQL."""

    async def test_survives_a_request_that_wrote_and_failed(self, pg: DatabaseSession) -> None:
        audit = SqlAuditLogger(pg)
        async with pg.session() as s:
            await s.execute(sa.text("CREATE TABLE IF NOT EXISTS orders (id int)"))
            await s.execute(sa.text("TRUNCATE orders"))
        with pytest.raises(RuntimeError, match="payment declined"):
            async with pg.session() as s:
                await s.execute(sa.text("INSERT INTO orders VALUES (1)"))
                await audit.log_action("order.create", "order", result="failure")
                raise RuntimeError("payment declined")
        async with pg.session() as s:
            assert (await s.execute(sa.text("SELECT count(*) FROM orders"))).scalar() == 0
        assert await audit.count(AuditFilter(result="failure")) == 1

    async def test_edit_and_delete_are_found(self, pg: DatabaseSession) -> None:
        audit = SqlAuditLogger(pg)
        stored = [await audit.log_action("a", "b", details={"n": n}) for n in range(5)]
        async with pg.engine.begin() as conn:
            await conn.execute(
                sa.text(f"UPDATE {AUDIT_TABLE} SET details = '{{\"n\": 99}}' WHERE id = :id"),
                {"id": stored[1].id},
            )
        assert (await audit.verify()).first_bad_id == stored[1].id
        async with pg.engine.begin() as conn:
            await conn.execute(
                sa.text(f"DELETE FROM {AUDIT_TABLE} WHERE id = :id"), {"id": stored[1].id}
            )
        result = await audit.verify()
        assert not result.ok
        assert result.first_bad_id == stored[2].id

    async def test_large_batches_go_through_copy_and_chain(self, pg: DatabaseSession) -> None:
        audit = SqlAuditLogger(pg)
        await audit.log_action("first", "x")
        stored = await audit.log_many([entry(n) for n in range(500)])  # COPY path
        await audit.log_action("last", "x")
        assert await audit.count() == 502
        assert stored[0].prev_hash is not None
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(stored))
        result = await audit.verify()
        assert (result.ok, result.checked) == (True, 502)
        back = {e.id: e for e in await audit.query(AuditFilter(limit=1000))}
        assert all(back[e.id] == e for e in stored)

    async def test_timestamps_are_utc_and_exact(self, pg: DatabaseSession) -> None:
        audit = SqlAuditLogger(pg)
        written = await audit.log_action("t", "x")
        (read,) = await audit.query(AuditFilter(action="t"))
        assert read == written

    async def test_migrations_match_the_code_and_are_idempotent(self, fresh_pg_url: str) -> None:
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext

        db = DatabaseSession(fresh_pg_url)
        try:
            assert await upgrade(db) == HEAD
            assert await upgrade(db) == HEAD

            def diff(conn: sa.Connection) -> list[object]:
                context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
                return list(compare_metadata(context, metadata))

            async with db.engine.connect() as conn:
                assert await conn.run_sync(diff) == []
        finally:
            await db.aclose()

    async def test_concurrent_upgrades(self, fresh_pg_url: str) -> None:
        dbs = [DatabaseSession(fresh_pg_url) for _ in range(4)]
        try:
            assert await asyncio.gather(*(upgrade(db) for db in dbs)) == [HEAD] * 4
        finally:
            for db in dbs:
                await db.aclose()

    async def test_filter_query_uses_an_index(self, pg: DatabaseSession) -> None:
        audit = SqlAuditLogger(pg)
        await audit.log_many([entry(n) for n in range(200)])
        async with pg.engine.begin() as conn:
            await conn.execute(sa.text(f"ANALYZE {AUDIT_TABLE}"))
            await conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(
                (
                    await conn.execute(
                        sa.text(
                            f"EXPLAIN SELECT * FROM {AUDIT_TABLE} WHERE user_id = 'user-1' "
                            "AND timestamp >= now() - interval '1 year' "
                            "ORDER BY timestamp DESC, id DESC LIMIT 100"
                        )
                    )
                ).scalars()
            )
        assert "ix_infrakit_audit_log_user_id_timestamp" in plan


def _writer(url: str, worker: int, count: int) -> None:
    async def run() -> None:
        db = DatabaseSession(url, pool_size=2)
        audit = SqlAuditLogger(db)
        for i in range(count):
            await audit.log_action("write", "doc", user_id=f"w{worker}", details={"i": i})
        await db.aclose()

    asyncio.run(run())


class TestManyProcessesOneChain:
    """8 processes x 500 log_action calls -> 4000 rows in one valid chain."""

    async def test_eight_processes(self, pg: DatabaseSession, pg_url: str) -> None:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_writer, args=(pg_url, w, 500)) for w in range(8)]
        try:
            for p in processes:
                p.start()
            for p in processes:
                await asyncio.to_thread(p.join, 240)
        finally:
            for p in processes:
                if p.is_alive():
                    p.kill()
                    p.join(10)
        assert [p.exitcode for p in processes] == [0] * 8
        audit = SqlAuditLogger(pg)
        assert await audit.count() == 4000
        for w in range(8):
            assert await audit.count(AuditFilter(user_id=f"w{w}")) == 500
        result = await audit.verify()
        assert result.ok, result
        assert result.checked == 4000


class TestDatabaseFailures:
    """A database that is down is an error, never silence."""

    async def test_commit_on_a_dead_connection_is_a_database_error(
        self, pg: DatabaseSession
    ) -> None:
        with pytest.raises((DatabaseError, sa.exc.DBAPIError)):
            async with pg.session() as s:
                pid = (await s.execute(sa.text("SELECT pg_backend_pid()"))).scalar()
                killer = DatabaseSession(str(pg.engine.url.render_as_string(hide_password=False)))
                async with killer.engine.connect() as conn:
                    await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                await killer.aclose()
                await s.execute(sa.text("SELECT 1"))
        # the pool recovers: the next session works (pre-ping drops the dead connection)
        async with pg.session() as s:
            assert (await s.execute(sa.text("SELECT 1"))).scalar() == 1


class TestTamperingOnPostgres(TamperScenarios):
    """What a writer of the PostgreSQL table can do, and what finds it."""

    @pytest.fixture
    async def database(self, pg: DatabaseSession) -> DatabaseSession:
        return pg


@pytest.fixture
async def proxy(pg: DatabaseSession) -> AsyncIterator[PgProxy]:
    """A cut-on-cue proxy in front of the test database (tests/integration/pgproxy.py)."""
    url = pg.engine.url
    proxy = await PgProxy(url.host or "127.0.0.1", url.port or 5432).start()
    try:
        yield proxy
    finally:
        await proxy.aclose()


@pytest.fixture
async def through_proxy(pg: DatabaseSession, proxy: PgProxy) -> AsyncIterator[DatabaseSession]:
    """The test database, every connection going through ``proxy``."""
    url = pg.engine.url.set(host="127.0.0.1", port=proxy.port)
    db = DatabaseSession(url.render_as_string(hide_password=False), pool_size=4)
    try:
        yield db
    finally:
        await db.aclose()


class TestOutcomeUnknown:
    """A connection lost during COMMIT: "outcome unknown" for every caller of the group,
    and the retry stores each entry exactly once, whether the COMMIT reached the server
    or not. The cut is made by a proxy between the writer and PostgreSQL, on the COMMIT
    message itself (the writer's asyncpg path fires no SQLAlchemy event)."""

    @pytest.mark.parametrize("moment", ["unsent", "answer_lost"])
    async def test_writer_cut_at_commit(
        self,
        pg: DatabaseSession,
        through_proxy: DatabaseSession,
        proxy: PgProxy,
        moment: Moment,
    ) -> None:
        audit = SqlAuditLogger(through_proxy, keys=keyring())
        await audit.log(entry(0))
        proxy.arm(is_commit, moment)
        with pytest.raises(AuditOutcomeUnknownError, match="outcome unknown") as caught:
            await audit.log(entry(1))
        assert proxy.cut.is_set()
        assert caught.value.outcome_unknown
        assert isinstance(caught.value, AuditError)
        assert "failed" not in str(caught.value)
        # "unsent": the server never committed; "answer_lost": it did, only the
        # acknowledgement was lost. The caller cannot tell; the table can.
        reader = SqlAuditLogger(pg, keys=keyring())
        assert await reader.count() == (2 if moment == "answer_lost" else 1)
        stored = await audit.log(entry(1))  # the retry
        assert await audit.log(entry(1)) == stored  # and a second one
        assert await reader.count() == 2
        assert [e.id for e in await reader.query()] == [entry(1).id, entry(0).id]
        await audit.aclose()
        result = await reader.verify()
        assert (result.ok, result.checked, result.keyed) == (True, 2, 2)

    @pytest.mark.parametrize("moment", ["unsent", "answer_lost"])
    async def test_every_caller_of_the_group_learns_outcome_unknown(
        self,
        pg: DatabaseSession,
        through_proxy: DatabaseSession,
        proxy: PgProxy,
        moment: Moment,
    ) -> None:
        audit = SqlAuditLogger(through_proxy, keys=keyring())
        await audit.log(entry(0))
        proxy.arm(is_commit, moment)
        outcomes = await asyncio.gather(
            *(audit.log(entry(n)) for n in range(1, 6)), return_exceptions=True
        )
        assert proxy.cut.is_set()
        for outcome in outcomes:  # one group: the same fate, told to each caller
            assert isinstance(outcome, AuditOutcomeUnknownError), outcome
            assert "writing 1 audit entry" in str(outcome)
            assert "one group with 4 other entries; the whole group is stored or none" in str(
                outcome
            )
        rows = await rows_in_order(pg)
        assert len(rows) == (6 if moment == "answer_lost" else 1)
        # Every caller retries at once (one group again): each entry stored once.
        retried = await asyncio.gather(*(audit.log(entry(n)) for n in range(1, 6)))
        assert [e.id for e in retried] == [entry(n).id for n in range(1, 6)]
        rows = await rows_in_order(pg)
        assert [row["id"] for row in rows] == [entry(n).id for n in range(6)]
        assert [(e.prev_hash, e.hash) for e in retried] == [
            (row["prev_hash"], row["hash"]) for row in rows[1:]
        ]
        await audit.aclose()
        result = await SqlAuditLogger(pg, keys=keyring()).verify()
        assert (result.ok, result.checked, result.keyed) == (True, 6, 6)

    async def test_a_lost_connection_before_commit_is_a_plain_failure(
        self, pg: DatabaseSession, through_proxy: DatabaseSession, proxy: PgProxy
    ) -> None:
        audit = SqlAuditLogger(through_proxy)
        # cut as the INSERT is sent: nothing is committed, and the writer knows it
        proxy.arm(parses(f"INSERT INTO {AUDIT_TABLE}".encode()), "unsent")
        with pytest.raises(AuditError) as caught:
            await audit.log(entry(0))
        assert proxy.cut.is_set()
        assert not caught.value.outcome_unknown  # nothing was committed: known
        assert "failed" in str(caught.value)
        assert await audit.count() == 0
        await audit.log(entry(0))
        assert await audit.count() == 1
        await audit.aclose()


class TestGroupCommitOnPostgres(GroupCommitChecks):
    """Group commit on PostgreSQL: one advisory lock, head read, insert and commit per group."""

    @pytest.fixture
    def database(self, pg: DatabaseSession) -> DatabaseSession:
        return pg

    @contextlib.asynccontextmanager
    async def transactions(self, db: DatabaseSession) -> AsyncIterator[Counter]:
        # Each row's xmin is the transaction that inserted it.
        async with db.engine.connect() as conn:
            before = (await conn.execute(sa.text(f"SELECT max(seq) FROM {AUDIT_TABLE}"))).scalar()

        async def count() -> int:
            async with db.engine.connect() as conn:
                statement = sa.text(
                    f"SELECT count(DISTINCT xmin::text) FROM {AUDIT_TABLE} WHERE seq > :before"
                )
                return int((await conn.execute(statement, {"before": before or 0})).scalar_one())

        yield count

    @contextlib.asynccontextmanager
    async def refusing(self, db: DatabaseSession) -> AsyncIterator[None]:
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    f"ALTER TABLE {AUDIT_TABLE} ADD CONSTRAINT refuse_poison "
                    f"CHECK (action <> '{POISON}')"
                )
            )
        try:
            yield
        finally:
            async with db.engine.begin() as conn:
                await conn.execute(
                    sa.text(f"ALTER TABLE {AUDIT_TABLE} DROP CONSTRAINT refuse_poison")
                )


def _dsn(db: DatabaseSession) -> str:
    url = db.engine.url.render_as_string(hide_password=False)
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _blocked_on_the_chain_lock(conn: asyncpg.Connection) -> int:
    """The backend pid of the writer waiting for the chain's advisory lock."""
    async with asyncio.timeout(60):  # hang protection only
        while True:
            pid = await conn.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.01)


class TestGroupCommitWhileTheLockIsHeld:
    """A group in flight (held at the chain lock by another session): failure and cancellation."""

    async def test_a_terminated_backend_fails_its_group_and_the_logger_recovers(
        self, pg: DatabaseSession
    ) -> None:
        audit = SqlAuditLogger(pg)
        await audit.log_action("before", "doc")
        holder = await asyncpg.connect(_dsn(pg))
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", _PG_CHAIN_LOCK)
            tasks = [
                asyncio.create_task(audit.log_action("doomed", "doc", user_id=f"c{n}"))
                for n in range(10)
            ]
            pid = await _blocked_on_the_chain_lock(holder)
            assert await holder.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await holder.execute("SELECT pg_advisory_unlock_all()")
            await holder.close()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            assert isinstance(outcome, AuditError), outcome
            assert "writing 1 audit entry" in str(outcome)
            assert "one group with 9 other entries; none of the group was written" in str(outcome)
            assert outcome.__cause__ is not None
        assert [row["action"] for row in await rows_in_order(pg)] == ["before"]
        # The logger recovers on a new connection and extends the same chain.
        await asyncio.gather(*(audit.log_action("after", "doc") for _ in range(5)))
        await audit.aclose()
        result = await audit.verify()
        assert (result.ok, result.checked) == (True, 6)

    async def test_a_caller_cancelled_once_its_group_started_still_gets_written(
        self, pg: DatabaseSession
    ) -> None:
        audit = SqlAuditLogger(pg)
        holder = await asyncpg.connect(_dsn(pg))
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", _PG_CHAIN_LOCK)
            tasks = [
                asyncio.create_task(audit.log_action("write", "doc", user_id=f"c{n}"))
                for n in range(6)
            ]
            await _blocked_on_the_chain_lock(holder)  # the group is in its transaction
            tasks[2].cancel()
        finally:
            await holder.execute("SELECT pg_advisory_unlock_all()")
            await holder.close()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(outcomes[2], asyncio.CancelledError)
        assert all(isinstance(o, AuditEntry) for n, o in enumerate(outcomes) if n != 2)
        # Documented: the cancelled caller's entry went in with its group.
        assert [row["user_id"] for row in await rows_in_order(pg)] == [f"c{n}" for n in range(6)]
        await audit.aclose()
        assert (await audit.verify()).ok
