"""The dependency-injector container and the ``Infra`` facade.

``InfraContainer`` holds the validated settings, a ``Configuration`` fed from
them, a ``Resource`` for the logging pipeline and one ``Selector`` slot per
component, keyed on that component's backend setting (``tokens.backend``,
``telemetry.exporter``, ...). The slot's choices come from
:mod:`infrakit.registry`, so the kit's backends, third-party ones and an
application's own are found the same way.

``Infra`` starts the resources in dependency order (logging, telemetry,
database, tokens, audit), stops them in reverse, and lets tests swap any
component for the length of a ``with`` block.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

from dependency_injector import containers, providers

from infrakit import registry
from infrakit.errors import ConfigError, ConfigProblem, InfrastructureError, ShutdownError
from infrakit.health import HealthReport, check_components
from infrakit.logging.config import configure_logging
from infrakit.settings.models import InfraSettings

__all__ = ["ComponentInfo", "Infra", "InfraContainer"]


def _init_logging(settings: InfraSettings) -> Iterator[None]:
    cfg = settings.logging
    configure_logging(
        log_level=cfg.level,
        log_format=cfg.format,
        development=cfg.development,
        additional_pii_patterns=cfg.redact.extra_patterns,
        replacement=cfg.redact.replacement,
        extra_params=cfg.redact.extra_params,
        traceback_locals=cfg.traceback_locals,
    )
    # Logging stays configured after shutdown so the last lines of the
    # application still come out; tests reset it explicitly.
    yield


async def _call_maybe_async(func: Any) -> Any:
    result = func()
    if inspect.isawaitable(result):
        result = await result
    return result


async def open_component(
    spec: registry.BackendSpec, settings: InfraSettings, **dependencies: Any
) -> AsyncIterator[Any]:
    """The lifecycle of one backend, as a dependency-injector resource.

    The factory's result is entered with ``async with`` when it supports it;
    otherwise its ``initialize()`` runs at start and its ``aclose()``,
    ``close()`` or ``shutdown()`` at stop (each may be sync or async).
    """
    component = spec.load()(settings, **dependencies)
    if inspect.isawaitable(component):
        component = await component
    if hasattr(component, "__aenter__") and hasattr(component, "__aexit__"):
        entered = await component.__aenter__()
        try:
            yield entered
        finally:
            await component.__aexit__(None, None, None)
        return
    initialize = getattr(component, "initialize", None)
    if callable(initialize):
        await _call_maybe_async(initialize)
    try:
        yield component
    finally:
        for name in ("aclose", "close", "shutdown"):
            closer = getattr(component, name, None)
            if callable(closer):
                await _call_maybe_async(closer)
                break


class InfraContainer(containers.DeclarativeContainer):
    """Providers for every component; choices are filled from the registry.

    Subclass it to add the application's own providers that depend on the
    kit's (``InfraContainer.tokens``, ...), and pass the subclass to ``Infra``.
    """

    config = providers.Configuration(strict=True)
    settings: providers.Object[InfraSettings | None] = providers.Object(None)

    logging = providers.Resource(_init_logging, settings=settings)

    telemetry = providers.Selector(config.telemetry.exporter)
    database = providers.Selector(config.database.backend)
    tokens = providers.Selector(config.tokens.backend)
    audit = providers.Selector(config.audit.backend)


@dataclass(frozen=True, slots=True)
class ComponentInfo:
    """What a component was built as (for ``describe()`` and the CLI)."""

    component: str
    backend: str
    state: str  # "ready", "configured", "overridden" or "unavailable"
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


def _selected(settings: InfraSettings, component: str) -> str:
    section = getattr(settings, component)
    name: str = getattr(section, registry.SELECTOR_KEYS[component])
    return name


class Infra:
    """The application's infrastructure, built from one validated profile.

    ::

        async with Infra.from_profile("local") as infra:
            await infra.tokens.store(jti, user_id, expires_at)

    Constructing it checks the whole graph (backends registered, extras
    installed, dependencies present) but opens nothing; ``start()`` (or
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
        self._container.config.from_dict(settings.model_dump())
        self._unavailable: dict[str, str] = {}
        self._resources: dict[str, providers.Resource[Any]] = {}
        self._started: list[str] = []
        self._build(dict(components or {}))

    @classmethod
    def from_profile(cls, name: str | None = None, **load_settings_kwargs: Any) -> Self:
        """Load a profile with :func:`~infrakit.load_settings` and build ``Infra``."""
        from infrakit.settings.loader import load_settings

        return cls(load_settings(name, **load_settings_kwargs))

    # --- building ---------------------------------------------------------

    def _build(self, user: dict[str, Any]) -> None:
        problems: list[ConfigProblem] = []
        for component in registry.COMPONENTS:
            slot = self._slot(component)
            if component in user:
                # The application's own provider wins over any registered backend.
                slot.override(_as_provider(user.pop(component)))
                continue
            name = _selected(self._settings, component)
            spec = registry.get_backend(component, name)
            key = f"{component}.{registry.SELECTOR_KEYS[component]}"
            if spec is None:
                self._unavailable[component] = (
                    f"no implementation of the {component} backend {name!r} is installed"
                )
                continue
            spec.check_installed()
            missing = [dep for dep in spec.requires if dep in self._unavailable]
            if missing:
                problems.append(
                    ConfigProblem(
                        f"backend {name!r} needs {', '.join(missing)}, which is unavailable",
                        key=key,
                    )
                )
                continue
            deps = {dep: self._slot(dep) for dep in spec.requires}
            resource = providers.Resource(open_component, spec, self._container.settings, **deps)
            self._resources[component] = resource
            # The slot hands out the running instance synchronously, so the
            # application's own providers that depend on it stay synchronous.
            slot.set_providers(**{name: providers.Callable(_running, component, resource.provider)})
        if user:
            problems.append(
                ConfigProblem(
                    f"unknown component(s) {', '.join(sorted(user))}",
                    hint=f"components are: {', '.join(registry.COMPONENTS)}",
                )
            )
        if problems:
            raise ConfigError(problems, profile=self._settings.profile)

    def _slot(self, component: str) -> providers.Selector[Any]:
        if component not in registry.COMPONENTS:
            raise ValueError(
                f"unknown component {component!r}; expected one of {', '.join(registry.COMPONENTS)}"
            )
        slot: providers.Selector[Any] = getattr(self._container, component)
        return slot

    def _lifecycle(self, component: str) -> providers.Resource[Any] | None:
        """The resource to start for ``component``; None when overridden or absent."""
        if self._slot(component).overridden:
            return None
        return self._resources.get(component)

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> Self:
        """Start logging, then every component in dependency order."""
        if self._started:
            return self
        try:
            self._container.logging.init()
            self._started.append("logging")
            for component in registry.COMPONENTS:
                resource = self._lifecycle(component)
                if resource is None:
                    continue
                result = resource.init()
                if inspect.isawaitable(result):
                    await result
                self._started.append(component)
        except BaseException as exc:
            try:
                await self.aclose()
            except ShutdownError as shutdown:
                exc.add_note(f"while undoing a failed start: {shutdown}")
            raise
        return self

    async def aclose(self) -> None:
        """Stop every started component in reverse order.

        Carries on past a component that fails to stop and raises one
        :class:`~infrakit.errors.ShutdownError` naming all of them at the end.
        """
        errors: dict[str, BaseException] = {}
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

    def get(self, component: str) -> Any:
        """The running instance of ``component`` (or its test override)."""
        slot = self._slot(component)
        if not slot.overridden and component in self._unavailable:
            raise InfrastructureError(
                f"{component} is not available: {self._unavailable[component]}"
            )
        return slot()

    @property
    def telemetry(self) -> Any:
        return self.get("telemetry")

    @property
    def database(self) -> Any:
        return self.get("database")

    @property
    def tokens(self) -> Any:
        return self.get("tokens")

    @property
    def audit(self) -> Any:
        return self.get("audit")

    async def health(self, *, timeout_s: float = 2.0) -> HealthReport:
        """Check every running component concurrently (what ``/health`` should serve)."""
        running: dict[str, tuple[str, Any]] = {}
        unavailable: dict[str, tuple[str, str]] = {}
        for component in registry.COMPONENTS:
            name = _selected(self._settings, component)
            if component in self._unavailable and not self._slot(component).overridden:
                unavailable[component] = (name, self._unavailable[component])
                continue
            try:
                running[component] = (name, self.get(component))
            except InfrastructureError as error:
                unavailable[component] = (name, str(error))
        return await check_components(running, timeout_s=timeout_s, unavailable=unavailable)

    def describe(self) -> list[ComponentInfo]:
        """What each component was built as, without touching any backend."""
        out: list[ComponentInfo] = []
        for component in registry.COMPONENTS:
            name = _selected(self._settings, component)
            slot = self._slot(component)
            if slot.overridden:
                out.append(ComponentInfo(component, name, "overridden", repr(slot.last_overriding)))
            elif component in self._unavailable:
                out.append(
                    ComponentInfo(component, name, "unavailable", self._unavailable[component])
                )
            else:
                started = self._resources[component].initialized
                detail = type(self.get(component)).__qualname__ if started else ""
                out.append(
                    ComponentInfo(component, name, "ready" if started else "configured", detail)
                )
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
