"""Real spans through the real OTLP exporters to a real receiver on loopback."""

from __future__ import annotations

import asyncio
import logging
import threading
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
from infrakit.telemetry.exporters.otlp import OtlpTelemetrySettings
from infrakit.testing import span_attributes
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
                "auth.secret": "otlp-test-jwt-secret-0123456789abcdef",
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
            OtlpTelemetrySettings(
                endpoint=receiver.http_endpoint,
                compression="gzip",
                headers={"x-api-key": "k"},
            ),
            ServiceSettings(name="gz"),
        )
        provider.initialize()
        try:
            with provider.tracer.start_as_current_span("zipped"):
                pass
        finally:
            provider.shutdown()
        assert [s.name for s in receiver.wait_for_spans(1)] == ["zipped"]


def _provider(endpoint: str, **kwargs: Any) -> TelemetryProvider:
    provider = TelemetryProvider(
        OtlpTelemetrySettings(endpoint=endpoint, max_queue_size=256, **kwargs),
        ServiceSettings(name="rel"),
    )
    provider.initialize()
    return provider


async def _ok_requests(app: Any, n: int) -> int:
    """Send ``n`` requests one after another; how many were answered 200."""
    ok = 0
    async with client(app) as c:
        for i in range(n):
            ok += (await c.get(f"/hello/{i}")).status_code == 200
    return ok


class TestCollectorTrouble:
    """A collector that is down or hangs never blocks or breaks requests.

    Asserted structurally (what completes while the exporter is stuck), not by
    timing; the latency cost is measured in benchmarks/bench_telemetry.py.
    """

    async def test_requests_complete_while_the_export_is_held(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        hanging = OtlpReceiver(grpc=False, hang=True).start()
        # A long export timeout: the one export the receiver holds keeps the
        # export thread blocked for the whole test (a second one would mean
        # it timed out and retried).
        provider = _provider(hanging.http_endpoint, timeout_s=120.0)
        app = app_with(provider)
        tracemalloc.start()
        try:
            # a full batch (128 spans) wakes the export thread, which the receiver then holds
            assert await _ok_requests(app, 200) == 200
            assert await asyncio.to_thread(hanging.wait_for_held, 1) == 1
            before = tracemalloc.get_traced_memory()[0]
            assert await _ok_requests(app, 500) == 500
            after = tracemalloc.get_traced_memory()[0]
            # every request completed while that one export was still held
            assert hanging.held == 1
            assert hanging.requests == 0
            # bounded: the span queue holds at most 256 spans, the rest are dropped
            assert after - before < 2_000_000, f"memory grew by {after - before} bytes"
            hanging.release()
            assert await asyncio.to_thread(provider.force_flush, 30.0)
            assert len(hanging.wait_for_spans(128)) >= 128  # the held batch got through
        finally:
            tracemalloc.stop()
            hanging.release()
            await asyncio.to_thread(provider.shutdown)
            hanging.stop()

    async def test_collector_down(self, caplog: pytest.LogCaptureFixture) -> None:
        from tests.integration.redisprocs import free_port

        provider = _provider(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
        app = app_with(provider)
        try:
            with caplog.at_level(logging.WARNING):
                assert await _ok_requests(app, 500) == 500
                await asyncio.to_thread(provider.force_flush, 5.0)
                assert await _ok_requests(app, 500) == 500
                await asyncio.to_thread(provider.force_flush, 5.0)
            warnings = [r for r in caplog.records if "collector seems down" in r.getMessage()]
            assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        finally:
            await asyncio.to_thread(provider.shutdown)

    async def test_stopping_does_not_wait_for_a_hanging_collector(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Shutdown's final flush is bounded by telemetry.shutdown_timeout_s: the
        receiver holds the export (and would for the exporter's 120 s timeout),
        yet shutdown returns, saying what it dropped."""
        hanging = OtlpReceiver(grpc=False, hang=True).start()
        provider = _provider(hanging.http_endpoint, timeout_s=120.0, shutdown_timeout_s=0.5)
        try:
            assert await _ok_requests(app_with(provider), 10) == 10  # queued, not yet exported
            with caplog.at_level(logging.WARNING):
                # generous guard only: without the bound this waits 120 s
                await asyncio.wait_for(asyncio.to_thread(provider.shutdown), timeout=60)
            # the final export was sent and is still held, unanswered
            assert await asyncio.to_thread(hanging.wait_for_held, 1) == 1
            assert hanging.requests == 0
            (warning,) = [
                r.getMessage() for r in caplog.records if "stopped without" in r.getMessage()
            ]
            assert "after 0.5 s (telemetry.shutdown_timeout_s) were dropped" in warning
            # the exporters were shut down under the flush: with the collector
            # gone it retries nothing (its exporters had 120 s of retries to go)
            hanging.release()
            hanging.stop()
            (flush,) = [t for t in threading.enumerate() if t.name == "infrakit-telemetry-shutdown"]
            await asyncio.to_thread(flush.join, 10)  # generous: it ends at once
            assert not flush.is_alive()
        finally:
            hanging.release()
            hanging.stop()


class TestConcurrency:
    """1,000 concurrent requests: every span ends, no context leaks."""

    async def test_thousand_concurrent_requests(self) -> None:
        provider = TelemetryProvider(
            TelemetrySettings(exporter="memory"), ServiceSettings(name="c")
        )
        provider.initialize()
        set_telemetry(provider)
        try:
            async with client(app_with(provider)) as c:
                responses = await asyncio.gather(*(c.get(f"/hello/{i}") for i in range(1000)))
            spans = provider.finished_spans()
        finally:
            provider.shutdown()
        assert len(spans) == 1000
        assert all(s.end_time is not None for s in spans)
        by_request = {span_attributes(s)["infrakit.request_id"]: s for s in spans}
        assert len(by_request) == 1000
        for response in responses:
            rid = response.headers["x-request-id"]
            assert response.text == rid  # the handler saw its own request id
            span = by_request[rid]
            assert response.headers["traceparent"].split("-")[2] == format(
                span.context.span_id, "016x"
            )
