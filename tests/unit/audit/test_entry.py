from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from infrakit.audit import AuditEntry, AuditFilter, InMemoryAuditLogger, chain_hash
from infrakit.audit.base import canonical_json

T0 = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def make(**fields: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "id": "e1",
        "timestamp": T0,
        "action": "login",
        "resource_type": "session",
        "result": "success",
    }
    values.update(fields)
    return AuditEntry(**values)


class TestAuditEntry:
    """Immutable, UTC, exact round trips, precise validation."""

    def test_round_trips(self) -> None:
        entry = make(details={"a": [1, {"b": "ü"}], "n": None}, user_id="u", prev_hash="0" * 64)
        assert AuditEntry.from_dict(entry.to_dict()) == entry
        assert AuditEntry.from_json(entry.to_json()) == entry
        assert json.loads(entry.to_json())["timestamp"] == "2026-03-04T05:06:07.890123+00:00"

    def test_aware_timestamps_become_utc(self) -> None:
        cet = timezone(timedelta(hours=1))
        entry = make(timestamp=datetime(2026, 3, 4, 6, 6, 7, tzinfo=cet))
        assert entry.timestamp == datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
        assert entry.timestamp.tzinfo is UTC

    def test_naive_timestamp_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            make(timestamp=datetime(2026, 1, 1))

    @pytest.mark.parametrize("field", ["id", "action", "resource_type", "result"])
    @pytest.mark.parametrize("value", ["", "  ", None, 3])
    def test_required_strings(self, field: str, value: Any) -> None:
        with pytest.raises(ValueError, match=f"AuditEntry.{field}"):
            make(**{field: value})

    def test_details_are_frozen_and_detached(self) -> None:
        source: dict[str, Any] = {"list": [1, 2], "inner": {"k": "v"}}
        entry = make(details=source)
        source["list"].append(3)
        source["inner"]["k"] = "changed"
        assert entry.details == {"list": (1, 2), "inner": {"k": "v"}}
        with pytest.raises(TypeError):
            entry.details["x"] = 1  # type: ignore[index]
        with pytest.raises(AttributeError):
            entry.action = "other"  # type: ignore[misc]
        assert entry.to_dict()["details"] == {"list": [1, 2], "inner": {"k": "v"}}

    @pytest.mark.parametrize(
        ("details", "message"),
        [
            ({"x": float("nan")}, "not a JSON number"),
            ({"x": {1: "a"}}, "keys must be strings"),
            ({"x": object()}, "object is not a JSON value"),
            ({"x": b"bytes"}, "bytes is not a JSON value"),
        ],
    )
    def test_details_must_be_json(self, details: Any, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            make(details=details)

    def test_from_dict_names_every_problem(self) -> None:
        with pytest.raises(ValueError, match="invalid audit entry") as exc:
            AuditEntry.from_dict(
                {"id": "x", "action": 5, "timestamp": "yesterday", "user_id": 7, "colour": "red"}
            )
        text = str(exc.value)
        for expected in (
            "unknown field(s): colour",
            "resource_type: missing",
            "result: missing",
            "action: expected a non-empty string, got 5",
            "user_id: expected a string or null, got int",
            "timestamp: not an ISO 8601 date-time: 'yesterday'",
        ):
            assert expected in text

    def test_from_dict_wants_an_offset(self) -> None:
        data = make().to_dict()
        data["timestamp"] = "2026-03-04T05:06:07"
        with pytest.raises(ValueError, match="must include a UTC offset"):
            AuditEntry.from_dict(data)

    def test_from_json_garbage(self) -> None:
        with pytest.raises(ValueError, match="invalid audit entry JSON"):
            AuditEntry.from_json("{nope")
        with pytest.raises(ValueError, match="expects a mapping"):
            AuditEntry.from_json("[1]")

    def test_canonical_json_ignores_hashes(self) -> None:
        entry = make(details={"b": 1, "a": 2})
        assert canonical_json(entry) == canonical_json(entry.with_chain("p", "h"))
        assert b'"details":{"a":2,"b":1}' in canonical_json(entry)
        assert chain_hash(None, entry) != chain_hash("p", entry)


class TestAuditFilter:
    """Bounds and time semantics."""

    @pytest.mark.parametrize("limit", [0, -1, 10_001, True, 1.5])
    def test_limit_bounds(self, limit: Any) -> None:
        with pytest.raises(ValueError, match="limit must be between 1 and 10000"):
            AuditFilter(limit=limit)

    def test_offset(self) -> None:
        with pytest.raises(ValueError, match="offset"):
            AuditFilter(offset=-1)

    def test_times_must_be_aware_and_ordered(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            AuditFilter(start_time=datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="is after end_time"):
            AuditFilter(start_time=T0, end_time=T0 - timedelta(seconds=1))

    def test_start_inclusive_end_exclusive(self) -> None:
        f = AuditFilter(start_time=T0, end_time=T0 + timedelta(seconds=1))
        assert f.matches(make())
        assert not f.matches(make(timestamp=T0 + timedelta(seconds=1)))


class TestInMemoryConcurrency:
    """Trimming keeps the newest entries under threads and tasks at once."""

    def test_threads_and_tasks(self) -> None:
        logger = InMemoryAuditLogger(max_entries=100)

        def thread_writer(t: int) -> None:
            async def run() -> None:
                for i in range(200):
                    await logger.log_action("w", "x", user_id=f"thread{t}", details={"i": i})

            asyncio.run(run())

        async def task_writer(t: int) -> None:
            for i in range(200):
                await logger.log_action("w", "x", user_id=f"task{t}", details={"i": i})
                await asyncio.sleep(0)

        async def main() -> None:
            await asyncio.gather(*(task_writer(t) for t in range(3)))

        threads = [threading.Thread(target=thread_writer, args=(t,)) for t in range(3)]
        for th in threads:
            th.start()
        asyncio.run(main())
        for th in threads:
            th.join()
        assert len(logger) == 100
        kept = list(logger._entries)
        # the newest entry of every writer survived; the kept ones are a contiguous tail
        assert kept[-1].details["i"] == 199
        assert asyncio.run(logger.verify()).ok

    def test_trims_oldest_first(self) -> None:
        logger = InMemoryAuditLogger(max_entries=3)
        for n in range(5):
            asyncio.run(logger.log(make(id=f"e{n}", timestamp=T0 + timedelta(seconds=n))))
        assert [e.id for e in asyncio.run(logger.query())] == ["e4", "e3", "e2"]
        assert asyncio.run(logger.verify()).ok

    def test_bad_max_entries(self) -> None:
        from infrakit.audit.memory import MemoryAuditSettings

        with pytest.raises(ValueError, match="max_entries"):
            MemoryAuditSettings(max_entries=0)


class TestContext:
    """log_action takes request and trace ids from the current context."""

    async def test_trace_id_from_the_active_span(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        from infrakit.logging import request_context

        logger = InMemoryAuditLogger()
        tracer = TracerProvider().get_tracer("t")
        with request_context("r-9"), tracer.start_as_current_span("op") as span:
            entry = await logger.log_action("a", "b")
        assert entry.trace_id == format(span.get_span_context().trace_id, "032x")
        assert entry.request_id == "r-9"
        outside = await logger.log_action("a", "b")
        assert (outside.trace_id, outside.request_id) == (None, None)
        explicit = await logger.log_action("a", "b", request_id="mine")
        assert explicit.request_id == "mine"
