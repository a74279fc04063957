"""The optional contrib auto-instrumentations, switched on from the profile."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from infrakit import Infra, load_settings


@pytest.fixture
def uninstrument() -> Iterator[None]:
    yield
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from sqlalchemy.exc import InvalidRequestError

    for instrumentor in (SQLAlchemyInstrumentor(), RedisInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            # contrib removes its listeners from every engine it saw, and trips
            # over engines that are already gone; the patching is undone first
            with contextlib.suppress(InvalidRequestError):
                instrumentor.uninstrument()


class TestInstrumentation:
    """Off by default; on, database statements become spans."""

    async def test_sqlalchemy_statements_become_spans(self, uninstrument: None) -> None:
        settings = load_settings(
            "test", environ={}, overrides={"telemetry.instrument.sqlalchemy": True}
        )
        async with Infra(settings) as infra:
            infra.telemetry.clear_spans()
            async with infra.database.session() as session:
                await session.execute(text("SELECT 42"))
            names = [s.name for s in infra.telemetry.finished_spans()]
        assert any(name.startswith("SELECT") for name in names), names

    async def test_off_by_default(self) -> None:
        async with Infra.from_profile("test", environ={}) as infra:
            infra.telemetry.clear_spans()
            async with infra.database.session() as session:
                await session.execute(text("SELECT 42"))
            assert infra.telemetry.finished_spans() == ()

    def test_on_in_a_fresh_process_starts_and_stops(self) -> None:
        """In a process that has not imported SQLAlchemy yet (the kit imports it
        only when a session is built), switching the instrumentation on and off
        again works and every statement becomes one span. (In this test
        process, other tests have imported SQLAlchemy already.)"""
        import subprocess
        import sys
        import textwrap

        script = textwrap.dedent(
            """
            import asyncio, sys
            from infrakit import Infra, load_settings

            async def main():
                assert "sqlalchemy.ext.asyncio" not in sys.modules
                settings = load_settings(
                    "test", environ={}, overrides={"telemetry.instrument.sqlalchemy": True}
                )
                from sqlalchemy import text
                async with Infra(settings) as infra:
                    infra.telemetry.clear_spans()
                    async with infra.database.session() as session:
                        await session.execute(text("SELECT 42"))
                    names = [s.name for s in infra.telemetry.finished_spans()]
                print(sum(name.startswith("SELECT") for name in names))

            asyncio.run(main())
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1"
