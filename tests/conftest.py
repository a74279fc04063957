"""Shared fixtures: every test starts with the kit's process globals reset."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from infrakit.logging import reset_logging
from infrakit.telemetry import reset_telemetry

pytest_plugins = ["pytester"]

# Properties run at least 100 examples each (the seed's testing strategy).
settings.register_profile(
    "infrakit",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# CI (.ci/run) runs the same examples on every run: a commit is green or red,
# never "red on some runs". Locally, examples are random, so new ones are found.
settings.register_profile("ci", parent=settings.get_profile("infrakit"), derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "infrakit"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--event-loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="the loop every async test runs on: asyncio's (default), or uvloop, "
        "which uvicorn picks when the fastapi extra is installed",
    )


class _OnUvloop:
    """Hands pytest-asyncio uvloop's loop factory for every async test."""

    @staticmethod
    def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("event_loop") == "uvloop":
        config.pluginmanager.register(_OnUvloop(), "infrakit-event-loop-uvloop")


@pytest.fixture(autouse=True)
def _reset_globals() -> Iterator[None]:
    """Logging and the default telemetry provider are process-wide: reset both
    (and the level ``database.echo`` gives SQLAlchemy's engine logger)."""
    reset_logging()
    reset_telemetry()
    yield
    reset_logging()
    reset_telemetry()
    logging.getLogger("sqlalchemy.engine.Engine").setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def _no_ambient_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own INFRAKIT_* variables must not change test outcomes."""
    for name in list(os.environ):
        if name.upper().startswith("INFRAKIT_") and name != "INFRAKIT_REQUIRE_SERVICES":
            monkeypatch.delenv(name)


WriteProfile = Callable[..., Path]


@pytest.fixture
def profiles_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "profiles"
    directory.mkdir()
    return directory


@pytest.fixture
def write_profile(profiles_dir: Path) -> WriteProfile:
    """Write ``profiles/<name>.yaml`` (dedented) and return its path."""

    def write(name: str, text: str) -> Path:
        path = profiles_dir / f"{name}.yaml"
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


@pytest.fixture(params=["orjson", "json"])
def json_encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test twice: with orjson writing the JSON lines (the ``orjson``
    extra, installed with ``dev``), and as without it (its import fails, so
    the stdlib encoder writes them). Logging must be configured after."""
    if request.param == "orjson":
        import orjson  # noqa: F401 - fail here, clearly, if the extra is missing
    else:
        monkeypatch.setitem(sys.modules, "orjson", None)
    return str(request.param)
