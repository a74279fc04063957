"""Backends chosen by name, the way OpenTelemetry picks exporters.

Each component (``database``, ``tokens``, ``audit``, ``telemetry``) has a
table of backends: name -> :class:`BackendSpec`. The kit registers its own;
third-party packages add theirs through the ``infrakit.backends`` entry-point
group (entry point name ``"<component>.<backend>"``, value
``"package.module:factory"``), and applications call :func:`register_backend`.
Precedence, highest first: :func:`register_backend`, the kit's own, entry
points. The names the profile format defines (``memory``, ``redis``, ...)
are reserved: an installed package can add backends but never silently
replace the kit's, while the application itself always wins. Entry points
are read only when a name is not a built-in one, so building a profile that
uses built-in backends reads no package metadata.

A factory is called as ``factory(settings, **dependencies)`` where
``settings`` is the whole :class:`~infrakit.settings.InfraSettings` and
``dependencies`` are the already-started components named in ``requires``.
Nothing is imported until a backend is actually built.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from infrakit.errors import ConfigError, ConfigProblem, MissingDependencyError

__all__ = [
    "COMPONENTS",
    "BackendSpec",
    "backend_names",
    "get_backend",
    "known_names",
    "register_backend",
    "unregister_backend",
]

#: Components in start-up order; shutdown runs in reverse.
COMPONENTS: tuple[str, ...] = ("telemetry", "database", "tokens", "audit")

#: The settings key that selects each component's backend.
SELECTOR_KEYS: dict[str, str] = {
    "telemetry": "exporter",
    "database": "backend",
    "tokens": "backend",
    "audit": "backend",
}

ENTRY_POINT_GROUP = "infrakit.backends"


class Origin(IntEnum):
    ENTRY_POINT = 0
    BUILTIN = 1
    USER = 2


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """How to build one backend of one component.

    ``target`` is a callable or a lazy ``"module:attr"`` string; ``extra`` and
    ``modules`` name the optional dependency the backend needs so a missing
    one is reported at build time with its ``pip install`` line.
    """

    component: str
    name: str
    target: Callable[..., Any] | str
    requires: tuple[str, ...] = ()
    extra: str | None = None
    modules: tuple[str, ...] = ()
    description: str = ""
    origin: Origin = field(default=Origin.USER, compare=False)

    def load(self) -> Callable[..., Any]:
        if callable(self.target):
            return self.target
        module_name, _, attr = self.target.partition(":")
        module = importlib.import_module(module_name)
        factory: Callable[..., Any] = getattr(module, attr)
        return factory

    def check_installed(self) -> None:
        """Raise :class:`MissingDependencyError` if an optional module is absent.

        Uses ``find_spec`` so nothing heavy is imported to find out.
        """
        for module in self.modules:
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(
                    f"the {self.component} backend {self.name!r}",
                    extra=self.extra or module,
                    module=module,
                    key=f"{self.component}.{SELECTOR_KEYS.get(self.component, 'backend')}",
                )


#: The backend names the profile format itself defines, per component. The
#: settings accept these plus whatever is registered.
BUILTIN_NAMES: dict[str, tuple[str, ...]] = {
    "telemetry": ("none", "console", "memory", "otlp"),
    "database": ("sqlalchemy",),
    "tokens": ("memory", "redis"),
    "audit": ("memory", "sql"),
}

_lock = threading.Lock()
# (component, name) -> the registrations of that name, one per origin; the
# highest origin is the one in force.
_table: dict[tuple[str, str], dict[Origin, BackendSpec]] = {}
_entry_points_loaded = False


def _put(spec: BackendSpec) -> None:
    _table.setdefault((spec.component, spec.name), {})[spec.origin] = spec


def register_backend(
    component: str,
    name: str,
    target: Callable[..., Any] | str,
    *,
    requires: Iterable[str] = (),
    extra: str | None = None,
    modules: Iterable[str] = (),
    description: str = "",
    _origin: Origin = Origin.USER,
) -> BackendSpec:
    """Register (or replace) the backend ``name`` of ``component``."""
    if component not in COMPONENTS:
        raise ValueError(
            f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}"
        )
    if not name or not name.strip():
        raise ValueError("backend name cannot be empty")
    spec = BackendSpec(
        component=component,
        name=name,
        target=target,
        requires=tuple(requires),
        extra=extra,
        modules=tuple(modules),
        description=description,
        origin=_origin,
    )
    with _lock:
        _put(spec)
    return spec


def unregister_backend(component: str, name: str) -> None:
    """Remove a registration (tests use this to undo :func:`register_backend`)."""
    with _lock:
        _table.get((component, name), {}).pop(Origin.USER, None)


def _load_entry_points() -> None:
    global _entry_points_loaded  # noqa: PLW0603 - one-shot cache of installed metadata
    if _entry_points_loaded:
        return
    from importlib.metadata import entry_points

    problems: list[ConfigProblem] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        component, _, name = ep.name.partition(".")
        if component not in COMPONENTS or not name:
            dist = ep.dist.name if ep.dist else "?"
            problems.append(
                ConfigProblem(
                    f"entry point {ep.name!r} = {ep.value!r} (from {dist}) "
                    "is not named '<component>.<backend>'",
                    hint=f"components are: {', '.join(COMPONENTS)}",
                )
            )
            continue
        if name in BUILTIN_NAMES.get(component, ()):
            continue  # reserved for the kit and the application
        _put(BackendSpec(component, name, ep.value, origin=Origin.ENTRY_POINT))
    _entry_points_loaded = True
    if problems:
        raise ConfigError(problems)


def _all() -> dict[tuple[str, str], BackendSpec]:
    with _lock:
        _load_entry_points()
        return {key: by[max(by)] for key, by in _table.items() if by}


def backend_names(component: str) -> list[str]:
    """Names registered for ``component``, sorted."""
    return sorted(name for comp, name in _all() if comp == component)


def known_names(component: str) -> list[str]:
    """Names a profile may use: the built-in ones and every registered one."""
    return sorted(set(BUILTIN_NAMES.get(component, ())) | set(backend_names(component)))


def get_backend(component: str, name: str) -> BackendSpec | None:
    """The backend in force for ``name``, or None when nothing provides it."""
    with _lock:
        if name not in BUILTIN_NAMES.get(component, ()):
            _load_entry_points()
        by_origin = _table.get((component, name))
        return by_origin[max(by_origin)] if by_origin else None


# The kit's own backends. Each component's issue adds its line here; the
# target module is imported only when that backend is built.
_BUILTINS: tuple[BackendSpec, ...] = (
    *(
        BackendSpec(
            "telemetry",
            exporter,
            "infrakit.telemetry.provider:build",
            extra="otlp" if exporter == "otlp" else None,
            modules=("opentelemetry.exporter.otlp",) if exporter == "otlp" else (),
            description=f"OpenTelemetry SDK, {exporter} exporter",
            origin=Origin.BUILTIN,
        )
        for exporter in ("none", "console", "memory", "otlp")
    ),
    BackendSpec(
        "database",
        "sqlalchemy",
        "infrakit.database.session:from_settings",
        description="SQLAlchemy async engine: SQLite (aiosqlite) or PostgreSQL (asyncpg)",
        origin=Origin.BUILTIN,
    ),
    BackendSpec(
        "tokens",
        "memory",
        "infrakit.tokens.memory:build",
        description="bounded in-process token store",
        origin=Origin.BUILTIN,
    ),
    BackendSpec(
        "tokens",
        "redis",
        "infrakit.tokens.redis_store:build",
        extra="redis",
        modules=("redis",),
        description="Redis (standalone, Sentinel or Cluster) token store",
        origin=Origin.BUILTIN,
    ),
    BackendSpec(
        "audit",
        "memory",
        "infrakit.audit.memory:build",
        description="bounded in-memory audit log",
        origin=Origin.BUILTIN,
    ),
    BackendSpec(
        "audit",
        "sql",
        "infrakit.audit.sql:build",
        requires=("database",),
        description="append-only, hash-chained audit table in the application's database",
        origin=Origin.BUILTIN,
    ),
)


def _register_builtins() -> None:
    for spec in _BUILTINS:
        _put(spec)


_register_builtins()
