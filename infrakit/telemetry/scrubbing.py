"""Spans leave the process scrubbed: an exporter wrapper with the kit's rules.

Every span exporter the provider builds (memory, console, OTLP) sits behind
:class:`ScrubbingSpanExporter`, so what a collector receives — and what tests
read from the memory exporter — has passed the same rules as a log line
(:mod:`infrakit.scrub`):

- an attribute whose key is sensitive (``http.request.header.authorization``,
  ``db.password``, ``user.email``) is replaced whatever its value;
- ``url.query`` and the query of ``url.full`` keep their parameter names, with
  sensitive values replaced by ``REDACTED`` (the HTTP semantic conventions'
  rule), and ``url.full`` loses its user-info password;
- ``db.statement`` / ``db.query.text`` have their literals replaced by ``?``
  (statements carry placeholders, not values);
- every other string — attribute values, event attributes such as
  ``exception.message`` and ``exception.stacktrace``, status descriptions,
  span and event names — goes through the text scrubber.

Scrubbing runs in the export path (the batch processor's thread for OTLP),
never on the request path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status

from infrakit.scrub import Scrubber

__all__ = ["QUERY_MASK", "ScrubbingSpanExporter", "sanitize_sql"]

#: What a sensitive query value becomes in spans (the HTTP semantic conventions' word).
QUERY_MASK = "REDACTED"
_QUERY_KEYS = frozenset({"url.query"})
_URL_KEYS = frozenset({"url.full", "http.url", "url.original"})
_SQL_KEYS = frozenset({"db.statement", "db.query.text"})

# String literals ('...' with '' escapes, E'...' too), dollar-quoted bodies,
# and numbers standing alone: what a statement would otherwise carry inline.
_SQL_LITERAL = re.compile(
    r"(?:[EeBbXxNn])?'(?:[^']|'')*'?"
    r"|\$(?P<tag>[A-Za-z_]*)\$.*?\$(?P=tag)\$"
    r"|(?<![\w$.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])",
    re.DOTALL,
)


def sanitize_sql(statement: str) -> str:
    """``statement`` with its literal values replaced by ``?``."""
    return _SQL_LITERAL.sub("?", statement)


class ScrubbingSpanExporter(SpanExporter):
    """Wraps a span exporter; hands it scrubbed copies of the spans."""

    def __init__(self, exporter: Any, scrubber: Scrubber | None = None) -> None:
        self._exporter = exporter
        self._scrubber = scrubber or Scrubber()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result: SpanExportResult = self._exporter.export([self.scrub(span) for span in spans])
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        flushed: bool = self._exporter.force_flush(timeout_millis)
        return flushed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._exporter, name)

    # --- the rules ----------------------------------------------------------------

    def scrub(self, span: ReadableSpan) -> ReadableSpan:
        """A copy of ``span`` with the rules applied (the original is not changed)."""
        text = self._scrubber.text
        status = span.status
        if status.description:
            status = Status(status.status_code, text(status.description))
        return ReadableSpan(
            name=text(span.name),
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=self.attributes(span.attributes),
            events=[
                Event(text(e.name), self.attributes(e.attributes), e.timestamp) for e in span.events
            ],
            links=[Link(link.context, self.attributes(link.attributes)) for link in span.links],
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def attributes(self, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
        scrubber = self._scrubber
        out: dict[str, Any] = {}
        for key, value in (attributes or {}).items():
            if scrubber.keys(key):
                out[key] = scrubber.replacement
            elif isinstance(value, str):
                out[key] = self._string(key, value)
            elif isinstance(value, Sequence) and not isinstance(value, bytes):
                out[key] = tuple(self._string(key, v) if isinstance(v, str) else v for v in value)
            else:
                out[key] = value
        return out

    def _string(self, key: str, value: str) -> str:
        scrubber = self._scrubber
        if key in _QUERY_KEYS:
            return scrubber.mask_query(value, QUERY_MASK)
        if key in _URL_KEYS:
            return scrubber.mask_url(value, QUERY_MASK)
        if key in _SQL_KEYS:
            return scrubber.text(sanitize_sql(value))
        return scrubber.text(value)
