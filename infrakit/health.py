"""Health of the kit's components: one concurrent round of checks, each bounded.

``Infra.health()`` checks the running components; ``Infra.probe()`` (what
``infrakit check`` and ``infrakit describe`` run) starts each component on its
own, so a backend that is down is reported by name instead of failing the start.

Three states, as orchestrators read them: ``up``; ``degraded`` when only a
component the requests do not wait on is in trouble (telemetry: its export
drops spans rather than slow a request), which is reported but never fails
readiness; ``down`` when the database, the token store or the audit log
cannot answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from infrakit.component import Component, HealthResult
from infrakit.scrub import scrub_text

__all__ = [
    "DEGRADES_ONLY",
    "ComponentHealth",
    "HealthReport",
    "HealthResult",
    "check_components",
    "trouble",
]

#: Components whose trouble degrades the service without failing it.
DEGRADES_ONLY = frozenset({"telemetry"})


def trouble(component: str) -> str:
    """The status of ``component`` when it fails: ``degraded`` or ``down``."""
    return "degraded" if component in DEGRADES_ONLY else "down"


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    component: str
    backend: str
    status: str  # "up", "degraded", "down" or "unavailable" (built on one that is down)
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HealthReport:
    components: list[ComponentHealth] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``down`` if a component requests need is, else ``degraded`` if one is, else ``up``."""
        if self.down:
            return "down"
        return "degraded" if self.degraded else "up"

    @property
    def ok(self) -> bool:
        """Ready to serve: nothing ``down`` (``degraded`` is ready)."""
        return not self.down

    @property
    def down(self) -> list[str]:
        return [c.component for c in self.components if c.status in ("down", "unavailable")]

    @property
    def degraded(self) -> list[str]:
        return [c.component for c in self.components if c.status == "degraded"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "ok": self.ok,
            "components": [asdict(c) for c in self.components],
        }


async def _one(name: str, backend: str, component: Any, timeout_s: float) -> ComponentHealth:
    start = time.perf_counter()
    if not isinstance(component, Component):
        # a test double put in the slot: nothing declared to ask
        return ComponentHealth(name, backend, "up", 0.0, "not a Component: not checked")
    try:
        async with asyncio.timeout(timeout_s):
            result = await component.health_check()
    except TimeoutError:
        return ComponentHealth(
            name,
            backend,
            trouble(name),
            (time.perf_counter() - start) * 1000,
            f"no answer within {timeout_s:g} s",
        )
    except Exception as error:  # noqa: BLE001 - a check reports, it never raises
        message = scrub_text(f"{type(error).__name__}: {error}".splitlines()[0])
        elapsed = (time.perf_counter() - start) * 1000
        return ComponentHealth(name, backend, trouble(name), elapsed, message)
    detail = scrub_text(result.error) if result.error else None
    status = "up" if result.ok else trouble(name)
    return ComponentHealth(name, backend, status, round(result.latency_ms, 3), detail)


async def check_components(
    components: Mapping[str, tuple[str, Any]],
    *,
    timeout_s: float = 2.0,
    unavailable: Mapping[str, tuple[str, str]] | None = None,
) -> HealthReport:
    """Check ``{name: (backend, component)}`` concurrently, each within ``timeout_s``."""
    results = await asyncio.gather(
        *(_one(name, backend, obj, timeout_s) for name, (backend, obj) in components.items())
    )
    extra = [
        ComponentHealth(name, backend, "unavailable", 0.0, reason)
        for name, (backend, reason) in (unavailable or {}).items()
    ]
    order = {"telemetry": 0, "database": 1, "tokens": 2, "audit": 3}
    every = sorted([*results, *extra], key=lambda c: order.get(c.component, 9))
    return HealthReport(every)
