"""``TelemetryProvider``: the OpenTelemetry SDK, set up from a profile.

``create`` (the constructor) touches no global state; ``initialize()`` builds
the tracer and meter providers once, under a lock, and publishes them only
when everything was built; ``shutdown()`` flushes and is idempotent. Inside
the kit, spans come from the provider's own tracer, never the global one,
so two ``Infra`` objects in one process (tests) each see their own spans.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

from infrakit.component import Component, HealthResult
from infrakit.errors import MissingDependencyError, TelemetryError
from infrakit.scrub import Scrubber
from infrakit.settings.models import RedactSettings, ServiceSettings, TelemetrySettings
from infrakit.telemetry.exporters import ExportContext

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider


__all__ = [
    "TelemetryProvider",
    "get_telemetry",
    "reset_telemetry",
    "set_telemetry",
]

#: The instrumentation scope of the kit's tracer and meter (the span
#: scrubber trusts ``http.route`` on this scope's server spans only).
TRACER_NAME = "infrakit"

_log = logging.getLogger("infrakit.telemetry")
_TRUE = {"1", "true", "yes", "on"}


#: profile switch -> (module, class) of the contrib instrumentation it turns on,
#: and the library modules imported before it patches them: a module first
#: imported afterwards binds the patched functions (``sqlalchemy.ext.asyncio``
#: takes ``create_engine`` by name, so an async engine was instrumented twice
#: and switching the instrumentation off again failed)
_INSTRUMENTATIONS = (
    (
        "sqlalchemy",
        "opentelemetry.instrumentation.sqlalchemy",
        "SQLAlchemyInstrumentor",
        ("sqlalchemy.ext.asyncio",),
    ),
    ("redis", "opentelemetry.instrumentation.redis", "RedisInstrumentor", ()),
)


class TelemetryProvider(Component):
    """Traces and metrics for one application, from its profile.

    ``exporter``: ``none`` (no-op tracer and meter, near-zero cost),
    ``console``, ``memory`` (``finished_spans()``/``metrics()`` for tests),
    ``otlp`` (``http/protobuf`` or ``grpc``), or any registered exporter: the
    exporter's settings model builds the exporters (``infrakit.telemetry.exporters``).
    ``OTEL_SDK_DISABLED=true`` turns it all off; ``OTEL_SERVICE_NAME`` names the service when the
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
        self.scrubber = Scrubber(
            self.redact.extra_patterns, self.redact.extra_params, self.redact.replacement
        )
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
                self._tracer = tracer_provider.get_tracer(TRACER_NAME)
                self._meter = meter_provider.get_meter(TRACER_NAME)
                _claim_global(tracer_provider, meter_provider)
                self._instrument(tracer_provider)
            self._initialized = True
        _refresh(self)

    def _instrument(self, tracer_provider: TracerProvider) -> None:
        """The optional contrib instrumentations the profile switches on."""
        import importlib

        for switch, module, class_name, patched in _INSTRUMENTATIONS:
            if not getattr(self.settings.instrument, switch):
                continue
            try:
                for library in patched:
                    importlib.import_module(library)
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
        built = self.settings.exporters(
            ExportContext(self.service_name, self.scrubber, self._environ)
        )
        # The SDK's own exit handlers would flush without a bound (a dead
        # collector holds the exit up to the exporter's timeout) and again after
        # shutdown(); the kit's one handler stops every live provider instead.
        tracer_provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
        tracer_provider.add_span_processor(built.span_processor)
        meter_provider = MeterProvider(
            resource=resource, metric_readers=[built.metric_reader], shutdown_on_exit=False
        )
        _live.add(self)
        return tracer_provider, meter_provider, built.span_exporter, built.metric_reader

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
        if tracer_provider is not None or meter_provider is not None:
            self._stop_exporting(tracer_provider, meter_provider)

    def _stop_exporting(
        self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
    ) -> None:
        """Flush and stop the SDK providers, for at most ``shutdown_timeout_s``.

        An exporter whose collector is down or hangs retries until its own
        timeout (6-7 s measured with OTLP): stopping the application must not
        wait for that. Past the bound, the flush goes on in a daemon thread
        (it never holds the process up) and what it had not exported is given up.
        """
        done = threading.Event()

        def stop() -> None:
            try:
                if tracer_provider is not None:
                    tracer_provider.shutdown()
                if meter_provider is not None:
                    meter_provider.shutdown()
            except Exception:  # noqa: BLE001 - stopping must not fail the application
                _log.warning("infrakit.telemetry: stopping the exporters failed", exc_info=True)
            finally:
                done.set()

        bound = self.settings.shutdown_timeout_s
        threading.Thread(target=stop, name="infrakit-telemetry-shutdown", daemon=True).start()
        if not done.wait(bound):
            _log.warning(
                "infrakit.telemetry: stopped without exporting everything: spans and metrics "
                "still buffered after %g s (telemetry.shutdown_timeout_s) were dropped; "
                "the %s exporter had not delivered them (is the collector down?)",
                bound,
                self.settings.exporter,
            )
            self._abort_exports()

    def _abort_exports(self) -> None:
        """Shut the exporters down under the flush that outlived the bound: an
        OTLP exporter then stops retrying (it would wait out its backoff until
        its own timeout, up to minutes, with a connection open and warnings to
        log), so the flush thread ends now. What it had not sent is dropped,
        as the warning said."""
        reader = self._metric_reader
        for exporter in (self._span_exporter, getattr(reader, "_exporter", None)):
            shutdown = getattr(exporter, "shutdown", None)
            if callable(shutdown):
                with contextlib.suppress(Exception):
                    shutdown()

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
        """The exporter's own check (a remote one asks its collector); up otherwise."""
        check = getattr(self.settings, "check", None)
        if not self.enabled or check is None:
            return HealthResult(True, 0.0)  # nothing remote to ask
        result: HealthResult = await check(self._environ)
        return result

    async def start(self) -> None:
        self.initialize()

    async def aclose(self) -> None:
        # off the event loop: the last flush may wait up to shutdown_timeout_s
        # for a collector that is down, and the loop has requests to finish
        await asyncio.to_thread(self.shutdown)


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


#: Providers that built SDK providers: stopped at interpreter exit, each within
#: its telemetry.shutdown_timeout_s (shutdown() is idempotent).
_live: weakref.WeakSet[TelemetryProvider] = weakref.WeakSet()


@atexit.register
def _stop_at_exit() -> None:
    for provider in list(_live):
        with contextlib.suppress(Exception):
            provider.shutdown()


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
