"""The suite's ``--event-loop`` option: every async test runs on the loop it names
(``pytest --event-loop uvloop`` runs the kit on the loop uvicorn picks in production)."""

from __future__ import annotations

import asyncio

import pytest


async def test_async_tests_run_on_the_chosen_loop(pytestconfig: pytest.Config) -> None:
    package = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    assert package == pytestconfig.getoption("event_loop")
