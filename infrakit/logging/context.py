"""Request and trace context carried into every log event via contextvars."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = [
    "add_request_id",
    "add_trace_context",
    "clear_request_id",
    "current_trace_ids",
    "get_request_id",
    "request_context",
    "set_request_id",
]

_request_id: ContextVar[str | None] = ContextVar("infrakit_request_id", default=None)


def set_request_id(request_id: str | None = None) -> str:
    """Bind ``request_id`` (a new uuid4 hex when None) to the current context."""
    if request_id is None:
        request_id = uuid.uuid4().hex
    elif not isinstance(request_id, str) or not request_id.strip():
        raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
    _request_id.set(request_id)
    return request_id


def get_request_id() -> str | None:
    """The request id bound to the current context, if any."""
    return _request_id.get()


def clear_request_id() -> None:
    """Forget the request id of the current context."""
    _request_id.set(None)


@contextmanager
def request_context(request_id: str | None = None) -> Iterator[str]:
    """Bind a request id for the ``with`` block, restoring the previous one after."""
    token = _request_id.set(None)
    try:
        yield set_request_id(request_id)
    finally:
        _request_id.reset(token)


def add_request_id(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add ``request_id``; a per-call keyword still wins."""
    request_id = _request_id.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


def current_trace_ids() -> tuple[str | None, str | None]:
    """The active span's ``(trace_id, span_id)`` as 32 and 16 lowercase hex.

    If OpenTelemetry's trace API was never imported, no span can be active,
    so this costs one dict lookup and imports nothing; outside any span (an
    empty OpenTelemetry context) one more call.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None, None
    current = sys.modules["opentelemetry.context"].get_current()  # imported by trace
    if not current:
        return None, None
    context = trace.get_current_span(current).get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def add_trace_context(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add the active span's ``trace_id``/``span_id`` as hex."""
    trace_id, span_id = current_trace_ids()
    if trace_id is not None:
        event_dict.setdefault("trace_id", trace_id)
        event_dict.setdefault("span_id", span_id)
    return event_dict
