"""Telemetry: the OpenTelemetry provider, ``@traced`` and the ASGI middleware."""

from infrakit.telemetry.decorators import traced
from infrakit.telemetry.middleware import TracingMiddleware
from infrakit.telemetry.provider import (
    TelemetryProvider,
    get_telemetry,
    reset_telemetry,
    set_telemetry,
)

__all__ = [
    "TelemetryProvider",
    "TracingMiddleware",
    "get_telemetry",
    "reset_telemetry",
    "set_telemetry",
    "traced",
]
