"""Telemetry exporters: each is one module, registered like any other backend.

An exporter module defines its settings model (a :class:`TelemetrySettings`
subclass whose ``exporter`` is a ``Literal`` of its name) with an
``exporters(context)`` method that builds the span exporter, its span
processor and the metric reader, plus a ``BACKEND`` line. The one
:class:`~infrakit.telemetry.TelemetryProvider` does the rest (resource,
sampling, scrubbing, lifecycle, the process default). Modelled on
OpenTelemetry's ``opentelemetry_traces_exporter`` entry points.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from infrakit.registry import Backend
from infrakit.scrub import Scrubber

if TYPE_CHECKING:
    from infrakit.settings.models import InfraSettings, TelemetrySettings
    from infrakit.telemetry.provider import TelemetryProvider

__all__ = ["ExportContext", "Exporters", "exporter_backend"]


@dataclass(frozen=True, slots=True)
class ExportContext:
    """What an exporter factory may use besides its own settings."""

    service_name: str
    scrubber: Scrubber
    environ: Mapping[str, str]

    def scrubbed(self, exporter: Any) -> Any:
        """``exporter`` behind the span scrubber (every exporter should be)."""
        from infrakit.telemetry.scrubbing import ScrubbingSpanExporter

        return ScrubbingSpanExporter(exporter, self.scrubber)


@dataclass(frozen=True, slots=True)
class Exporters:
    """What an exporter factory builds: ``span_exporter`` is the raw exporter (the
    memory one is read by tests), ``span_processor`` feeds it scrubbed spans."""

    span_exporter: Any
    span_processor: Any
    metric_reader: Any


def exporter_backend(
    name: str,
    settings: type[TelemetrySettings],
    *,
    extra: str | None = None,
    modules: tuple[str, ...] = (),
    description: str = "",
) -> Backend:
    """The :class:`~infrakit.registry.Backend` of an exporter: the one provider,
    built on the exporter's settings."""
    return Backend(
        "telemetry",
        name,
        settings,
        _create,
        extra=extra,
        modules=modules,
        description=description,
    )


def _create(section: TelemetrySettings, settings: InfraSettings, **_: Any) -> TelemetryProvider:
    from infrakit.telemetry.provider import DefaultTelemetryProvider

    return DefaultTelemetryProvider(section, settings.service, redact=settings.logging.redact)


ExporterFactory = Callable[[ExportContext], Exporters]
