"""``TracingMiddleware``: a pure ASGI middleware for server spans and metrics."""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

from infrakit.logging.context import _request_id
from infrakit.telemetry.provider import TelemetryProvider, get_telemetry

__all__ = ["DEFAULT_KNOWN_METHODS", "TracingMiddleware", "compile_excluded", "known_methods"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: RFC 9110's methods and PATCH: the HTTP semantic conventions' default known methods.
DEFAULT_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
#: Overrides the known methods (comma-separated), as in OpenTelemetry's instrumentations.
KNOWN_METHODS_ENV = "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # fullmatch: "$" admits a final "\n"
# Seconds; the HTTP semantic conventions' advice for http.server.request.duration.
_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)


def compile_excluded(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Whole-path glob matching: ``/health*`` matches ``/healthz``, not ``/v1/health``."""
    patterns = list(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            raise ValueError(f"excluded path patterns must start with '/', got {pattern!r}")
    if not patterns:
        return lambda path: False
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda path: regex.match(path) is not None


def known_methods(
    configured: Iterable[str] | None = None, environ: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The methods a span and a metric name as they are (others are ``_OTHER``):
    ``configured`` (the profile's ``telemetry.known_methods``), else
    ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``, else the conventions' default."""
    if configured is not None:
        return frozenset(configured)
    raw = (os.environ if environ is None else environ).get(KNOWN_METHODS_ENV, "")
    methods = frozenset(m.strip() for m in raw.split(",") if m.strip())
    return methods or DEFAULT_KNOWN_METHODS


_resolve_methods = known_methods  # the middleware's parameter has the same name


class _Headers:
    """ASGI's list of byte pairs as a read-only ``get``, for us and the propagator."""

    __slots__ = ("_map", "_raw")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        # first value wins, as for a single-valued header
        self._raw = raw
        self._map: dict[str, str] = {}
        for key, value in raw:
            self._map.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))

    def get(self, name: str) -> str | None:
        return self._map.get(name)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` (lower-case), in order."""
        wanted = name.encode("latin-1")
        return [v.decode("latin-1") for k, v in self._raw if k.lower() == wanted]


class _Getter:
    @staticmethod
    def get(carrier: _Headers, key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    @staticmethod
    def keys(carrier: _Headers) -> list[str]:
        return list(carrier._map)


_getter = _Getter()


class TracingMiddleware:
    """Server spans named ``"{METHOD} {route template}"``, HTTP metrics, and a
    request id for every request.

    Pure ASGI (WebSocket and lifespan scopes pass through untouched).
    Excluded paths get neither spans nor metrics. The span is ERROR for a
    5xx answer, a status outside 100-599 or an unhandled exception (which is
    recorded, sets ``error.type`` and answers 500); for 1xx-4xx and a client
    that went away (``CancelledError``) it stays UNSET. The response carries
    ``traceparent`` and ``x-request-id``; the request id (the caller's when
    it is well-formed, else a new one) is in the logging context throughout,
    and on the span as ``infrakit.request_id``.

    Attributes follow the stable HTTP semantic conventions: ``server.address``
    and ``server.port`` from the ``Host`` header; with ``trusted_proxy``, the
    ``X-Forwarded-Host``/``-Proto``/``-For`` headers name the server, the
    scheme and the client; ``capture_request_headers`` (opt-in) records those
    headers as ``http.request.header.<name>`` string arrays; ``known_methods``
    (default: ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` or the conventions'
    list) are named as they are, any other method is ``_OTHER``.
    """

    def __init__(
        self,
        app: ASGIApp,
        telemetry: TelemetryProvider | None = None,
        *,
        excluded_paths: Iterable[str] = ("/health*", "/metrics"),
        known_methods: Iterable[str] | None = None,
        capture_request_headers: Iterable[str] = (),
        trusted_proxy: bool = False,
    ) -> None:
        self.app = app
        self._telemetry = telemetry
        self._excluded = compile_excluded(excluded_paths)
        self._instruments: tuple[Any, _HttpInstruments] | None = None
        self._methods = _resolve_methods(known_methods)
        self._captured = tuple(dict.fromkeys(h.strip().lower() for h in capture_request_headers))
        self._trusted_proxy = trusted_proxy

    def _provider(self) -> TelemetryProvider | None:
        provider = self._telemetry or get_telemetry()
        return (
            provider if provider is not None and provider.enabled and provider.initialized else None
        )

    def _metrics(self, provider: TelemetryProvider) -> _HttpInstruments:
        meter = provider.meter  # a restarted provider has a new one
        cached = self._instruments
        if cached is None or cached[0] is not meter:
            cached = self._instruments = (meter, _http_instruments(meter))
        return cached[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        provider = self._provider()
        if provider is not None and not self._excluded(scope.get("path", "")):
            headers = _Headers(scope.get("headers") or ())
            request_id = _request_id_for(headers.get("x-request-id"))
            token = _request_id.set(request_id)
            try:
                await self._traced(
                    provider, scope, receive, send, headers=headers, request_id=request_id
                )
            finally:
                _request_id.reset(token)
            return
        # No span: only the request id, without building the header map (this
        # path runs on every request of an app whose telemetry is off).
        request_id = _request_id_for(_raw_header(scope, b"x-request-id"))
        token = _request_id.set(request_id)
        try:
            await self.app(scope, receive, _with_request_id(send, request_id))
        finally:
            _request_id.reset(token)

    async def _traced(  # noqa: PLR0915 - one request's span and metrics, start to end
        self,
        provider: TelemetryProvider,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        headers: _Headers,
        request_id: str,
    ) -> None:
        instruments = self._metrics(provider)
        duration = instruments.duration
        raw_method = scope.get("method", "GET")
        method = raw_method if raw_method in self._methods else "_OTHER"
        root_path = scope.get("root_path", "")
        attributes = _request_attributes(
            scope, headers, method, raw_method, request_id, trusted_proxy=self._trusted_proxy
        )
        scheme = attributes["url.scheme"]
        for name in self._captured:
            values = headers.get_all(name)
            if values:
                attributes[f"http.request.header.{name}"] = values
        parent = extract(headers, getter=_getter)  # type: ignore[arg-type]
        span_method = "HTTP" if method == "_OTHER" else method
        span = provider.tracer.start_span(
            span_method, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        active_key = (method, scheme)
        instruments.started(active_key)
        status_code: int | None = None
        started = time.perf_counter()
        context_token = otel_context.attach(trace.set_span_in_context(span, parent))

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
                extra = [
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"traceparent", _traceparent(span).encode("latin-1")),
                ]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as caught:
            error = caught
            if not _is_cancel(caught) and status_code is None:
                status_code = 500
                await _answer_500(send, request_id, span)
            raise
        finally:
            otel_context.detach(context_token)
            elapsed = time.perf_counter() - started
            route = _route(scope, root_path)
            metric_attrs: dict[str, Any] = {"http.request.method": method, "url.scheme": scheme}
            if "network.protocol.version" in attributes:
                metric_attrs["network.protocol.version"] = attributes["network.protocol.version"]
            # what is known at the end, set on the span in one call (the SDK
            # takes its lock and validates per call)
            ended: dict[str, Any] = {}
            if route is not None:
                ended["http.route"] = metric_attrs["http.route"] = route
                span.update_name(f"{span_method} {route}")
            if status_code is not None:
                ended["http.response.status_code"] = status_code
                metric_attrs["http.response.status_code"] = status_code
            if error is not None and not _is_cancel(error):
                span.record_exception(error)
                ended["error.type"] = metric_attrs["error.type"] = type(error).__qualname__
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            elif status_code is not None and (status_code >= 500 or not 100 <= status_code <= 599):
                ended["error.type"] = metric_attrs["error.type"] = str(status_code)
                span.set_status(Status(StatusCode.ERROR))
            if ended:
                span.set_attributes(ended)
            span.end()
            duration.record(elapsed, metric_attrs)
            instruments.ended(active_key)


class _HttpInstruments:
    """A meter's HTTP server instruments, shared by every middleware on it.

    ``http.server.active_requests`` is observed: requests in flight are
    counted in a plain dict (by method and scheme, under a lock: one provider
    may serve event loops in several threads) and read when the metrics are
    collected. The same non-monotonic sum as an up-down counter's, without
    two passes through the SDK's measurement path on every request (about
    16 µs of a request's ~70 µs of telemetry).
    """

    __slots__ = ("__weakref__", "_in_flight", "_lock", "duration")

    def __init__(self, meter: Any) -> None:
        self._in_flight: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self.duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
        )
        meter.create_observable_up_down_counter(
            "http.server.active_requests",
            callbacks=[self._observe],
            unit="{request}",
            description="Number of active HTTP server requests.",
        )

    def started(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def ended(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._in_flight[key] -= 1

    def _observe(self, options: CallbackOptions) -> list[Observation]:
        with self._lock:
            counts = list(self._in_flight.items())
        return [
            Observation(count, {"http.request.method": method, "url.scheme": scheme})
            for (method, scheme), count in counts
        ]


_instruments_lock = threading.Lock()
_instruments: weakref.WeakKeyDictionary[Any, _HttpInstruments] = weakref.WeakKeyDictionary()


def _http_instruments(meter: Any) -> _HttpInstruments:
    """``meter``'s instruments, made once (an observable instrument made twice
    under one name would keep only the first callback). Keyed by the SDK meter,
    not the provider: a provider shut down and initialized again has a new
    meter, which needs instruments of its own."""
    with _instruments_lock:
        made = _instruments.get(meter)
        if made is None:
            made = _instruments[meter] = _HttpInstruments(meter)
        return made


def _request_attributes(
    scope: Scope,
    headers: _Headers,
    method: str,
    raw_method: str,
    request_id: str,
    *,
    trusted_proxy: bool,
) -> dict[str, Any]:
    """The server span's HTTP semantic-convention attributes known at the start."""
    scheme = scope.get("scheme", "http")
    host = headers.get("host")
    client = scope.get("client")
    client_address = client[0] if client else None
    if trusted_proxy:
        forwarded = (_first(headers.get("x-forwarded-proto")) or "").lower()
        # only the two schemes: a client's own header passed through must not
        # mint new metric label values
        scheme = forwarded if forwarded in _DEFAULT_PORTS else scheme
        host = _first(headers.get("x-forwarded-host")) or host
        client_address = _first(headers.get("x-forwarded-for")) or client_address
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": scope.get("path", ""),
        "url.scheme": scheme,
        "infrakit.request_id": request_id,
    }
    if method == "_OTHER":
        attributes["http.request.method_original"] = raw_method
    address, port = _host_and_port(host, scheme) if host else (None, None)
    if address:
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    if client_address:
        attributes["client.address"] = client_address
    query = scope.get("query_string")
    if query:
        attributes["url.query"] = query.decode("latin-1")
    http_version = scope.get("http_version")
    if http_version:
        attributes["network.protocol.version"] = http_version
    user_agent = headers.get("user-agent")
    if user_agent:
        attributes["user_agent.original"] = user_agent
    return attributes


def _raw_header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case), read off the ASGI list."""
    size = len(name)
    for key, value in scope.get("headers") or ():
        if len(key) == size and key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _request_id_for(incoming: str | None) -> str:
    """The caller's request id when it is well-formed, else a new one: 128
    random bits from the system as 32 hex digits (not from ``random``'s
    Mersenne Twister, whose state a client could rebuild from the ids it gets
    back; the system call costs ~0.25 µs more)."""
    if incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return os.urandom(16).hex()


def _first(value: str | None) -> str | None:
    """The first entry of a comma-separated forwarding header (the original client's)."""
    if not value:
        return None
    first = value.split(",", 1)[0].strip()
    return first or None


def _host_and_port(host: str, scheme: str) -> tuple[str | None, int | None]:
    """``Host`` (``name``, ``name:port``, ``[v6]:port``) as address and port; no
    port in the header: the scheme's default; a malformed port: none."""
    host = host.strip()
    if host.startswith("["):  # an IPv6 literal
        end = host.find("]")
        if end == -1:
            return None, None
        address, rest = host[1:end], host[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port_text = host.partition(":")
    if not address:
        return None, None
    if not port_text:
        return address, _DEFAULT_PORTS.get(scheme)
    if port_text.isdigit() and 0 < int(port_text) < 65536:
        return address, int(port_text)
    return address, None


def _is_cancel(error: BaseException) -> bool:
    import asyncio

    return isinstance(error, asyncio.CancelledError)


def _traceparent(span: trace.Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _route(scope: Scope, root_path_before: str) -> str | None:
    """The matched route's template (Starlette/FastAPI put the route in the scope).

    Through a mount, the routing table keeps only the innermost route: the
    mount's part of the path is the request's own text (``/tenants/acme``
    for ``Mount("/tenants/{tenant}")``). Each path parameter's value there is
    put back as ``{name}``; what is left is the mount's literal text, and the
    span scrubber still reads anything outside the placeholders.
    """
    route = scope.get("route")
    template = getattr(route, "path", None) or getattr(route, "path_format", None)
    if not isinstance(template, str):
        return None
    mount = scope.get("root_path", "")[len(root_path_before) :]
    if not mount:
        return template
    params = scope.get("path_params") or {}
    # whole segments only (a value "t" is not the t of "/tenants"), the last
    # such place (a value "tenants" under "/tenants/"), longest values first
    # (a {path} value may span segments)
    for name, value in sorted(params.items(), key=lambda item: -len(str(item[1]))):
        text = str(value)
        found = list(re.finditer(f"(?<=/){re.escape(text)}(?=/|$)", mount)) if text else []
        if found:
            start, end = found[-1].span()
            mount = f"{mount[:start]}{{{name}}}{mount[end:]}"
    return f"{mount}{template}"


def _with_request_id(send: Send, request_id: str) -> Send:
    async def send_wrapper(message: Message) -> None:
        if message["type"] == "http.response.start":
            header = (b"x-request-id", request_id.encode("latin-1"))
            message["headers"] = [*message.get("headers", ()), header]
        await send(message)

    return send_wrapper


async def _answer_500(send: Send, request_id: str, span: trace.Span) -> None:
    body = b"Internal Server Error"
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"traceparent", _traceparent(span).encode("latin-1")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
    except Exception:  # noqa: BLE001, S110 - the client is gone; the error is re-raised anyway
        pass
