"""Cost of one log event through the kit's pipeline vs plain structlog.

Target: one JSON event with 12 keys, one nested dict and a list, through
``configure_logging``'s pipeline (context, level, timestamp, redaction, JSON)
costs at most 1.5x the same event through plain structlog with only
``JSONRenderer`` and no redaction. Both write to the same null stream.
"""

from __future__ import annotations

import io
import sys
import timeit

import structlog
from _util import verdict

from infrakit.logging import configure_logging, reset_logging


class _Null(io.TextIOBase):
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


def plain_logger() -> structlog.typing.FilteringBoundLogger:
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        logger_factory=structlog.WriteLoggerFactory(file=_Null()),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger()


def kit_logger() -> structlog.typing.FilteringBoundLogger:
    configure_logging("INFO", "json", stream=_Null())
    return structlog.get_logger()


def per_call(log: structlog.typing.FilteringBoundLogger, number: int) -> float:
    return (
        min(timeit.repeat(lambda: log.info("order.created", **EVENT), number=number, repeat=7))
        / number
    )


def main(number: int = 20_000) -> bool:
    results: dict[str, list[float]] = {"plain": [], "kit": []}
    for _ in range(3):  # alternate the two set-ups to share the noise
        results["plain"].append(per_call(plain_logger(), number))
        reset_logging()
        results["kit"].append(per_call(kit_logger(), number))
        reset_logging()
    plain, kit = min(results["plain"]), min(results["kit"])
    print(f"plain structlog + JSONRenderer: {plain * 1e6:6.2f} us/event")
    print(f"infrakit pipeline (redacting):  {kit * 1e6:6.2f} us/event")
    return verdict("logging", kit / plain, 1.5)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
