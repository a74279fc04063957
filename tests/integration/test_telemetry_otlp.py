"""Real spans through the real OTLP exporters to a real receiver on loopback."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from infrakit import Infra, load_settings
from infrakit.logging import get_request_id
from infrakit.settings.models import ServiceSettings, TelemetrySettings
from infrakit.telemetry import TelemetryProvider, TracingMiddleware, set_telemetry, traced
from infrakit.testing.otlp import OtlpReceiver

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


async def hello(request: Any) -> PlainTextResponse:
    await asyncio.sleep(0)
    return PlainTextResponse(get_request_id() or "")


async def fail(request: Any) -> PlainTextResponse:
    return PlainTextResponse("no", status_code=503)


def app_with(provider: TelemetryProvider | None) -> Any:
    return TracingMiddleware(
        Starlette(routes=[Route("/hello/{name}", hello), Route("/fail", fail)]), provider
    )


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


class TestExportToReceiver:
    """What the receiver decodes: names, attributes, status, resource."""

    @pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
    async def test_spans_arrive(self, receiver: OtlpReceiver, protocol: str) -> None:
        endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
        settings = load_settings(
            "production",
            environ={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
            overrides={
                "telemetry.protocol": protocol,
                "service.name": "orders-api",
                "service.version": "1.4.2",
                "database.url": "sqlite+aiosqlite:///:memory:",
                "database.auto_migrate": True,
                "tokens.backend": "memory",
                "logging.level": "WARNING",
            },
        )
        async with Infra(settings):

            @traced("checkout", attributes={"cart.items": 3})
            async def checkout() -> None:
                await asyncio.sleep(0)

            await checkout()
            async with client(app_with(None)) as c:
                await c.get("/hello/ann")
                await c.get("/fail")
        spans = {s.name: s for s in receiver.wait_for_spans(3)}
        assert set(spans) >= {"checkout", "GET /hello/{name}", "GET /fail"}
        assert spans["checkout"].attributes["cart.items"] == 3
        server = spans["GET /hello/{name}"]
        assert server.kind == 2  # SERVER
        assert server.attributes["http.route"] == "/hello/{name}"
        assert server.attributes["http.response.status_code"] == 200
        assert server.status_code == 0
        assert spans["GET /fail"].status_code == 2  # ERROR for 5xx
        assert server.resource["service.name"] == "orders-api"
        assert server.resource["service.version"] == "1.4.2"
        assert server.resource["deployment.environment"] == "production"
        assert "http.server.request.duration" in receiver.metric_names

    async def test_headers_and_gzip_reach_the_collector(self, receiver: OtlpReceiver) -> None:
        provider = TelemetryProvider(
            TelemetrySettings(
                exporter="otlp",
                endpoint=receiver.http_endpoint,
                compression="gzip",
                headers={"x-api-key": "k"},
            ),
            ServiceSettings(name="gz"),
        )
        provider.initialize()
        with provider.tracer.start_as_current_span("zipped"):
            pass
        provider.shutdown()
        assert [s.name for s in receiver.wait_for_spans(1)] == ["zipped"]


def _provider(endpoint: str, **kwargs: Any) -> TelemetryProvider:
    provider = TelemetryProvider(
        TelemetrySettings(
            exporter="otlp", endpoint=endpoint, timeout_s=1.0, max_queue_size=256, **kwargs
        ),
        ServiceSettings(name="rel"),
    )
    provider.initialize()
    return provider


async def _latencies(app: Any, n: int) -> list[float]:
    out = []
    async with client(app) as c:
        for i in range(n):
            start = time.perf_counter()
            response = await c.get(f"/hello/{i}")
            out.append(time.perf_counter() - start)
            assert response.status_code == 200
    return out


def _p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99) - 1]


class TestCollectorTrouble:
    """A collector that is down or hangs never slows or breaks requests."""

    @pytest.mark.parametrize("trouble", ["down", "hanging"])
    async def test_requests_keep_working(
        self, trouble: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        from tests.integration.redisprocs import free_port

        hanging = OtlpReceiver(grpc=False, hang=True).start() if trouble == "hanging" else None
        endpoint = hanging.http_endpoint if hanging else f"http://127.0.0.1:{free_port()}"
        baseline_app = app_with(None)
        await _latencies(baseline_app, 50)  # warm up
        provider = _provider(endpoint)
        traced_app = app_with(provider)
        try:
            with caplog.at_level(logging.WARNING):
                tracemalloc.start()
                base = await _latencies(baseline_app, 500)
                ours = await _latencies(traced_app, 500)
                await asyncio.sleep(1.5)  # let the exporter fail at least once
                before = tracemalloc.get_traced_memory()[0]
                await _latencies(traced_app, 500)
                after = tracemalloc.get_traced_memory()[0]
                tracemalloc.stop()
            added = _p99(ours) - _p99(base)
            assert added < 0.005, f"added p99 {added * 1000:.2f} ms"
            # bounded: the span queue holds at most 256 spans
            assert after - before < 2_000_000, f"memory grew by {after - before} bytes"
            await asyncio.to_thread(provider.force_flush, 0.5)
            warnings = [r for r in caplog.records if "collector seems down" in r.getMessage()]
            assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
            assert statistics.median(ours) < 0.05
        finally:
            await asyncio.to_thread(provider.shutdown)
            if hanging:
                hanging.stop()


class TestConcurrency:
    """1,000 concurrent requests: every span ends, no context leaks."""

    async def test_thousand_concurrent_requests(self) -> None:
        provider = TelemetryProvider(
            TelemetrySettings(exporter="memory"), ServiceSettings(name="c")
        )
        provider.initialize()
        set_telemetry(provider)
        async with client(app_with(provider)) as c:
            responses = await asyncio.gather(*(c.get(f"/hello/{i}") for i in range(1000)))
        spans = provider.finished_spans()
        assert len(spans) == 1000
        assert all(s.end_time is not None for s in spans)
        by_request = {s.attributes["http.request.header.x_request_id"]: s for s in spans}
        assert len(by_request) == 1000
        for response in responses:
            rid = response.headers["x-request-id"]
            assert response.text == rid  # the handler saw its own request id
            span = by_request[rid]
            assert response.headers["traceparent"].split("-")[2] == format(
                span.context.span_id, "016x"
            )
        provider.shutdown()
