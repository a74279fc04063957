from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
from dependency_injector import providers
from pydantic import create_model

from infrakit import (
    ConfigError,
    Infra,
    InfraContainer,
    InfrastructureError,
    ShutdownError,
    load_settings,
    register_backend,
    registry,
)
from infrakit.component import Component, HealthResult
from infrakit.registry import Backend
from infrakit.settings import InfraSettings
from infrakit.settings.models import COMPONENT_SETTINGS


class Recorder(Component):
    """A small real component that records its lifecycle."""

    def __init__(self, name: str, events: list[str], *, fail_close: bool = False, **deps: Any):
        self.name = name
        self.events = events
        self.deps = deps
        self.fail_close = fail_close
        self.open = False

    async def start(self) -> None:
        self.events.append(f"start {self.name}")
        self.open = True

    async def aclose(self) -> None:
        self.events.append(f"stop {self.name}")
        self.open = False
        if self.fail_close:
            raise RuntimeError(f"{self.name} would not close")

    async def health_check(self) -> HealthResult:
        return HealthResult(self.open, 0.0)


def make_backend(
    component: str,
    name: str,
    create: Callable[..., Any],
    *,
    requires: tuple[str, ...] = (),
    **backend_options: Any,
) -> Backend:
    """A backend whose settings model is its component's base with its own name."""
    base = COMPONENT_SETTINGS[component]
    model = create_model(
        f"{name.title()}{component.title()}Settings",
        __base__=base,
        **{base.selector: (Literal[name], name)},  # type: ignore[call-overload]
    )
    return Backend(component, name, model, create, requires=requires, **backend_options)


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def backends(events: list[str]) -> Iterator[dict[str, Any]]:
    """Register a 'rec' backend for every component; undo afterwards."""
    built: dict[str, Any] = {}
    failing: set[str] = set()

    def factory(component: str) -> Any:
        def create(section: Any, settings: InfraSettings, **deps: Any) -> Recorder:
            rec = Recorder(component, events, fail_close=component in failing, **deps)
            built[component] = rec
            return rec

        return create

    requires = {"tokens": ("database",), "audit": ("database", "tokens")}
    for component in registry.COMPONENTS:
        register_backend(
            component,
            "rec",
            make_backend(
                component, "rec", factory(component), requires=requires.get(component, ())
            ),
        )
    built["_failing"] = failing
    yield built
    for component in registry.COMPONENTS:
        registry.unregister_backend(component, "rec")


def rec_settings(**overrides: Any) -> InfraSettings:
    base = {
        "telemetry.exporter": "rec",
        "database.backend": "rec",
        "tokens.backend": "rec",
        "audit.backend": "rec",
        "logging.level": "WARNING",
    }
    base.update(overrides)
    return load_settings("test", environ={}, overrides=base)


class TestLifecycle:
    """Start in dependency order, stop in reverse, report every failure."""

    async def test_order(self, backends: dict[str, Any], events: list[str]) -> None:
        async with Infra(rec_settings()) as infra:
            assert events == ["start telemetry", "start database", "start tokens", "start audit"]
            assert infra.tokens is backends["tokens"]
            assert backends["audit"].deps == {
                "database": backends["database"],
                "tokens": backends["tokens"],
            }
            assert [i.state for i in infra.describe()] == ["ready"] * 4
        assert events[4:] == ["stop audit", "stop tokens", "stop database", "stop telemetry"]
        assert not any(rec.open for name, rec in backends.items() if not name.startswith("_"))

    async def test_one_component_starts_only_what_it_needs(
        self, backends: dict[str, Any], events: list[str]
    ) -> None:
        infra = Infra(rec_settings())
        await infra.start("tokens")
        assert events == ["start database", "start tokens"]
        await infra.aclose()
        assert events[2:] == ["stop tokens", "stop database"]

    async def test_shutdown_carries_on_and_reports_all(
        self, backends: dict[str, Any], events: list[str]
    ) -> None:
        backends["_failing"].update({"tokens", "telemetry"})
        infra = Infra(rec_settings())
        await infra.start()
        with pytest.raises(ShutdownError) as exc:
            await infra.aclose()
        assert set(exc.value.errors) == {"tokens", "telemetry"}
        assert "tokens: RuntimeError: tokens would not close" in str(exc.value)
        assert events[4:] == ["stop audit", "stop tokens", "stop database", "stop telemetry"]

    async def test_failed_start_undoes_what_started(self, events: list[str], backends: Any) -> None:
        def broken(section: Any, settings: InfraSettings, **deps: Any) -> Any:
            raise ConnectionRefusedError("tokens backend down")

        register_backend("tokens", "broken", make_backend("tokens", "broken", broken))
        try:
            infra = Infra(rec_settings(**{"tokens.backend": "broken", "audit.backend": "memory"}))
            with pytest.raises(ConnectionRefusedError):
                await infra.start()
            assert events == [
                "start telemetry",
                "start database",
                "stop database",
                "stop telemetry",
            ]
        finally:
            registry.unregister_backend("tokens", "broken")

    async def test_access_before_start(self, backends: Any) -> None:
        infra = Infra(rec_settings())
        with pytest.raises(InfrastructureError, match="tokens is not started"):
            _ = infra.tokens

    async def test_start_is_idempotent(self, backends: Any, events: list[str]) -> None:
        infra = Infra(rec_settings())
        await infra.start()
        await infra.start()
        await infra.aclose()
        await infra.aclose()
        assert len(events) == 8

    async def test_a_backend_must_build_a_component(self, backends: Any) -> None:
        register_backend(
            "tokens", "plain", make_backend("tokens", "plain", lambda section, settings: object())
        )
        try:
            infra = Infra(rec_settings(**{"tokens.backend": "plain"}))
            with pytest.raises(TypeError, match="not an infrakit Component"):
                await infra.start()
        finally:
            registry.unregister_backend("tokens", "plain")

    async def test_probe_reports_down_and_unavailable(
        self, backends: Any, events: list[str]
    ) -> None:
        def broken(section: Any, settings: InfraSettings, **deps: Any) -> Any:
            raise ConnectionRefusedError("database at db.internal refused")

        register_backend("database", "broken", make_backend("database", "broken", broken))
        try:
            report = await Infra(rec_settings(**{"database.backend": "broken"})).probe()
        finally:
            registry.unregister_backend("database", "broken")
        states = {c.component: (c.status, c.error) for c in report.components}
        assert states["telemetry"] == ("up", None)
        assert states["database"][0] == "down"
        assert "refused" in str(states["database"][1])
        assert states["tokens"] == ("unavailable", "needs database")
        assert states["audit"] == ("unavailable", "needs database, tokens")
        assert events == ["start telemetry", "stop telemetry"]  # everything it started, stopped

    def test_rejects_non_settings(self) -> None:
        with pytest.raises(TypeError, match=r"Infra\.from_profile"):
            Infra({"tokens": {}})  # type: ignore[arg-type]


class TestGraphCheck:
    """The graph is checked when the profile is validated and Infra is built."""

    def test_missing_extra_names_the_install_line(self, backends: Any) -> None:
        register_backend(
            "tokens",
            "exotic",
            make_backend(
                "tokens",
                "exotic",
                lambda section, settings: None,
                extra="exotic",
                modules=("no_such_module_xyz",),
            ),
        )
        try:
            with pytest.raises(ConfigError) as exc:
                rec_settings(**{"tokens.backend": "exotic"})
            assert 'pip install "infrakit-compose[exotic]"' in str(exc.value)
            assert "tokens.backend" in str(exc.value)
        finally:
            registry.unregister_backend("tokens", "exotic")

    def test_unknown_component_in_components(self, backends: Any) -> None:
        with pytest.raises(ConfigError, match="unknown component"):
            Infra(rec_settings(), components={"cache": object()})


class TestOverride:
    """Test doubles reach every dependent and are undone on exit."""

    async def test_override_reaches_dependents_and_restores(self, backends: Any) -> None:
        class App(InfraContainer):
            service = providers.Singleton(lambda tokens: ("service", tokens), InfraContainer.tokens)

        infra = Infra(rec_settings(), container=App)
        async with infra:
            container: Any = infra.container
            real = infra.tokens
            first = container.service()
            assert first[1] is real
            double = object()
            with infra.override(tokens=double):
                assert infra.tokens is double
                assert container.service()[1] is double  # the singleton was rebuilt
                assert [i.state for i in infra.describe()][2] == "overridden"
            assert infra.tokens is real
            assert container.service()[1] is real

    async def test_override_with_a_provider(self, backends: Any) -> None:
        async with Infra(rec_settings()) as infra:
            with infra.override(audit=providers.Object("audit-double")):
                double: object = infra.audit  # an object, not an AuditLogger
                assert double == "audit-double"

    def test_user_component_wins_over_registry(self) -> None:
        mine = object()
        infra = Infra(load_settings("test", environ={}), components={"tokens": mine})
        assert infra.tokens is mine


class TestAccessors:
    """``infra.tokens`` and friends keep the running instance (they are read
    on every request) and still see every change of what is running."""

    async def test_an_override_on_the_container_is_seen_after_a_read(self, backends: Any) -> None:
        async with Infra(rec_settings()) as infra:
            real = infra.tokens
            assert infra.tokens is real
            double = object()
            with infra.container.tokens.override(providers.Object(double)):
                assert infra.tokens is double
                assert infra.get("tokens") is double
            assert infra.tokens is real

    async def test_a_restart_gives_the_new_instance(self, backends: Any) -> None:
        infra = Infra(rec_settings())
        async with infra:
            first = infra.audit
        with pytest.raises(InfrastructureError, match="audit is not started"):
            _ = infra.audit
        async with infra:
            second = infra.audit
            assert second is not first
            assert second is backends["audit"]
            assert infra.get("audit") is second

    async def test_a_resource_shut_down_behind_the_kit_is_refused(self, backends: Any) -> None:
        async with Infra(rec_settings()) as infra:
            _ = infra.database
            shutdown = infra._resources["database"].shutdown()
            assert shutdown is not None
            await shutdown
            with pytest.raises(InfrastructureError, match="database is not started"):
                _ = infra.database


class TestRegistry:
    """Backends by name: the kit's, entry points, the application's."""

    def test_register_validates(self) -> None:
        with pytest.raises(ValueError, match="unknown component 'cache'"):
            register_backend("cache", "x", "m:x")
        with pytest.raises(ValueError, match="cannot be empty"):
            register_backend("tokens", " ", "m:x")
        with pytest.raises(ValueError, match="module:attr"):
            register_backend("tokens", "x", "no_colon")

    def test_registered_names_become_valid_settings(self) -> None:
        with pytest.raises(ConfigError, match="unknown backend"):
            load_settings("test", environ={}, overrides={"tokens.backend": "dynamo"})
        register_backend(
            "tokens", "dynamo", make_backend("tokens", "dynamo", lambda section, settings: None)
        )
        try:
            settings = load_settings("test", environ={}, overrides={"tokens.backend": "dynamo"})
            assert settings.tokens.backend == "dynamo"
        finally:
            registry.unregister_backend("tokens", "dynamo")

    def test_a_target_that_is_not_a_backend(self, tmp_path: Path, monkeypatch: Any) -> None:
        (tmp_path / "not_backend_mod.py").write_text("BACKEND = 42\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        register_backend("tokens", "odd", "not_backend_mod:BACKEND")
        try:
            with pytest.raises(ConfigError, match="not an infrakit Backend"):
                load_settings("test", environ={}, overrides={"tokens.backend": "odd"})
        finally:
            registry.unregister_backend("tokens", "odd")
            sys.modules.pop("not_backend_mod", None)

    def test_entry_points(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        dist = tmp_path / "infrakit_plugin-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: infrakit-plugin\nVersion: 1.0\n"
        )
        (dist / "entry_points.txt").write_text(
            textwrap.dedent(
                """
                [infrakit.backends]
                tokens.plugin = infrakit_plugin_mod:BACKEND
                tokens.memory = infrakit_plugin_mod:HIJACK
                """
            )
        )
        (tmp_path / "infrakit_plugin_mod.py").write_text(PLUGIN_MODULE)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(registry, "_entry_points_loaded", False)
        try:
            assert "plugin" in registry.known_names("tokens")
            backend = registry.get_backend("tokens", "plugin")
            assert backend is not None
            settings = load_settings(
                "test", environ={}, overrides={"tokens.backend": "plugin", "tokens.shards": 8}
            )
            assert settings.tokens.shards == 8  # type: ignore[attr-defined]
            infra = Infra(settings)
            assert infra.describe()[2].state == "configured"
            memory = registry.get_backend("tokens", "memory")
            assert memory is not None
            assert memory.create.__module__ == "infrakit.tokens.memory"  # not hijacked
        finally:
            registry._table.pop(("tokens", "plugin"), None)
            sys.modules.pop("infrakit_plugin_mod", None)


PLUGIN_MODULE = """
from typing import Literal

from infrakit.component import Component, HealthResult
from infrakit.registry import Backend
from infrakit.settings import TokensSettings


class PluginSettings(TokensSettings):
    backend: Literal["plugin"] = "plugin"
    shards: int = 4


def create(section, settings, **deps):
    raise AssertionError("not built in this test")


BACKEND = Backend("tokens", "plugin", PluginSettings, create)
HIJACK = Backend("tokens", "memory", PluginSettings, create)
"""


@contextmanager
def forbid_io() -> Iterator[list[tuple[str, Any]]]:
    """Record file opens and socket use through the interpreter's audit hooks."""
    seen: list[tuple[str, Any]] = []
    active = [True]

    def hook(event: str, args: Any) -> None:
        if active[0] and event in {"open", "socket.connect", "socket.bind", "socket.__new__"}:
            seen.append((event, args))

    sys.addaudithook(hook)  # hooks cannot be removed; this one goes quiet on exit
    try:
        yield seen
    finally:
        active[0] = False


class TestNoSideEffects:
    """Building the test profile opens no socket and no file."""

    def test_build_test_profile(self) -> None:
        settings = load_settings("test", environ={})
        with forbid_io() as seen:
            infra = Infra(settings)
            infra.describe()
        assert seen == []

    def test_hook_sees_io(self) -> None:
        with forbid_io() as seen:
            socket.socket().close()
        assert seen
