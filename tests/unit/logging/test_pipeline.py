from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from infrakit.logging import (
    clear_request_id,
    configure_logging,
    get_request_id,
    request_context,
    reset_logging,
    set_request_id,
)

# every test here runs with orjson and with the stdlib encoder
pytestmark = pytest.mark.usefixtures("json_encoder")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


class TestConfigure:
    """configure_logging validates its input and renders JSON lines."""

    @pytest.mark.parametrize("level", ["debug", "Info", "WARNING", " error ", "critical"])
    def test_levels_are_case_insensitive(self, level: str, stream: io.StringIO) -> None:
        configure_logging(level, stream=stream)

    @pytest.mark.parametrize("level", ["", "loud", "TRACE", "WARN ING", 10])
    def test_invalid_level(self, level: Any) -> None:
        with pytest.raises(ValueError, match="invalid log_level") as exc:
            configure_logging(level)
        assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in str(exc.value)

    def test_invalid_format(self) -> None:
        with pytest.raises(ValueError, match="invalid log_format 'xml'"):
            configure_logging(log_format="xml")

    def test_json_line_shape(self, stream: io.StringIO) -> None:
        configure_logging("INFO", stream=stream)
        structlog.get_logger().info("user.login", user_id="u1", password="hunter2", n=3)
        (event,) = lines(stream)
        assert event["event"] == "user.login"
        assert event["level"] == "info"
        assert event["user_id"] == "u1"
        assert event["password"] == "[REDACTED]"
        assert event["n"] == 3
        stamp = datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 5

    def test_level_filtering(self, stream: io.StringIO) -> None:
        configure_logging("WARNING", stream=stream)
        log = structlog.get_logger()
        log.info("dropped")
        log.warning("kept")
        logging.getLogger("some.lib").info("dropped too")
        logging.getLogger("some.lib").error("kept too")
        assert [e["event"] for e in lines(stream)] == ["kept", "kept too"]

    def test_stdout_is_the_default(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("INFO")
        structlog.get_logger().info("to.stdout")
        assert json.loads(capsys.readouterr().out)["event"] == "to.stdout"

    def test_console_format(self, stream: io.StringIO) -> None:
        configure_logging("INFO", "console", stream=stream)
        structlog.get_logger().info("hello", secret="s3", user="ann")
        text = stream.getvalue()
        assert "hello" in text
        assert "[REDACTED]" in text
        assert "s3" not in text

    def test_reconfigure_replaces_handler(self, stream: io.StringIO) -> None:
        configure_logging("INFO", stream=stream)
        configure_logging("INFO", stream=stream)
        logging.getLogger("x").warning("once")
        assert len(lines(stream)) == 1

    def test_extra_patterns_and_replacement(self, stream: io.StringIO) -> None:
        configure_logging(
            "INFO", stream=stream, additional_pii_patterns={"national_id"}, replacement="<x>"
        )
        structlog.get_logger().info("e", national_id="123", token="t")
        event = lines(stream)[0]
        assert (event["national_id"], event["token"]) == ("<x>", "<x>")

    def test_exceptions_render_as_structured_data(self, stream: io.StringIO) -> None:
        configure_logging("INFO", stream=stream)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            structlog.get_logger().exception("failed")
        event = lines(stream)[0]
        assert event["exception"][0]["exc_type"] == "RuntimeError"


class TestTimestamper:
    """The cached-second timestamper agrees with the clock across seconds."""

    def test_matches_datetime(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import time

        from infrakit.logging.config import UTCTimestamper

        stamper = UTCTimestamper()
        for ns in (
            1_700_000_000_123_456_789, 1_700_000_000_999_999_999, 1_700_000_001_000_000_000,
            1_800_000_123_500_000_000, 1_700_000_000_000_000_999,
        ):  # fmt: skip
            monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)
            got = stamper(None, "info", {})["timestamp"]
            second, rest = divmod(ns, 10**9)
            want = datetime.fromtimestamp(second, UTC).replace(microsecond=rest // 1000)
            assert got == want.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TestStdlib:
    """Records of stdlib loggers go through the same processors."""

    def test_redaction_and_fields(self, stream: io.StringIO) -> None:
        configure_logging("DEBUG", stream=stream)
        with request_context("req-1"):
            logging.getLogger("app.db").info(
                "connect %s", "db", extra={"password": "pw", "db_password": "x", "rows": 2}
            )
        (event,) = lines(stream)
        assert event["event"] == "connect db"
        assert event["logger"] == "app.db"
        assert event["password"] == "[REDACTED]"
        assert event["db_password"] == "[REDACTED]"
        assert event["rows"] == 2
        assert event["request_id"] == "req-1"

    def test_uvicorns_colour_copy_of_the_message_is_dropped(self, stream: io.StringIO) -> None:
        configure_logging("INFO", stream=stream)
        logging.getLogger("uvicorn.error").info(
            "Finished server process [%d]",
            42,
            extra={"color_message": "Finished server process [\x1b[36m%d\x1b[0m]"},
        )
        (event,) = lines(stream)
        assert event["event"] == "Finished server process [42]"
        assert "color_message" not in event

    def test_uvicorn_handlers_are_replaced(self, stream: io.StringIO) -> None:
        uvicorn = logging.getLogger("uvicorn.access")
        foreign = logging.StreamHandler(io.StringIO())
        uvicorn.addHandler(foreign)
        uvicorn.propagate = False
        configure_logging("INFO", stream=stream)
        assert foreign not in uvicorn.handlers
        uvicorn.info('127.0.0.1 - "GET / HTTP/1.1" 200')
        assert lines(stream)[0]["logger"] == "uvicorn.access"


class TestContext:
    """request_id and trace ids come from contextvars."""

    def test_request_id_bound_and_cleared(self, stream: io.StringIO) -> None:
        configure_logging("INFO", stream=stream)
        log = structlog.get_logger()
        rid = set_request_id()
        assert get_request_id() == rid
        assert len(rid) == 32
        log.info("a")
        log.info("b", request_id="explicit")
        clear_request_id()
        log.info("c")
        a, b, c = lines(stream)
        assert a["request_id"] == rid
        assert b["request_id"] == "explicit"  # per-call keyword wins
        assert "request_id" not in c

    def test_request_context_restores(self) -> None:
        set_request_id("outer")
        with request_context("inner") as rid:
            assert rid == get_request_id() == "inner"
        assert get_request_id() == "outer"
        clear_request_id()

    @pytest.mark.parametrize("bad", ["", "   "])
    def test_bad_request_id(self, bad: str) -> None:
        with pytest.raises(ValueError, match="request_id"):
            set_request_id(bad)

    async def test_tasks_do_not_share_request_ids(self, stream: io.StringIO) -> None:
        configure_logging("INFO", stream=stream)
        log = structlog.get_logger()

        async def handle(n: int) -> None:
            set_request_id(f"r{n}")
            await asyncio.sleep(0)
            log.info("handled", n=n)

        await asyncio.gather(*(handle(n) for n in range(20)))
        assert all(e["request_id"] == f"r{e['n']}" for e in lines(stream))

    def test_trace_and_span_ids(self, stream: io.StringIO) -> None:
        configure_logging("INFO", stream=stream)
        tracer = TracerProvider().get_tracer("test")
        log = structlog.get_logger()
        with tracer.start_as_current_span("work") as span:
            log.info("inside")
            logging.getLogger("lib").warning("stdlib inside")
            ctx = span.get_span_context()
        log.info("outside")
        inside, stdlib_inside, outside = lines(stream)
        for event in (inside, stdlib_inside):
            assert event["trace_id"] == format(ctx.trace_id, "032x")
            assert event["span_id"] == format(ctx.span_id, "016x")
            assert len(event["trace_id"]) == 32
            assert len(event["span_id"]) == 16
        assert "trace_id" not in outside
        assert "span_id" not in outside


class TestTap:
    """Captured logs come from a tap that is in the pipeline only while open."""

    def test_no_hook_in_a_production_pipeline(self) -> None:
        from infrakit.logging.config import _Tapped, tap

        def tapped() -> bool:
            return any(isinstance(p, _Tapped) for p in structlog.get_config()["processors"])

        stream = io.StringIO()
        configure_logging("INFO", stream=stream)
        try:
            assert not tapped()
            with tap() as events:
                assert tapped()
                structlog.get_logger().info("seen", password="x")
                logging.getLogger("lib").warning("stdlib seen")
            assert not tapped()
            structlog.get_logger().info("not seen")
        finally:
            reset_logging()
        assert [e["event"] for e in events] == ["seen", "stdlib seen"]
        assert events[0]["password"] == "[REDACTED]"

    def test_configured_inside_the_block(self) -> None:
        from infrakit.logging.config import tap

        with tap() as events:
            configure_logging("INFO", stream=io.StringIO())
            try:
                structlog.get_logger().info("late")
            finally:
                reset_logging()
        assert [e["event"] for e in events] == ["late"]

    @pytest.mark.parametrize("opening", [True, False], ids=["opening", "closing"])
    def test_a_chain_being_run_is_never_shifted(self, opening: bool) -> None:
        """What a thread running the chain (structlog's ``for processor in
        chain``) sees when a tap opens or closes midway, replayed without
        threads: every processor once, the renderer last (a shifted list ran
        the renderer twice, or skipped it)."""
        from infrakit.logging.config import tap

        configure_logging("INFO", stream=io.StringIO())
        try:
            chain = structlog.get_config()["processors"]
            renderer = chain[-1]
            with contextlib.ExitStack() as taps:
                if not opening:
                    taps.enter_context(tap())
                running = iter(chain)
                # opening: the renderer is running; closing: the tap is
                seen = [next(running) for _ in range(len(chain) - (0 if opening else 1))]
                if opening:
                    taps.enter_context(tap())
                else:
                    taps.close()
                seen += list(running)
        finally:
            reset_logging()
        assert seen[-1] is renderer
        assert seen.count(renderer) == 1

    def test_taps_open_and_close_while_threads_log(self) -> None:
        """Opening and closing taps swaps one processor in the live chains:
        threads logging meanwhile never run a shifted chain (which fed the
        renderer's string to the next processor, a TypeError)."""
        from infrakit.logging.config import tap

        stream = io.StringIO()
        configure_logging("INFO", stream=stream)
        errors: list[BaseException] = []
        stop, started = threading.Event(), threading.Event()

        def work(n: int) -> None:
            log, stdlib = structlog.get_logger(), logging.getLogger(f"lib{n}")
            try:
                while not stop.is_set():
                    log.info("structlog", n=n)
                    stdlib.warning("stdlib %d", n)
                    started.set()
            except BaseException as error:
                errors.append(error)
            finally:
                started.set()

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible
        err = io.StringIO()
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        try:
            with contextlib.redirect_stderr(err):
                for thread in threads:
                    thread.start()
                started.wait()
                for _ in range(2000):
                    with tap(), tap():
                        time.sleep(0)
                stop.set()
                for thread in threads:
                    thread.join()
        finally:
            stop.set()
            sys.setswitchinterval(interval)
            reset_logging()
        assert errors == []
        assert "Logging error" not in err.getvalue()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert {line["event"].split()[0] for line in lines} == {"structlog", "stdlib"}


def test_the_json_renderer_writes_what_json_would() -> None:
    """The pipeline's renderer reuses one C encoder; its line is json's to the byte
    (non-ASCII escaped, NaN, non-str keys as json writes them, unknown objects via default)."""
    import datetime
    import json
    import math
    import uuid

    from infrakit.logging.config import _json_default, _JsonRenderer
    from infrakit.scrub import Scrubber

    default = _json_default(Scrubber((), (), "[REDACTED]").text)
    event: dict[Any, Any] = {
        "a": 1, "b": [1, 2.5, None, True], "c": {"d": "é\n\"x"}, "nan": math.nan,
        "inf": -math.inf, 1: "int key", None: "none key", (1, 2): "skipped",
        "t": datetime.datetime(2024, 1, 1), "u": uuid.UUID(int=5), "big": 10**30,
    }  # fmt: skip
    expected = json.JSONEncoder(default=default, skipkeys=True).encode(event)
    assert _JsonRenderer(default)(None, "info", event) == expected
