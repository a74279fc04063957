"""``telemetry.exporter: otlp``: to an OpenTelemetry collector (http/protobuf or gRPC).

Spans wait in a bounded queue exported from a background thread and are
dropped when it is full, so a collector that is down or hangs never slows a
request; a failed export is reported once (and once more when the collector
answers again), and for a while after a failure batches are dropped without
being serialised, so a dead collector costs the application nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr

from infrakit.component import HealthResult
from infrakit.errors import MissingDependencyError
from infrakit.scrub import SecretUrl, mask_url
from infrakit.settings.models import TelemetrySettings
from infrakit.telemetry.exporters import ExportContext, Exporters, exporter_backend

__all__ = ["BACKEND", "OtlpTelemetrySettings"]

_log = logging.getLogger("infrakit.telemetry")
T = TypeVar("T")


class OtlpTelemetrySettings(TelemetrySettings):
    """To a collector over OTLP; ``OTEL_EXPORTER_OTLP_*`` fill what the profile leaves out."""

    exporter: Literal["otlp"] = "otlp"
    endpoint: SecretUrl | None = Field(
        None,
        description="OTLP endpoint; OTEL_EXPORTER_OTLP_ENDPOINT is used when unset.",
    )
    protocol: Literal["http/protobuf", "grpc"] = Field(
        "http/protobuf", description="OTLP protocol."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Headers sent to the collector (values are secret)."
    )
    timeout_s: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="Export timeout in seconds."
    )
    compression: Literal["none", "gzip"] = Field("none", description="OTLP compression.")
    max_queue_size: int = Field(2048, ge=1, description="Spans buffered before dropping.")

    def exporters(self, context: ExportContext) -> Exporters:
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        span_exporter, metric_exporter, state = _otlp(self)
        # The guard sits outside the scrubber: a batch dropped while the
        # collector is down is dropped before any scrubbing work is done.
        guarded: Any = _ExportGuard(context.scrubbed(span_exporter), "spans", state)
        processor = BatchSpanProcessor(
            guarded,
            max_queue_size=self.max_queue_size,
            # Smaller than the SDK's 512, so serialising one batch (in the
            # export thread, holding the GIL) never stalls a request for
            # long; and the SDK refuses a batch larger than the queue.
            max_export_batch_size=min(128, self.max_queue_size),
            export_timeout_millis=int(self.timeout_s * 1000),
        )
        metrics: Any = _ExportGuard(metric_exporter, "metrics", state)
        reader = PeriodicExportingMetricReader(
            metrics,
            export_timeout_millis=int(self.timeout_s * 1000),
        )
        return Exporters(guarded, processor, reader)

    def endpoint_for(self, environ: Mapping[str, str]) -> str:
        if self.endpoint is not None:
            return self.endpoint.get_secret_value()
        return environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")

    async def check(self, environ: Mapping[str, str]) -> HealthResult:
        """Ask the collector a real OTLP question: an empty trace export, which a
        collector answers with 200 (http/protobuf) or OK (gRPC). A port that
        accepts connections but does not speak OTLP is not a collector."""
        start = time.perf_counter()
        endpoint = self.endpoint_for(environ)
        headers = {k: v.get_secret_value() for k, v in self.headers.items()}
        shown = f"collector at {mask_url(endpoint)}"
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.protocol == "grpc":
                    answer = await _ask_grpc(endpoint, headers, self.timeout_s)
                else:
                    answer = await _in_thread(_ask_http, endpoint, headers, self.timeout_s)
        except TimeoutError:
            answer = f"did not answer within {self.timeout_s:g} s"
        except Exception as error:  # noqa: BLE001 - a check reports, it never raises
            answer = f"unreachable: {type(error).__name__}"
        elapsed = (time.perf_counter() - start) * 1000
        if answer is None:
            return HealthResult(True, elapsed)
        return HealthResult(False, elapsed, f"{shown} {answer}")


def _ask_http(endpoint: str, headers: dict[str, str], timeout_s: float) -> str | None:
    """POST an empty ExportTraceServiceRequest; None when the collector says 200."""
    import requests  # the http/protobuf exporter's own client

    response = requests.post(
        f"{endpoint.rstrip('/')}/v1/traces",
        data=b"",  # an empty ExportTraceServiceRequest is zero bytes
        headers={**headers, "Content-Type": "application/x-protobuf"},
        timeout=timeout_s,
    )
    response.close()
    return None if response.status_code == 200 else f"answered HTTP {response.status_code}"


async def _ask_grpc(endpoint: str, headers: dict[str, str], timeout_s: float) -> str | None:
    """Call TraceService/Export with an empty request; None when it answers OK."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    target = f"{parts.hostname or 'localhost'}:{parts.port or 4317}"
    channel = (
        grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
        if parts.scheme == "https"
        else grpc.aio.insecure_channel(target)
    )
    try:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)  # type: ignore[no-untyped-call]
        await stub.Export(
            trace_service_pb2.ExportTraceServiceRequest(),
            timeout=timeout_s,
            metadata=tuple((k.lower(), v) for k, v in headers.items()),
        )
    except grpc.aio.AioRpcError as error:
        return f"answered {error.code().name}"
    finally:
        await channel.close()
    return None


async def _in_thread(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)`` in a daemon thread of its own: a check that times out
    leaves no thread for the event loop (or a CLI's exit) to wait on."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = call(*args)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting task
            outcome = functools.partial(future.set_exception, error)
        else:
            outcome = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="infrakit-otlp-check", daemon=True).start()
    return await future


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

_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk._shared_internal",  # "Queue full, dropping Span."
)


def _otlp(settings: OtlpTelemetrySettings) -> tuple[Any, Any, _CollectorState]:
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
        from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

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
    return span, metric, _CollectorState(shown)


BACKEND = exporter_backend(
    "otlp",
    OtlpTelemetrySettings,
    extra="otlp",
    modules=("opentelemetry.exporter.otlp.proto.http", "opentelemetry.exporter.otlp.proto.grpc"),
    description="OTLP to a collector, http/protobuf or gRPC",
)
