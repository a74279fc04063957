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

With a signing key the hash is an HMAC instead (``hmac-sha256.<key id>.<mac>``,
same column; :mod:`infrakit.audit.chain`), and a :class:`Checkpointer` signs
the committed head (``seq``, id, hash) every N entries or T seconds, outside
the table; the writer tells it how many entries each group committed.

An entry id is stored once. When the connection is lost after ``COMMIT`` was
sent, every caller of that group gets :class:`AuditOutcomeUnknownError` (the
group is stored whole or not at all). Logging the same entries again is
safe: a group that hits the unique index on ``id`` reads which of its ids
are stored; callers whose entries are all new are committed again as a group
of their own, callers whose entries are all stored get the stored entries
back, and a caller with some of each reads the stored ones and logs the new
ones again itself (through the queue: the writer never waits on itself).
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
    same_entry,
)
from infrakit.audit.chain import (
    Checkpoint,
    Checkpointer,
    CheckpointPolicy,
    Head,
    Keyring,
    chain_options,
)
from infrakit.component import HealthResult
from infrakit.database.session import SQLITE_BEGIN_IMMEDIATE, DatabaseSession
from infrakit.errors import AuditError, AuditOutcomeUnknownError
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
_READ_CHUNK = 500  # ids per read of stored entries (SQLite caps bound values)
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


class _Attempt:
    """How far one transaction got (for the error of one that did not finish)."""

    __slots__ = ("committing", "lost")

    def __init__(self) -> None:
        #: COMMIT was (about to be) sent: a connection lost from here on leaves
        #: the outcome unknown.
        self.committing = False
        #: asyncpg's connection was closed when the error came (its direct path).
        self.lost = False


class _LogAgain(Exception):  # noqa: N818 - a signal between the writer and a caller
    """Internal: the caller's entries met ids already stored; it runs
    :meth:`SqlAuditLogger._log_again` itself. Never leaves the logger."""


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
        keys: Keyring | None = None,
        checkpoints: CheckpointPolicy | None = None,
    ) -> None:
        self._db = database
        self.hash_chain = hash_chain
        self.max_group_entries = max_group_entries
        self._keys = keys
        # the key new entries are hashed with (None: plain SHA-256)
        self._key = keys.current if keys is not None and hash_chain else None
        self._checkpointer = (
            Checkpointer(self._key, self._head, checkpoints or CheckpointPolicy(0, 0))
            if self._key is not None
            else None
        )
        self._queue: deque[_Waiter] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._writer_loop: asyncio.AbstractEventLoop | None = None
        # Guards the queue and the writer slot: no await is ever made under it.
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        keyed = f", key_id={self._key.key_id!r}" if self._key is not None else ""
        return f"SqlAuditLogger({self._db!r}, hash_chain={self.hash_chain}{keyed})"

    def _fail(self, what: str, error: BaseException) -> AuditError:
        return AuditError(f"{what} on {self._db.url} failed: {type(error).__name__}")

    def _write_error(
        self, count: int, error: BaseException, attempt: _Attempt, note: str = ""
    ) -> AuditError:
        """The error of a write that did not go through: "outcome unknown" when
        the connection broke once COMMIT was sent, a plain failure otherwise."""
        what = f"writing {count} audit entr{'y' if count == 1 else 'ies'}"
        if _outcome_unknown(error, attempt):
            return AuditOutcomeUnknownError(
                f"{what} on {self._db.url}: outcome unknown, the connection was lost during "
                f"COMMIT ({type(error).__name__}); the entries may or may not be stored{note}. "
                "Hint: log the same entries again (same ids): a stored entry is never "
                "stored twice"
            )
        failure = self._fail(what, error)
        failure.args = (f"{failure}{note}",)
        return failure

    async def start(self) -> None:
        """Migrate the audit table when ``database.auto_migrate`` is set, then check
        that it exists (``infrakit db upgrade`` creates it otherwise)."""
        if self._db.auto_migrate:
            from infrakit.database.migrate import upgrade

            await upgrade(self._db, locations=[MIGRATIONS])
        await self._check_table()
        if self._checkpointer is not None:
            await self._checkpointer.start()

    async def aclose(self) -> None:
        """Commit everything queued and wait for the writer task to end; then,
        with a signing key, write a last checkpoint covering those entries.

        Entries logged after this start a new writer; the logger stays usable.
        """
        while True:
            with self._guard:
                writer = self._writer
            if writer is None or writer.get_loop() is not asyncio.get_running_loop():
                break
            # The writer ends by itself once the queue is empty. wait() neither
            # cancels it when aclose() is cancelled nor raises what ended it.
            await asyncio.wait([writer])
        if self._checkpointer is not None:
            await self._checkpointer.aclose()

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
        return (await self._append([entry]))[0]

    async def log_many(self, entries: Iterable[AuditEntry]) -> list[AuditEntry]:
        batch = list(entries)
        for entry in batch:
            if not isinstance(entry, AuditEntry):
                raise ValueError(f"expected AuditEntry items, got {type(entry).__name__}")
            _check_widths(entry)
        if not batch:
            return []
        return await self._append(batch)

    async def _append(self, batch: list[AuditEntry]) -> list[AuditEntry]:
        """Write ``batch`` (checked already), sorting out ids that are stored already."""
        try:
            return await self._submit(batch)
        except _LogAgain:
            # Run here, by the caller: it goes through the queue again.
            return await self._log_again(batch)

    async def _log_again(self, batch: list[AuditEntry]) -> list[AuditEntry]:
        """A write some of whose ids are stored already (a retry after "outcome
        unknown"): the stored entries come back, the others are written once."""
        stored = await self._stored([e.id for e in batch])
        todo: dict[str, AuditEntry] = {}
        for entry in batch:
            known = stored.get(entry.id) or todo.get(entry.id)
            if known is None:
                todo[entry.id] = entry
            elif not same_entry(known, entry):
                raise AuditError(
                    f"audit entry id {entry.id!r} is already stored with other content; "
                    "an id names one entry (retry with the same entry, or use a new id)"
                )
        # (another writer storing one of these meanwhile brings us back here)
        written = {e.id: e for e in await self._append(list(todo.values()))} if todo else {}
        return [stored.get(e.id) or written[e.id] for e in batch]

    async def _stored(self, ids: Iterable[str]) -> dict[str, AuditEntry]:
        """The stored entries among ``ids`` (read in chunks: SQLite caps bound values)."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, AuditEntry] = {}
        try:
            async with self._db.engine.connect() as conn:
                for start in range(0, len(wanted), _READ_CHUNK):
                    chunk = wanted[start : start + _READ_CHUNK]
                    statement = sa.select(*_ENTRY_COLUMNS).where(_c.id.in_(chunk))
                    for row in (await conn.execute(statement)).all():
                        entry = _entry(row)
                        found[entry.id] = entry
        except (exc.SQLAlchemyError, OSError) as error:
            raise self._fail("reading stored audit entries", error) from error
        return found

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
                _settle(
                    waiter,
                    error=AuditOutcomeUnknownError(
                        "audit write interrupted (the writer was stopped): outcome unknown; "
                        "log the same entries again (same ids) to be sure they are stored"
                    ),
                )
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
        attempt = _Attempt()
        try:
            if self._db.engine.url.drivername == _ASYNCPG:
                if held is not None and await _is_closed(held):
                    # Lost while idle (a database restart): nothing of this
                    # group was sent, so take a checked connection instead.
                    await _discard(held)
                    held = None
                if held is None:
                    held = await self._db.engine.connect()
                stored = await self._transaction(held, batch, attempt)
            else:
                stored = await self._own_transaction(batch, attempt)
        except Exception as error:  # noqa: BLE001 - every failure reaches every caller
            if held is not None:
                await _discard(held)
            if _duplicate_id(error):
                return await self._commit_around_stored(group, error, attempt)
            for waiter in group:
                _settle(waiter, error=self._group_error(waiter, len(batch), error, attempt))
            return None
        self._committed(len(stored))
        start = 0
        for waiter in group:
            end = start + len(waiter.entries)
            _settle(waiter, result=stored[start:end])
            start = end
        return held

    async def _commit_around_stored(
        self, group: list[_Waiter], error: BaseException, attempt: _Attempt
    ) -> AsyncConnection | None:
        """The group hit the unique index on ``id`` (one caller retrying entries
        that are stored): nothing of it was written. One read finds the stored
        ids; a caller whose entries are all stored (unchanged) gets them back,
        the callers whose entries are all new are committed again as a group,
        and each other caller is told to sort its entries out itself
        (:meth:`_log_again`, which goes through the queue again).
        """
        try:
            stored = await self._stored(e.id for w in group for e in w.entries)
        except AuditError:
            stored = None  # every caller reads again itself and meets the error
        again: list[_Waiter] = []
        fresh: list[_Waiter] = []
        taken: set[str] = set()  # the ids of the callers committed again
        for waiter in group:
            ids = [e.id for e in waiter.entries]
            if stored is None:
                again.append(waiter)
            elif all(i in stored for i in ids):
                known = [stored[e.id] for e in waiter.entries]
                if all(map(same_entry, known, waiter.entries)):
                    _settle(waiter, result=known)
                else:
                    again.append(waiter)  # raises "already stored with other content"
            elif any(i in stored or i in taken for i in ids) or len(set(ids)) < len(ids):
                again.append(waiter)
            else:
                fresh.append(waiter)
                taken.update(ids)
        if len(fresh) == len(group):
            # No stored id and no id twice: the duplicate is nowhere to be seen
            # (a row deleted since?). Committing the same group again could go
            # round for ever, so the group fails as any refused group does.
            count = sum(len(w.entries) for w in group)
            for waiter in group:
                _settle(waiter, error=self._group_error(waiter, count, error, attempt))
            return None
        held = await self._commit_group(fresh, None) if fresh else None
        for waiter in again:
            _settle(waiter, error=_LogAgain())
        return held

    def _group_error(
        self, waiter: _Waiter, group_size: int, cause: BaseException, attempt: _Attempt
    ) -> AuditError:
        """The caller's own error: its entries, the group's fate, the cause chained."""
        others = group_size - len(waiter.entries)
        note = ""
        if others:
            plural = "y" if others == 1 else "ies"
            fate = (
                "the whole group is stored or none of it"
                if _outcome_unknown(cause, attempt)
                else "none of the group was written"
            )
            note = f" (committed as one group with {others} other entr{plural}; {fate})"
        failure = self._write_error(len(waiter.entries), cause, attempt, note)
        failure.__cause__ = cause
        return failure

    async def _write(self, batch: list[AuditEntry]) -> list[AuditEntry]:
        """Append ``batch`` in one transaction on a connection of its own (a call
        from another event loop than the writer's)."""
        attempt = _Attempt()
        try:
            stored = await self._own_transaction(batch, attempt)
        except Exception as error:  # driver errors too (COPY raises asyncpg's own)
            if _duplicate_id(error):
                raise _LogAgain from error
            raise self._write_error(len(batch), error, attempt) from error
        self._committed(len(stored))
        return stored

    def _committed(self, count: int) -> None:
        """``count`` entries were committed: the checkpointer counts them."""
        if self._checkpointer is not None:
            self._checkpointer.note(count)

    async def _own_transaction(
        self, batch: list[AuditEntry], attempt: _Attempt
    ) -> list[AuditEntry]:
        """:meth:`_transaction` on a pooled connection taken for it (raises what it raised)."""
        async with self._db.engine.connect() as conn:
            try:
                return await self._transaction(conn, batch, attempt)
            except BaseException:
                # Never hand back a connection mid-transaction. SQLAlchemy's
                # transaction has rolled back already (and a SQLite :memory:
                # database lives only as long as its one connection).
                if conn.engine.url.drivername == _ASYNCPG:
                    await _discard(conn)
                raise

    async def _transaction(
        self, conn: AsyncConnection, batch: list[AuditEntry], attempt: _Attempt
    ) -> list[AuditEntry]:
        """Lock, chain head, insert, commit: the one place entries are chained and stored."""
        stored: list[AuditEntry] = []
        if conn.engine.url.drivername == _ASYNCPG:
            await self._asyncpg_transaction(conn, batch, stored, attempt)
            return stored
        # SQLite: take the writer lock at BEGIN, before the last hash is read.
        options = {SQLITE_BEGIN_IMMEDIATE: True} if self._db.is_sqlite else {}
        conn = await conn.execution_options(**options)
        async with conn.begin():
            head = await self._chain_head(conn) if self.hash_chain else None
            await conn.execute(sa.insert(audit_log), list(self._rows(batch, head, stored)))
            attempt.committing = True  # leaving the block commits
        return stored

    async def _asyncpg_transaction(
        self,
        conn: AsyncConnection,
        batch: list[AuditEntry],
        stored: list[AuditEntry],
        attempt: _Attempt,
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
        try:
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
            attempt.committing = True
            await driver.execute("COMMIT")
        except BaseException:
            # asyncpg's own errors are not SQLAlchemy's: whether the connection
            # is gone is asked of the connection itself.
            attempt.lost = bool(driver.is_closed())
            raise

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
        chain, key = self.hash_chain, self._key
        for entry in batch:
            data = entry.to_dict()  # made once: hashed, then stored
            del data["prev_hash"], data["hash"]
            digest = hash_of_content(prev, data, key) if chain else None
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

    async def _head(self) -> Head | None:
        """The committed head of the chain: ``(seq, id, hash)``; None when empty."""
        statement = sa.select(_c.seq, _c.id, _c.hash).order_by(_c.seq.desc()).limit(1)
        try:
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(statement)).first()
        except (exc.SQLAlchemyError, OSError) as error:
            raise self._fail("reading the audit chain head", error) from error
        return None if row is None else (int(row.seq), row.id, row.hash or "")

    async def checkpoint(self) -> Checkpoint | None:
        if self._checkpointer is None:
            return None
        return await self._checkpointer.checkpoint()

    async def verify(self, *, checkpoints: Iterable[Checkpoint] = ()) -> VerifyResult:
        """Walk the whole chain in insertion order, streaming rows in batches."""
        checker = ChainChecker(keys=self._keys, checkpoints=checkpoints)
        if checker.failure is not None:
            return checker.result()
        statement = sa.select(_c.seq, *_ENTRY_COLUMNS).order_by(_c.seq)
        try:
            async with self._db.engine.connect() as conn:
                result = await conn.stream(statement.execution_options(yield_per=_VERIFY_BATCH))
                async for row in result:
                    entry = _entry(row)
                    if not self.hash_chain:
                        checker.checked += 1
                        continue
                    if not checker.feed(entry, row.seq):
                        await result.close()
                        break
        except (exc.SQLAlchemyError, OSError) as error:
            raise self._fail("verifying the audit log", error) from error
        if not self.hash_chain:
            return VerifyResult(True, checker.checked, reason="hash chain disabled")
        return checker.result()


def _duplicate_id(error: BaseException) -> bool:
    """The insert hit the unique index on the entry id (and nothing else)."""
    if isinstance(error, exc.IntegrityError):
        text = str(error.orig)
        return f"uq_{AUDIT_TABLE}_id" in text or f"{AUDIT_TABLE}.id" in text
    # asyncpg's own UniqueViolationError (the writer's direct path, COPY included);
    # asyncpg is an optional extra, so it is recognised by its attributes.
    return (
        getattr(error, "sqlstate", None) == "23505"
        and getattr(error, "constraint_name", None) == f"uq_{AUDIT_TABLE}_id"
    )


# SQLSTATEs of a connection that is gone: class 08 (connection exception) and
# the server ending the session (admin shutdown, crash shutdown, cannot connect now).
_LOST_STATES = ("57P01", "57P02", "57P03")


def _connection_lost(error: BaseException) -> bool:
    """The connection broke (the server may or may not have done what was sent)."""
    if isinstance(error, OSError):
        return True
    if isinstance(error, exc.DBAPIError):
        return bool(error.connection_invalidated)
    # asyncpg's own errors, on the writer's direct path
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and (sqlstate.startswith("08") or sqlstate in _LOST_STATES):
        return True  # ConnectionDoesNotExistError is 08003
    return type(error).__module__.startswith("asyncpg") and "connection is closed" in str(error)


def _outcome_unknown(error: BaseException, attempt: _Attempt) -> bool:
    """COMMIT was sent and the connection broke before its answer came back."""
    return attempt.committing and (attempt.lost or _connection_lost(error))


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
    keys, policy = chain_options(section)
    return SqlAuditLogger(
        database,
        hash_chain=section.hash_chain,
        max_group_entries=section.max_group_entries,
        keys=keys,
        checkpoints=policy,
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
