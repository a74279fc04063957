"""``telemetry.exporter: memory``: spans and metrics kept in memory (for tests)."""

from __future__ import annotations

from typing import Literal

from infrakit.settings.models import TelemetrySettings
from infrakit.telemetry.exporters import ExportContext, Exporters, exporter_backend

__all__ = ["BACKEND", "MemoryTelemetrySettings"]


class MemoryTelemetrySettings(TelemetrySettings):
    """Kept in memory: ``finished_spans()``, ``metrics()``, ``clear_spans()``."""

    exporter: Literal["memory"] = "memory"

    def exporters(self, context: ExportContext) -> Exporters:
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        spans = InMemorySpanExporter()
        # scrubbed too, so tests read what a collector would receive
        processor = SimpleSpanProcessor(context.scrubbed(spans))
        return Exporters(spans, processor, InMemoryMetricReader())


BACKEND = exporter_backend("memory", MemoryTelemetrySettings, description="in memory, for tests")
