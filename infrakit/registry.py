"""Backends chosen by name, the way OpenTelemetry picks exporters.

A backend is one module that defines its settings model, its class and a
:class:`Backend` object tying them together. Registering it is one line: the
component, the name the profile uses, and where the object lives::

    register_backend("tokens", "sharded", "my_pkg.sharded_store:BACKEND")

Third-party packages do the same through the ``infrakit.backends`` entry-point
group (entry point name ``"<component>.<backend>"``, value ``"module:attr"``).
Precedence, highest first: :func:`register_backend`, the kit's own, entry
points. The names the kit itself ships (``memory``, ``redis``, ...) are
reserved: an installed package can add backends but never silently replace
the kit's, while the application itself always wins.

The registry is the lowest layer above ``errors``: it holds ``"module:attr"``
strings and imports a backend module only when asked for it, so registering
costs nothing and nothing here imports a component.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from infrakit.errors import ConfigError, ConfigProblem, MissingDependencyError

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "COMPONENTS",
    "SELECTOR_KEYS",
    "Backend",
    "backend_names",
    "get_backend",
    "known_names",
    "register_backend",
    "unregister_backend",
    "version",
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

#: The backend each component uses when its section does not name one.
DEFAULT_BACKENDS: dict[str, str] = {
    "telemetry": "none",
    "database": "sqlalchemy",
    "tokens": "memory",
    "audit": "memory",
}

ENTRY_POINT_GROUP = "infrakit.backends"


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend of one component: what a backend module exports.

    - ``settings``: its pydantic settings model; its selector field
      (``backend``, or ``exporter`` for telemetry) is a ``Literal`` of ``name``.
    - ``create(section, settings, **dependencies)``: builds the component from
      its validated section (and the whole settings, for cross-cutting keys
      such as the service name), without connecting; the container then calls
      ``start()`` and, at the end, ``aclose()``.
    - ``requires``: components it is built on (the SQL audit log needs
      ``database``); ``extra``/``modules``: the optional packages it needs, so a
      missing one is a configuration problem with its ``pip install`` line;
      ``migrations``: an Alembic version directory ``infrakit db upgrade`` applies.
    """

    component: str
    name: str
    settings: type[BaseModel]
    create: Callable[..., Any]
    requires: tuple[str, ...] = ()
    extra: str | None = None
    modules: tuple[str, ...] = ()
    migrations: str | None = None
    description: str = ""

    def missing_modules(self) -> list[str]:
        """The optional modules it needs that are not installed (found without importing)."""
        return [m for m in self.modules if importlib.util.find_spec(m) is None]

    def check_installed(self) -> None:
        """Raise :class:`MissingDependencyError` naming the ``pip install`` line."""
        for module in self.missing_modules():
            raise MissingDependencyError(
                f"the {self.component} backend {self.name!r}",
                extra=self.extra or module,
                module=module,
                key=f"{self.component}.{SELECTOR_KEYS[self.component]}",
            )


class Origin(IntEnum):
    ENTRY_POINT = 0
    BUILTIN = 1
    USER = 2


@dataclass(frozen=True, slots=True)
class _Registration:
    component: str
    name: str
    target: str | Backend
    origin: Origin = field(compare=False)


#: The kit's own backends: component, name, where the Backend object lives.
BUILTINS: tuple[tuple[str, str, str], ...] = (
    ("telemetry", "none", "infrakit.telemetry.exporters.none:BACKEND"),
    ("telemetry", "console", "infrakit.telemetry.exporters.console:BACKEND"),
    ("telemetry", "memory", "infrakit.telemetry.exporters.memory:BACKEND"),
    ("telemetry", "otlp", "infrakit.telemetry.exporters.otlp:BACKEND"),
    ("database", "sqlalchemy", "infrakit.database.session:BACKEND"),
    ("tokens", "memory", "infrakit.tokens.memory:BACKEND"),
    ("tokens", "redis", "infrakit.tokens.redis_store:BACKEND"),
    ("audit", "memory", "infrakit.audit.memory:BACKEND"),
    ("audit", "sql", "infrakit.audit.sql:BACKEND"),
)
BUILTIN_NAMES: dict[str, tuple[str, ...]] = {
    component: tuple(name for comp, name, _ in BUILTINS if comp == component)
    for component in COMPONENTS
}

_lock = threading.RLock()
_table: dict[tuple[str, str], dict[Origin, _Registration]] = {}
_loaded: dict[str, Backend] = {}  # "module:attr" -> the Backend it names
_entry_points_loaded = False
_version = 0


def version() -> int:
    """Bumped whenever a registration changes (the settings model is rebuilt then)."""
    return _version


def _put(registration: _Registration) -> None:
    global _version  # noqa: PLW0603 - a change counter for caches built on the table
    _table.setdefault((registration.component, registration.name), {})[registration.origin] = (
        registration
    )
    _version += 1


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(
            f"unknown component {component!r}; expected one of {', '.join(COMPONENTS)}"
        )


def register_backend(component: str, name: str, target: str | Backend) -> None:
    """Register (or replace) the backend ``name`` of ``component``.

    ``target`` is the :class:`Backend` object or, so nothing is imported until
    the profile uses it, the ``"module:attr"`` where it lives.
    """
    _check_component(component)
    if not isinstance(name, str) or not name.strip():
        raise ValueError("backend name cannot be empty")
    if not isinstance(target, Backend) and (not isinstance(target, str) or ":" not in target):
        raise ValueError(f"target must be a Backend or 'module:attr', got {target!r}")
    with _lock:
        _put(_Registration(component, name, target, Origin.USER))


def unregister_backend(component: str, name: str) -> None:
    """Remove an application's registration (tests undo :func:`register_backend` with it)."""
    global _version  # noqa: PLW0603
    with _lock:
        if _table.get((component, name), {}).pop(Origin.USER, None) is not None:
            _version += 1


def _load_entry_points() -> None:
    global _entry_points_loaded  # noqa: PLW0603 - one-shot cache of installed metadata
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
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
        if name in BUILTIN_NAMES[component]:
            continue  # reserved for the kit and the application
        _put(_Registration(component, name, ep.value, Origin.ENTRY_POINT))
    if problems:
        raise ConfigError(problems)


def _resolve(registration: _Registration) -> Backend:
    target = registration.target
    if isinstance(target, Backend):
        return target
    backend = _loaded.get(target)
    if backend is None:
        module_name, _, attr = target.partition(":")
        try:
            backend = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise ConfigError(
                ConfigProblem(
                    f"the {registration.component} backend {registration.name!r} cannot be "
                    f"loaded from {target!r}: {type(error).__name__}: {error}",
                    key=f"{registration.component}.{SELECTOR_KEYS[registration.component]}",
                )
            ) from error
        if not isinstance(backend, Backend):
            raise ConfigError(
                ConfigProblem(
                    f"{target!r} is a {type(backend).__name__}, not an infrakit Backend",
                    key=f"{registration.component}.{SELECTOR_KEYS[registration.component]}",
                )
            )
        _loaded[target] = backend
    if (backend.component, backend.name) != (registration.component, registration.name):
        raise ConfigError(
            ConfigProblem(
                f"{target!r} declares the {backend.component} backend {backend.name!r}, "
                f"but is registered as {registration.component}.{registration.name}",
            )
        )
    return backend


def _in_force(component: str, *, entry_points: bool = True) -> dict[str, _Registration]:
    with _lock:
        if entry_points:
            _load_entry_points()
        return {
            name: by[max(by)] for (comp, name), by in _table.items() if comp == component and by
        }


def backend_names(component: str, *, entry_points: bool = True) -> list[str]:
    """Names registered for ``component``, sorted (without reading entry points
    when ``entry_points`` is false)."""
    _check_component(component)
    return sorted(_in_force(component, entry_points=entry_points))


def known_names(component: str) -> list[str]:
    """Alias of :func:`backend_names` (the names a profile may use)."""
    return backend_names(component)


def get_backend(component: str, name: str) -> Backend | None:
    """The backend in force for ``name`` (its module imported), or None.

    A name the kit ships reads no package metadata: entry points cannot
    replace it, so they are looked at only for other names."""
    _check_component(component)
    builtin = name in BUILTIN_NAMES[component]
    registration = _in_force(component, entry_points=not builtin).get(name)
    return None if registration is None else _resolve(registration)


def backends(component: str) -> dict[str, Backend]:
    """Every backend in force for ``component``, by name (their modules imported)."""
    return {name: _resolve(r) for name, r in sorted(_in_force(component).items())}


def _register_builtins() -> None:
    for component, name, target in BUILTINS:
        _put(_Registration(component, name, target, Origin.BUILTIN))


_register_builtins()
