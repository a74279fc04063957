from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute

from infrakit.logging import get_request_id
from infrakit.settings.models import ServiceSettings, TelemetrySettings
from infrakit.telemetry import TelemetryProvider, TracingMiddleware
from infrakit.telemetry.middleware import compile_excluded
from infrakit.testing import span_attributes


async def item(request: Any) -> Response:
    return JSONResponse({"id": request.path_params["item_id"], "rid": get_request_id()})


async def status(request: Any) -> Response:
    return PlainTextResponse("s", status_code=int(request.path_params["code"]))


async def boom(request: Any) -> Response:
    raise RuntimeError("kaboom")


async def ws(websocket: Any) -> None:
    await websocket.accept()
    await websocket.send_text("hi")
    await websocket.close()


def make_app(telemetry: TelemetryProvider | None = None, **kwargs: Any) -> Any:
    inner = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/status/{code:int}", status),
            Route("/boom", boom),
            Route("/healthz", lambda r: PlainTextResponse("ok")),
            Route("/metrics", lambda r: PlainTextResponse("m")),
            Route("/v1/health", lambda r: PlainTextResponse("ok")),
            Mount("/api", routes=[Route("/users/{uid}", item)]),
            Mount("/tenants/{tenant}", routes=[Route("/items/{item_id}", item)]),
            WebSocketRoute("/ws", ws),
        ]
    )
    return TracingMiddleware(inner, telemetry, **kwargs)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


class TestSpans:
    """Server spans named by route template, with HTTP semantic conventions."""

    async def test_name_and_attributes(self, memory_telemetry: TelemetryProvider) -> None:
        async with client(make_app()) as c:
            response = await c.get("/items/42?x=1", headers={"user-agent": "t/1"})
        assert response.status_code == 200
        (span,) = memory_telemetry.finished_spans()
        assert span.name == "GET /items/{item_id}"
        assert span.kind is SpanKind.SERVER
        attrs = span_attributes(span)
        assert attrs["http.route"] == "/items/{item_id}"
        assert attrs["http.request.method"] == "GET"
        assert attrs["http.response.status_code"] == 200
        assert attrs["url.path"] == "/items/42"
        assert attrs["url.query"] == "x=1"
        assert attrs["user_agent.original"] == "t/1"
        assert span.status.status_code is StatusCode.UNSET

    async def test_mounted_route_template(self, memory_telemetry: TelemetryProvider) -> None:
        async with client(make_app()) as c:
            await c.get("/api/users/7")
        (span,) = memory_telemetry.finished_spans()
        assert span.name == "GET /api/users/{uid}"

    @pytest.mark.parametrize(
        "tenant", ["acme", "password=hunter2", "ann@example.com", "42", "items", "t", "tenants"]
    )
    async def test_a_mount_with_a_path_parameter(
        self, memory_telemetry: TelemetryProvider, tenant: str
    ) -> None:
        """The mount's part of the route is the request's own text: its
        parameter comes back as a placeholder, and its value (a secret, an
        email) never reaches the span name or http.route."""
        async with client(make_app()) as c:
            response = await c.get(f"/tenants/{tenant}/items/3")
        assert response.status_code == 200
        (span,) = memory_telemetry.finished_spans()
        assert span.name == "GET /tenants/{tenant}/items/{item_id}"
        assert span_attributes(span)["http.route"] == "/tenants/{tenant}/items/{item_id}"

    async def test_unmatched_route_has_no_route(self, memory_telemetry: TelemetryProvider) -> None:
        async with client(make_app()) as c:
            response = await c.get("/nope/123")
        assert response.status_code == 404
        (span,) = memory_telemetry.finished_spans()
        assert span.name == "GET"
        assert "http.route" not in span_attributes(span)
        assert span.status.status_code is StatusCode.UNSET

    @pytest.mark.parametrize(
        ("code", "error"),
        [(200, False), (302, False), (404, False), (499, False), (500, True), (503, True)],
    )
    async def test_status_mapping(
        self, memory_telemetry: TelemetryProvider, code: int, error: bool
    ) -> None:
        async with client(make_app()) as c:
            await c.get(f"/status/{code}", follow_redirects=False)
        (span,) = memory_telemetry.finished_spans()
        assert (span.status.status_code is StatusCode.ERROR) is error
        assert (span_attributes(span).get("error.type") == str(code)) is error

    async def test_unhandled_exception_answers_500(
        self, memory_telemetry: TelemetryProvider
    ) -> None:
        async with client(make_app()) as c:
            response = await c.get("/boom")
        assert response.status_code == 500
        assert response.headers["x-request-id"]
        (span,) = memory_telemetry.finished_spans()
        assert span.status.status_code is StatusCode.ERROR
        assert span_attributes(span)["error.type"] == "RuntimeError"
        assert span_attributes(span)["http.response.status_code"] == 500
        assert [e.name for e in span.events] == ["exception"]

    async def test_status_outside_100_599_is_an_error(
        self, memory_telemetry: TelemetryProvider
    ) -> None:
        async def odd(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 600, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        app = TracingMiddleware(odd)
        await app(
            {"type": "http", "method": "GET", "path": "/", "headers": []}, _receive, _collect([])
        )
        (span,) = memory_telemetry.finished_spans()
        assert span.status.status_code is StatusCode.ERROR

    async def test_client_gone_is_not_an_error(self, memory_telemetry: TelemetryProvider) -> None:
        async def slow(scope: Any, receive: Any, send: Any) -> None:
            await asyncio.sleep(10)

        app = TracingMiddleware(slow)
        task = asyncio.create_task(
            app(
                {"type": "http", "method": "GET", "path": "/s", "headers": []},
                _receive,
                _collect([]),
            )
        )
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (span,) = memory_telemetry.finished_spans()
        assert span.status.status_code is StatusCode.UNSET

    async def test_unknown_method(self, memory_telemetry: TelemetryProvider) -> None:
        async with client(make_app()) as c:
            await c.request("PURGE", "/items/1")
        (span,) = memory_telemetry.finished_spans()
        assert span_attributes(span)["http.request.method"] == "_OTHER"
        assert span_attributes(span)["http.request.method_original"] == "PURGE"
        assert span.name.startswith("HTTP")


class TestPropagationAndRequestIds:
    """traceparent in and out; x-request-id validated and echoed."""

    async def test_incoming_traceparent_is_continued(
        self, memory_telemetry: TelemetryProvider
    ) -> None:
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        async with client(make_app()) as c:
            response = await c.get("/items/1", headers={"traceparent": parent})
        (span,) = memory_telemetry.finished_spans()
        assert format(span.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
        assert span.parent is not None
        assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"
        out = response.headers["traceparent"]
        assert out == f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"

    async def test_request_id_echoed_and_in_logging_context(
        self, memory_telemetry: TelemetryProvider
    ) -> None:
        async with client(make_app()) as c:
            response = await c.get("/items/1", headers={"x-request-id": "abc-123"})
        assert response.headers["x-request-id"] == "abc-123"
        assert response.json()["rid"] == "abc-123"
        assert get_request_id() is None  # reset after the request

    @pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "semi;colon", "ünï"])
    async def test_malformed_request_id_is_replaced(
        self, memory_telemetry: TelemetryProvider, bad: str
    ) -> None:
        async with client(make_app()) as c:
            response = await c.get("/items/1", headers=[(b"x-request-id", bad.encode("utf-8"))])
        rid = response.headers["x-request-id"]
        assert rid != bad
        assert len(rid) == 32

    async def test_request_id_without_telemetry(self) -> None:
        async with client(make_app()) as c:
            response = await c.get("/items/1")
        assert len(response.headers["x-request-id"]) == 32
        assert response.json()["rid"] == response.headers["x-request-id"]

    @pytest.mark.parametrize("traced", [True, False], ids=["telemetry-on", "telemetry-off"])
    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ([(b"x-request-id", b"abc-123")], "abc-123"),
            # ASGI asks for lower-case names but does not require them
            ([(b"X-Request-ID", b"abc-123")], "abc-123"),
            # the first of two wins, as for any single-valued header
            ([(b"x-request-id", b"first"), (b"x-request-id", b"second")], "first"),
            ([(b"x-request-idx", b"nope"), (b"x-request-i", b"nope")], None),
            ([(b"x-request-id", b"has space")], None),
            ([(b"x-request-id", b"abc\n")], None),  # "$" would have let it through
        ],
    )
    async def test_request_id_read_off_the_raw_headers(
        self,
        request: pytest.FixtureRequest,
        traced: bool,
        headers: list[tuple[bytes, bytes]],
        expected: str | None,
    ) -> None:
        """The same request id whether or not a span is made (without one
        the middleware reads the ASGI header list directly)."""
        if traced:
            request.getfixturevalue("memory_telemetry")
        sent: list[dict[str, Any]] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/items/1",
            "raw_path": b"/items/1",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"test"), *headers],
        }
        await make_app()(scope, receive, send)
        start, body = sent[0], sent[-1]
        rids = [v.decode() for k, v in start["headers"] if k == b"x-request-id"]
        assert len(rids) == 1
        assert httpx.Response(200, content=body["body"]).json()["rid"] == rids[0]
        if expected is None:
            assert len(rids[0]) == 32
            assert int(rids[0], 16) >= 0  # 32 hex digits
        else:
            assert rids[0] == expected

    async def test_generated_request_ids_differ(self) -> None:
        async with client(make_app()) as c:
            ids = {(await c.get("/items/1")).headers["x-request-id"] for _ in range(200)}
        assert len(ids) == 200


class TestExclusionAndMetrics:
    """Excluded paths: no span, no metric; metrics use templates and int codes."""

    async def test_excluded_paths(self, memory_telemetry: TelemetryProvider) -> None:
        async with client(make_app()) as c:
            for path in ("/healthz", "/metrics"):
                response = await c.get(path)
                assert response.headers["x-request-id"]
            await c.get("/v1/health")
        spans = memory_telemetry.finished_spans()
        assert [s.name for s in spans] == ["GET /v1/health"]
        points = memory_telemetry.metrics()["http.server.request.duration"]
        assert len(points) == 1

    def test_globs_are_anchored(self) -> None:
        excluded = compile_excluded(["/health*", "/metrics"])
        assert excluded("/health")
        assert excluded("/healthz")
        assert excluded("/health/live")
        assert not excluded("/v1/health")
        assert excluded("/metrics")
        assert not excluded("/metrics/x")
        with pytest.raises(ValueError, match="must start with '/'"):
            compile_excluded(["health"])

    async def test_metric_labels(self, memory_telemetry: TelemetryProvider) -> None:
        async with client(make_app()) as c:
            await c.get("/items/1")
            await c.get("/items/2")
            await c.get("/status/503")
        points = {
            (a["http.route"], a["http.response.status_code"]): p
            for a, p in memory_telemetry.metrics()["http.server.request.duration"]
        }
        assert points[("/items/{item_id}", 200)].count == 2
        assert isinstance(next(iter(points))[1], int)
        assert points[("/status/{code:int}", 503)].count == 1
        active = memory_telemetry.metrics()["http.server.active_requests"]
        assert all(p.value == 0 for _, p in active)

    async def test_metrics_after_the_provider_restarts(self) -> None:
        """A provider shut down and initialized again has a new meter: the
        middleware (and a new one) record through it, not the dead one."""
        provider = TelemetryProvider(TelemetrySettings(exporter="memory"), ServiceSettings())
        provider.initialize()
        app = make_app(provider)
        try:
            async with client(app) as c:
                await c.get("/items/1")
            provider.shutdown()
            provider.initialize()
            async with client(app) as c, client(make_app(provider)) as d:
                await c.get("/items/2")
                await d.get("/items/3")
            metrics = provider.metrics()
            (point,) = [p for _, p in metrics["http.server.request.duration"]]
            assert point.count == 2
            assert "http.server.active_requests" in metrics
        finally:
            provider.shutdown()

    async def test_active_requests_while_in_flight(
        self, memory_telemetry: TelemetryProvider
    ) -> None:
        """Requests in flight are counted by method and scheme, across every
        middleware on the provider, and read when the metrics are collected."""
        entered, release = asyncio.Event(), asyncio.Event()
        holding = 0

        async def slow(request: Any) -> Response:
            nonlocal holding
            holding += 1
            if holding == 3:
                entered.set()
            await release.wait()
            return PlainTextResponse("done")

        def app_with_slow_route() -> Any:
            return TracingMiddleware(
                Starlette(routes=[Route("/slow", slow, methods=["GET", "POST"])])
            )

        first, second = app_with_slow_route(), app_with_slow_route()

        def active() -> dict[tuple[str, str], int]:
            points = memory_telemetry.metrics()["http.server.active_requests"]
            return {
                (a["http.request.method"], a["url.scheme"]): p.value for a, p in points if p.value
            }

        async with client(first) as a, client(second) as b:
            calls = [
                asyncio.create_task(a.get("/slow")),
                asyncio.create_task(b.get("/slow")),
                asyncio.create_task(b.post("/slow")),
            ]
            await asyncio.wait_for(entered.wait(), 60)
            assert active() == {("GET", "http"): 2, ("POST", "http"): 1}
            release.set()
            assert [r.status_code for r in await asyncio.gather(*calls)] == [200, 200, 200]
        assert active() == {}

    async def test_websocket_and_lifespan_pass_through(
        self, memory_telemetry: TelemetryProvider
    ) -> None:
        seen: list[tuple[str, Any]] = []

        async def inner(scope: Any, receive: Any, send: Any) -> None:
            seen.append((scope["type"], send))

        app = TracingMiddleware(inner)
        sender = _collect([])
        for kind in ("websocket", "lifespan"):
            await app({"type": kind, "path": "/ws", "headers": []}, _receive, sender)
        assert [k for k, _ in seen] == ["websocket", "lifespan"]
        assert all(s is sender for _, s in seen)  # untouched: the very same send
        assert memory_telemetry.finished_spans() == ()


async def _receive() -> dict[str, Any]:
    await asyncio.sleep(3600)
    return {"type": "http.disconnect"}


def _collect(out: list[Any]) -> Any:
    async def send(message: Any) -> None:
        out.append(message)

    return send
