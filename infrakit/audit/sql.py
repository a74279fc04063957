"""``SqlAuditLogger``: the audit log in the application's own database.

The table is append-only (this class has no update or delete) and created
by the kit's migration (``infrakit db upgrade``). With ``hash_chain`` every
row stores the previous row's hash and its own
``sha256(prev_hash || canonical_json(entry))``; writers are serialised by a
PostgreSQL advisory lock (``BEGIN IMMEDIATE`` on SQLite), so concurrent
writers in many processes still form one valid chain.

With a signing key the hash is an HMAC instead (``hmac-sha256.<key id>.<mac>``,
same column; :mod:`infrakit.audit.chain`), and a :class:`Checkpointer` signs
the committed head (``seq``, id, hash) every N entries or T seconds, outside
the table. An entry id is stored once: an insert that hits the unique index
on ``id`` (a retry after :class:`AuditOutcomeUnknownError`) reads the stored
entries and returns them, writing only the ones that are new.
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
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


class SqlAuditLogger(AuditLogger):
    """The audit log in a SQL table, written in transactions of its own.

    Each write uses its own connection and transaction, never the
    application's session, so an entry logged inside a failing request
    survives that request's rollback. A write that fails raises
    :class:`AuditError`: an entry is never dropped silently.
    """

    def __init__(
        self,
        database: DatabaseSession,
        *,
        hash_chain: bool = True,
        keys: Keyring | None = None,
        checkpoints: CheckpointPolicy | None = None,
    ) -> None:
        self._db = database
        self.hash_chain = hash_chain
        self._keys = keys
        # the key new entries are hashed with (None: plain SHA-256)
        self._key = keys.current if keys is not None and hash_chain else None
        self._checkpointer = (
            Checkpointer(self._key, self._head, checkpoints or CheckpointPolicy(0, 0))
            if self._key is not None
            else None
        )

    def __repr__(self) -> str:
        keyed = f", key_id={self._key.key_id!r}" if self._key is not None else ""
        return f"SqlAuditLogger({self._db!r}, hash_chain={self.hash_chain}{keyed})"

    def _fail(self, what: str, error: BaseException) -> AuditError:
        return AuditError(f"{what} on {self._db.url} failed: {type(error).__name__}")

    def _write_error(self, count: int, error: BaseException, committing: bool) -> AuditError:
        what = f"writing {count} audit entr{'y' if count == 1 else 'ies'}"
        if committing and _connection_lost(error):
            return AuditOutcomeUnknownError(
                f"{what} on {self._db.url}: outcome unknown, the connection was lost during "
                f"COMMIT ({type(error).__name__}); the entries may or may not be stored. "
                "Hint: log the same entries again (same ids): a stored entry is never "
                "stored twice"
            )
        return self._fail(what, error)

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
        """Write a last checkpoint of this process's entries (with a signing key)."""
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
        return (await self.log_many([entry]))[0]

    async def log_many(self, entries: Iterable[AuditEntry]) -> list[AuditEntry]:
        batch = list(entries)
        for entry in batch:
            if not isinstance(entry, AuditEntry):
                raise ValueError(f"expected AuditEntry items, got {type(entry).__name__}")
        if not batch:
            return []
        stored: list[AuditEntry] = []
        committing = False
        try:
            async with self._db.engine.connect() as plain:
                # SQLite: take the writer lock at BEGIN, before the last hash is read.
                options = {SQLITE_BEGIN_IMMEDIATE: True} if self._db.is_sqlite else {}
                conn = await plain.execution_options(**options)
                async with conn.begin():
                    head = await self._chain_head(conn) if self.hash_chain else None
                    await self._insert(conn, self._rows(batch, head, stored), len(batch))
                    committing = True  # leaving the block commits
        except (exc.SQLAlchemyError, OSError) as error:
            if _duplicate_id(error):
                return await self._log_again(batch)
            raise self._write_error(len(batch), error, committing) from error
        if self._checkpointer is not None:
            self._checkpointer.note(len(stored))
        return stored

    async def _log_again(self, batch: list[AuditEntry]) -> list[AuditEntry]:
        """A write some of whose ids are stored already (a retry after "outcome
        unknown"): the stored entries come back, the others are written once."""
        stored = await self._stored(list({e.id for e in batch}))
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
        written = {e.id: e for e in await self.log_many(list(todo.values()))} if todo else {}
        return [stored.get(e.id) or written[e.id] for e in batch]

    async def _stored(self, ids: list[str]) -> dict[str, AuditEntry]:
        statement = sa.select(*_ENTRY_COLUMNS).where(_c.id.in_(ids))
        try:
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(statement)).all()
        except (exc.SQLAlchemyError, OSError) as error:
            raise self._fail("reading stored audit entries", error) from error
        return {entry.id: entry for entry in map(_entry, rows)}

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

    async def _insert(
        self, conn: AsyncConnection, rows: Iterator[dict[str, Any]], count: int
    ) -> None:
        if count >= _COPY_THRESHOLD and self._db.engine.url.drivername == "postgresql+asyncpg":
            # Large batches go through COPY (about twice as fast as an
            # executemany of INSERTs here), inside the same transaction.
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.copy_records_to_table(
                AUDIT_TABLE, records=map(_as_record, rows), columns=list(_COLUMN_NAMES)
            )
            return
        await conn.execute(sa.insert(audit_log), list(rows))

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
    if not isinstance(error, exc.IntegrityError):
        return False
    text = str(error.orig)
    return f"uq_{AUDIT_TABLE}_id" in text or f"{AUDIT_TABLE}.id" in text


def _connection_lost(error: BaseException) -> bool:
    """The connection broke (the server may or may not have done what was sent)."""
    if isinstance(error, OSError):
        return True
    return isinstance(error, exc.DBAPIError) and error.connection_invalidated


class SqlAuditSettings(AuditSettings):
    """``audit.backend: sql``: the audit table in the application's database."""

    backend: Literal["sql"] = "sql"


def create(
    section: SqlAuditSettings, settings: InfraSettings, *, database: DatabaseSession, **_: Any
) -> SqlAuditLogger:
    keys, policy = chain_options(section)
    return SqlAuditLogger(database, hash_chain=section.hash_chain, keys=keys, checkpoints=policy)


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
