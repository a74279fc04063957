from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from infrakit.database import DatabaseSession
from infrakit.errors import DatabaseError
from infrakit.logging import configure_logging


@pytest.fixture
async def memory_db() -> AsyncIterator[DatabaseSession]:
    db = DatabaseSession("sqlite+aiosqlite:///:memory:")
    await db.start()
    async with db.session() as s:
        await s.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    yield db
    await db.aclose()


async def rows(db: DatabaseSession) -> list[str]:
    async with db.session() as s:
        return list((await s.execute(text("SELECT v FROM t ORDER BY id"))).scalars())


class TestValidation:
    """Bad arguments are ValueErrors that name the value and the fix."""

    @pytest.mark.parametrize("url", ["", "   ", "\n\t"])
    def test_empty_url(self, url: str) -> None:
        with pytest.raises(ValueError, match="database_url cannot be empty"):
            DatabaseSession(url)

    def test_not_a_string(self) -> None:
        with pytest.raises(ValueError, match="must be a string"):
            DatabaseSession(None)  # type: ignore[arg-type]

    @pytest.mark.parametrize(("pool_size", "max_overflow"), [(0, 0), (-1, 5), (5, -1), (True, 0)])
    def test_pool_bounds(self, pool_size: int, max_overflow: int) -> None:
        with pytest.raises(
            ValueError, match=r"(pool_size|max_overflow): (Input should be|expected a whole number)"
        ):
            DatabaseSession("sqlite+aiosqlite:///:memory:", pool_size, max_overflow)

    def test_bad_value_is_in_the_message(self) -> None:
        with pytest.raises(ValueError, match="got -3"):
            DatabaseSession("sqlite+aiosqlite:///:memory:", pool_size=-3)

    def test_unparsable(self) -> None:
        with pytest.raises(ValueError, match=r"database\.url: not a URL"):
            DatabaseSession("not a url")

    def test_sync_driver_gets_the_async_one(self) -> None:
        with pytest.raises(ValueError, match=r"synchronous driver; use postgresql\+asyncpg://"):
            DatabaseSession("postgresql://u:secret@h/db")

    def test_missing_driver_names_install_line(self) -> None:
        with pytest.raises(ValueError, match="needs the 'aiomysql' package") as exc:
            DatabaseSession("mysql+aiomysql://u:secret@h/db")
        assert "pip install aiomysql" in str(exc.value)

    def test_unknown_dialect(self) -> None:
        with pytest.raises(ValueError, match="unknown dialect/driver 'nosuch"):
            DatabaseSession("nosuch+thing://u:secret@h/db")

    def test_password_never_in_errors_or_repr(self) -> None:
        for url in ("postgresql://u:s3cr3t@h/db", "nosuch+x://u:s3cr3t@h/db"):
            with pytest.raises(ValueError, match="database_url") as exc:
                DatabaseSession(url)
            assert "s3cr3t" not in str(exc.value)
        db = DatabaseSession("postgresql+asyncpg://u:s3cr3t@h/db", pool_size=3)
        assert "s3cr3t" not in repr(db)
        assert (
            repr(db)
            == "DatabaseSession('postgresql+asyncpg://u:***@h/db', pool_size=3, max_overflow=10)"
        )

    def test_construction_connects_to_nothing(self) -> None:
        DatabaseSession("postgresql+asyncpg://u@127.0.0.1:9/db")  # port 9: nothing listens


class TestSessions:
    """Commit on success; roll back and re-raise the same object on failure."""

    async def test_commit(self, memory_db: DatabaseSession) -> None:
        async with memory_db.session() as s:
            await s.execute(text("INSERT INTO t (v) VALUES ('a')"))
        assert await rows(memory_db) == ["a"]

    async def test_memory_tables_survive_across_sessions(self, memory_db: DatabaseSession) -> None:
        for value in "xyz":
            async with memory_db.session() as s:
                await s.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": value})
        assert await rows(memory_db) == ["x", "y", "z"]

    @pytest.mark.parametrize(
        "error", [RuntimeError("boom"), KeyError("k"), asyncio.CancelledError()]
    )
    async def test_rollback_and_same_exception(
        self, memory_db: DatabaseSession, error: BaseException
    ) -> None:
        with pytest.raises(type(error)) as caught:
            async with memory_db.session() as s:
                await s.execute(text("INSERT INTO t (v) VALUES ('lost')"))
                raise error
        assert caught.value is error
        assert await rows(memory_db) == []

    async def test_cancelled_task_rolls_back(self, memory_db: DatabaseSession) -> None:
        started = asyncio.Event()

        async def work() -> None:
            async with memory_db.session() as s:
                await s.execute(text("INSERT INTO t (v) VALUES ('cancelled')"))
                started.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(work())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await rows(memory_db) == []

    async def test_chained_cause_is_preserved(self, memory_db: DatabaseSession) -> None:
        root = OSError("disk")
        with pytest.raises(ValueError, match="wrapped") as caught:
            async with memory_db.session():
                try:
                    raise root
                except OSError as e:
                    raise ValueError("wrapped") from e
        assert caught.value.__cause__ is root

    async def test_failing_commit_is_database_error(self, tmp_path: Path) -> None:
        db = DatabaseSession(f"sqlite+aiosqlite:///{tmp_path}/fk.db")
        async with db.session() as s:
            await s.execute(text("CREATE TABLE p (id INTEGER PRIMARY KEY)"))
            await s.execute(
                text(
                    "CREATE TABLE c (id INTEGER PRIMARY KEY, p INTEGER "
                    "REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)"
                )
            )
        with pytest.raises(DatabaseError, match="commit failed") as caught:
            async with db.session() as s:
                await s.execute(text("INSERT INTO c (p) VALUES (42)"))  # checked at COMMIT
        assert caught.value.__cause__ is not None
        assert "IntegrityError" in type(caught.value.__cause__).__name__
        async with db.session() as s:
            assert (await s.execute(text("SELECT count(*) FROM c"))).scalar() == 0
        await db.aclose()

    async def test_expire_on_commit_is_off(self, memory_db: DatabaseSession) -> None:
        async with memory_db.session() as s:
            pass
        assert s.sync_session.expire_on_commit is False

    async def test_memory_database_serialises_users(self, memory_db: DatabaseSession) -> None:
        async def writer(n: int) -> None:
            async with memory_db.session() as s:
                await s.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": f"w{n}"})
                await asyncio.sleep(0.001)

        await asyncio.gather(*(writer(n) for n in range(10)))
        assert sorted(await rows(memory_db)) == sorted(f"w{n}" for n in range(10))


class TestHealthAndLifecycle:
    """Health checks report, never raise; initialize fails loudly."""

    async def test_health_ok(self, memory_db: DatabaseSession) -> None:
        result = await memory_db.health_check()
        assert result.ok
        assert result.error is None
        assert 0 <= result.latency_ms < 5000

    async def test_health_down_masks_password(self) -> None:
        db = DatabaseSession("postgresql+asyncpg://app:s3cr3t@127.0.0.1:9/db", connect_timeout_s=2)
        result = await db.health_check()
        assert not result.ok
        assert result.error
        assert "s3cr3t" not in result.error
        with pytest.raises(
            DatabaseError, match=r"cannot reach the database at postgresql\+asyncpg://app:\*\*\*@"
        ) as exc:
            await db.start()
        assert "s3cr3t" not in str(exc.value)
        assert exc.value.__cause__ is not None
        await db.aclose()

    async def test_sqlite_file_directory_is_created(self, tmp_path: Path) -> None:
        db = DatabaseSession(f"sqlite+aiosqlite:///{tmp_path}/a/b/app.db")
        await db.start()
        assert (tmp_path / "a" / "b" / "app.db").exists()
        await db.aclose()

    async def test_echo_goes_through_the_pipeline(self) -> None:
        stream = io.StringIO()
        configure_logging("INFO", stream=stream)
        db = DatabaseSession("sqlite+aiosqlite:///:memory:", echo=True)
        try:
            async with db.session() as s:
                await s.execute(text("SELECT 42"))
        finally:
            await db.aclose()
            logging.getLogger("sqlalchemy.engine.Engine").setLevel(logging.NOTSET)
        events = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert any(
            e["event"] == "SELECT 42" and e["logger"] == "sqlalchemy.engine.Engine" for e in events
        )
