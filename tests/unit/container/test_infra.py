from __future__ import annotations

import socket
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dependency_injector import providers

from infrakit import (
    ConfigError,
    Infra,
    InfraContainer,
    InfrastructureError,
    MissingDependencyError,
    ShutdownError,
    load_settings,
    register_backend,
    registry,
)
from infrakit.settings import InfraSettings


class Recorder:
    """A small real component that records its lifecycle."""

    def __init__(self, name: str, events: list[str], *, fail_close: bool = False, **deps: Any):
        self.name = name
        self.events = events
        self.deps = deps
        self.fail_close = fail_close
        self.open = False

    async def initialize(self) -> None:
        self.events.append(f"start {self.name}")
        self.open = True

    async def aclose(self) -> None:
        self.events.append(f"stop {self.name}")
        self.open = False
        if self.fail_close:
            raise RuntimeError(f"{self.name} would not close")


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def backends(events: list[str]) -> Iterator[dict[str, Any]]:
    """Register a 'rec' backend for every component; undo afterwards."""
    built: dict[str, Any] = {}
    failing: set[str] = set()

    def factory(component: str) -> Any:
        def build(settings: InfraSettings, **deps: Any) -> Recorder:
            rec = Recorder(component, events, fail_close=component in failing, **deps)
            built[component] = rec
            return rec

        return build

    register_backend("telemetry", "rec", factory("telemetry"))
    register_backend("database", "rec", factory("database"))
    register_backend("tokens", "rec", factory("tokens"), requires=["database"])
    register_backend("audit", "rec", factory("audit"), requires=["database", "tokens"])
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
            assert infra.audit.deps == {
                "database": backends["database"],
                "tokens": backends["tokens"],
            }
            assert [i.state for i in infra.describe()] == ["ready"] * 4
        assert events[4:] == ["stop audit", "stop tokens", "stop database", "stop telemetry"]
        assert not any(rec.open for name, rec in backends.items() if not name.startswith("_"))

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
        def broken(settings: InfraSettings, **deps: Any) -> Any:
            raise ConnectionRefusedError("tokens backend down")

        register_backend("tokens", "broken", broken)
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

    async def test_async_context_manager_components(self, events: list[str], backends: Any) -> None:
        class Managed:
            async def __aenter__(self) -> str:
                events.append("enter")
                return "handle"

            async def __aexit__(self, *exc: object) -> None:
                events.append("exit")

        register_backend("tokens", "managed", lambda settings: Managed())
        try:
            async with Infra(rec_settings(**{"tokens.backend": "managed"})) as infra:
                assert infra.tokens == "handle"
            assert events.count("enter") == events.count("exit") == 1
        finally:
            registry.unregister_backend("tokens", "managed")

    def test_unavailable_component_says_why(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # as if the kit's memory token store were absent from this install
        monkeypatch.delitem(registry._table, ("tokens", "memory"))
        infra = Infra(load_settings("test", environ={}))
        with pytest.raises(InfrastructureError, match="tokens is not available"):
            _ = infra.tokens

    def test_rejects_non_settings(self) -> None:
        with pytest.raises(TypeError, match=r"Infra\.from_profile"):
            Infra({"tokens": {}})  # type: ignore[arg-type]


class TestGraphCheck:
    """The graph is checked when Infra is built, not at first use."""

    def test_missing_extra_names_the_install_line(self, backends: Any) -> None:
        register_backend(
            "tokens", "exotic", "nowhere:Factory", extra="exotic", modules=["no_such_module_xyz"]
        )
        try:
            with pytest.raises(MissingDependencyError) as exc:
                Infra(rec_settings(**{"tokens.backend": "exotic"}))
            assert 'pip install "infrakit[exotic]"' in str(exc.value)
            assert "tokens.backend" in str(exc.value)
            assert isinstance(exc.value, ConfigError)
        finally:
            registry.unregister_backend("tokens", "exotic")

    def test_missing_dependency_component(
        self, backends: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # as if the kit's own database backend were absent from this install
        monkeypatch.delitem(registry._table, ("database", "sqlalchemy"))
        settings = rec_settings(**{"database.backend": "sqlalchemy"})
        with pytest.raises(ConfigError, match=r"tokens\.backend: backend 'rec' needs database"):
            Infra(settings)

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
                assert infra.audit == "audit-double"

    def test_user_component_wins_over_registry(self) -> None:
        mine = object()
        infra = Infra(load_settings("test", environ={}), components={"tokens": mine})
        assert infra.tokens is mine


class TestRegistry:
    """Backends by name: the kit's, entry points, the application's."""

    def test_register_validates(self) -> None:
        with pytest.raises(ValueError, match="unknown component 'cache'"):
            register_backend("cache", "x", object)
        with pytest.raises(ValueError, match="cannot be empty"):
            register_backend("tokens", " ", object)

    def test_registered_names_become_valid_settings(self) -> None:
        with pytest.raises(ConfigError, match="unknown backend"):
            load_settings("test", environ={}, overrides={"tokens.backend": "dynamo"})
        register_backend("tokens", "dynamo", "x:y")
        try:
            settings = load_settings("test", environ={}, overrides={"tokens.backend": "dynamo"})
            assert settings.tokens.backend == "dynamo"
        finally:
            registry.unregister_backend("tokens", "dynamo")

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
                tokens.plugin = infrakit_plugin_mod:build
                tokens.memory = infrakit_plugin_mod:hijack
                """
            )
        )
        (tmp_path / "infrakit_plugin_mod.py").write_text(
            "def build(settings):\n    return ('plugin', settings.service.name)\n"
            "def hijack(settings):\n    raise AssertionError('built-in names are reserved')\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(registry, "_entry_points_loaded", False)
        try:
            assert "plugin" in registry.known_names("tokens")
            spec = registry.get_backend("tokens", "plugin")
            assert spec is not None
            assert spec.origin is registry.Origin.ENTRY_POINT
            settings = load_settings("test", environ={}, overrides={"tokens.backend": "plugin"})
            infra = Infra(settings)
            assert infra.describe()[2].state == "configured"
            assert registry.get_backend("tokens", "memory") is None or (
                registry.get_backend("tokens", "memory").origin is not registry.Origin.ENTRY_POINT  # type: ignore[union-attr]
            )
        finally:
            registry._table.pop(("tokens", "plugin"), None)
            sys.modules.pop("infrakit_plugin_mod", None)

    async def test_entry_point_backend_is_built(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "ep_mod.py").write_text(
            "def build(settings):\n    return ['built', settings.service.name]\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        register_backend("tokens", "ep", "ep_mod:build")
        try:
            settings = load_settings("test", environ={}, overrides={"tokens.backend": "ep"})
            async with Infra(settings) as infra:
                assert infra.tokens == ["built", "infrakit-test"]
        finally:
            registry.unregister_backend("tokens", "ep")
            sys.modules.pop("ep_mod", None)


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
