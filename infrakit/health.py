"""Health of the kit's components: one concurrent round of checks, each bounded.

``Infra.health()`` checks the running components; ``check_profile()`` (what
``infrakit check`` runs) builds the components of a profile without starting
them, so a backend that is down is reported by name instead of failing the
start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from infrakit.scrub import scrub_text

if TYPE_CHECKING:
    from infrakit.settings.models import InfraSettings

__all__ = ["ComponentHealth", "HealthReport", "HealthResult", "check_components", "check_profile"]


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The outcome of one health check: a round trip to the backend.

    ``error`` is one line with any secret masked; a check never raises for a
    backend that is down, it says so here.
    """

    ok: bool
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    component: str
    backend: str
    status: str  # "up", "down" or "unavailable"
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HealthReport:
    components: list[ComponentHealth] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status == "up" for c in self.components)

    @property
    def down(self) -> list[str]:
        return [c.component for c in self.components if c.status != "up"]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "components": [asdict(c) for c in self.components]}


async def _one(name: str, backend: str, component: Any, timeout_s: float) -> ComponentHealth:
    check = getattr(component, "health_check", None)
    start = time.perf_counter()
    if check is None:
        return ComponentHealth(name, backend, "up", 0.0)
    try:
        async with asyncio.timeout(timeout_s):
            result: HealthResult = await check()
    except TimeoutError:
        return ComponentHealth(
            name,
            backend,
            "down",
            (time.perf_counter() - start) * 1000,
            f"no answer within {timeout_s:g} s",
        )
    except Exception as error:  # noqa: BLE001 - a check reports, it never raises
        message = scrub_text(f"{type(error).__name__}: {error}".splitlines()[0])
        return ComponentHealth(name, backend, "down", (time.perf_counter() - start) * 1000, message)
    detail = scrub_text(result.error) if result.error else None
    status = "up" if result.ok else "down"
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


async def check_profile(settings: InfraSettings, *, timeout_s: float = 2.0) -> HealthReport:
    """Build a profile's components without starting them and check each."""
    from infrakit import registry

    built: dict[str, tuple[str, Any]] = {}
    unavailable: dict[str, tuple[str, str]] = {}
    closers: list[Any] = []
    try:
        for component in registry.COMPONENTS:
            name = getattr(getattr(settings, component), registry.SELECTOR_KEYS[component])
            spec = registry.get_backend(component, name)
            if spec is None:
                unavailable[component] = (name, f"no {component} backend {name!r} is installed")
                continue
            missing = [dep for dep in spec.requires if dep not in built]
            if missing:
                unavailable[component] = (name, f"needs {', '.join(missing)}")
                continue
            try:
                spec.check_installed()
                deps = {dep: built[dep][1] for dep in spec.requires}
                obj = spec.load()(settings, **deps)
                if asyncio.iscoroutine(obj):
                    obj = await obj
            except Exception as error:  # noqa: BLE001 - reported as down
                reason = f"{type(error).__name__}: {error}".splitlines()[0]
                unavailable[component] = (name, scrub_text(reason))
                continue
            built[component] = (name, obj)
            closers.append(obj)
        return await check_components(built, timeout_s=timeout_s, unavailable=unavailable)
    finally:
        for obj in reversed(closers):
            for method in ("aclose", "close", "shutdown"):
                closer = getattr(obj, method, None)
                if callable(closer):
                    result = closer()
                    if asyncio.iscoroutine(result):
                        await result
                    break
