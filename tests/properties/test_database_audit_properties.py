"""Seed properties 1, 2, 3, 8, 9, 10, 18 and 19 (database and audit)."""

from __future__ import annotations

import asyncio
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from infrakit.audit import AuditEntry, AuditFilter, InMemoryAuditLogger, SqlAuditLogger
from infrakit.audit.base import sort_key
from infrakit.audit.memory import MemoryAuditSettings
from infrakit.database import DatabaseSession
from infrakit.errors import AuditError, DatabaseError

MEMORY_URL = "sqlite+aiosqlite:///:memory:"


class TestProperty1:
    """**Property 1: Database URL Validation** (Validates: Requirements 1.1)."""

    @given(url=st.text(alphabet=" \t\n\r\x0b\x0c", max_size=20))
    def test_blank_urls_raise_value_error(self, url: str) -> None:
        with pytest.raises(ValueError, match="database_url cannot be empty"):
            DatabaseSession(database_url=url)

    @given(url=st.text(max_size=60))
    def test_any_string_is_accepted_or_a_value_error(self, url: str) -> None:
        try:
            DatabaseSession(database_url=url)
        except ValueError as error:
            message = str(error)
        else:
            return
        assert message


class TestProperty2:
    """**Property 2: Connection Pool Bounds Validation** (Validates: Requirements 1.4)."""

    @given(pool_size=st.integers(-1000, 1000), max_overflow=st.integers(-1000, 1000))
    def test_bounds(self, pool_size: int, max_overflow: int) -> None:
        if pool_size < 1 or max_overflow < 0:
            with pytest.raises(
                ValueError,
                match=r"(pool_size|max_overflow): (Input should be|expected a whole number)",
            ):
                DatabaseSession(MEMORY_URL, pool_size=pool_size, max_overflow=max_overflow)
        else:
            db = DatabaseSession(MEMORY_URL, pool_size=pool_size, max_overflow=max_overflow)
            assert (db.pool_size, db.max_overflow) == (pool_size, max_overflow)


exceptions = st.one_of(
    st.builds(RuntimeError, st.text(max_size=10)),
    st.builds(ValueError, st.text(max_size=10)),
    st.builds(KeyError, st.text(max_size=10)),
    st.builds(OSError, st.integers(0, 100), st.text(max_size=10)),
    st.just(asyncio.CancelledError()).map(lambda _: asyncio.CancelledError()),
    st.builds(lambda m: ExceptionGroup("g", [ValueError(m)]), st.text(max_size=5)),
)


class TestProperty3And19:
    """**Property 3: Session Exception Propagation** and **Property 19: Exception
    Chain Preservation** (Validates: Requirements 1.2, 8.4)."""

    @given(
        error=exceptions, cause=st.one_of(st.none(), st.builds(LookupError, st.text(max_size=5)))
    )
    def test_same_exception_after_rollback(
        self, error: BaseException, cause: BaseException | None
    ) -> None:
        if cause is not None:
            error.__cause__ = cause

        async def run() -> None:
            db = DatabaseSession(MEMORY_URL)
            async with db.session() as s:
                await s.execute(text("CREATE TABLE t (v INTEGER)"))
            with pytest.raises(BaseException) as caught:  # noqa: PT011 - identity checked below
                async with db.session() as s:
                    await s.execute(text("INSERT INTO t VALUES (1)"))
                    raise error
            assert caught.value is error
            assert caught.value.__cause__ is cause
            async with db.session() as s:
                assert (await s.execute(text("SELECT count(*) FROM t"))).scalar() == 0
            await db.aclose()

        asyncio.run(run())

    @given(
        port=st.sampled_from([9, 1]),
        password=st.text(string.ascii_letters, min_size=6, max_size=12),
    )
    def test_backend_failures_are_wrapped_with_the_cause(self, port: int, password: str) -> None:
        async def run() -> None:
            db = DatabaseSession(
                f"postgresql+asyncpg://u:{password}@127.0.0.1:{port}/db", connect_timeout_s=1
            )
            with pytest.raises(DatabaseError) as db_error:
                await db.start()
            assert db_error.value.__cause__ is not None
            with pytest.raises(AuditError) as audit_error:
                await SqlAuditLogger(db).log_action("a", "b")
            assert audit_error.value.__cause__ is not None
            for message in (str(db_error.value), str(audit_error.value)):
                assert f":{password}@" not in message
            await db.aclose()

        asyncio.run(run())


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
aware_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    ),
)
non_empty = st.text(min_size=1, max_size=20).filter(str.strip)
optional = st.one_of(st.none(), st.text(max_size=20))

entries = st.builds(
    AuditEntry,
    id=non_empty,
    timestamp=aware_datetimes,
    action=non_empty,
    resource_type=non_empty,
    result=non_empty,
    resource_id=optional,
    user_id=optional,
    details=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    ip_address=optional,
    user_agent=optional,
    request_id=optional,
    trace_id=optional,
    prev_hash=optional,
    hash=optional,
)


class TestProperty8:
    """**Property 8: AuditEntry Serialization Round-Trip** (Validates: Requirements 3.1)."""

    @given(entry=entries)
    def test_dict_and_json_round_trip(self, entry: AuditEntry) -> None:
        assert AuditEntry.from_dict(entry.to_dict()) == entry
        assert AuditEntry.from_json(entry.to_json()) == entry
        assert AuditEntry.from_json(entry.to_json()).to_json() == entry.to_json()


class TestProperty9:
    """**Property 9: AuditEntry UTC Timestamp Invariant** (Validates: Requirements 3.2)."""

    @given(action=non_empty, resource=non_empty, result=non_empty, user=optional)
    def test_log_action_is_utc(
        self, action: str, resource: str, result: str, user: str | None
    ) -> None:
        logger = InMemoryAuditLogger()
        entry = asyncio.run(logger.log_action(action, resource, result=result, user_id=user))
        assert entry.timestamp.tzinfo is UTC
        assert entry.timestamp.utcoffset() == timedelta(0)

    @given(stamp=aware_datetimes)
    def test_any_aware_timestamp_is_normalised(self, stamp: datetime) -> None:
        entry = AuditEntry(id="x", timestamp=stamp, action="a", resource_type="r", result="ok")
        assert entry.timestamp.tzinfo is UTC
        assert entry.timestamp == stamp


T0 = datetime(2026, 1, 1, tzinfo=UTC)
small_entries = st.lists(
    st.builds(
        lambda i, sec, user, action, rtype, rid, res: AuditEntry(
            id=f"id-{i}",
            timestamp=T0 + timedelta(seconds=sec),
            action=action,
            resource_type=rtype,
            result=res,
            user_id=user,
            resource_id=rid,
        ),
        st.integers(0, 10**6),
        st.integers(0, 20),
        st.sampled_from(["u1", "u2", None]),
        st.sampled_from(["login", "logout"]),
        st.sampled_from(["session", "doc"]),
        st.sampled_from(["r1", "r2", None]),
        st.sampled_from(["success", "failure"]),
    ),
    max_size=25,
    unique_by=lambda e: e.id,
)
filters = st.builds(
    AuditFilter,
    user_id=st.sampled_from(["u1", "u2", None]),
    action=st.sampled_from(["login", "logout", None]),
    resource_type=st.sampled_from(["session", "doc", None]),
    resource_id=st.sampled_from(["r1", "r2", None]),
    result=st.sampled_from(["success", "failure", None]),
    start_time=st.one_of(st.none(), st.integers(0, 10).map(lambda s: T0 + timedelta(seconds=s))),
    end_time=st.one_of(st.none(), st.integers(10, 21).map(lambda s: T0 + timedelta(seconds=s))),
    limit=st.integers(1, 30),
    offset=st.integers(0, 5),
)


def expected(items: list[AuditEntry], f: AuditFilter) -> list[str]:
    def ok(e: AuditEntry) -> bool:
        return (
            all(
                getattr(f, name) is None or getattr(e, name) == getattr(f, name)
                for name in ("user_id", "action", "resource_type", "resource_id", "result")
            )
            and (f.start_time is None or e.timestamp >= f.start_time)
            and (f.end_time is None or e.timestamp < f.end_time)
        )

    found = sorted((e for e in items if ok(e)), key=sort_key, reverse=True)
    return [e.id for e in found[f.offset : f.offset + f.limit]]


class TestProperty10:
    """**Property 10: Audit Log Filter Correctness** (Validates: Requirements 3.4)."""

    @given(items=small_entries, f=filters)
    def test_memory_backend(self, items: list[AuditEntry], f: AuditFilter) -> None:
        logger = InMemoryAuditLogger()
        asyncio.run(logger.log_many(items))
        got = asyncio.run(logger.query(f))
        assert [e.id for e in got] == expected(items, f)
        keys = [sort_key(e) for e in got]
        assert keys == sorted(keys, reverse=True)

    @given(items=small_entries, f=filters)
    def test_sql_backend(self, items: list[AuditEntry], f: AuditFilter) -> None:
        async def run() -> list[str]:
            db = DatabaseSession(MEMORY_URL, auto_migrate=True)
            await db.start()
            logger = SqlAuditLogger(db)
            await logger.start()  # migrates: auto_migrate
            await logger.log_many(items)
            got = await logger.query(f)
            count = await logger.count(f)
            await db.aclose()
            assert count == len(expected(items, AuditFilter(**{**_criteria(f), "limit": 10_000})))
            return [e.id for e in got]

        assert asyncio.run(run()) == expected(items, f)


def _criteria(f: AuditFilter) -> dict[str, Any]:
    return {
        name: getattr(f, name)
        for name in (
            "user_id",
            "action",
            "resource_type",
            "resource_id",
            "result",
            "start_time",
            "end_time",
        )
    }


class TestProperty18:
    """**Property 18: Validation Error Type Consistency** (Validates: Requirements 8.1)."""

    @given(limit=st.integers().filter(lambda n: not 1 <= n <= 10_000))
    def test_filter_limits(self, limit: int) -> None:
        with pytest.raises(ValueError, match=r".+"):
            AuditFilter(limit=limit)

    @given(
        data=st.dictionaries(
            st.sampled_from(["id", "action", "timestamp", "result", "x"]), json_scalars
        )
    )
    def test_from_dict_garbage(self, data: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match=r".+"):
            AuditEntry.from_dict(data)

    @given(timeout=st.floats(max_value=0) | st.just(float("nan")))
    def test_database_timeouts(self, timeout: float) -> None:
        with pytest.raises(ValueError, match=r".+"):
            DatabaseSession(MEMORY_URL, connect_timeout_s=timeout)

    @given(max_entries=st.integers(max_value=0))
    def test_memory_capacity(self, max_entries: int) -> None:
        # the settings model validates; the logger trusts what it is given
        with pytest.raises(ValueError, match=r"max_entries\s+Input should be"):
            MemoryAuditSettings(max_entries=max_entries)
