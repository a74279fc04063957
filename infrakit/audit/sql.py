"""``SqlAuditLogger``: the audit log in the application's own database.

The table is append-only (this class has no update or delete) and created
by the kit's migration (``infrakit db upgrade``). With ``hash_chain`` every
row stores the previous row's hash and its own
``sha256(prev_hash || canonical_json(entry))``; writers are serialised by a
PostgreSQL advisory lock (``BEGIN IMMEDIATE`` on SQLite), so concurrent
writers in many processes still form one valid chain.

Group commit. A lock held across a transaction caps one chain at a few
hundred transactions a second, so a logger does not spend one transaction
per entry: every ``log``/``log_many``/``log_action`` call of a process joins
a queue, and one writer task per logger commits the queue in groups. A
group is everything that queued while the previous group was committing
(whole calls, up to ``max_group_entries`` entries, one call is never split)
and costs one transaction: one lock, one read of the chain head, one
multi-row insert (``COPY`` for large groups on PostgreSQL), one commit. The
entries are chained in queue order, each with the same per-entry hash a
single write uses. A caller returns only when the transaction holding its
entries has committed; when the group fails, every caller in it gets an
``AuditError`` and none of the group's entries is stored. The writer exists
only while something is queued: it drains the queue and ends, so an idle
logger holds no task and no connection, and ``aclose()`` waits for it.

Cancelling a caller never touches the others: an entry whose group has not
started yet is taken out of the queue and never written; once its group has
started the entry is committed (or not) with the group, and only the
cancelled caller misses the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import operator
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from pydantic import Field
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncConnection

from infrakit.audit.base import (
    AuditEntry,
    AuditFilter,
    AuditLogger,
    ChainChecker,
    VerifyResult,
    encode_compact,
    hash_of_content,
)
from infrakit.component import HealthResult
from infrakit.database.session import SQLITE_BEGIN_IMMEDIATE, DatabaseSession
from infrakit.errors import AuditError
from infrakit.registry import Backend
from infrakit.settings.models import AuditSettings

if TYPE_CHECKING:
    from infrakit.settings.models import InfraSettings

__all__ = ["AUDIT_TABLE", "BACKEND", "SqlAuditLogger", "SqlAuditSettings", "audit_log", "metadata"]

AUDIT_TABLE = "infrakit_audit_log"
# Any fixed 64-bit number: the advisory lock that serialises chain writers.
_PG_CHAIN_LOCK = 0x1F2A_A0D1
_VERIFY_BATCH = 5_000
#: Default cap on the entries one group commit writes (one call is never split).
MAX_GROUP_ENTRIES = 1_000

metadata = sa.MetaData()

#: Mirrors migrations/versions/0001_audit_log.py (a test keeps the two equal).
audit_log = sa.Table(
    AUDIT_TABLE,
    metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("id", sa.String(64), nullable=False),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("resource_type", sa.String(128), nullable=False),
    sa.Column("result", sa.String(64), nullable=False),
    sa.Column("resource_id", sa.String(256), nullable=True),
    sa.Column("user_id", sa.String(256), nullable=True),
    sa.Column("details", sa.Text(), nullable=False),
    sa.Column("ip_address", sa.String(64), nullable=True),
    sa.Column("user_agent", sa.Text(), nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("trace_id", sa.String(32), nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=True),
    sa.Column("hash", sa.String(64), nullable=True),
    sa.UniqueConstraint("id", name=f"uq_{AUDIT_TABLE}_id"),
    sa.Index(f"ix_{AUDIT_TABLE}_timestamp_id", "timestamp", "id"),
    sa.Index(f"ix_{AUDIT_TABLE}_user_id_timestamp", "user_id", "timestamp"),
    sa.Index(f"ix_{AUDIT_TABLE}_action_timestamp", "action", "timestamp"),
    sa.Index(f"ix_{AUDIT_TABLE}_resource", "resource_type", "resource_id"),
)

_c = audit_log.c
_ENTRY_COLUMNS = [c for c in audit_log.columns if c.name != "seq"]
_COLUMN_NAMES = tuple(c.name for c in _ENTRY_COLUMNS)
_as_record = operator.itemgetter(*_COLUMN_NAMES)
_COPY_THRESHOLD = 64
#: Column widths an entry must fit (PostgreSQL refuses longer values; checked
#: before an entry joins a group, so one caller's value cannot fail the others).
_WIDTHS = tuple(
    (c.name, c.type.length)
    for c in _ENTRY_COLUMNS
    if isinstance(c.type, sa.String)
    and c.type.length is not None
    and c.name not in ("prev_hash", "hash")  # the logger's own to set
)

# The asyncpg write path (see SqlAuditLogger._asyncpg_transaction).
_ASYNCPG = "postgresql+asyncpg"
_PG_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({_PG_CHAIN_LOCK})"
# Constant table and column names only; every value is a bound parameter.
_PG_HEAD = f"SELECT hash FROM {AUDIT_TABLE} ORDER BY seq DESC LIMIT 1"  # noqa: S608
_PG_INSERT = (
    f"INSERT INTO {AUDIT_TABLE} ({', '.join(_COLUMN_NAMES)}) "  # noqa: S608
    f"VALUES ({', '.join(f'${n}' for n in range(1, len(_COLUMN_NAMES) + 1))})"
)


def _row(entry: AuditEntry, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The table row of ``entry``; ``data`` is its ``to_dict()`` when already made."""
    data = entry.to_dict() if data is None else data
    data["timestamp"] = entry.timestamp
    data["details"] = encode_compact(data["details"])
    return data


def _entry(row: sa.Row[Any]) -> AuditEntry:
    data = dict(row._mapping)
    data.pop("seq", None)
    stamp: datetime = data["timestamp"]
    # SQLite keeps no offset; the kit only ever writes UTC.
    data["timestamp"] = stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp
    data["details"] = json.loads(data["details"])
    return AuditEntry(**data)


def _where(f: AuditFilter) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    for name in ("user_id", "action", "resource_type", "resource_id", "result"):
        wanted = getattr(f, name)
        if wanted is not None:
            clauses.append(audit_log.c[name] == wanted)
    if f.start_time is not None:
        clauses.append(_c.timestamp >= f.start_time)
    if f.end_time is not None:
        clauses.append(_c.timestamp < f.end_time)
    return clauses


def _settle(
    waiter: _Waiter,
    *,
    result: list[AuditEntry] | None = None,
    error: BaseException | None = None,
) -> None:
    """Answer a waiter unless its caller was cancelled (then nobody is listening)."""
    if waiter.future.done():
        return
    if error is not None:
        waiter.future.set_exception(error)
        # Marked as seen: the caller raises it when it resumes, but one
        # cancelled in between must not leave a "never retrieved" report.
        waiter.future.exception()
    else:
        assert result is not None
        waiter.future.set_result(result)


def _check_widths(entry: AuditEntry) -> None:
    """A ValueError naming the field when a value is wider than its column."""
    for name, width in _WIDTHS:
        value = getattr(entry, name)
        if value is not None and len(value) > width:
            raise ValueError(
                f"AuditEntry.{name} is {len(value)} characters; the audit table holds at "
                f"most {width} (shorten it, or put the full value in details)"
            )


async def _discard(conn: AsyncConnection) -> None:
    """Drop a connection whose state is unknown (mid-transaction, broken) from the pool."""
    # Already failing: a failure to close is not news, and the pool forgets it either way.
    with contextlib.suppress(Exception):
        await conn.invalidate()


async def _is_closed(conn: AsyncConnection) -> bool:
    """Whether asyncpg already knows its connection is gone (no round trip)."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    return driver is None or bool(driver.is_closed())


async def _release(conn: AsyncConnection) -> None:
    """Hand a healthy connection back to the pool (or drop it if even that fails)."""
    try:
        await conn.close()
    except Exception:  # noqa: BLE001 - nobody waits on this connection: just drop it
        await _discard(conn)


class _Waiter:
    """One queued call: its entries and the future its caller awaits."""

    __slots__ = ("entries", "future")

    def __init__(self, entries: list[AuditEntry], future: asyncio.Future[list[AuditEntry]]):
        self.entries = entries
        self.future = future


class SqlAuditLogger(AuditLogger):
    """The audit log in a SQL table, written in transactions of its own.

    Each write uses its own connection and transaction, never the
    application's session, so an entry logged inside a failing request
    survives that request's rollback. Concurrent writes of one logger are
    committed together (group commit, see the module docstring); a call
    returns once its entries are committed. A write that fails raises
    :class:`AuditError`: an entry is never dropped silently.
    """

    def __init__(
        self,
        database: DatabaseSession,
        *,
        hash_chain: bool = True,
        max_group_entries: int = MAX_GROUP_ENTRIES,
    ) -> None:
        self._db = database
        self.hash_chain = hash_chain
        self.max_group_entries = max_group_entries
        self._queue: deque[_Waiter] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._writer_loop: asyncio.AbstractEventLoop | None = None
        # Guards the queue and the writer slot: no await is ever made under it.
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return f"SqlAuditLogger({self._db!r}, hash_chain={self.hash_chain})"

    def _fail(self, what: str, error: BaseException) -> AuditError:
        return AuditError(f"{what} on {self._db.url} failed: {type(error).__name__}")

    async def start(self) -> None:
        """Migrate the audit table when ``database.auto_migrate`` is set, then check
        that it exists (``infrakit db upgrade`` creates it otherwise)."""
        if self._db.auto_migrate:
            from infrakit.database.migrate import upgrade

            await upgrade(self._db, locations=[MIGRATIONS])
        await self._check_table()

    async def aclose(self) -> None:
        """Commit everything queued, then return once the writer task has ended.

        Entries logged after this start a new writer; the logger stays usable.
        """
        while True:
            with self._guard:
                writer = self._writer
            if writer is None or writer.get_loop() is not asyncio.get_running_loop():
                return
            # The writer ends by itself once the queue is empty. wait() neither
            # cancels it when aclose() is cancelled nor raises what ended it.
            await asyncio.wait([writer])

    async def _check_table(self) -> None:
        try:
            async with self._db.engine.connect() as conn:
                exists = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(AUDIT_TABLE))
        except (exc.SQLAlchemyError, OSError) as error:
            raise self._fail("checking the audit table", error) from error
        if not exists:
            raise AuditError(
                f"the audit table {AUDIT_TABLE!r} does not exist in {self._db.url}; "
                "run `infrakit db upgrade PROFILE` (or set database.auto_migrate: true)"
            )

    async def health_check(self) -> HealthResult:
        """One indexed read of the audit table (its database and the table both answer)."""
        start = time.perf_counter()
        try:
            await self._check_table()  # the table is there (one catalogue read)
            async with self._db.engine.connect() as conn:
                await conn.execute(sa.select(_c.seq).order_by(_c.seq.desc()).limit(1))
        except AuditError as error:
            return HealthResult(False, (time.perf_counter() - start) * 1000, str(error))
        except (exc.SQLAlchemyError, OSError) as error:
            detail = self._fail("reading the audit table", error)
            return HealthResult(False, (time.perf_counter() - start) * 1000, str(detail))
        return HealthResult(True, (time.perf_counter() - start) * 1000)

    # --- writing ----------------------------------------------------------------

    async def log(self, entry: AuditEntry) -> AuditEntry:
        if not isinstance(entry, AuditEntry):
            raise ValueError(f"log() takes an AuditEntry, got {type(entry).__name__}")
        _check_widths(entry)
        return (await self._submit([entry]))[0]

    async def log_many(self, entries: Iterable[AuditEntry]) -> list[AuditEntry]:
        batch = list(entries)
        for entry in batch:
            if not isinstance(entry, AuditEntry):
                raise ValueError(f"expected AuditEntry items, got {type(entry).__name__}")
            _check_widths(entry)
        if not batch:
            return []
        return await self._submit(batch)

    async def _submit(self, batch: list[AuditEntry]) -> list[AuditEntry]:
        """Queue ``batch`` for the writer and wait until its group has committed."""
        loop = asyncio.get_running_loop()
        with self._guard:
            if self._writer is not None and self._writer_loop is not loop:
                waiter = None  # another event loop owns the writer (a thread of its own)
            else:
                waiter = _Waiter(batch, loop.create_future())
                self._queue.append(waiter)
                if self._writer is None:
                    # An empty context: the writer works for every caller, so
                    # it must not run inside the first caller's span or request.
                    self._writer = loop.create_task(
                        self._drain(), name="infrakit-audit-writer", context=contextvars.Context()
                    )
                    self._writer_loop = loop
        if waiter is None:
            # Still one valid chain: the database lock orders this write too.
            return await self._write(batch)
        # Cancelled here, the future is cancelled: a queued waiter is then
        # skipped by the writer, one already in a running group is committed
        # with it (the writer never sets a result on a cancelled future).
        return await waiter.future

    def _take_group(self) -> list[_Waiter]:
        """Whole calls from the queue, up to ``max_group_entries`` entries (at least
        one call); callers cancelled while queued are dropped here."""
        group: list[_Waiter] = []
        size = 0
        queue = self._queue
        while queue:
            waiter = queue[0]
            if waiter.future.done():  # cancelled before its group started
                queue.popleft()
                continue
            if group and size + len(waiter.entries) > self.max_group_entries:
                break
            queue.popleft()
            group.append(waiter)
            size += len(waiter.entries)
        return group

    async def _drain(self) -> None:
        """The writer: commit groups until the queue is empty, then end.

        On PostgreSQL (asyncpg) one connection serves a whole burst of groups,
        so a group pays no pool checkout or pre-ping; it goes back to the pool
        as soon as the queue is empty.
        """
        group: list[_Waiter] = []
        held: AsyncConnection | None = None
        idle = False
        try:
            while True:
                with self._guard:
                    group = self._take_group()
                    if not group and held is None:
                        self._writer = self._writer_loop = None
                        return
                if not group:
                    assert held is not None
                    if not idle:
                        # The callers just answered run first: most log again
                        # at once, and the connection is worth keeping for them.
                        idle = True
                        await asyncio.sleep(0)
                        continue
                    await _release(held)  # then look at the queue once more
                    held = None
                    continue
                idle = False
                held = await self._commit_group(group, held)
                group = []
        except BaseException:
            # Only cancellation gets here (the event loop is shutting down):
            # nobody may wait for ever, and nothing may look written.
            with self._guard:
                queued = list(self._queue)
                self._queue.clear()
                self._writer = self._writer_loop = None
            for waiter in group:
                _settle(waiter, error=AuditError("audit write interrupted: outcome unknown"))
            for waiter in queued:
                _settle(waiter, error=AuditError("audit write not made: the writer was stopped"))
            if held is not None:
                await _discard(held)
            raise

    async def _commit_group(
        self, group: list[_Waiter], held: AsyncConnection | None
    ) -> AsyncConnection | None:
        """One transaction for the whole group; every caller learns the outcome.

        Returns the connection to keep for the next group (asyncpg only).
        """
        batch = group[0].entries if len(group) == 1 else [e for w in group for e in w.entries]
        try:
            if self._db.engine.url.drivername == _ASYNCPG:
                if held is not None and await _is_closed(held):
                    # Lost while idle (a database restart): nothing of this
                    # group was sent, so take a checked connection instead.
                    await _discard(held)
                    held = None
                if held is None:
                    held = await self._db.engine.connect()
                stored = await self._transaction(held, batch)
            else:
                stored = await self._write(batch)
        except Exception as error:  # noqa: BLE001 - every failure reaches every caller
            if held is not None:
                await _discard(held)
            cause = error.__cause__ if isinstance(error, AuditError) else error
            for waiter in group:
                _settle(waiter, error=self._group_error(waiter, len(batch), cause or error))
            return None
        start = 0
        for waiter in group:
            end = start + len(waiter.entries)
            _settle(waiter, result=stored[start:end])
            start = end
        return held

    def _group_error(self, waiter: _Waiter, group_size: int, cause: BaseException) -> AuditError:
        """The caller's own error: its entries, the group's fate, the cause chained."""
        count = len(waiter.entries)
        what = f"writing {count} audit entr{'y' if count == 1 else 'ies'}"
        others = group_size - count
        note = (
            f" (committed as one group with {others} other entr{'y' if others == 1 else 'ies'};"
            " none of the group was written)"
            if others
            else ""
        )
        failure = self._fail(what, cause)
        failure.args = (f"{failure}{note}",)
        failure.__cause__ = cause
        return failure

    async def _write(self, batch: list[AuditEntry]) -> list[AuditEntry]:
        """Append ``batch`` in one transaction on a connection of its own."""
        try:
            async with self._db.engine.connect() as conn:
                try:
                    return await self._transaction(conn, batch)
                except BaseException:
                    await _discard(conn)  # never hand back a connection mid-transaction
                    raise
        except Exception as error:  # driver errors too (COPY raises asyncpg's own)
            raise self._fail(
                f"writing {len(batch)} audit entr{'y' if len(batch) == 1 else 'ies'}", error
            ) from error

    async def _transaction(
        self, conn: AsyncConnection, batch: list[AuditEntry]
    ) -> list[AuditEntry]:
        """Lock, chain head, insert, commit: the one place entries are chained and stored."""
        stored: list[AuditEntry] = []
        if conn.engine.url.drivername == _ASYNCPG:
            await self._asyncpg_transaction(conn, batch, stored)
            return stored
        # SQLite: take the writer lock at BEGIN, before the last hash is read.
        options = {SQLITE_BEGIN_IMMEDIATE: True} if self._db.is_sqlite else {}
        conn = await conn.execution_options(**options)
        async with conn.begin():
            head = await self._chain_head(conn) if self.hash_chain else None
            await conn.execute(sa.insert(audit_log), list(self._rows(batch, head, stored)))
        return stored

    async def _asyncpg_transaction(
        self, conn: AsyncConnection, batch: list[AuditEntry], stored: list[AuditEntry]
    ) -> None:
        """The same transaction in four round trips, on asyncpg itself.

        Through SQLAlchemy the group costs eight (a three-statement pre-ping,
        BEGIN, lock, head, insert, commit) and the chain's lock is held across
        most of them. Here BEGIN and the lock share one simple query. A caller
        that fails discards the connection, so no transaction is left open.
        """
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        chain = self.hash_chain
        await driver.execute(_PG_BEGIN_LOCKED if chain else "BEGIN")
        head = await driver.fetchval(_PG_HEAD) if chain else None
        records = map(_as_record, self._rows(batch, head, stored))
        if len(batch) >= _COPY_THRESHOLD:
            # Large groups go through COPY (about twice as fast as an
            # executemany of INSERTs), fed by the generator, so the server
            # stores rows while the next ones are hashed.
            await driver.copy_records_to_table(
                AUDIT_TABLE, records=records, columns=list(_COLUMN_NAMES)
            )
        else:
            await driver.executemany(_PG_INSERT, list(records))
        await driver.execute("COMMIT")

    async def _chain_head(self, conn: AsyncConnection) -> str | None:
        """Take the writers' lock, then read the hash the next entry links to."""
        if self._db.is_postgresql:
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CHAIN_LOCK}
            )
        head: str | None = (
            await conn.execute(sa.select(_c.hash).order_by(_c.seq.desc()).limit(1))
        ).scalar()
        return head

    def _rows(
        self, batch: Sequence[AuditEntry], prev: str | None, stored: list[AuditEntry]
    ) -> Iterator[dict[str, Any]]:
        """Table rows, chained from ``prev``; each stored entry is appended to ``stored``.

        A generator, so a COPY can send rows while the next ones are hashed.
        """
        chain = self.hash_chain
        for entry in batch:
            data = entry.to_dict()  # made once: hashed, then stored
            del data["prev_hash"], data["hash"]
            digest = hash_of_content(prev, data) if chain else None
            link = prev if chain else None
            data["prev_hash"], data["hash"] = link, digest
            stored.append(entry.with_chain(link, digest))
            yield _row(entry, data)
            prev = digest

    # --- reading ------------------------------------------------------------------

    async def query(self, audit_filter: AuditFilter | None = None) -> list[AuditEntry]:
        f = audit_filter or AuditFilter()
        statement = (
            sa.select(*_ENTRY_COLUMNS)
            .where(*_where(f))
            .order_by(_c.timestamp.desc(), _c.id.desc())
            .offset(f.offset)
            .limit(f.limit)
        )
        try:
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(statement)).all()
        except (exc.SQLAlchemyError, OSError) as error:
            raise self._fail("querying the audit log", error) from error
        return [_entry(row) for row in rows]

    async def count(self, audit_filter: AuditFilter | None = None) -> int:
        f = audit_filter or AuditFilter()
        statement = sa.select(sa.func.count()).select_from(audit_log).where(*_where(f))
        try:
            async with self._db.engine.connect() as conn:
                return int((await conn.execute(statement)).scalar_one())
        except (exc.SQLAlchemyError, OSError) as error:
            raise self._fail("counting the audit log", error) from error

    async def verify(self) -> VerifyResult:
        """Walk the whole chain in insertion order, streaming rows in batches."""
        checker = ChainChecker()
        statement = sa.select(*_ENTRY_COLUMNS).order_by(_c.seq)
        try:
            async with self._db.engine.connect() as conn:
                result = await conn.stream(statement.execution_options(yield_per=_VERIFY_BATCH))
                async for row in result:
                    entry = _entry(row)
                    if not self.hash_chain:
                        checker.checked += 1
                        continue
                    if not checker.feed(entry):
                        await result.close()
                        break
        except (exc.SQLAlchemyError, OSError) as error:
            raise self._fail("verifying the audit log", error) from error
        if not self.hash_chain:
            return VerifyResult(True, checker.checked, reason="hash chain disabled")
        return checker.result()


class SqlAuditSettings(AuditSettings):
    """``audit.backend: sql``: the audit table in the application's database."""

    backend: Literal["sql"] = "sql"
    max_group_entries: int = Field(
        MAX_GROUP_ENTRIES,
        ge=1,
        le=100_000,
        description="Most entries one group commit writes per transaction (a call is never split).",
    )


def create(
    section: SqlAuditSettings, settings: InfraSettings, *, database: DatabaseSession, **_: Any
) -> SqlAuditLogger:
    return SqlAuditLogger(
        database, hash_chain=section.hash_chain, max_group_entries=section.max_group_entries
    )


#: Where the audit table's migrations live (its own Alembic version directory).
MIGRATIONS = "infrakit.audit:migrations"

BACKEND = Backend(
    "audit",
    "sql",
    SqlAuditSettings,
    create,
    requires=("database",),
    migrations=MIGRATIONS,
    description="append-only, hash-chained audit table in the application's database",
)
