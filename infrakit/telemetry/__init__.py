"""Telemetry: the OpenTelemetry provider, ``@traced`` and the ASGI middleware.

The names are imported on first use, so building a profile (which imports an
exporter module of this package) does not import the middleware.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE = {
    "traced": "infrakit.telemetry.decorators",
    "TracingMiddleware": "infrakit.telemetry.middleware",
    "TelemetryProvider": "infrakit.telemetry.provider",
    "get_telemetry": "infrakit.telemetry.provider",
    "reset_telemetry": "infrakit.telemetry.provider",
    "set_telemetry": "infrakit.telemetry.provider",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'infrakit.telemetry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
