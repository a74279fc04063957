"""HTTP server spans and metrics against the stable HTTP semantic conventions.

One app, fifteen requests, each with the span name, kind, status and
attributes the conventions call for (https://opentelemetry.io/docs/specs/semconv/http/http-spans/,
http-metrics/), and the ``http.server.request.duration`` point's attributes.
The requests are ASGI scopes built by hand, so the Host header, the HTTP
version, the client and the forwarding headers are exactly what a server
would pass on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.trace import Link, SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from infrakit.settings.models import ServiceSettings, TelemetrySettings
from infrakit.telemetry import TelemetryProvider, TracingMiddleware
from infrakit.telemetry.middleware import DEFAULT_KNOWN_METHODS, known_methods
from infrakit.testing import span_attributes

ABSENT = object()


async def ok(request: Any) -> Response:
    return PlainTextResponse("ok")


async def created(request: Any) -> Response:
    return PlainTextResponse("made", status_code=201)


async def status(request: Any) -> Response:
    return PlainTextResponse("s", status_code=int(request.path_params["code"]))


async def boom(request: Any) -> Response:
    raise ValueError("kaboom")


def inner_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/items/{item_id}", ok, methods=["GET", "HEAD", "PROPFIND"]),
            Route("/items", created, methods=["POST", "OPTIONS"]),
            Route("/status/{code:int}", status),
            Route("/boom", boom),
            Mount("/api", routes=[Mount("/v2", routes=[Route("/users/{uid}", ok)])]),
        ]
    )


@dataclass
class Case:
    id: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    query: str = ""
    http_version: str = "1.1"
    scheme: str = "http"
    name: str = ""
    status: StatusCode = StatusCode.UNSET
    code: int = 200
    attributes: dict[str, Any] = field(default_factory=dict)
    metric: dict[str, Any] = field(default_factory=dict)


HOST = {"host": "shop.example.com:8080"}

CASES = [
    Case(
        "get-with-route", "GET", "/items/7", HOST, name="GET /items/{item_id}",
        attributes={
            "http.request.method": "GET", "url.path": "/items/7", "url.scheme": "http",
            "http.route": "/items/{item_id}", "http.response.status_code": 200,
            "server.address": "shop.example.com", "server.port": 8080,
            "client.address": "10.1.2.3", "network.protocol.version": "1.1",
            "url.query": ABSENT, "error.type": ABSENT, "http.request.method_original": ABSENT,
        },
        metric={
            "http.request.method": "GET", "url.scheme": "http", "http.route": "/items/{item_id}",
            "http.response.status_code": 200, "network.protocol.version": "1.1",
            "error.type": ABSENT, "server.address": ABSENT, "client.address": ABSENT,
        },
    ),
    Case(
        "post-201", "POST", "/items", HOST, name="POST /items", code=201,
        attributes={"http.request.method": "POST", "http.response.status_code": 201},
        metric={"http.request.method": "POST", "http.response.status_code": 201},
    ),
    Case(
        "query-string", "GET", "/items/1", HOST, query="page=2&sort=asc",
        name="GET /items/{item_id}", attributes={"url.query": "page=2&sort=asc"},
        metric={"url.query": ABSENT},
    ),
    Case(
        "route-through-mounts", "GET", "/api/v2/users/9", HOST, name="GET /api/v2/users/{uid}",
        attributes={"http.route": "/api/v2/users/{uid}", "url.path": "/api/v2/users/9"},
        metric={"http.route": "/api/v2/users/{uid}"},
    ),
    Case(
        "no-route-404", "GET", "/nowhere", HOST, name="GET", code=404,
        attributes={"http.route": ABSENT, "http.response.status_code": 404, "error.type": ABSENT},
        metric={"http.route": ABSENT, "http.response.status_code": 404, "error.type": ABSENT},
    ),
    Case(
        "client-error-is-unset", "GET", "/status/400", HOST, name="GET /status/{code:int}",
        code=400, attributes={"http.response.status_code": 400, "error.type": ABSENT},
    ),
    Case(
        "server-error", "GET", "/status/503", HOST, name="GET /status/{code:int}",
        status=StatusCode.ERROR, code=503,
        attributes={"http.response.status_code": 503, "error.type": "503"},
        metric={"error.type": "503", "http.response.status_code": 503},
    ),
    Case(
        "exception", "GET", "/boom", HOST, name="GET /boom", status=StatusCode.ERROR, code=500,
        attributes={"error.type": "ValueError", "http.response.status_code": 500},
        metric={"error.type": "ValueError", "http.response.status_code": 500},
    ),
    Case(
        "unknown-method", "FOO", "/items/1", HOST, name="HTTP /items/{item_id}", code=405,
        attributes={"http.request.method": "_OTHER", "http.request.method_original": "FOO"},
        metric={"http.request.method": "_OTHER", "http.request.method_original": ABSENT},
    ),
    Case(
        "head", "HEAD", "/items/1", HOST, name="HEAD /items/{item_id}",
        attributes={"http.request.method": "HEAD"},
    ),
    Case(
        "options", "OPTIONS", "/items", HOST, name="OPTIONS /items", code=201,
        attributes={"http.request.method": "OPTIONS"},
    ),
    Case(
        "host-without-port-https", "GET", "/items/1", {"host": "shop.example.com"},
        scheme="https", name="GET /items/{item_id}",
        attributes={
            "server.address": "shop.example.com", "server.port": 443, "url.scheme": "https",
        },
        metric={"url.scheme": "https"},
    ),
    Case(
        "ipv6-host", "GET", "/items/1", {"host": "[2001:db8::1]:8443"}, scheme="https",
        name="GET /items/{item_id}",
        attributes={"server.address": "2001:db8::1", "server.port": 8443},
    ),
    Case(
        "http2", "GET", "/items/1", HOST, http_version="2", name="GET /items/{item_id}",
        attributes={"network.protocol.version": "2"},
        metric={"network.protocol.version": "2"},
    ),
    Case(
        "forwarded-headers-untrusted", "GET", "/items/1",
        {**HOST, "x-forwarded-host": "evil.example", "x-forwarded-proto": "https",
         "x-forwarded-for": "6.6.6.6"},
        name="GET /items/{item_id}",
        attributes={
            "server.address": "shop.example.com", "url.scheme": "http",
            "client.address": "10.1.2.3",
        },
    ),
]  # fmt: skip


@pytest.fixture
def provider() -> Iterator[TelemetryProvider]:
    telemetry = TelemetryProvider(TelemetrySettings(exporter="memory"), ServiceSettings(name="t"))
    telemetry.initialize()
    try:
        yield telemetry
    finally:
        telemetry.shutdown()


async def serve(app: Any, case: Case) -> int:
    """Call the ASGI app with the scope a server would build; the status it answered."""
    raw_headers = [(k.encode(), v.encode()) for k, v in case.headers.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": case.http_version,
        "method": case.method, "scheme": case.scheme, "path": case.path,
        "raw_path": case.path.encode(),
        "root_path": "", "query_string": case.query.encode(), "headers": raw_headers,
        "client": ("10.1.2.3", 52000), "server": ("10.0.0.5", 8000),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with contextlib.suppress(ValueError):  # re-raised to the server after the 500 was sent
        await app(scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


def check(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    for key, value in expected.items():
        if value is ABSENT:
            assert key not in found, f"{where}: {key} should be absent, is {found.get(key)!r}"
        else:
            assert found.get(key) == value, f"{where}: {key} is {found.get(key)!r}, not {value!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_conformance(case: Case, provider: TelemetryProvider) -> None:
    app = TracingMiddleware(inner_app(), provider)
    assert await serve(app, case) == case.code
    (span,) = provider.finished_spans()
    assert span.name == case.name
    assert span.kind == SpanKind.SERVER
    assert span.status.status_code == case.status
    attributes = span_attributes(span)
    check(attributes, case.attributes, "span")
    # never on a span: a server-made id as if it were a request header
    assert not any(k.startswith("http.request.header.") for k in attributes)
    (point,) = [attrs for attrs, _ in provider.metrics()["http.server.request.duration"]]
    check(point, case.metric, "metric")


class TestOptIns:
    """What the profile switches on: proxies it trusts, headers it records, its methods."""

    async def test_a_trusted_proxy_names_server_scheme_and_client(
        self, provider: TelemetryProvider
    ) -> None:
        case = CASES[-1]
        app = TracingMiddleware(inner_app(), provider, trusted_proxy=True)
        await serve(app, case)
        attributes = span_attributes(provider.finished_spans()[0])
        assert attributes["server.address"] == "evil.example"  # as the proxy says
        assert attributes["server.port"] == 443  # the forwarded scheme's default
        assert attributes["url.scheme"] == "https"
        assert attributes["client.address"] == "6.6.6.6"

    async def test_a_forwarded_scheme_is_http_or_https_only(
        self, provider: TelemetryProvider
    ) -> None:
        """A client's own X-Forwarded-Proto passed through must not mint metric labels."""
        case = Case("s", "GET", "/items/1", {**HOST, "x-forwarded-proto": "gopher"})
        app = TracingMiddleware(inner_app(), provider, trusted_proxy=True)
        await serve(app, case)
        assert span_attributes(provider.finished_spans()[0])["url.scheme"] == "http"
        (point,) = [attrs for attrs, _ in provider.metrics()["http.server.request.duration"]]
        assert point["url.scheme"] == "http"

    async def test_captured_headers_are_lower_case_string_arrays(
        self, provider: TelemetryProvider
    ) -> None:
        case = Case("h", "GET", "/items/1", {**HOST, "X-Request-ID": "r-1", "Accept": "a/b"})
        app = TracingMiddleware(inner_app(), provider, capture_request_headers=["X-Request-Id"])
        await serve(app, case)
        attributes = span_attributes(provider.finished_spans()[0])
        assert attributes["http.request.header.x-request-id"] == ("r-1",)
        assert "http.request.header.accept" not in attributes
        assert attributes["infrakit.request_id"] == "r-1"  # the kit's own id, its own key

    async def test_a_generated_request_id_is_no_request_header(
        self, provider: TelemetryProvider
    ) -> None:
        app = TracingMiddleware(inner_app(), provider, capture_request_headers=["x-request-id"])
        await serve(app, Case("g", "GET", "/items/1", HOST))
        attributes = span_attributes(provider.finished_spans()[0])
        assert "http.request.header.x-request-id" not in attributes
        assert len(attributes["infrakit.request_id"]) == 32

    async def test_propfind_as_a_known_method(self, provider: TelemetryProvider) -> None:
        methods = [*DEFAULT_KNOWN_METHODS, "PROPFIND"]
        app = TracingMiddleware(inner_app(), provider, known_methods=methods)
        await serve(app, Case("p", "PROPFIND", "/items/1", HOST))
        span = provider.finished_spans()[0]
        assert span.name == "PROPFIND /items/{item_id}"
        assert span_attributes(span)["http.request.method"] == "PROPFIND"

    def test_known_methods_from_the_environment(self) -> None:
        environ = {"OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS": "GET, PROPFIND"}
        assert known_methods(None, environ) == {"GET", "PROPFIND"}
        assert known_methods(None, {}) == DEFAULT_KNOWN_METHODS
        assert known_methods(["GET"], environ) == {"GET"}  # the profile wins

    def test_the_profile_keys_are_checked(self) -> None:
        from pydantic import ValidationError

        settings = TelemetrySettings(capture_request_headers=["X-Request-Id"])
        assert settings.capture_request_headers == ["x-request-id"]
        with pytest.raises(ValidationError, match="upper-case token like PROPFIND"):
            TelemetrySettings(known_methods=["propfind"])
        with pytest.raises(ValidationError, match="not an HTTP header name"):
            TelemetrySettings(capture_request_headers=["x request"])


class TestRouteTemplatesAreNotScrubbed:
    """A route template is code from the routing table: ``{code:int}`` is no
    name=value pair (the span scrubber made it ``{code:[REDACTED]``). Anything
    else in a span name is still scrubbed, and so is ``http.route`` on spans
    the kit's middleware did not make (another instrumentation may put a raw
    path there)."""

    def spans(
        self,
        name: str,
        route: str | None,
        *,
        kind: SpanKind = SpanKind.SERVER,
        scope: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        telemetry = TelemetryProvider(TelemetrySettings(exporter="memory"), ServiceSettings())
        telemetry.initialize()
        try:
            tracer = (
                telemetry.tracer if scope is None else telemetry.tracer_provider.get_tracer(scope)  # type: ignore[union-attr]
            )
            with tracer.start_as_current_span(name, kind=kind) as span:
                if route is not None:
                    span.set_attribute("http.route", route)
            (finished,) = telemetry.finished_spans()
        finally:
            telemetry.shutdown()
        return finished.name, span_attributes(finished)

    def test_the_server_span_name_and_route_stay(self) -> None:
        name, attributes = self.spans("GET /reset/{token:str}", "/reset/{token:str}")
        assert name == "GET /reset/{token:str}"
        assert attributes["http.route"] == "/reset/{token:str}"

    def test_a_name_that_is_not_the_route_is_scrubbed(self) -> None:
        name, _ = self.spans("GET /reset token=s3cr3t-value", "/reset")
        assert "s3cr3t-value" not in name
        name, _ = self.spans("login password=hunter2", None)
        assert "hunter2" not in name

    def test_a_template_with_a_secret_outside_its_placeholders_is_scrubbed(self) -> None:
        route = "/reset/password=s3cr3t-value/{token:str}"
        name, attributes = self.spans(f"GET {route}", route)
        assert "s3cr3t-value" not in name
        assert "s3cr3t-value" not in attributes["http.route"]

    @pytest.mark.parametrize(
        ("kind", "scope"),
        [
            (SpanKind.SERVER, "opentelemetry.instrumentation.asgi"),
            (SpanKind.INTERNAL, None),  # the kit's tracer, but not its server span
        ],
    )
    def test_a_route_on_another_span_is_scrubbed(self, kind: SpanKind, scope: str | None) -> None:
        raw = "/reset/token=s3cr3t-value"
        name, attributes = self.spans(f"GET {raw}", raw, kind=kind, scope=scope)
        assert "s3cr3t-value" not in name
        assert "s3cr3t-value" not in attributes["http.route"]


class TestEventsAndLinksAreScrubbed:
    """The span scrubber's fast path (no events, no links: nothing copied)
    still reads events and links when a span has them."""

    def test_event_and_link_attributes(self) -> None:
        telemetry = TelemetryProvider(TelemetrySettings(exporter="memory"), ServiceSettings())
        telemetry.initialize()
        try:
            with telemetry.tracer.start_as_current_span("linked") as first:
                pass
            link = Link(first.get_span_context(), {"note": "token=l1nk-s3cret"})
            with telemetry.tracer.start_as_current_span("work", links=[link]) as span:
                span.add_event("login", {"body": "password=ev3nt-s3cret"})
            plain, scrubbed = telemetry.finished_spans()
        finally:
            telemetry.shutdown()
        assert plain.events == ()
        assert plain.links == ()
        (event,) = scrubbed.events
        (kept_link,) = scrubbed.links
        assert "ev3nt-s3cret" not in str(dict(event.attributes or {}))
        assert "l1nk-s3cret" not in str(dict(kept_link.attributes or {}))
        assert event.name == "login"
