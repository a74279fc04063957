"""``DatabaseSession``: a validated SQLAlchemy async engine and its sessions."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import sqlalchemy.ext.asyncio as sa_asyncio
from sqlalchemy import event, exc, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from infrakit.errors import DatabaseError
from infrakit.health import HealthResult
from infrakit.scrub import mask_url, parse_url, scrub_text

if TYPE_CHECKING:
    from infrakit.settings.models import InfraSettings

__all__ = ["DatabaseSession", "HealthResult"]

#: Async drivers the kit knows, the module each needs and the extra that installs it.
_DRIVERS: dict[str, tuple[str, str | None]] = {
    "sqlite+aiosqlite": ("aiosqlite", None),
    "postgresql+asyncpg": ("asyncpg", "postgres"),
    "postgresql+psycopg": ("psycopg", None),
    "mysql+aiomysql": ("aiomysql", None),
    "mysql+asyncmy": ("asyncmy", None),
}
_SYNC_HINTS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
}

#: Execution option asking for ``BEGIN IMMEDIATE`` on SQLite (writer lock up front).
SQLITE_BEGIN_IMMEDIATE = "infrakit_sqlite_begin_immediate"


def _validated_url(database_url: object) -> URL:
    if not isinstance(database_url, str):
        raise ValueError(f"database_url must be a string, got {type(database_url).__name__}")
    if not database_url.strip():
        raise ValueError(
            f"database_url cannot be empty, got {database_url!r}; "
            "e.g. sqlite+aiosqlite:///app.db or postgresql+asyncpg://user@host/db"
        )
    try:
        url = _sqlalchemy_url(database_url.strip())
    except (exc.ArgumentError, ValueError) as error:
        raise ValueError(
            f"cannot parse database_url {mask_url(database_url)!r}: {scrub_text(str(error))}; "
            "expected dialect+driver://user:password@host:port/database"
        ) from None
    name = url.drivername
    if name in _SYNC_HINTS:
        raise ValueError(
            f"database_url {mask_url(database_url)!r} uses a synchronous driver; "
            f"use {_SYNC_HINTS[name]}:// instead"
        )
    module, extra = _DRIVERS.get(name, (None, None))
    if module is None:
        try:
            dialect = url.get_dialect()
        except exc.NoSuchModuleError:
            shown = mask_url(database_url)
            raise ValueError(
                f"database_url {shown!r}: unknown dialect/driver {name!r}; "
                "use sqlite+aiosqlite or postgresql+asyncpg"
            ) from None
        if not getattr(dialect, "is_async", False):
            raise ValueError(f"driver {name!r} is not an async driver; use an async one")
    elif importlib.util.find_spec(module) is None:
        install = f'pip install "infrakit[{extra}]"' if extra else f"pip install {module}"
        raise ValueError(
            f"driver {name!r} needs the {module!r} package, which is not installed: {install}"
        )
    return url


def _sqlalchemy_url(database_url: str) -> URL:
    """A SQLAlchemy ``URL`` object built from the kit's own parse.

    Never a string for SQLAlchemy to re-parse: its grammar ends the password
    at the first ``@``, so a password holding an unencoded ``@`` would leak its
    tail into the host name (and into DNS, reprs and error messages), while the
    kit masks and splits at the last ``@``.
    """
    parsed = parse_url(database_url)
    query: dict[str, str | tuple[str, ...]] = {}
    for name, value in parse_qsl(parsed.query, keep_blank_values=True):
        previous = query.get(name)
        if previous is None:
            query[name] = value
        else:
            query[name] = (*((previous,) if isinstance(previous, str) else previous), value)
    return URL.create(
        drivername=parsed.scheme,
        username=parsed.username,
        password=parsed.password,
        host=parsed.host,
        port=parsed.port,
        database=unquote(parsed.path[1:]) if len(parsed.path) > 1 else None,
        query=query,
    )


def _is_memory_sqlite(url: URL) -> bool:
    database = url.database or ""
    return (
        database in ("", ":memory:")
        or "mode=memory" in database
        or url.query.get("mode") == "memory"
    )


class DatabaseSession:
    """An async SQLAlchemy engine with sessions that commit or roll back.

    ::

        db = DatabaseSession("postgresql+asyncpg://app@127.0.0.1/app", pool_size=10)
        async with db.session() as session:
            await session.execute(...)
        await db.close()

    Constructing validates everything and connects to nothing. SQLite gets a
    pool that suits it (``:memory:`` keeps exactly one connection, so tables
    survive across sessions and one task at a time uses it; code that needs a
    second connection while holding the first — an SQL audit write inside an
    open session — waits, so use a file or PostgreSQL for that).
    ``pool_size``/``max_overflow`` apply to server databases.
    """

    def __init__(
        self,
        database_url: str,
        pool_size: int = 5,
        max_overflow: int = 10,
        echo: bool = False,
        *,
        pool_pre_ping: bool = True,
        pool_recycle_s: int = 1800,
        connect_timeout_s: float = 5.0,
        auto_migrate: bool = False,
        echo_parameters_unsafe: bool = False,
    ) -> None:
        url = _validated_url(database_url)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size!r}")
        if isinstance(max_overflow, bool) or not isinstance(max_overflow, int) or max_overflow < 0:
            raise ValueError(f"max_overflow must be >= 0, got {max_overflow!r}")
        if (
            isinstance(connect_timeout_s, bool)
            or not isinstance(connect_timeout_s, int | float)
            or not math.isfinite(connect_timeout_s)
            or connect_timeout_s <= 0
        ):
            raise ValueError(
                f"connect_timeout_s must be a finite number > 0, got {connect_timeout_s!r}"
            )
        self._url = url
        self._masked = mask_url(database_url.strip())
        self._last_error: BaseException | None = None
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.connect_timeout_s = float(connect_timeout_s)
        self.auto_migrate = auto_migrate
        self.is_sqlite = url.get_backend_name() == "sqlite"
        self.is_postgresql = url.get_backend_name() == "postgresql"
        self._memory = self.is_sqlite and _is_memory_sqlite(url)

        # echo=True would make SQLAlchemy add its own stdout handler, beside the
        # kit's pipeline and unredacted; raising the logger's level instead
        # sends the statements through the same processors as everything else.
        if echo:
            logging.getLogger("sqlalchemy.engine.Engine").setLevel(logging.INFO)
        # Bound parameters (audit details, passwords, tokens) stay out of the
        # echoed statements and out of SQLAlchemy's error messages, unless the
        # loudly named opt-in says otherwise.
        kwargs: dict[str, Any] = {
            "pool_pre_ping": pool_pre_ping,
            "hide_parameters": not echo_parameters_unsafe,
        }
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": self.connect_timeout_s, "check_same_thread": False}
            if self._memory:
                # One connection holds the whole database; a pool of exactly one
                # keeps it alive across sessions and hands it to one user at a
                # time (StaticPool would share it between concurrent tasks and
                # interleave their transactions).
                kwargs.update(
                    poolclass=pool.AsyncAdaptedQueuePool,
                    pool_size=1,
                    max_overflow=0,
                    pool_recycle=-1,
                    pool_timeout=self.connect_timeout_s,
                )
        else:
            kwargs.update(
                pool_size=pool_size, max_overflow=max_overflow, pool_recycle=pool_recycle_s
            )
            kwargs["pool_timeout"] = self.connect_timeout_s
            if self.is_postgresql and url.drivername.endswith("asyncpg"):
                kwargs["connect_args"] = {"timeout": self.connect_timeout_s}
        # Looked up at call time, so OpenTelemetry's SQLAlchemy instrumentation
        # (telemetry.instrument.sqlalchemy) sees engines made after it started.
        self._engine: AsyncEngine = sa_asyncio.create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_transactions(self._engine)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)

    # --- properties -----------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def url(self) -> str:
        """The URL with its password masked (for display)."""
        return self._masked

    def __repr__(self) -> str:
        extra = (
            ""
            if self.is_sqlite
            else f", pool_size={self.pool_size}, max_overflow={self.max_overflow}"
        )
        return f"DatabaseSession({self._masked!r}{extra})"

    # --- lifecycle --------------------------------------------------------------

    async def initialize(self) -> None:
        """Check that the database answers (creating a SQLite file's directory).

        With ``auto_migrate`` the kit's own migrations are applied too. Raises
        :class:`DatabaseError` naming the (masked) URL when the database does
        not answer.
        """
        self.prepare_storage()
        result = await self.health_check()
        if not result.ok:
            raise DatabaseError(
                f"cannot reach the database at {self._masked}: {result.error}"
            ) from (self._last_error)
        if self.auto_migrate:
            from infrakit.database.migrate import upgrade

            await upgrade(self)

    def prepare_storage(self) -> None:
        """Create the directory of a SQLite database file (a no-op otherwise)."""
        if self.is_sqlite and not self._memory and self._url.database:
            Path(self._url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        """Dispose of the engine and its pooled connections."""
        await self._engine.dispose()

    # --- sessions -----------------------------------------------------------------

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session that commits on success and rolls back on any exception.

        The exception raised inside the block — ``asyncio.CancelledError``
        included — is re-raised as the very same object after the rollback. A
        failing commit raises :class:`DatabaseError` with the driver's error
        as ``__cause__``.
        """
        session = self._sessions()
        try:
            try:
                yield session
            except BaseException as error:
                await _rollback_quietly(session, error)
                raise
            try:
                await session.commit()
            except (exc.SQLAlchemyError, OSError) as error:
                await _rollback_quietly(session, error)
                raise DatabaseError(
                    f"commit failed on {self._masked}: {type(error).__name__}"
                ) from error
        finally:
            await asyncio.shield(session.close())

    # --- health -------------------------------------------------------------------

    async def health_check(self, timeout_s: float | None = None) -> HealthResult:
        """Time one ``SELECT 1`` round trip; never raises for a backend failure."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s or self.connect_timeout_s):
                async with self._engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except (exc.SQLAlchemyError, OSError, TimeoutError) as error:
            self._last_error = error
            return HealthResult(
                ok=False,
                latency_ms=(time.perf_counter() - start) * 1000,
                error=self._describe(error),
            )
        return HealthResult(ok=True, latency_ms=(time.perf_counter() - start) * 1000)

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, TimeoutError):
            return f"no answer within {self.connect_timeout_s:g} s"
        cause = getattr(error, "orig", None) or error
        text_ = f"{type(cause).__name__}: {cause}".splitlines()[0]
        password = self._url.password
        if password:
            text_ = text_.replace(str(password), "***")
        return scrub_text(text_)


async def _rollback_quietly(session: AsyncSession, original: BaseException) -> None:
    """Roll back without letting a rollback failure hide the original error."""
    try:
        await asyncio.shield(session.rollback())
    except Exception as rollback_error:  # noqa: BLE001 - reported on the original
        original.add_note(
            f"rollback also failed: {type(rollback_error).__name__}: {rollback_error}"
        )


def _sqlite_transactions(engine: AsyncEngine) -> None:
    """Give SQLite real transactions (SQLAlchemy's documented recipe).

    The sqlite3 module's own transaction handling defers BEGIN and breaks
    SAVEPOINT; emitting BEGIN ourselves fixes both, and lets writers that
    must serialise ask for ``BEGIN IMMEDIATE`` via an execution option.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        # WAL: readers never block the writer (an audit write while a request
        # reads), and the writer never blocks readers. A no-op for :memory:.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(SQLITE_BEGIN_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def from_settings(settings: InfraSettings, *, auto_migrate: bool | None = None) -> DatabaseSession:
    """A :class:`DatabaseSession` for a profile's ``database`` section."""
    db = settings.database
    return DatabaseSession(
        db.url.get_secret_value(),
        db.pool_size,
        db.max_overflow,
        db.echo,
        pool_pre_ping=db.pool_pre_ping,
        pool_recycle_s=db.pool_recycle_s,
        connect_timeout_s=db.connect_timeout_s,
        auto_migrate=db.auto_migrate if auto_migrate is None else auto_migrate,
        echo_parameters_unsafe=db.echo_parameters_unsafe,
    )
