"""Health of the kit's components."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HealthResult"]


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The outcome of one health check: a round trip to the backend.

    ``error`` is one line with any secret masked; a check never raises for a
    backend that is down, it says so here.
    """

    ok: bool
    latency_ms: float
    error: str | None = None
