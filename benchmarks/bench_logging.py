"""Cost of one log event through the kit's pipeline vs plain structlog.

Targets, each against plain structlog writing to the same null stream:

- one JSON event with 12 keys, one nested dict and a list, through
  ``configure_logging``'s pipeline (context, level, timestamp, exception
  rendering, redaction and text scrubbing, JSON): at most 1.5x the same event
  through structlog with only ``JSONRenderer``;
- an event whose message is 200 characters of free text (the text scrubber
  reads all of it): at most 2x;
- an exception logged with ``log.exception``: at most 1.5x structlog's own
  ``dict_tracebacks`` (without locals) and ``JSONRenderer``.

Reported without a target (the text scrubber's cost on large messages, which
must stay proportionate): a message holding a ~3.5 KB JSON document (240
``:`` separators, none after a sensitive name), and one holding 200 IPv6
addresses (1,400 ``:``).
"""

from __future__ import annotations

import io
import ipaddress
import json
import random
import sys
import timeit

import structlog
from _util import verdict

from infrakit.logging import configure_logging, reset_logging


class _Null(io.StringIO):
    """A text stream that keeps nothing."""

    def write(self, s: str) -> int:
        return len(s)


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


def plain_logger(*, exceptions: bool = False) -> structlog.typing.FilteringBoundLogger:
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
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger


def kit_logger() -> structlog.typing.FilteringBoundLogger:
    configure_logging("INFO", "json", stream=_Null())
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger


def _event(log: structlog.typing.FilteringBoundLogger) -> None:
    log.info("order.created", **EVENT)


def _text(log: structlog.typing.FilteringBoundLogger) -> None:
    log.info(MESSAGE, user_id="u-123")


def _json_text(log: structlog.typing.FilteringBoundLogger) -> None:
    log.info(JSON_MESSAGE)


def _ipv6_text(log: structlog.typing.FilteringBoundLogger) -> None:
    log.info(IPV6_MESSAGE)


def _charge() -> None:
    raise ValueError("payment provider refused the card for order o-9")


def _exception(log: structlog.typing.FilteringBoundLogger) -> None:
    try:
        _charge()
    except ValueError:
        log.exception("payment failed", order_id="o-9")


def per_call(log: structlog.typing.FilteringBoundLogger, call: object, number: int) -> float:
    return min(timeit.repeat(lambda: call(log), number=number, repeat=7)) / number  # type: ignore[operator]


def measure(name: str, call: object, limit: float | None, number: int) -> bool:
    exceptions = call is _exception
    results: dict[str, list[float]] = {"plain": [], "kit": []}
    for _ in range(3):  # alternate the two set-ups to share the noise
        results["plain"].append(per_call(plain_logger(exceptions=exceptions), call, number))
        reset_logging()
        results["kit"].append(per_call(kit_logger(), call, number))
        reset_logging()
    plain, kit = min(results["plain"]), min(results["kit"])
    baseline = "structlog + dict_tracebacks" if exceptions else "structlog + JSONRenderer"
    print(f"{name}: plain {baseline}: {plain * 1e6:6.2f} us/event")
    print(f"{name}: infrakit pipeline (redacting):  {kit * 1e6:6.2f} us/event")
    if limit is None:
        print(f"{name}: ratio {kit / plain:.2f}x (reported, no target)")
        return True
    return verdict(name, kit / plain, limit)


def main(number: int = 20_000) -> bool:
    ok = measure("12-key event", _event, 1.5, number)
    ok = measure("200-character message", _text, 2.0, number) and ok
    ok = measure("exception", _exception, 1.5, number // 4) and ok
    measure("3.5 KB JSON message", _json_text, None, number // 20)
    measure("200 IPv6 addresses", _ipv6_text, None, number // 20)
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
