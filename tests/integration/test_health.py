"""Health as orchestrators read it: up, degraded, down; the collector asked a real OTLP question."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infrakit import Infra, load_settings
from infrakit.cli import main
from infrakit.telemetry.exporters.otlp import OtlpTelemetrySettings
from infrakit.testing.otlp import OtlpReceiver

pytestmark = pytest.mark.integration

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens on loopback


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def not_a_collector() -> Iterator[str]:
    """An HTTP server that accepts connections and answers, but not OTLP (501 to a POST)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def otlp(endpoint: str, protocol: str = "http/protobuf") -> OtlpTelemetrySettings:
    return OtlpTelemetrySettings.model_validate(
        {"exporter": "otlp", "endpoint": endpoint, "protocol": protocol, "timeout_s": 10}
    )


class TestCollectorQuestion:
    """The telemetry check sends an empty export, as a collector would receive it."""

    @pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
    async def test_a_collector_answers(self, receiver: OtlpReceiver, protocol: str) -> None:
        endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
        before = receiver.requests
        result = await otlp(endpoint, protocol).check({})
        assert result.ok, result.error
        assert receiver.requests == before + 1  # the question reached the receiver

    async def test_a_port_that_is_not_a_collector(self, not_a_collector: str) -> None:
        """A TCP connect alone said 'up' here."""
        result = await otlp(not_a_collector).check({})
        assert not result.ok
        assert result.error == f"collector at {not_a_collector} answered HTTP 501"

    async def test_grpc_to_a_port_that_is_not_a_collector(self, not_a_collector: str) -> None:
        result = await otlp(not_a_collector, "grpc").check({})
        assert not result.ok
        assert result.error is not None
        assert result.error.startswith(f"collector at {not_a_collector} answered ")

    async def test_nothing_listening(self) -> None:
        result = await otlp(CLOSED).check({})
        assert not result.ok
        assert result.error == f"collector at {CLOSED} unreachable: ConnectionError"

    async def test_the_secret_headers_are_sent_and_never_shown(self, not_a_collector: str) -> None:
        settings = OtlpTelemetrySettings.model_validate(
            {"exporter": "otlp", "endpoint": not_a_collector, "headers": {"x-api-key": "k3y"}}
        )
        result = await settings.check({})
        assert "k3y" not in (result.error or "")


def production(telemetry_endpoint: str, **overrides: object) -> dict[str, object]:
    return {
        "telemetry.endpoint": telemetry_endpoint,
        "database.url": "sqlite+aiosqlite:///:memory:",
        "database.auto_migrate": True,
        "tokens.backend": "memory",
        "logging.level": "WARNING",
        "auth.secret": "health-test-jwt-secret-0123456789abcdef",
        **overrides,
    }


class TestDegraded:
    """Telemetry trouble is reported as degraded and never fails readiness."""

    async def test_collector_down_is_degraded_not_down(self) -> None:
        settings = load_settings("production", environ={}, overrides=production(CLOSED))
        async with Infra(settings) as infra:
            report = await infra.health(timeout_s=10)
        by_name = {c.component: c.status for c in report.components}
        assert by_name == {
            "telemetry": "degraded",
            "database": "up",
            "tokens": "up",
            "audit": "up",
        }
        assert report.status == "degraded"
        assert report.ok
        assert report.degraded == ["telemetry"]
        assert report.to_dict()["status"] == "degraded"

    def test_check_exits_0_and_says_degraded(self, capsys: pytest.CaptureFixture[str]) -> None:
        argv = ["check", "production", "--json", "--timeout", "10"]
        for key, value in production(CLOSED).items():
            argv += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, err
        assert json.loads(out)["status"] == "degraded"
        assert "degraded: telemetry" in err
        assert "down:" not in err

    def test_check_still_fails_when_the_database_is_down(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = "postgresql+asyncpg://app:pw@127.0.0.1:9/db"
        argv = ["check", "production", "--timeout", "10"]
        for key, value in production(CLOSED, **{"database.url": url}).items():
            argv += ["--set", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 1
        assert "down: database, audit" in err
        line = next(line for line in out.splitlines() if line.strip().startswith("database"))
        assert "postgresql+asyncpg://app:***@127.0.0.1:9/db" in line  # named, masked
        assert "pw@" not in out + err


class TestReadinessEndpoint:
    """What a Kubernetes probe gets from the FastAPI integration."""

    async def test_collector_down_is_ready_and_degraded(self) -> None:
        import httpx
        from fastapi import FastAPI

        from infrakit.integrations.fastapi import install

        app = FastAPI()
        install(app, load_settings("production", environ={}, overrides=production(CLOSED)))
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            ready = await client.get("/health/ready")
        assert (ready.status_code, ready.json()) == (200, {"status": "degraded"})


class TestLocalCollector:
    """`infrakit otlp-receiver`: the production-shaped demo on one machine."""

    @staticmethod
    def start(*argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "infrakit", "otlp-receiver", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def lines_until(process: subprocess.Popen[str], marker: str) -> list[str]:
        """stdout lines up to the first holding ``marker`` (a generous guard against a hang)."""
        seen: list[str] = []
        done = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                seen.append(line)
                if marker in line:
                    done.set()
                    return

        threading.Thread(target=read, daemon=True).start()
        assert done.wait(60), f"no {marker!r} in {seen}"
        return seen

    def test_prints_what_arrives_and_check_says_up(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from infrakit.settings.models import ServiceSettings
        from infrakit.telemetry import TelemetryProvider
        from tests.integration.redisprocs import free_port

        http_port, grpc_port = free_port(), free_port()
        process = self.start("--http-port", str(http_port), "--grpc-port", str(grpc_port))
        try:
            self.lines_until(process, "listening for OTLP")
            for protocol, port in (("http/protobuf", http_port), ("grpc", grpc_port)):
                provider = TelemetryProvider(
                    otlp(f"http://127.0.0.1:{port}", protocol),
                    ServiceSettings(name="orders"),
                )
                provider.initialize()
                with provider.tracer.start_as_current_span(f"checkout-{port}") as span:
                    span.set_attribute("password", "hunter2")
                provider.shutdown()
                line = self.lines_until(process, f"checkout-{port}")[-1]
                assert line.startswith(f"span  orders  checkout-{port}")
                assert "hunter2" not in line
            argv = ["check", "production", "--timeout", "10"]
            for key, value in production(f"http://127.0.0.1:{http_port}").items():
                argv += ["--set", f"{key}={value}"]
            assert main(argv) == 0
            out, err = capsys.readouterr()
            assert "degraded" not in out + err
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        assert code == 0

    def test_a_port_in_use(self, not_a_collector: str) -> None:
        port = not_a_collector.rsplit(":", 1)[1]
        process = self.start("--http-port", port, "--grpc-port", "0")
        _, err = process.communicate(timeout=60)
        assert process.returncode == 1
        assert "cannot listen for OTLP" in err
        assert "--http-port" in err
