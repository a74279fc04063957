"""``telemetry.exporter: none``: no-op tracer and meter (``@traced`` costs one check)."""

from __future__ import annotations

from typing import Literal

from infrakit.settings.models import TelemetrySettings
from infrakit.telemetry.exporters import ExportContext, Exporters, exporter_backend

__all__ = ["BACKEND", "NoTelemetrySettings"]


class NoTelemetrySettings(TelemetrySettings):
    """No telemetry: the provider stays a no-op."""

    exporter: Literal["none"] = "none"

    def exporters(self, context: ExportContext) -> Exporters:
        raise NotImplementedError("telemetry.exporter: none builds no exporter")


BACKEND = exporter_backend("none", NoTelemetrySettings, description="no telemetry")
