"""The dependency-injector container and the ``Infra`` facade.

``InfraContainer`` is the one place where wiring is declared: the validated
settings, a ``Resource`` for the logging pipeline and, per component, a
``Selector`` whose choices are *every* registered backend of that component,
keyed on the validated selector value (``tokens.backend``,
``telemetry.exporter``, ...). Each choice hands out the running instance of a
``Resource`` that builds the backend from its own settings section, starts it
and, at shutdown, closes it (``start``/``aclose``, declared by
:class:`~infrakit.component.Component`). Overriding a slot is
dependency-injector's own ``override``.

``Infra`` starts what is asked for and what it depends on (everything by
default: logging, telemetry, database, tokens, audit), stops in reverse, and
lets tests swap any component for the length of a ``with`` block. Health,
the CLI and the pytest plugin all go through it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self, overload

from dependency_injector import containers, providers

from infrakit import registry
from infrakit.auth import JwtAuth
from infrakit.component import Component
from infrakit.errors import ConfigError, ConfigProblem, InfrastructureError, ShutdownError
from infrakit.health import ComponentHealth, HealthReport, check_components, trouble
from infrakit.logging.config import configure_logging_from
from infrakit.scrub import scrub_text
from infrakit.settings.models import InfraSettings

if TYPE_CHECKING:
    from infrakit.audit.base import AuditLogger
    from infrakit.database.session import DatabaseSession
    from infrakit.telemetry.provider import TelemetryProvider
    from infrakit.tokens.base import TokenStore

__all__ = ["ComponentInfo", "Infra", "InfraContainer"]

ComponentName = Literal["telemetry", "database", "tokens", "audit"]


def _init_logging(settings: InfraSettings) -> Iterator[None]:
    configure_logging_from(settings.logging)
    # Logging stays configured after shutdown so the last lines of the
    # application still come out; tests reset it explicitly.
    yield


async def open_component(
    component_name: str,
    backend_name: str,
    settings: InfraSettings,
    slots: Mapping[str, providers.Provider[Any]],
) -> AsyncIterator[Component]:
    """One backend's lifecycle, as a dependency-injector resource: build it from
    its validated section and the running components it needs, ``start()`` it,
    ``aclose()`` it at the end. (The backend module is imported only now, for
    the one backend a profile selects.)"""
    backend = registry.get_backend(component_name, backend_name)
    if backend is None:
        raise InfrastructureError(f"no {component_name} backend {backend_name!r} is registered")
    backend.check_installed()
    dependencies = {dep: slots[dep]() for dep in backend.requires}
    component = backend.create(settings.section(backend.component), settings, **dependencies)
    if not isinstance(component, Component):
        raise TypeError(
            f"the {backend.component} backend {backend.name!r} built a "
            f"{type(component).__name__}, which is not an infrakit Component"
        )
    await component.start()
    try:
        yield component
    finally:
        await component.aclose()


def _selected(settings: InfraSettings, component: str) -> str:
    return settings.backend_name(component)


class InfraContainer(containers.DeclarativeContainer):
    """The settings, the logging pipeline and one slot per component.

    Subclass it to add the application's own providers that depend on the
    kit's (``InfraContainer.tokens``, ...), and pass the subclass to ``Infra``:
    a slot hands out the running instance, so such providers stay synchronous.
    """

    settings: providers.Object[InfraSettings | None] = providers.Object(None)

    logging = providers.Resource(_init_logging, settings=settings)

    telemetry = providers.Selector(providers.Callable(_selected, settings, "telemetry"))
    database = providers.Selector(providers.Callable(_selected, settings, "database"))
    tokens = providers.Selector(providers.Callable(_selected, settings, "tokens"))
    audit = providers.Selector(providers.Callable(_selected, settings, "audit"))


@dataclass(frozen=True, slots=True)
class ComponentInfo:
    """What a component was built as (for ``describe()``)."""

    component: str
    backend: str
    state: str  # "ready", "configured" or "overridden"
    detail: str = ""


def _running(component: str, resource: providers.Resource[Any]) -> Any:
    if not resource.initialized:
        raise InfrastructureError(
            f"{component} is not started: use `async with Infra.from_profile(...) as infra`"
            " or `await infra.start()` first"
        )
    value = resource()
    # An async resource hands back an already-finished future once started.
    return value.result() if isinstance(value, asyncio.Future) else value


def _as_provider(value: Any) -> providers.Provider[Any]:
    return value if isinstance(value, providers.Provider) else providers.Object(value)


class Infra:
    """The application's infrastructure, built from one validated profile.

    ::

        async with Infra.from_profile("local") as infra:
            await infra.tokens.store(jti, user_id, expires_at)

    Constructing it wires the container (the settings already validated every
    backend's keys and installed extras) but opens nothing; ``start()`` (or
    ``async with``) opens, ``aclose()`` closes in reverse order.
    ``components={"tokens": my_store}`` puts the application's own object or
    provider in a slot, ahead of any registered backend.
    """

    def __init__(
        self,
        settings: InfraSettings,
        *,
        container: type[InfraContainer] = InfraContainer,
        components: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(settings, InfraSettings):
            raise TypeError(
                f"Infra takes InfraSettings, got {type(settings).__name__}; "
                "use Infra.from_profile(name) to load a profile"
            )
        self._settings = settings
        self._container = container()
        self._container.settings.set_provides(settings)
        self._resources: dict[str, providers.Resource[Any]] = {}
        self._requires: dict[str, tuple[str, ...]] = {}
        self._started: list[str] = []
        self._auth: JwtAuth | None = None
        # The running instance of each started component, as its slot resolved
        # it, so the accessors (read on every request) skip the selector
        # chain; see _cached.
        self._instances: dict[str, tuple[providers.Resource[Any], Any]] = {}
        self._wire(dict(components or {}))

    @classmethod
    def from_profile(cls, name: str | None = None, **load_settings_kwargs: Any) -> Self:
        """Load a profile with :func:`~infrakit.load_settings` and build ``Infra``."""
        from infrakit.settings.loader import load_settings

        return cls(load_settings(name, **load_settings_kwargs))

    # --- wiring -------------------------------------------------------------

    def _wire(self, user: dict[str, Any]) -> None:
        unknown = sorted(set(user) - set(registry.COMPONENTS))
        if unknown:
            raise ConfigError(
                ConfigProblem(
                    f"unknown component(s) {', '.join(unknown)}",
                    hint=f"components are: {', '.join(registry.COMPONENTS)}",
                ),
                profile=self._settings.profile,
            )
        settings = self._container.settings
        slots = providers.Object({c: self._slot(c) for c in registry.COMPONENTS})
        for component in registry.COMPONENTS:
            slot = self._slot(component)
            choices: dict[str, providers.Provider[Any]] = {}
            # every backend registered so far (entry points are read only when a
            # profile names a backend the kit does not ship)
            names = {*registry.backend_names(component, entry_points=False)}
            names.add(_selected(self._settings, component))
            for name in sorted(names):
                resource = providers.Resource(open_component, component, name, settings, slots)
                choices[name] = providers.Callable(_running, component, resource.provider)
                if name == _selected(self._settings, component):
                    self._resources[component] = resource
                    selected = registry.get_backend(component, name)
                    self._requires[component] = selected.requires if selected else ()
            slot.set_providers(**choices)
            if component in user:
                # The application's own object or provider wins over any backend.
                slot.override(_as_provider(user.pop(component)))

    def _slot(self, component: str) -> providers.Selector[Any]:
        if component not in registry.COMPONENTS:
            raise ValueError(
                f"unknown component {component!r}; expected one of {', '.join(registry.COMPONENTS)}"
            )
        slot: providers.Selector[Any] = getattr(self._container, component)
        return slot

    def _lifecycle(self, component: str) -> providers.Resource[Any] | None:
        """The resource to start for ``component``; None when overridden."""
        if self._slot(component).overridden:
            return None
        return self._resources[component]

    def _closure(self, components: tuple[str, ...]) -> list[str]:
        """``components`` and everything they are built on, in start-up order."""
        wanted: set[str] = set()
        pending = list(components)
        while pending:
            component = pending.pop()
            self._slot(component)  # names an unknown component
            if component not in wanted:
                wanted.add(component)
                pending.extend(self._requires.get(component, ()))
        return [c for c in registry.COMPONENTS if c in wanted]

    # --- lifecycle ----------------------------------------------------------

    async def start(self, *components: str) -> Self:
        """Start logging and every component in dependency order; or, given
        component names, only those and what they are built on (no logging)."""
        targets = self._closure(components or registry.COMPONENTS)
        try:
            if not components and "logging" not in self._started:
                self._container.logging.init()
                self._started.append("logging")
            for component in targets:
                await self._start_one(component)
        except BaseException as exc:
            try:
                await self.aclose()
            except ShutdownError as shutdown:
                exc.add_note(f"while undoing a failed start: {shutdown}")
            raise
        return self

    async def _start_one(self, component: str) -> None:
        if component in self._started:
            return
        resource = self._lifecycle(component)
        if resource is None:
            return
        self._instances.pop(component, None)
        result = resource.init()
        if inspect.isawaitable(result):
            await result
        self._started.append(component)

    async def aclose(self) -> None:
        """Stop every started component in reverse order.

        Carries on past a component that fails to stop and raises one
        :class:`~infrakit.errors.ShutdownError` naming all of them at the end.
        """
        errors: dict[str, BaseException] = {}
        self._instances.clear()
        while self._started:
            component = self._started.pop()
            resource = (
                self._container.logging if component == "logging" else self._resources[component]
            )
            if not resource.initialized:
                continue
            try:
                result = resource.shutdown()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                errors[component] = exc
        if errors:
            raise ShutdownError(errors) from next(iter(errors.values()))

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- access ---------------------------------------------------------------

    @property
    def settings(self) -> InfraSettings:
        return self._settings

    @property
    def container(self) -> InfraContainer:
        return self._container

    @overload
    def get(self, component: Literal["telemetry"]) -> TelemetryProvider: ...
    @overload
    def get(self, component: Literal["database"]) -> DatabaseSession: ...
    @overload
    def get(self, component: Literal["tokens"]) -> TokenStore: ...
    @overload
    def get(self, component: Literal["audit"]) -> AuditLogger: ...
    @overload
    def get(self, component: str) -> Any: ...
    def get(self, component: str) -> Any:
        """The running instance of ``component`` (or its test override)."""
        return self._cached(component, self._slot(component))

    def _cached(self, component: str, slot: providers.Selector[Any]) -> Any:
        """``slot()``, without walking the selector chain each time.

        Resolving a slot evaluates the selector, the running-check and the
        resource (about 3 µs, twice a request with two dependencies). Once a
        started component resolved, its instance is kept with its resource
        until it stops or restarts. An override of the slot (tests) is seen
        at once (``last_overriding`` is read without the provider's lock,
        which ``overridden`` takes), and a resource shut down behind the
        kit's back is resolved again (and refused).
        """
        if slot.last_overriding is None:
            kept = self._instances.get(component)
            if kept is not None and kept[0].initialized:
                return kept[1]
            resource = self._resources.get(component)
            if resource is not None and resource.initialized:
                instance = slot()
                self._instances[component] = (resource, instance)
                return instance
        return slot()

    @property
    def telemetry(self) -> TelemetryProvider:
        telemetry: TelemetryProvider = self._cached("telemetry", self._container.telemetry)
        return telemetry

    @property
    def database(self) -> DatabaseSession:
        database: DatabaseSession = self._cached("database", self._container.database)
        return database

    @property
    def tokens(self) -> TokenStore:
        tokens: TokenStore = self._cached("tokens", self._container.tokens)
        return tokens

    @property
    def audit(self) -> AuditLogger:
        audit: AuditLogger = self._cached("audit", self._container.audit)
        return audit

    @property
    def auth(self) -> JwtAuth:
        """Verifies and issues JWTs as the profile's ``auth`` section says (one per
        ``Infra``, so a JWKS is fetched and cached once for every request)."""
        if self._auth is None:
            self._auth = JwtAuth(self._settings.auth)
        return self._auth

    async def health(self, *, timeout_s: float = 2.0) -> HealthReport:
        """Check every running component concurrently (what ``/health`` serves)."""
        running: dict[str, tuple[str, Any]] = {}
        unavailable: dict[str, tuple[str, str]] = {}
        for component in registry.COMPONENTS:
            name = _selected(self._settings, component)
            try:
                running[component] = (name, self.get(component))
            except InfrastructureError as error:
                unavailable[component] = (name, str(error))
        return await check_components(running, timeout_s=timeout_s, unavailable=unavailable)

    async def probe(self, *, timeout_s: float = 2.0) -> HealthReport:
        """Start each component on its own, check the ones that started, stop them.

        What ``infrakit check`` and ``infrakit describe`` report: a component
        that cannot start is ``down`` with the reason, one built on a component
        that is down is ``unavailable``; the others are checked as in
        :meth:`health`. Logging is left alone.
        """
        failed: dict[str, ComponentHealth] = {}
        try:
            for component in registry.COMPONENTS:
                name = _selected(self._settings, component)
                broken = [dep for dep in self._requires.get(component, ()) if dep in failed]
                if broken:
                    failed[component] = ComponentHealth(
                        component, name, "unavailable", 0.0, f"needs {', '.join(broken)}"
                    )
                    continue
                try:
                    async with asyncio.timeout(timeout_s):
                        await self._start_one(component)
                except Exception as error:  # noqa: BLE001 - reported as down
                    reason = f"{type(error).__name__}: {error}".splitlines()[0]
                    failed[component] = ComponentHealth(
                        component, name, trouble(component), 0.0, scrub_text(reason)
                    )
            running = {
                c: (_selected(self._settings, c), self.get(c))
                for c in registry.COMPONENTS
                if c not in failed
            }
            report = await check_components(running, timeout_s=timeout_s)
        finally:
            await self.aclose()
        order = {c: i for i, c in enumerate(registry.COMPONENTS)}
        every = sorted([*report.components, *failed.values()], key=lambda c: order[c.component])
        return HealthReport(every)

    def describe(self) -> list[ComponentInfo]:
        """What each component was built as, without touching any backend."""
        out: list[ComponentInfo] = []
        for component in registry.COMPONENTS:
            name = _selected(self._settings, component)
            slot = self._slot(component)
            if slot.overridden:
                out.append(ComponentInfo(component, name, "overridden", repr(slot.last_overriding)))
                continue
            started = self._resources[component].initialized
            detail = type(self.get(component)).__qualname__ if started else ""
            out.append(ComponentInfo(component, name, "ready" if started else "configured", detail))
        return out

    # --- tests ------------------------------------------------------------------

    @contextmanager
    def override(self, **components: Any) -> Iterator[Self]:
        """Swap components for the ``with`` block; everything is restored on exit.

        Values may be objects or providers. Singletons anywhere in the
        container that were built on an overridden component are dropped so
        they are rebuilt with the double, and dropped again on exit.
        """
        slots = [(self._slot(name), value) for name, value in components.items()]
        for slot, value in slots:
            slot.override(_as_provider(value))
        self._reset_dependents([slot for slot, _ in slots])
        try:
            yield self
        finally:
            for slot, _ in reversed(slots):
                slot.reset_last_overriding()
            self._reset_dependents([slot for slot, _ in slots])

    def _reset_dependents(self, slots: list[providers.Selector[Any]]) -> None:
        targets = set(slots)
        for provider in self._container.traverse(types=[providers.BaseSingleton]):
            if targets.intersection(provider.traverse()):
                provider.reset()

    def __repr__(self) -> str:
        state = "started" if self._started else "stopped"
        return f"<Infra profile={self._settings.profile!r} {state}>"
