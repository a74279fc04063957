"""Backend contract suites: every backend of a protocol passes the same tests.

Subclass a contract and provide one fixture, ``make_logger``, an async
factory that returns a fresh, empty backend::

    class TestMyAuditLogger(AuditLoggerContract):
        @pytest.fixture
        def make_logger(self, tmp_path):
            async def make():
                return MyAuditLogger(tmp_path / "audit")
            return make

Requires pytest and pytest-asyncio (the ``dev`` extra has both).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from infrakit.audit.base import AuditEntry, AuditFilter, AuditLogger
from infrakit.logging.context import request_context

__all__ = ["AuditLoggerContract"]

MakeLogger = Callable[[], Awaitable[AuditLogger]]

_T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def entry(n: int, **fields: object) -> AuditEntry:
    """A deterministic entry; ``n`` orders timestamps (one second apart)."""
    values: dict[str, object] = {
        "id": f"e-{n:05d}",
        "timestamp": _T0 + timedelta(seconds=n),
        "action": "login" if n % 2 else "logout",
        "resource_type": "session",
        "result": "success",
        "user_id": f"user-{n % 3}",
        "resource_id": f"r-{n % 4}",
    }
    values.update(fields)
    return AuditEntry(**values)  # type: ignore[arg-type]


@pytest.mark.asyncio
class AuditLoggerContract:
    """What every :class:`~infrakit.audit.AuditLogger` backend must do."""

    @pytest.fixture
    async def logger(self, make_logger: MakeLogger) -> AsyncIterator[AuditLogger]:
        instance = await make_logger()
        try:
            yield instance
        finally:
            await instance.close()

    async def test_log_action_fills_id_time_and_context(self, logger: AuditLogger) -> None:
        before = datetime.now(UTC)
        with request_context("req-contract"):
            stored = await logger.log_action("login", "session", user_id="u1", details={"ok": True})
        assert stored.timestamp.tzinfo is UTC
        assert before <= stored.timestamp <= datetime.now(UTC)
        assert stored.request_id == "req-contract"
        assert len(stored.id) == 36
        assert await logger.query(AuditFilter(user_id="u1")) == [stored]

    async def test_entries_come_back_exactly(self, logger: AuditLogger) -> None:
        original = entry(
            1,
            details={"nested": {"list": [1, 2.5, None, "ü✓"], "deep": {"a": [{"b": False}]}}},
            ip_address="203.0.113.9",
            user_agent="agent/1.0 (ünïcode)",
            request_id="r-1",
            trace_id="0" * 31 + "1",
        )
        stored = await logger.log(original)
        (back,) = await logger.query()
        assert back == stored
        assert back.details == original.details
        assert back.timestamp == original.timestamp  # microseconds and UTC kept
        assert back.to_json() == stored.to_json()

    async def test_query_filters_and_orders_newest_first(self, logger: AuditLogger) -> None:
        await logger.log_many([entry(n) for n in range(12)])
        everything = await logger.query(AuditFilter(limit=100))
        assert [e.id for e in everything] == [f"e-{n:05d}" for n in reversed(range(12))]
        found = await logger.query(AuditFilter(user_id="user-1", action="login"))
        assert [e.id for e in found] == ["e-00007", "e-00001"]
        window = AuditFilter(
            start_time=_T0 + timedelta(seconds=3), end_time=_T0 + timedelta(seconds=6)
        )
        assert [e.id for e in await logger.query(window)] == ["e-00005", "e-00004", "e-00003"]
        resource = AuditFilter(resource_type="session", resource_id="r-2", result="success")
        assert [e.id for e in await logger.query(resource)] == ["e-00010", "e-00006", "e-00002"]
        assert await logger.count(AuditFilter(user_id="user-0")) == 4
        assert await logger.count() == 12

    async def test_limit_and_offset(self, logger: AuditLogger) -> None:
        await logger.log_many([entry(n) for n in range(10)])
        page = await logger.query(AuditFilter(limit=3, offset=2))
        assert [e.id for e in page] == ["e-00007", "e-00006", "e-00005"]
        assert await logger.count(AuditFilter(limit=3, offset=2)) == 10

    async def test_same_timestamp_orders_by_id_descending(self, logger: AuditLogger) -> None:
        await logger.log_many([entry(1, id=name, timestamp=_T0) for name in ("b", "c", "a")])
        assert [e.id for e in await logger.query()] == ["c", "b", "a"]

    async def test_chain_verifies(self, logger: AuditLogger) -> None:
        await logger.log_many([entry(n) for n in range(5)])
        await logger.log_action("export", "report", result="failure")
        result = await logger.verify()
        assert result.ok, result
        assert result.checked == 6
        assert result.first_bad_id is None

    async def test_empty_log(self, logger: AuditLogger) -> None:
        assert await logger.query() == []
        assert await logger.count() == 0
        assert (await logger.verify()).ok

    async def test_concurrent_writers_lose_nothing(self, logger: AuditLogger) -> None:
        async def write(task: int) -> None:
            for i in range(10):
                await logger.log_action("write", "doc", user_id=f"t{task}", details={"i": i})

        await asyncio.gather(*(write(t) for t in range(8)))
        assert await logger.count() == 80
        assert await logger.count(AuditFilter(user_id="t3")) == 10
        assert (await logger.verify()).ok

    async def test_append_only_interface(self, logger: AuditLogger) -> None:
        for name in ("update", "delete", "remove", "clear", "truncate"):
            assert not hasattr(logger, name)

    async def test_bad_input_is_value_error(self, logger: AuditLogger) -> None:
        with pytest.raises(ValueError, match="unexpected field"):
            await logger.log_action("a", "b", colour="red")
        with pytest.raises(ValueError, match="non-empty"):
            await logger.log_action("", "b")
        with pytest.raises(ValueError, match="AuditEntry"):
            await logger.log("not an entry")  # type: ignore[arg-type]
