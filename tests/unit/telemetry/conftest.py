from __future__ import annotations

from collections.abc import Iterator

import pytest

from infrakit.settings.models import ServiceSettings, TelemetrySettings
from infrakit.telemetry import TelemetryProvider, set_telemetry


@pytest.fixture
def memory_telemetry() -> Iterator[TelemetryProvider]:
    """An initialised provider with the in-memory exporter, installed as the default."""
    provider = TelemetryProvider(
        TelemetrySettings(exporter="memory"), ServiceSettings(name="unit", version="9.9")
    )
    provider.initialize()
    set_telemetry(provider)
    yield provider
    provider.shutdown()
