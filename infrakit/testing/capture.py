"""Capture what the kit logs and traces, as plain data, for assertions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, overload

from infrakit.logging.config import tap
from infrakit.telemetry.provider import TelemetryProvider, get_telemetry

__all__ = ["CapturedSpans", "capture_logs", "span_attributes"]


def span_attributes(span: Any) -> dict[str, Any]:
    """A finished span's attributes as a plain dict (empty when it has none)."""
    return dict(span.attributes or {})


@contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """Every event logged in the block, as the dicts the pipeline rendered
    (redacted, with level, timestamp and context), structlog and stdlib alike.

    Works whether logging was configured before or after the block started.
    """
    with tap() as events:
        yield events


class CapturedSpans(Sequence[Any]):
    """The finished spans of the default (memory-exporter) telemetry provider,
    read afresh on every access."""

    def __init__(self, fallback: TelemetryProvider | None = None) -> None:
        self._fallback = fallback

    def _provider(self) -> TelemetryProvider:
        provider = get_telemetry() or self._fallback
        if provider is None:
            raise RuntimeError("no telemetry provider is installed")
        return provider

    def _spans(self) -> Sequence[Any]:
        return self._provider().finished_spans()

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self._spans()[index]

    def __len__(self) -> int:
        return len(self._spans())

    @property
    def names(self) -> list[str]:
        return [span.name for span in self._spans()]

    def clear(self) -> None:
        self._provider().clear_spans()

    def __repr__(self) -> str:
        return f"CapturedSpans({self.names!r})"
