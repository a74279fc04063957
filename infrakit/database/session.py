"""``DatabaseSession``: a validated SQLAlchemy async engine and its sessions."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote

from pydantic import Field, field_validator

from infrakit.component import Component, HealthResult
from infrakit.errors import DatabaseError
from infrakit.registry import Backend
from infrakit.scrub import SecretUrl, mask_url, parse_url, scrub_text
from infrakit.settings.base import build
from infrakit.settings.models import DatabaseSettings
from infrakit.values import install_line

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from infrakit.settings.models import InfraSettings

# SQLAlchemy is imported when a session is built, not with this module: the
# profile is validated (and the backend registered) without it.

__all__ = ["BACKEND", "DatabaseSession", "HealthResult", "SqlAlchemyDatabaseSettings"]

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


def _check_url(database_url: str) -> None:
    """The checks a database URL must pass, each naming its fix (without
    importing SQLAlchemy, except to look up a dialect the kit does not know)."""
    if not database_url.strip():
        raise ValueError(
            "database_url cannot be empty; "
            "e.g. sqlite+aiosqlite:///app.db or postgresql+asyncpg://user@host/db"
        )
    shown = mask_url(database_url)
    try:
        parts = parse_url(database_url.strip())
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError as error:
        raise ValueError(
            f"cannot parse database_url {shown!r}: {scrub_text(str(error))}; "
            "expected dialect+driver://user:password@host:port/database"
        ) from None
    name = parts.scheme
    if name in _SYNC_HINTS:
        raise ValueError(
            f"database_url {shown!r} uses a synchronous driver; use {_SYNC_HINTS[name]}:// instead"
        )
    module, extra = _DRIVERS.get(name, (None, None))
    if module is None:
        from sqlalchemy import exc

        try:
            dialect = _sqlalchemy_url(database_url.strip()).get_dialect()
        except exc.NoSuchModuleError:
            raise ValueError(
                f"database_url {shown!r}: unknown dialect/driver {name!r}; "
                "use sqlite+aiosqlite or postgresql+asyncpg"
            ) from None
        if not getattr(dialect, "is_async", False):
            raise ValueError(f"driver {name!r} is not an async driver; use an async one")
    elif importlib.util.find_spec(module) is None:
        install = install_line(extra) if extra else f"pip install {module}"
        raise ValueError(
            f"driver {name!r} needs the {module!r} package, which is not installed: {install}"
        )


class SqlAlchemyDatabaseSettings(DatabaseSettings):
    """``database.backend: sqlalchemy``: an async SQLAlchemy engine (SQLite or PostgreSQL)."""

    backend: Literal["sqlalchemy"] = "sqlalchemy"
    url: SecretUrl = Field(
        SecretUrl("sqlite+aiosqlite:///:memory:"),
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path.db or postgresql+asyncpg://...",
    )
    pool_size: int = Field(5, ge=1, description="Connections kept open (not used by SQLite).")
    max_overflow: int = Field(10, ge=0, description="Extra connections allowed under load.")
    pool_pre_ping: bool = Field(True, description="Test a connection before handing it out.")
    pool_recycle_s: int = Field(1800, ge=-1, description="Recycle connections after N seconds.")
    connect_timeout_s: float = Field(
        5.0, gt=0, allow_inf_nan=False, description="Connect timeout in seconds."
    )
    echo: bool = Field(
        False,
        description="Log every SQL statement (development only); bound parameters are not shown.",
    )
    echo_parameters_unsafe: bool = Field(
        False,
        description="Also show bound parameters in echoed statements and SQL error messages. "
        "UNSAFE: they carry passwords, tokens and audit details; never in production.",
    )
    auto_migrate: bool = Field(
        False, description="Apply the kit's migrations at start-up (else: infrakit db upgrade)."
    )

    @field_validator("pool_size", "max_overflow", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value}")
        return value

    @field_validator("url", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                "database_url cannot be empty; "
                "e.g. sqlite+aiosqlite:///app.db or postgresql+asyncpg://user@host/db"
            )
        if not isinstance(value, str | SecretUrl):
            raise ValueError(f"database_url must be a string, got {type(value).__name__}")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretUrl) -> SecretUrl:
        _check_url(value.get_secret_value())
        return value


def _sqlalchemy_url(database_url: str) -> URL:
    """A SQLAlchemy ``URL`` object built from the kit's own parse.

    Never a string for SQLAlchemy to re-parse: its grammar ends the password
    at the first ``@``, so a password holding an unencoded ``@`` would leak its
    tail into the host name (and into DNS, reprs and error messages), while the
    kit masks and splits at the last ``@``.
    """
    from sqlalchemy.engine import URL

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


class DatabaseSession(Component):
    """An async SQLAlchemy engine with sessions that commit or roll back.

    ::

        db = DatabaseSession("postgresql+asyncpg://app@127.0.0.1/app", pool_size=10)
        async with db.session() as session:
            await session.execute(...)
        await db.aclose()

    Constructing connects to nothing (its settings model validated the URL and
    bounds). SQLite gets a
    pool that suits it (``:memory:`` keeps exactly one connection, so tables
    survive across sessions and one task at a time uses it; code that needs a
    second connection while holding the first — an SQL audit write inside an
    open session — waits, so use a file or PostgreSQL for that).
    ``pool_size``/``max_overflow`` apply to server databases.
    """

    def __init__(
        self, database_url: str | SqlAlchemyDatabaseSettings, *args: Any, **options: Any
    ) -> None:
        """``DatabaseSession(settings)``, or ``DatabaseSession(url, pool_size=5,
        max_overflow=10, echo=False, *, pool_pre_ping=..., pool_recycle_s=...,
        connect_timeout_s=..., auto_migrate=..., echo_parameters_unsafe=...)``,
        which builds (and so validates) the settings model."""
        import sqlalchemy.ext.asyncio as sa_asyncio
        from sqlalchemy import pool

        if isinstance(database_url, SqlAlchemyDatabaseSettings):
            settings = database_url
        else:
            options.update(zip(("pool_size", "max_overflow", "echo"), args, strict=False))
            settings = build(SqlAlchemyDatabaseSettings, url=database_url, **options)
        self.settings = settings
        raw = settings.url.get_secret_value()
        url = _sqlalchemy_url(raw)
        self._url = url
        self._masked = settings.url.masked
        self._last_error: BaseException | None = None
        self.pool_size = settings.pool_size
        self.max_overflow = settings.max_overflow
        self.connect_timeout_s = settings.connect_timeout_s
        self.auto_migrate = settings.auto_migrate
        self.is_sqlite = url.get_backend_name() == "sqlite"
        self.is_postgresql = url.get_backend_name() == "postgresql"
        self._memory = self.is_sqlite and _is_memory_sqlite(url)

        # echo=True would make SQLAlchemy add its own stdout handler, beside the
        # kit's pipeline and unredacted; raising the logger's level instead
        # sends the statements through the same processors as everything else.
        if settings.echo:
            logging.getLogger("sqlalchemy.engine.Engine").setLevel(logging.INFO)
        # Bound parameters (audit details, passwords, tokens) stay out of the
        # echoed statements and out of SQLAlchemy's error messages, unless the
        # loudly named opt-in says otherwise.
        kwargs: dict[str, Any] = {
            "pool_pre_ping": settings.pool_pre_ping,
            "hide_parameters": not settings.echo_parameters_unsafe,
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
                pool_size=settings.pool_size,
                max_overflow=settings.max_overflow,
                pool_recycle=settings.pool_recycle_s,
            )
            kwargs["pool_timeout"] = self.connect_timeout_s
            if self.is_postgresql and url.drivername.endswith("asyncpg"):
                kwargs["connect_args"] = {"timeout": self.connect_timeout_s}
        # Looked up at call time, so OpenTelemetry's SQLAlchemy instrumentation
        # (telemetry.instrument.sqlalchemy) sees engines made after it started.
        self._engine: AsyncEngine = sa_asyncio.create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_transactions(self._engine)
        self._sessions = sa_asyncio.async_sessionmaker(self._engine, expire_on_commit=False)

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

    async def start(self) -> None:
        """Check that the database answers (creating a SQLite file's directory).

        Raises :class:`DatabaseError` naming the (masked) URL when it does not.
        (The tables of the backends built on it migrate themselves when
        ``auto_migrate`` is set.)
        """
        self.prepare_storage()
        result = await self.health_check()
        if not result.ok:
            raise DatabaseError(
                f"cannot reach the database at {self._masked}: {result.error}"
            ) from (self._last_error)

    def prepare_storage(self) -> None:
        """Create the directory of a SQLite database file (a no-op otherwise)."""
        if self.is_sqlite and not self._memory and self._url.database:
            Path(self._url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)

    async def aclose(self) -> None:
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
        from sqlalchemy import exc

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
        from sqlalchemy import exc, text

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
    from sqlalchemy import event

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


def create(
    section: SqlAlchemyDatabaseSettings, settings: InfraSettings, **_: Any
) -> DatabaseSession:
    return DatabaseSession(section)


BACKEND = Backend(
    "database",
    "sqlalchemy",
    SqlAlchemyDatabaseSettings,
    create,
    description="SQLAlchemy async engine: SQLite (aiosqlite) or PostgreSQL (asyncpg)",
)
