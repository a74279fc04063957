"""The JSON line is the same with orjson (the extra) as with the stdlib encoder.

orjson writes most lines; where it would write a value otherwise, or refuses
it, the stdlib encoder writes the line. Each case is logged through the whole
pipeline both ways and the two lines compared, key by key, value by value.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import decimal
import enum
import fractions
import io
import json
import logging
import math
import pathlib
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog
import structlog.testing

from infrakit.logging import REDACTED, configure_logging, reset_logging
from infrakit.logging.config import _json_default, _json_renderers, _JsonRenderer
from infrakit.scrub import Scrubber
from tests.unit.logging.test_redaction import Card, Login


@contextlib.contextmanager
def _without_orjson() -> Iterator[None]:
    """As installed without the extra: importing orjson fails."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "orjson", None)
        yield


def _line(value: Any, *, with_orjson: bool) -> str:
    """The line ``log.info("e", v=value)`` writes, orjson installed or not."""
    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        if not with_orjson:
            stack.enter_context(_without_orjson())
        configure_logging("INFO", "json", stream=out)
    try:
        structlog.get_logger().info("e", v=value)
    finally:
        reset_logging()
    return out.getvalue()


def _parsed(line: str) -> Any:
    event = json.loads(line)
    del event["timestamp"]
    # NaN != NaN: compare what json writes for the parsed value instead
    return json.dumps(event, sort_keys=True)


class Color(enum.Enum):
    RED = "red"


class Perm(enum.Flag):
    READ = 1


class Level(enum.IntEnum):
    HIGH = 3


class Mode(enum.StrEnum):
    FAST = "fast"


class Ratio(float):
    pass


Point = collections.namedtuple("Point", "x y")


class Connection:
    def __structlog__(self) -> dict[str, str]:
        return {"url": "redis://:pw@cache:6379/0", "password": "pw"}


MOMENT = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)

#: name -> (value, the encoder expected to write its line)
CASES: dict[str, tuple[Any, str]] = {
    # orjson writes these as the stdlib encoder would
    "strings": (["a", "", 'quote " and \\ backslash', "tab\tnew\nline"], "orjson"),
    "non-ASCII": (["é", "Ж", "✓", "日本", "🙂"], "orjson"),
    "line separators": ("a\u2028b\u2029c\x85d", "orjson"),
    # a terminal's CSI (U+009B) and a right-to-left override (U+202E)
    "spoofing characters": ("log\u202eabc\x9b2J\u2066x\u2069", "orjson"),
    "control characters": ("\x00\x1f\x7f", "orjson"),
    "numbers": ([0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 0.1, -2.5e-300, 1e300], "orjson"),
    "plain values": ([None, True, False, [], {}], "orjson"),
    "nested": ({"a": [{"b": {"c": [1, "x", None]}}], "n": 1.5}, "orjson"),
    "tuple": ((1, "a"), "orjson"),
    "named tuple": (Point(1, 2), "orjson"),
    "float subclass": (Ratio(0.5), "orjson"),
    "int enum": (Level.HIGH, "orjson"),
    "str enum": (Mode.FAST, "orjson"),
    "datetime": (MOMENT, "orjson"),
    "date and time": ([MOMENT.date(), MOMENT.time(), datetime.timedelta(seconds=3)], "orjson"),
    "decimal, fraction, complex": (
        [decimal.Decimal("9.99"), fractions.Fraction(1, 3), 1 + 2j],
        "orjson",
    ),
    "path": (pathlib.PurePosixPath("/srv/app"), "orjson"),
    "set": ({1}, "orjson"),
    "bytes": (b"\x00raw", "orjson"),
    "dataclass": (Login("ann", "hunter2"), "orjson"),
    "pydantic model": (Card(holder="ann", card_number="4111"), "orjson"),
    "__structlog__": (Connection(), "orjson"),
    "ordered dict": (collections.OrderedDict(a=1), "orjson"),
    # orjson writes these otherwise, or refuses them: the stdlib encoder does
    "NaN": (math.nan, "json"),
    "infinities": ([math.inf, -math.inf], "json"),
    "NaN deep inside": ({"a": [{"b": math.nan}]}, "json"),
    "NaN subclass": (Ratio("nan"), "json"),
    "int past 64 bits": (2**64, "json"),
    "negative int past 64 bits": (-(2**63) - 1, "json"),
    "lone surrogate": ("a\ud800b", "json"),
    "uuid": (uuid.UUID(int=7), "json"),
    "uuid nested": ({"ids": [uuid.UUID(int=8)]}, "json"),
    "enum": (Color.RED, "json"),
    "flag": (Perm.READ, "json"),
}


def _encoder(line: str) -> str:
    """Which encoder wrote ``line``: orjson puts no space after ``:``."""
    return "json" if line.startswith('{"v": ') else "orjson"


SPOOFING = {
    chr(c)
    for c in (*range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


class TestSameLine:
    """Every case: one line, the same keys and values, written by the expected encoder."""

    @pytest.mark.parametrize(("value", "encoder"), CASES.values(), ids=CASES.keys())
    def test_both_ways(self, value: Any, encoder: str) -> None:
        fast = _line(value, with_orjson=True)
        stdlib = _line(value, with_orjson=False)
        assert fast.endswith("\n")
        assert len(fast.splitlines()) == 1  # U+2028 and friends escaped
        # no C1 control, line separator or bidi control reaches the line raw
        assert not set(fast) & SPOOFING
        assert _parsed(fast) == _parsed(stdlib)
        assert (_encoder(fast), _encoder(stdlib)) == (encoder, "json")

    def test_nothing_is_lost_in_a_fallback(self) -> None:
        line = json.loads(
            _line({"n": math.nan, "big": 2**70, "u": uuid.UUID(int=7)}, with_orjson=True)
        )
        assert math.isnan(line["v"]["n"])
        assert line["v"]["big"] == 2**70
        assert line["v"]["u"] == repr(uuid.UUID(int=7))

    def test_the_next_line_is_orjsons_again(self) -> None:
        """The redactor's mark holds for its own event only."""
        out = io.StringIO()
        configure_logging("INFO", "json", stream=out)
        try:
            structlog.get_logger().info("e", v=uuid.UUID(int=7))
            structlog.get_logger().info("e", v=1)
        finally:
            reset_logging()
        assert [_encoder(line) for line in out.getvalue().splitlines()] == ["json", "orjson"]

    def test_secrets_alike(self) -> None:
        value = {"password": "hunter2", "dsn": "x", "note": "redis://:pw@h/0", "obj": Connection()}
        fast, stdlib = _line(value, with_orjson=True), _line(value, with_orjson=False)
        assert _parsed(fast) == _parsed(stdlib)
        for line in (fast, stdlib):
            assert "hunter2" not in line
            assert ":pw@" not in line
            assert json.loads(line)["v"]["password"] == REDACTED


class TestRenderer:
    """The orjson renderer on events the redactor never hands over."""

    @pytest.mark.parametrize(
        "event",
        [
            {1: "int key", None: "none key", 2.5: "float key"},
            {"nested": {(1, 2): "tuple key"}},
            {"big": -(2**80)},
        ],
        ids=["non-str keys", "tuple key (skipped)", "huge int"],
    )
    def test_refused_events_are_the_stdlib_encoders(self, event: dict[Any, Any]) -> None:
        default = _json_default(Scrubber().text)
        lines, text = _json_renderers(default)
        expected = _JsonRenderer(default)(None, "info", dict(event))
        assert lines(None, "info", dict(event)) == expected
        assert text(None, "info", dict(event)) == expected

    def test_text_for_the_stdlib_formatter(self) -> None:
        lines, text = _json_renderers(_json_default(Scrubber().text))
        event = {"event": "é\u2028"}
        assert lines(None, "info", dict(event)) == b'{"event":"\xc3\xa9\\u2028"}\n'
        assert text(None, "info", dict(event)) == '{"event":"é\\u2028"}'

    def test_without_orjson_both_are_the_stdlib_encoders(self) -> None:
        with _without_orjson():
            lines, text = _json_renderers(_json_default(Scrubber().text))
        assert type(lines) is type(text) is _JsonRenderer


class TestBytesLines:
    """orjson's bytes go to the stream's binary buffer, in order with everything else."""

    def test_in_order_with_print_and_stdlib_records(self) -> None:
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="utf-8")  # block-buffered, like a pipe
        configure_logging("INFO", "json", stream=stream)
        try:
            print("printed first", file=stream)  # held in the text layer
            structlog.get_logger().info("structlog é")
            print("printed second", file=stream)
            logging.getLogger("lib").warning("stdlib é")
            stream.flush()
        finally:
            reset_logging()
        text = raw.getvalue().decode("utf-8").splitlines()
        assert text[0] == "printed first"
        assert json.loads(text[1])["event"] == "structlog é"
        assert text[2] == "printed second"
        assert json.loads(text[3])["event"] == "stdlib é"
        assert '"event":"structlog é"' in text[1]  # orjson's, raw UTF-8

    @pytest.mark.usefixtures("json_encoder")
    def test_a_text_stream_that_cannot_encode_non_ascii(self) -> None:
        """orjson writes non-ASCII raw: as UTF-8 bytes, it reaches an ``ascii``
        stream's buffer (the stdlib encoder escapes it, as before)."""
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="ascii")
        err = io.StringIO()
        configure_logging("INFO", "json", stream=stream)
        try:
            with contextlib.redirect_stderr(err):
                structlog.get_logger().info("structlog é")
                logging.getLogger("lib").warning("stdlib é")
            stream.flush()
        finally:
            reset_logging()
        assert err.getvalue() == ""
        lines = raw.getvalue().decode("utf-8").splitlines()
        assert [json.loads(line)["event"] for line in lines] == ["structlog é", "stdlib é"]

    def test_a_stream_without_a_buffer_gets_text(self) -> None:
        out = io.StringIO()
        configure_logging("INFO", "json", stream=out)
        try:
            structlog.get_logger().info("é")
        finally:
            reset_logging()
        assert out.getvalue() == out.getvalue().splitlines()[0] + "\n"
        assert json.loads(out.getvalue())["event"] == "é"


@pytest.mark.usefixtures("json_encoder")
class TestCachedLoggers:
    """Loggers are cached on first use, and still follow every configuration."""

    def test_cached(self) -> None:
        configure_logging("INFO", stream=io.StringIO())
        assert structlog.get_config()["cache_logger_on_first_use"] is True

    def test_a_cached_logger_follows_level_stream_and_format(self) -> None:
        log = structlog.get_logger("app")
        first, second, third = io.StringIO(), io.StringIO(), io.StringIO()
        configure_logging("WARNING", stream=first)
        bound = log.bind(user="ann")  # bound under one configuration: follows the next
        log.info("dropped")
        log.warning("one")
        configure_logging("DEBUG", stream=second)
        log.debug("two")
        bound.debug("three")
        configure_logging("INFO", "console", stream=third)
        log.info("four", password="hunter2")
        assert [json.loads(line)["event"] for line in first.getvalue().splitlines()] == ["one"]
        events = [json.loads(line) for line in second.getvalue().splitlines()]
        assert [(e["event"], e.get("user")) for e in events] == [("two", None), ("three", "ann")]
        assert "four" in third.getvalue()
        assert "hunter2" not in third.getvalue()
        assert "[REDACTED]" in third.getvalue()

    def test_after_reset_structlogs_defaults(self, capsys: pytest.CaptureFixture[str]) -> None:
        log = structlog.get_logger()
        configure_logging("WARNING", stream=io.StringIO())
        log.warning("cached")
        reset_logging()
        log.debug("after reset")  # structlog's default: every level, console, stdout
        out = capsys.readouterr().out
        assert "after reset" in out
        assert not out.lstrip().startswith("{")

    def test_structlogs_capture_logs_sees_cached_loggers(self) -> None:
        log = structlog.get_logger()
        configure_logging("INFO", stream=io.StringIO())
        log.info("cached")
        with structlog.testing.capture_logs() as kit_configured:
            log.info("captured", password="hunter2")
        reset_logging()
        with structlog.testing.capture_logs() as after_reset:
            log.info("captured again")
        assert [e["event"] for e in kit_configured] == ["captured"]
        assert [e["event"] for e in after_reset] == ["captured again"]

    def test_json_and_console_chains_have_the_same_roles(self) -> None:
        """A thread running the chain while it is replaced (another format)
        runs each role once: the redactor is at the same place in both."""
        shapes = []
        for log_format in ("json", "console"):
            configure_logging("INFO", log_format, stream=io.StringIO())
            chain = structlog.get_config()["processors"]
            shapes.append([type(processor).__name__ for processor in chain[:-1]])
        assert shapes[0] == shapes[1]
        assert shapes[0][-1] == "PIIRedactor"


def test_orjson_is_what_the_extra_installs() -> None:
    """The tests above compare against a real orjson (the dev install has it)."""
    assert orjson.dumps({"a": 1}) == b'{"a":1}'
