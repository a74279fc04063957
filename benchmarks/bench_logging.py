"""Cost of one log event through the kit's pipeline vs plain structlog.

Two baselines, each measured in alternation with the kit (interleaved rounds,
medians), through ``structlog.get_logger()`` on both sides:

**structlog's performance guide** (docs/performance.md: ``orjson`` into a
``BytesLoggerFactory``, loggers cached on first use, no redaction), against
the kit's pipeline as installed with the ``orjson`` extra (context, level,
timestamp, exception rendering, redaction and text scrubbing, orjson), both
writing to a null binary stream under a text layer as ``sys.stdout`` has:

- one JSON event with 12 keys, one nested dict and a list: at most 1.3x;
- reported: a 200-character message, and ``log.exception`` (the guide
  renders the traceback as text with ``format_exc_info``, the kit as
  structured, scrubbed frames).

**structlog with only the stdlib ``JSONRenderer``**, against the kit without
orjson (its pure-Python path, the stdlib encoder), both writing to a null
text stream:

- the 12-key event: at most 1.5x;
- the 200-character message (the text scrubber reads all of it): at most 2x;
- ``log.exception``: at most 1.5x structlog's own ``dict_tracebacks``
  (without locals) and ``JSONRenderer``.

Reported without a target (the text scrubber's cost on large messages, which
must stay proportionate): a message holding a ~3.5 KB JSON document (240
``:`` separators, none after a sensitive name), and one holding 200 IPv6
addresses (1,400 ``:``).
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import random
import sys
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import orjson
import structlog
from _util import interleaved, verdict

from infrakit.logging import configure_logging, reset_logging

Logger = structlog.typing.FilteringBoundLogger
Call = Callable[[Logger], None]
#: Rounds per comparison: each round times both sides once, in turn.
ROUNDS = 7


class _Null(io.StringIO):
    """A text stream that keeps nothing."""

    def write(self, s: str) -> int:
        return len(s)


class _NullRaw(io.RawIOBase):
    """A binary file that keeps nothing (under a ``BufferedWriter``, as a
    file descriptor is under ``sys.stdout.buffer``)."""

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        return len(b)  # type: ignore[arg-type]


def _null_stdout() -> io.TextIOWrapper:
    """What ``sys.stdout`` is, writing nowhere: text over a buffered binary stream."""
    return io.TextIOWrapper(io.BufferedWriter(_NullRaw()), encoding="utf-8")


EVENT = {
    "user_id": "u-123",
    "method": "POST",
    "path": "/v1/orders",
    "status": 201,
    "duration_ms": 12.5,
    "client": "web",
    "region": "eu-west-1",
    "retries": 0,
    "cache_hit": False,
    "order": {"id": "o-9", "items": 3, "total": 99.5, "currency": "EUR"},
    "tags": ["new", "priority", "eu"],
}  # with the "event" key itself: 12 keys


MESSAGE = (
    "order o-9 for customer u-123 was accepted by the payment provider after one retry "
    "and is now waiting for the warehouse to confirm stock for all three items before "
    "the shipping label is printed, today."
)
assert len(MESSAGE) == 200, len(MESSAGE)

JSON_MESSAGE = "payload " + json.dumps(
    {
        f"field_{i}": {
            "id": i,
            "name": f"item number {i}",
            "tags": ["a", "b"],
            "price": i * 1.5,
            "updated": "2024-05-01T12:30:45Z",
        }
        for i in range(30)
    }
)
_ips = random.Random(1)
IPV6_MESSAGE = "peers " + ", ".join(
    str(ipaddress.IPv6Address(_ips.getrandbits(128))) for _ in range(200)
)


def plain_logger(*, exceptions: bool = False) -> Logger:
    renderers: list[structlog.typing.Processor] = []
    if exceptions:
        renderers.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    structlog.configure(
        processors=[*renderers, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        logger_factory=structlog.WriteLoggerFactory(file=_Null()),
        cache_logger_on_first_use=False,
    )
    logger: Logger = structlog.get_logger()
    return logger


def guide_logger() -> Logger:
    """structlog's performance guide, as its docs write it, to a null binary stream."""
    structlog.configure(
        cache_logger_on_first_use=True,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        logger_factory=structlog.BytesLoggerFactory(file=io.BufferedWriter(_NullRaw())),
    )
    logger: Logger = structlog.get_logger()
    return logger


@contextmanager
def _without_orjson() -> Iterator[None]:
    """The kit as installed without the ``orjson`` extra: its import fails."""
    saved = sys.modules.get("orjson")
    sys.modules["orjson"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.modules["orjson"] = saved  # type: ignore[assignment]


def kit_logger() -> Logger:
    """The kit with orjson, writing as to ``sys.stdout``."""
    configure_logging("INFO", "json", stream=_null_stdout())
    logger: Logger = structlog.get_logger()
    return logger


def kit_stdlib_logger() -> Logger:
    """The kit without orjson (the stdlib encoder), to a null text stream."""
    with _without_orjson():
        configure_logging("INFO", "json", stream=_Null())
    logger: Logger = structlog.get_logger()
    return logger


def _event(log: Logger) -> None:
    log.info("order.created", **EVENT)


def _text(log: Logger) -> None:
    log.info(MESSAGE, user_id="u-123")


def _json_text(log: Logger) -> None:
    log.info(JSON_MESSAGE)


def _ipv6_text(log: Logger) -> None:
    log.info(IPV6_MESSAGE)


def _charge() -> None:
    raise ValueError("payment provider refused the card for order o-9")


def _exception(log: Logger) -> None:
    try:
        _charge()
    except ValueError:
        log.exception("payment failed", order_id="o-9")


def sample(make: Callable[[], Logger], call: Call, number: int) -> float:
    """Seconds per call of ``call`` on a logger from ``make``: the best of
    three timings of ``number`` calls (the rest is noise from elsewhere)."""
    log = make()
    try:
        return min(timeit.repeat(lambda: call(log), number=number, repeat=3)) / number
    finally:
        reset_logging()


def compare(
    name: str,
    baseline: tuple[str, Callable[[], Logger]],
    call: Call,
    limit: float | None,
    number: int,
    kit: Callable[[], Logger],
) -> bool:
    label, make_baseline = baseline
    medians = interleaved(
        ROUNDS,
        baseline=lambda: sample(make_baseline, call, number),
        kit=lambda: sample(kit, call, number),
    )
    plain, ours = medians["baseline"], medians["kit"]
    print(f"{name}: {label}: {plain * 1e6:6.2f} us/event (median of {ROUNDS})")
    print(f"{name}: infrakit pipeline (redacting):  {ours * 1e6:6.2f} us/event")
    if limit is None:
        print(f"{name}: ratio {ours / plain:.2f}x (reported, no target)")
        return True
    return verdict(name, ours / plain, limit)


def against_the_guide(number: int) -> bool:
    guide = ("structlog performance guide (orjson, BytesLogger)", guide_logger)
    print(f"--- with orjson, against structlog's performance guide ({orjson.__version__})")
    ok = compare("12-key event", guide, _event, 1.3, number, kit_logger)
    compare("200-character message", guide, _text, None, number, kit_logger)
    compare("exception", guide, _exception, None, number // 4, kit_logger)
    return ok


def against_the_stdlib_renderer(number: int) -> bool:
    plain = ("plain structlog + JSONRenderer", plain_logger)
    tracebacks = ("structlog + dict_tracebacks", lambda: plain_logger(exceptions=True))
    print("--- without orjson, against structlog's stdlib JSONRenderer")
    ok = compare("12-key event", plain, _event, 1.5, number, kit_stdlib_logger)
    ok = compare("200-character message", plain, _text, 2.0, number, kit_stdlib_logger) and ok
    ok = compare("exception", tracebacks, _exception, 1.5, number // 4, kit_stdlib_logger) and ok
    compare("3.5 KB JSON message", plain, _json_text, None, number // 20, kit_stdlib_logger)
    compare("200 IPv6 addresses", plain, _ipv6_text, None, number // 20, kit_stdlib_logger)
    return ok


def main(number: int = 20_000) -> bool:
    print(f"load average {os.getloadavg()[0]:.2f}, {ROUNDS} rounds per comparison")
    ok = against_the_guide(number)
    ok = against_the_stdlib_renderer(number) and ok
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
