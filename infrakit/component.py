"""What every component declares: its lifecycle and its health check.

Each component's interface (``TokenStore``, ``AuditLogger``, ``Database``,
``TelemetryProvider``) is an abstract class built on :class:`Component`, so the
container never guesses a lifecycle from attribute names: it calls
:meth:`~Component.start` after building a component, :meth:`~Component.aclose`
when stopping it, and :meth:`~Component.health_check` for ``/health`` and
``infrakit check``. Constructing a component never connects; ``start`` does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Self

__all__ = ["Component", "HealthResult"]


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The outcome of one health check: a round trip to the backend.

    ``error`` is one line with any secret masked; a check never raises for a
    backend that is down, it says so here.
    """

    ok: bool
    latency_ms: float
    error: str | None = None


class Component(ABC):
    """The lifecycle the container drives: ``start``, ``health_check``, ``aclose``."""

    async def start(self) -> None:  # noqa: B027 - a component with nothing to open keeps this
        """Open connections and check the backend answers (raises when it does not)."""

    async def aclose(self) -> None:  # noqa: B027 - a component with nothing to close keeps this
        """Release what :meth:`start` opened; safe to call twice."""

    @abstractmethod
    async def health_check(self) -> HealthResult:
        """One bounded round trip to the backend; never raises for a backend that is down."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
