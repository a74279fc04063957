"""infrakit's pytest plugin (registered through the ``pytest11`` entry point).

Fixtures:

- ``infra`` — an :class:`~infrakit.Infra` on the ``test`` profile, started
  before the test and stopped after it;
- ``infra_factory`` — ``await infra_factory(profile="test", overrides={...})``
  for anything else; every Infra it made is stopped after the test;
- ``captured_logs`` — the redacted events logged during the test, as dicts;
- ``captured_spans`` — the finished spans of the running memory exporter
  (one is installed if none runs).

``override(infra, tokens=double)`` swaps components for a ``with`` block.

The two async fixtures are pytest-asyncio fixtures when pytest-asyncio is
installed, so they work in its default ``strict`` mode (tests marked
``@pytest.mark.asyncio``) as in ``auto`` mode. Without pytest-asyncio they are
plain coroutine fixtures, which anyio's pytest plugin runs for tests marked
``@pytest.mark.anyio``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pytest

from infrakit.container import Infra
from infrakit.logging import reset_logging
from infrakit.settings.loader import load_settings
from infrakit.settings.models import ServiceSettings, TelemetrySettings
from infrakit.telemetry.provider import TelemetryProvider, get_telemetry, set_telemetry
from infrakit.testing.capture import CapturedSpans, capture_logs

__all__ = ["InfraFactory", "override"]

InfraFactory = Callable[..., Awaitable[Infra]]

if TYPE_CHECKING:
    from pytest_asyncio import fixture as _async_fixture
else:
    try:  # strict mode runs only async fixtures declared through pytest-asyncio
        from pytest_asyncio import fixture as _async_fixture
    except ImportError:  # exercised by the plugin's pytester tests
        _async_fixture = pytest.fixture


def override(infra: Infra, **components: Any) -> AbstractContextManager[Infra]:
    """Swap components of ``infra`` for the ``with`` block (see ``Infra.override``)."""
    return infra.override(**components)


@_async_fixture
async def infra_factory() -> AsyncIterator[InfraFactory]:
    """``await infra_factory(profile="test", overrides={...})``: a started Infra,
    stopped after the test (``environ`` defaults to empty, so the machine's
    variables do not leak into the profile)."""
    made: list[Infra] = []

    async def make(
        profile: str = "test", *, overrides: dict[str, Any] | None = None, **kwargs: Any
    ) -> Infra:
        kwargs.setdefault("environ", {})
        instance = Infra(load_settings(profile, overrides=overrides, **kwargs))
        await instance.start()
        made.append(instance)
        return instance

    try:
        yield make
    finally:
        for instance in reversed(made):
            await instance.aclose()
        reset_logging()


@_async_fixture
async def infra(infra_factory: InfraFactory) -> Infra:
    """An Infra on the ``test`` profile (all in memory), started and stopped per test."""
    return await infra_factory("test")


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """The events logged during the test (redacted, with context), as dicts."""
    with capture_logs() as events:
        yield events


@pytest.fixture
def captured_spans() -> Iterator[CapturedSpans]:
    """Finished spans of the running memory exporter (one is installed if none runs)."""
    own: TelemetryProvider | None = None
    if get_telemetry() is None:
        own = TelemetryProvider(TelemetrySettings(exporter="memory"), ServiceSettings(name="test"))
        own.initialize()
        set_telemetry(own)
    try:
        yield CapturedSpans(own)
    finally:
        if own is not None:
            if get_telemetry() is own:
                set_telemetry(None)
            own.shutdown()
