"""``TelemetryProvider``: the OpenTelemetry SDK, set up from a profile.

``create`` (the constructor) touches no global state; ``initialize()`` builds
the tracer and meter providers once, under a lock, and publishes them only
when everything was built; ``shutdown()`` flushes and is idempotent. Inside
the kit, spans come from the provider's own tracer, never the global one,
so two ``Infra`` objects in one process (tests) each see their own spans.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

from infrakit.errors import MissingDependencyError, TelemetryError
from infrakit.health import HealthResult
from infrakit.scrub import mask_url
from infrakit.settings.models import RedactSettings, ServiceSettings, TelemetrySettings

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

    from infrakit.settings.models import InfraSettings

__all__ = [
    "TelemetryProvider",
    "get_telemetry",
    "reset_telemetry",
    "set_telemetry",
]

_log = logging.getLogger("infrakit.telemetry")
_TRUE = {"1", "true", "yes", "on"}


class _CollectorState:
    """Whether the collector answers, shared by a provider's span and metric
    exporters: one warning when it goes away, one when it is back, instead of
    a log line per failed batch."""

    #: After a failed export, skip exporting for this long (doubling up to the
    #: maximum) instead of serialising batch after batch for a dead collector.
    BACKOFF_S = 2.0
    MAX_BACKOFF_S = 30.0

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._failing = False
        self._backoff = self.BACKOFF_S
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def skipping(self) -> bool:
        """True while a recent failure says the collector is still down."""
        return self._failing and time.monotonic() < self._retry_at

    def note(self, ok: bool, what: str) -> None:
        with self._lock:
            if not ok:
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, self.MAX_BACKOFF_S)
            else:
                self._backoff = self.BACKOFF_S
            if ok == (not self._failing):
                return
            self._failing = not ok
        if ok:
            _log.warning("infrakit.telemetry: the collector at %s answers again", self._endpoint)
        else:
            _log.warning(
                "infrakit.telemetry: exporting %s to %s failed; the collector seems down "
                "(spans are dropped once the queue is full; one warning until it is back)",
                what,
                self._endpoint,
            )


class _ExportGuard:
    """Wraps an exporter so its failures are reported through the shared state."""

    def __init__(self, exporter: Any, what: str, state: _CollectorState) -> None:
        self._exporter = exporter
        self._what = what
        self._state = state

    def export(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if self._state.skipping():
            # the collector was down a moment ago: drop this batch without
            # serialising it, so a dead collector costs the application nothing
            return _failure(result_type=self._what)
        try:
            result = self._exporter.export(batch, *args, **kwargs)
        except Exception:  # noqa: BLE001 - an exporter must never break the app
            self._state.note(False, self._what)
            return _failure(result_type=self._what)
        self._state.note(getattr(result, "name", "SUCCESS") == "SUCCESS", self._what)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._exporter, name)


def _failure(result_type: str) -> Any:
    if result_type == "spans":
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.FAILURE
    from opentelemetry.sdk.metrics.export import MetricExportResult

    return MetricExportResult.FAILURE


class _QuietExporterLogs(logging.Filter):
    """The SDK's exporters log every failed batch; the guard above says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


_QUIET = _QuietExporterLogs()

#: profile switch -> (module, class) of the contrib instrumentation it turns on
_INSTRUMENTATIONS = (
    ("sqlalchemy", "opentelemetry.instrumentation.sqlalchemy", "SQLAlchemyInstrumentor"),
    ("redis", "opentelemetry.instrumentation.redis", "RedisInstrumentor"),
)
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk._shared_internal",  # "Queue full, dropping Span."
)


class TelemetryProvider:
    """Traces and metrics for one application, from its profile.

    ``exporter``: ``none`` (no-op tracer and meter, near-zero cost),
    ``console``, ``memory`` (``finished_spans()``/``metrics()`` for tests) or
    ``otlp`` (``http/protobuf`` or ``grpc``). ``OTEL_SDK_DISABLED=true``
    turns it all off; ``OTEL_SERVICE_NAME`` names the service when the
    profile does not; the exporters read the other ``OTEL_EXPORTER_OTLP_*``
    variables where the profile is silent.
    """

    def __init__(
        self,
        settings: TelemetrySettings | None = None,
        service: ServiceSettings | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        redact: RedactSettings | None = None,
    ) -> None:
        self.settings = settings or TelemetrySettings()
        self.service = service or ServiceSettings()
        self.redact = redact or RedactSettings()
        self._environ = os.environ if environ is None else environ
        disabled = self._environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE
        self.enabled = self.settings.exporter != "none" and not disabled
        self._lock = threading.Lock()
        self._initialized = False
        self._tracer_provider: TracerProvider | None = None
        self._meter_provider: MeterProvider | None = None
        self._span_exporter: Any = None
        self._metric_reader: Any = None
        #: contrib instrumentors this provider switched on (and switches off again)
        self._instrumented: list[Any] = []
        self._tracer: trace.Tracer = trace.NoOpTracer()
        self._meter: metrics.Meter = metrics.NoOpMeter("infrakit")

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"TelemetryProvider(exporter={self.settings.exporter!r}, {state})"

    @property
    def service_name(self) -> str:
        return self.service.name or self._environ.get("OTEL_SERVICE_NAME") or "unknown_service"

    @property
    def tracer(self) -> trace.Tracer:
        return self._tracer

    @property
    def meter(self) -> metrics.Meter:
        return self._meter

    @property
    def tracer_provider(self) -> TracerProvider | None:
        return self._tracer_provider

    @property
    def initialized(self) -> bool:
        return self._initialized

    # --- lifecycle ----------------------------------------------------------------

    def initialize(self) -> None:
        """Build the SDK providers once; safe to call from many threads at once.

        Nothing is published until everything was built, so a failure leaves
        the provider as it was, and ``initialize()`` can be called again.
        """
        if self._initialized:
            return
        with self._lock:
            if self._initialized:
                return
            if self.enabled:
                tracer_provider, meter_provider, exporter, reader = self._build()
                self._tracer_provider, self._meter_provider = tracer_provider, meter_provider
                self._span_exporter, self._metric_reader = exporter, reader
                self._tracer = tracer_provider.get_tracer("infrakit")
                self._meter = meter_provider.get_meter("infrakit")
                _claim_global(tracer_provider, meter_provider)
                self._instrument(tracer_provider)
            self._initialized = True
        _refresh(self)

    def _instrument(self, tracer_provider: TracerProvider) -> None:
        """The optional contrib instrumentations the profile switches on."""
        import importlib

        for switch, module, class_name in _INSTRUMENTATIONS:
            if not getattr(self.settings.instrument, switch):
                continue
            try:
                instrumentor = getattr(importlib.import_module(module), class_name)()
            except ImportError as error:
                raise MissingDependencyError(
                    f"telemetry.instrument.{switch}",
                    extra="instrument",
                    module=f"opentelemetry-instrumentation-{switch}",
                    key=f"telemetry.instrument.{switch}",
                ) from error
            if not instrumentor.is_instrumented_by_opentelemetry:
                # skip_dep_check: SQLAlchemy 2.1 is newer than the contrib package declares
                instrumentor.instrument(tracer_provider=tracer_provider, skip_dep_check=True)
                self._instrumented.append(instrumentor)

    def _build(self) -> tuple[TracerProvider, MeterProvider, Any, Any]:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        resource = Resource.create(
            {
                "service.name": self.service_name,
                "service.version": self.service.version,
                "deployment.environment": self.service.environment,
                "deployment.environment.name": self.service.environment,
            }
        )
        sampler = ParentBased(TraceIdRatioBased(self.settings.sample_ratio))
        span_exporter, span_processor, reader = self._exporters()
        tracer_provider = TracerProvider(resource=resource, sampler=sampler)
        tracer_provider.add_span_processor(span_processor)
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        return tracer_provider, meter_provider, span_exporter, reader

    def _exporters(self) -> tuple[Any, Any, Any]:
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            InMemoryMetricReader,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from infrakit.scrub import Scrubber
        from infrakit.telemetry.scrubbing import ScrubbingSpanExporter

        # every exporter gets scrubbed copies of the spans (memory included, so
        # tests see what a collector would)
        scrubber = Scrubber(
            self.redact.extra_patterns, self.redact.extra_params, self.redact.replacement
        )
        exporter = self.settings.exporter
        if exporter == "memory":
            spans = InMemorySpanExporter()
            return (
                spans,
                SimpleSpanProcessor(ScrubbingSpanExporter(spans, scrubber)),
                InMemoryMetricReader(),
            )
        if exporter == "console":
            console = ConsoleSpanExporter(service_name=self.service_name)
            return (
                console,
                SimpleSpanProcessor(ScrubbingSpanExporter(console, scrubber)),
                PeriodicExportingMetricReader(
                    ConsoleMetricExporter(), export_interval_millis=60_000
                ),
            )
        if exporter == "otlp":
            span_exporter, metric_exporter = self._otlp()
            processor = BatchSpanProcessor(
                ScrubbingSpanExporter(span_exporter, scrubber),
                max_queue_size=self.settings.max_queue_size,
                # Smaller than the SDK's 512, so serialising one batch (in the
                # export thread, holding the GIL) never stalls a request for
                # long; and the SDK refuses a batch larger than the queue.
                max_export_batch_size=min(128, self.settings.max_queue_size),
                export_timeout_millis=int(self.settings.timeout_s * 1000),
            )
            reader = PeriodicExportingMetricReader(
                metric_exporter,
                export_timeout_millis=int(self.settings.timeout_s * 1000),
            )
            return span_exporter, processor, reader
        raise TelemetryError(f"unknown telemetry exporter {exporter!r}")

    def _otlp(self) -> tuple[Any, Any]:
        settings = self.settings
        endpoint = settings.endpoint.get_secret_value().rstrip("/") if settings.endpoint else None
        headers = {k: v.get_secret_value() for k, v in settings.headers.items()} or None
        shown = mask_url(endpoint) if endpoint else "the OTEL_EXPORTER_OTLP_* default"
        for name in _EXPORTER_LOGGERS:
            logging.getLogger(name).addFilter(_QUIET)
        if settings.protocol == "grpc":
            try:
                from grpc import Compression
                from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                    OTLPMetricExporter,
                )
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError as error:
                raise MissingDependencyError(
                    "the OTLP gRPC exporter", extra="otlp", module=error.name or "grpc",
                    key="telemetry.protocol",
                ) from error  # fmt: skip
            grpc_options: dict[str, Any] = {"timeout": settings.timeout_s}
            if endpoint:
                grpc_options["endpoint"] = endpoint
                grpc_options["insecure"] = endpoint.startswith("http://")
            if headers:
                grpc_options["headers"] = headers
            if settings.compression == "gzip":
                grpc_options["compression"] = Compression.Gzip
            span: Any = OTLPSpanExporter(**grpc_options)
            metric: Any = OTLPMetricExporter(**grpc_options)
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter as HttpMetricExporter,
                )
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as HttpSpanExporter,
                )
            except ImportError as error:
                raise MissingDependencyError(
                    "the OTLP HTTP exporter", extra="otlp", module=error.name or "opentelemetry",
                    key="telemetry.exporter",
                ) from error  # fmt: skip
            http_options: dict[str, Any] = {"timeout": settings.timeout_s}
            if headers:
                http_options["headers"] = headers
            if settings.compression == "gzip":
                http_options["compression"] = HttpCompression.Gzip
            span = HttpSpanExporter(
                endpoint=f"{endpoint}/v1/traces" if endpoint else None, **http_options
            )
            metric = HttpMetricExporter(
                endpoint=f"{endpoint}/v1/metrics" if endpoint else None, **http_options
            )
        state = _CollectorState(shown)
        return _ExportGuard(span, "spans", state), _ExportGuard(metric, "metrics", state)

    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export everything buffered now (tests, and before a process exits)."""
        ok = True
        if self._tracer_provider is not None:
            ok = self._tracer_provider.force_flush(int(timeout_s * 1000)) and ok
        if self._meter_provider is not None:
            ok = self._meter_provider.force_flush(int(timeout_s * 1000)) and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop exporting; idempotent."""
        with self._lock:
            if not self._initialized:
                return
            self._initialized = False
            tracer_provider, meter_provider = self._tracer_provider, self._meter_provider
            self._tracer_provider = self._meter_provider = None
            self._tracer = trace.NoOpTracer()
            self._meter = metrics.NoOpMeter("infrakit")
            instrumented, self._instrumented = self._instrumented, []
        _refresh(self)
        # a later provider instruments again, to its own tracer provider
        for instrumentor in instrumented:
            instrumentor.uninstrument()
        if tracer_provider is not None:
            tracer_provider.shutdown()
        if meter_provider is not None:
            meter_provider.shutdown()

    # --- tests and health ---------------------------------------------------------

    def finished_spans(self) -> Sequence[ReadableSpan]:
        """Spans ended so far (``memory`` exporter only)."""
        exporter = self._span_exporter
        if exporter is None or not hasattr(exporter, "get_finished_spans"):
            raise TelemetryError("finished_spans() needs telemetry.exporter: memory")
        spans: Sequence[ReadableSpan] = exporter.get_finished_spans()
        return spans

    def clear_spans(self) -> None:
        if self._span_exporter is not None and hasattr(self._span_exporter, "clear"):
            self._span_exporter.clear()

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Metric points by instrument name: ``{name: [(attributes, point), ...]}``
        (``memory`` exporter only)."""
        reader = self._metric_reader
        if reader is None or not hasattr(reader, "get_metrics_data"):
            raise TelemetryError("metrics() needs telemetry.exporter: memory")
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = reader.get_metrics_data()
        if data is None:
            return out
        for resource_metrics in data.resource_metrics:
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    points = out.setdefault(metric.name, [])
                    points.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
        return out

    async def health_check(self) -> HealthResult:
        """Up unless the exporter is OTLP and its collector refuses a TCP connect."""
        import asyncio
        from urllib.parse import urlsplit

        start = time.perf_counter()
        if not self.enabled or self.settings.exporter != "otlp":
            return HealthResult(True, 0.0)  # nothing remote to ask
        endpoint = (
            self.settings.endpoint.get_secret_value()
            if self.settings.endpoint
            else self._environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
        )
        parts = urlsplit(endpoint)
        port = parts.port or (4317 if self.settings.protocol == "grpc" else 4318)
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                _, writer = await asyncio.open_connection(parts.hostname or "localhost", port)
                writer.close()
                await writer.wait_closed()
        except (OSError, TimeoutError) as error:
            return HealthResult(
                False,
                (time.perf_counter() - start) * 1000,
                f"collector at {mask_url(endpoint)} unreachable: {type(error).__name__}",
            )
        return HealthResult(True, (time.perf_counter() - start) * 1000)


# --- the process-wide provider ---------------------------------------------------

_global_lock = threading.Lock()
_current: TelemetryProvider | None = None
_claimed: Any = None  # the SDK provider the kit made the OTel global, if any


def _claim_global(tracer_provider: Any, meter_provider: Any) -> None:
    """Make the first initialised provider OTel's global one (for third-party
    instrumentation); later ones are never installed: OTel allows it once."""
    global _claimed  # noqa: PLW0603 - OTel's global is process-wide by design
    with _global_lock:
        if _claimed is not None:
            return
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return  # the application installed its own; leave it
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _claimed = tracer_provider


def _refresh(provider: TelemetryProvider) -> None:
    """Keep what ``@traced`` reads in step with the default provider's state."""
    with _global_lock:
        if _current is provider:
            _state.publish(provider.tracer if provider.enabled and provider.initialized else None)


def get_telemetry() -> TelemetryProvider | None:
    """The provider ``@traced`` and the middleware use by default."""
    return _current


def set_telemetry(provider: TelemetryProvider | None) -> TelemetryProvider | None:
    """Install ``provider`` as the default; returns the previous one."""
    global _current
    with _global_lock:
        previous, _current = _current, provider
        on = provider is not None and provider.enabled and provider.initialized
        _state.publish(provider.tracer if on and provider is not None else None)
        _state.provider = provider
        return previous


def reset_telemetry() -> None:
    """Forget the default provider (tests call this between cases)."""
    set_telemetry(None)


class _State:
    """What ``@traced`` reads on every call: one attribute or one global, no lock.

    ``tracer`` is ``None`` while telemetry is off. The wrappers ``@traced``
    generates read it as the global ``_infrakit_tracer`` of ``namespace``
    (their globals), the cheapest read there is; generator wrappers read
    the attribute.
    """

    __slots__ = ("namespace", "provider", "tracer")

    def __init__(self) -> None:
        self.tracer: trace.Tracer | None = None
        self.provider: TelemetryProvider | None = None
        self.namespace: dict[str, Any] = {"_infrakit_tracer": None}

    def publish(self, tracer: trace.Tracer | None) -> None:
        self.tracer = tracer
        self.namespace["_infrakit_tracer"] = tracer


_state = _State()


class DefaultTelemetryProvider(TelemetryProvider):
    """The provider Infra builds: also the process default while it runs."""

    def initialize(self) -> None:
        super().initialize()
        set_telemetry(self)

    def shutdown(self) -> None:
        if get_telemetry() is self:
            set_telemetry(None)
        super().shutdown()


def build(settings: InfraSettings) -> TelemetryProvider:
    """Registry factory for every ``telemetry.exporter``."""
    return DefaultTelemetryProvider(
        settings.telemetry, settings.service, redact=settings.logging.redact
    )
