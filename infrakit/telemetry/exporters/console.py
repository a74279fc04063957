"""``telemetry.exporter: console``: spans and metrics printed."""

from __future__ import annotations

from typing import Literal

from infrakit.settings.models import TelemetrySettings
from infrakit.telemetry.exporters import ExportContext, Exporters, exporter_backend

__all__ = ["BACKEND", "ConsoleTelemetrySettings"]


class ConsoleTelemetrySettings(TelemetrySettings):
    """Printed to standard output (development)."""

    exporter: Literal["console"] = "console"

    def exporters(self, context: ExportContext) -> Exporters:
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        console = ConsoleSpanExporter(service_name=context.service_name)
        return Exporters(
            console,
            SimpleSpanProcessor(context.scrubbed(console)),
            PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000),
        )


BACKEND = exporter_backend("console", ConsoleTelemetrySettings, description="printed")
