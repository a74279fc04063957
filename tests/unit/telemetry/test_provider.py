from __future__ import annotations

import threading
from typing import Any

import pytest
from opentelemetry import trace

from infrakit import Infra, load_settings
from infrakit.errors import TelemetryError
from infrakit.settings.models import ServiceSettings, TelemetrySettings
from infrakit.telemetry import TelemetryProvider, get_telemetry


def memory(**kwargs: Any) -> TelemetryProvider:
    return TelemetryProvider(TelemetrySettings(exporter="memory"), ServiceSettings(**kwargs))


class TestInitialize:
    """Idempotent, thread-safe, and all-or-nothing."""

    def test_sixteen_threads_build_once(self, monkeypatch: pytest.MonkeyPatch) -> None:
        provider = memory(name="t")
        builds: list[object] = []
        real = TelemetryProvider._build

        def counting(self: TelemetryProvider) -> Any:
            built = real(self)
            builds.append(built)
            return built

        monkeypatch.setattr(TelemetryProvider, "_build", counting)
        barrier = threading.Barrier(16)
        seen: list[object] = []

        def run() -> None:
            barrier.wait()
            provider.initialize()
            seen.append(provider.tracer_provider)

        threads = [threading.Thread(target=run) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(builds) == 1
        assert len({id(s) for s in seen}) == 1
        provider.shutdown()

    def test_failed_initialize_leaves_nothing_and_can_retry(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from infrakit.telemetry.exporters.memory import MemoryTelemetrySettings

        provider = memory()
        real = MemoryTelemetrySettings.exporters
        calls = {"n": 0}

        def flaky(self: MemoryTelemetrySettings, context: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise TelemetryError("exporter set-up failed")
            return real(self, context)

        monkeypatch.setattr(MemoryTelemetrySettings, "exporters", flaky)
        with pytest.raises(TelemetryError):
            provider.initialize()
        assert not provider.initialized
        assert provider.tracer_provider is None
        assert isinstance(provider.tracer, trace.NoOpTracer)
        provider.initialize()
        assert provider.initialized
        with provider.tracer.start_as_current_span("after-retry"):
            pass
        assert [s.name for s in provider.finished_spans()] == ["after-retry"]
        provider.shutdown()

    def test_shutdown_is_idempotent_and_flushes(self) -> None:
        provider = memory()
        provider.initialize()
        with provider.tracer.start_as_current_span("s"):
            pass
        provider.shutdown()
        provider.shutdown()
        assert not provider.initialized


class TestExportersAndEnvironment:
    """Which exporter runs, and the OTEL_* variables the kit honours."""

    def test_none_is_a_noop(self) -> None:
        provider = TelemetryProvider(TelemetrySettings(exporter="none"))
        provider.initialize()
        assert not provider.enabled
        assert isinstance(provider.tracer, trace.NoOpTracer)
        assert provider.tracer_provider is None

    def test_sdk_disabled(self) -> None:
        provider = TelemetryProvider(
            TelemetrySettings(exporter="memory"), environ={"OTEL_SDK_DISABLED": "true"}
        )
        provider.initialize()
        assert not provider.enabled
        assert isinstance(provider.tracer, trace.NoOpTracer)

    def test_service_name_from_env_when_profile_is_silent(self) -> None:
        provider = TelemetryProvider(
            TelemetrySettings(exporter="memory"),
            ServiceSettings(version="2.0", environment="staging"),
            environ={"OTEL_SERVICE_NAME": "from-env"},
        )
        provider.initialize()
        with provider.tracer.start_as_current_span("x"):
            pass
        (span,) = provider.finished_spans()
        resource = dict(span.resource.attributes)
        assert resource["service.name"] == "from-env"
        assert resource["service.version"] == "2.0"
        assert resource["deployment.environment"] == "staging"
        provider.shutdown()

    def test_profile_name_wins_over_env(self) -> None:
        provider = TelemetryProvider(
            TelemetrySettings(exporter="memory"),
            ServiceSettings(name="from-profile"),
            environ={"OTEL_SERVICE_NAME": "from-env"},
        )
        assert provider.service_name == "from-profile"

    def test_sampler_ratio_zero_drops_everything(self) -> None:
        provider = TelemetryProvider(TelemetrySettings(exporter="memory", sample_ratio=0.0))
        provider.initialize()
        for _ in range(20):
            with provider.tracer.start_as_current_span("x"):
                pass
        assert provider.finished_spans() == ()
        provider.shutdown()

    def test_memory_only_helpers(self) -> None:
        provider = TelemetryProvider(TelemetrySettings(exporter="console"))
        with pytest.raises(TelemetryError, match="exporter: memory"):
            provider.finished_spans()

    def test_metrics_helper(self) -> None:
        provider = memory()
        provider.initialize()
        provider.meter.create_counter("things").add(3, {"k": "v"})
        ((attrs, point),) = provider.metrics()["things"]
        assert attrs == {"k": "v"}
        assert point.value == 3
        provider.shutdown()


class TestInfraWiring:
    """Infra starts telemetry first, makes it the default, and stops it last."""

    async def test_test_profile(self) -> None:
        async with Infra.from_profile("test", environ={}) as infra:
            assert isinstance(infra.telemetry, TelemetryProvider)
            assert get_telemetry() is infra.telemetry
            with infra.telemetry.tracer.start_as_current_span("inside"):
                pass
            assert [s.name for s in infra.telemetry.finished_spans()] == ["inside"]
        assert get_telemetry() is None

    async def test_two_infras_each_see_their_own_spans(self) -> None:
        settings = load_settings("test", environ={})
        async with Infra(settings) as first, Infra(settings) as second:
            with first.telemetry.tracer.start_as_current_span("one"):
                pass
            with second.telemetry.tracer.start_as_current_span("two"):
                pass
            assert [s.name for s in first.telemetry.finished_spans()] == ["one"]
            assert [s.name for s in second.telemetry.finished_spans()] == ["two"]


class TestExportGuard:
    """A dead collector is warned about once and then costs nothing."""

    def test_backs_off_after_a_failure(self, caplog: pytest.LogCaptureFixture) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        from infrakit.telemetry.exporters.otlp import _CollectorState, _ExportGuard

        calls: list[int] = []

        class Dead:
            def export(self, batch: Any) -> Any:
                calls.append(len(batch))
                return SpanExportResult.FAILURE

        state = _CollectorState("http://collector:4318")
        guard = _ExportGuard(Dead(), "spans", state)
        with caplog.at_level("WARNING", logger="infrakit.telemetry"):
            for _ in range(5):
                assert guard.export([1, 2]) is SpanExportResult.FAILURE
        assert calls == [2]  # only the first batch was attempted (and serialised)
        assert state.skipping()
        assert len([r for r in caplog.records if "seems down" in r.getMessage()]) == 1
        state._retry_at = 0.0  # the back-off has passed
        assert not state.skipping()
        guard.export([3])
        assert calls == [2, 1]
        assert state._backoff == 2 * _CollectorState.BACKOFF_S * 2  # doubled twice

    def test_success_resets(self) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        from infrakit.telemetry.exporters.otlp import _CollectorState, _ExportGuard

        class Flaky:
            ok = False

            def export(self, batch: Any) -> Any:
                return SpanExportResult.SUCCESS if self.ok else SpanExportResult.FAILURE

        exporter = Flaky()
        state = _CollectorState("x")
        guard = _ExportGuard(exporter, "spans", state)
        guard.export([1])
        exporter.ok = True
        state._retry_at = 0.0
        assert guard.export([1]) is SpanExportResult.SUCCESS
        assert not state.skipping()
        assert state._backoff == _CollectorState.BACKOFF_S

    def test_a_dropped_batch_is_never_scrubbed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """While the collector is down, batches are dropped before the span
        scrubber runs: a dead collector costs no scrubbing either."""
        import socket

        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import SpanExportResult

        from infrakit.scrub import Scrubber
        from infrakit.telemetry.exporters import ExportContext
        from infrakit.telemetry.exporters.otlp import OtlpTelemetrySettings
        from infrakit.telemetry.scrubbing import ScrubbingSpanExporter

        with socket.socket() as unused:  # a port nothing listens on: refused at once
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        settings = OtlpTelemetrySettings.model_validate(
            {"exporter": "otlp", "endpoint": f"http://127.0.0.1:{port}", "timeout_s": 5}
        )
        scrubbed: list[int] = []
        real_scrub = ScrubbingSpanExporter.scrub

        def counting(self: ScrubbingSpanExporter, span: Any) -> Any:
            scrubbed.append(1)
            return real_scrub(self, span)

        monkeypatch.setattr(ScrubbingSpanExporter, "scrub", counting)
        built = settings.exporters(ExportContext("svc", Scrubber(), {}))
        try:
            span = ReadableSpan(name="one")
            for _ in range(5):
                assert built.span_exporter.export([span]) is SpanExportResult.FAILURE
            assert scrubbed == [1]  # the first batch was tried; the next four dropped
        finally:
            built.span_processor.shutdown()
            built.metric_reader.shutdown()


class TestExit:
    """A process that ends without stopping its provider: the kit's exit handler
    stops it within telemetry.shutdown_timeout_s, once (the SDK's own handlers
    flushed without a bound, and again after a shutdown())."""

    SCRIPT = """
import socket
from opentelemetry import trace
from infrakit.settings.models import ServiceSettings
from infrakit.telemetry import TelemetryProvider
from infrakit.telemetry.exporters.otlp import OtlpTelemetrySettings

with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
settings = OtlpTelemetrySettings(
    endpoint=f"http://127.0.0.1:{port}", timeout_s=120.0, shutdown_timeout_s=0.5
)
left = TelemetryProvider(settings, ServiceSettings(name="exit"))
left.initialize()
with left.tracer.start_as_current_span("unsent"):
    pass
stopped = TelemetryProvider(settings, ServiceSettings(name="stopped"))
stopped.initialize()
stopped.shutdown()
print("body done", flush=True)
"""

    def test_exit_stops_what_is_left_within_the_bound(self) -> None:
        import subprocess
        import sys

        done = subprocess.run(
            [sys.executable, "-c", self.SCRIPT],
            capture_output=True,
            text=True,
            timeout=90,  # generous: unbounded, the exit waited out the exporter's 120 s
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "body done" in done.stdout
        assert "stopped without exporting everything" in done.stderr
        assert "shutdown can only be called once" not in done.stderr
