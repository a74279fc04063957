"""Spans leave the process scrubbed: an exporter wrapper with the kit's rules.

Every span exporter the provider builds (memory, console, OTLP) sits behind
:class:`ScrubbingSpanExporter`, so what a collector receives — and what tests
read from the memory exporter — has passed the same rules as a log line
(:mod:`infrakit.scrub`):

- an attribute whose key is sensitive (``http.request.header.authorization``,
  ``db.password``, ``user.email``) is replaced whatever its value;
- ``url.query``, the query of ``http.target`` and of ``url.full`` keep their parameter names, with
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
from opentelemetry.trace import Link, SpanKind, Status

from infrakit.scrub import SAME, Scrubber
from infrakit.telemetry.provider import TRACER_NAME

__all__ = ["QUERY_MASK", "ScrubbingSpanExporter", "sanitize_sql"]

#: What a sensitive query value becomes in spans (the HTTP semantic conventions' word).
QUERY_MASK = "REDACTED"
_QUERY_KEYS = frozenset({"url.query"})
#: path and query (the older HTTP conventions' attribute)
_TARGET_KEYS = frozenset({"http.target"})
_URL_KEYS = frozenset({"url.full", "http.url", "url.original"})
_SQL_KEYS = frozenset({"db.statement", "db.query.text"})
_SPECIAL = _QUERY_KEYS | _TARGET_KEYS | _URL_KEYS | _SQL_KEYS
#: A route template comes from the application's routing table, not from the
#: request: ``/status/{code:int}`` is code, and ``code:int`` is no name=value pair.
_ROUTE = "http.route"
_SCALARS = frozenset({int, float, bool, type(None)})
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")

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
        """``span`` with the rules applied: the same object when nothing had to
        change (the usual case), else a copy (the original is never changed)."""
        text = self._scrubber.cached_text
        name = span.name
        # The route template is kept only on the kit's own server spans, where
        # TracingMiddleware read it off the routing table; another
        # instrumentation may put a raw path there.
        span_attributes = _attributes_of(span)
        route = span_attributes.get(_ROUTE) if _is_own_server_span(span) else None
        keep_route = isinstance(route, str) and self._is_template(route)
        if not (keep_route and _is_route_name(name, str(route))):
            name = text(name)
        attributes = self.attributes(span_attributes, keep_route=keep_route)
        events: Sequence[Event] = span.events if _has(span, "_events") else ()
        new_events = []
        for event in events:
            event_name = text(event.name)
            event_attributes = self.attributes(event.attributes)
            if event_name is event.name and event_attributes is None:
                new_events.append(event)
            else:
                new_events.append(
                    Event(event_name, event_attributes or event.attributes, event.timestamp)
                )
        links: Sequence[Link] = span.links if _has(span, "_links") else ()
        new_links = [
            link if (a := self.attributes(link.attributes)) is None else Link(link.context, a)
            for link in links
        ]
        status = span.status
        if status.description and text(status.description) is not status.description:
            status = Status(status.status_code, text(status.description))
        if (
            name is span.name
            and attributes is None
            and status is span.status
            and all(a is b for a, b in zip(new_events, events, strict=True))
            and all(a is b for a, b in zip(new_links, links, strict=True))
        ):
            return span
        return ReadableSpan(
            name=name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=span.attributes if attributes is None else attributes,
            events=new_events,
            links=new_links,
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def attributes(
        self, attributes: Mapping[str, Any] | None, *, keep_route: bool = False
    ) -> dict[str, Any] | None:
        """The scrubbed attributes, or ``None`` when none had to change;
        ``keep_route``: ``http.route`` is a template from the routing table."""
        if not attributes:
            return None
        scrubber = self._scrubber
        keys, texts = scrubber.keys, scrubber.texts
        known = keys.cache  # the matcher's answers, read without a call per key
        out: dict[str, Any] | None = None
        for key, value in attributes.items():
            secret = known.get(key)
            if secret is None:
                secret = keys(key)
            if secret:
                new: Any = scrubber.replacement
            elif key == _ROUTE and keep_route:
                continue
            elif type(value) is str:
                if key not in _SPECIAL and texts.get(value) is SAME:
                    continue
                new = self._string(key, value)
            elif type(value) in _SCALARS:  # before the ABC check below
                continue
            elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
                items = tuple(self._string(key, v) if isinstance(v, str) else v for v in value)
                new = value if all(a is b for a, b in zip(items, value, strict=True)) else items
            else:
                continue
            if new is not value:
                if out is None:
                    out = dict(attributes)
                out[key] = new
        return out

    def _is_template(self, route: str) -> bool:
        """A route template whose text outside the ``{...}`` placeholders the
        scrubber would leave as it is: kept whole (a placeholder's converter,
        ``{code:int}``, reads like a name=value pair to the text rules). A
        mount's part of the route is the request's text with parameter values
        put back as placeholders; anything else there is read like any string."""
        bare = _PLACEHOLDER.sub("", route)
        return self._scrubber.cached_text(bare) == bare

    def _string(self, key: str, value: str) -> str:
        scrubber = self._scrubber
        if key in _QUERY_KEYS:
            masked = scrubber.mask_query(value, QUERY_MASK)
        elif key in _TARGET_KEYS:
            path, mark, query = value.partition("?")
            masked = scrubber.text(path) + mark + scrubber.mask_query(query, QUERY_MASK)
        elif key in _URL_KEYS:
            masked = scrubber.mask_url(value, QUERY_MASK)
        elif key in _SQL_KEYS:
            masked = scrubber.text(sanitize_sql(value))
        else:
            return scrubber.cached_text(value)
        return value if masked == value else masked


def _attributes_of(span: ReadableSpan) -> Mapping[str, Any]:
    """A finished span's attributes, read-only. ``span.attributes`` is a new
    ``MappingProxyType`` over the SDK's ``BoundedAttributes``, a
    ``MutableMapping`` whose ``items()`` runs the ABC's Python-level iterator
    and ``__getitem__`` per key (a third of a span's scrubbing): the SDK's dict
    under it is read when there is one. Nothing here writes to it."""
    inner = getattr(getattr(span, "_attributes", None), "_dict", None)
    if isinstance(inner, dict):
        return inner
    return span.attributes or {}


def _has(span: ReadableSpan, name: str) -> bool:
    """Whether the span may have events or links (``name``: the SDK's private
    list): the public property copies that ``BoundedList`` into a new tuple
    through its Python-level iterator, and most spans have neither."""
    inner = getattr(span, name, None)
    return inner is None or len(inner) > 0


def _is_own_server_span(span: ReadableSpan) -> bool:
    """A server span of the kit's tracer (``TracingMiddleware``'s)."""
    scope = span.instrumentation_scope
    return span.kind is SpanKind.SERVER and scope is not None and scope.name == TRACER_NAME


def _is_route_name(name: str, route: str) -> bool:
    """``name`` is the server span name the conventions give: ``{method} {route}``."""
    method, space, rest = name.partition(" ")
    return bool(space) and rest == route and method.isalpha()
