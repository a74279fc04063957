from __future__ import annotations

import asyncio
import functools
import inspect
import traceback
from collections.abc import AsyncIterator, Generator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from infrakit.settings.models import TelemetrySettings
from infrakit.telemetry import TelemetryProvider, set_telemetry, traced
from infrakit.testing import span_attributes


class TestKinds:
    """Each kind of function keeps its kind, metadata and signature."""

    def test_sync(self, memory_telemetry: TelemetryProvider) -> None:
        @traced
        def add(a: int, b: int = 2) -> int:
            """Adds."""
            return a + b

        assert add(1) == 3
        assert add.__name__ == "add"
        assert add.__doc__ == "Adds."
        assert inspect.signature(add) == inspect.signature(add.__wrapped__)  # type: ignore[attr-defined]
        assert list(inspect.signature(add).parameters) == ["a", "b"]
        assert not inspect.iscoroutinefunction(add)
        assert [s.name for s in memory_telemetry.finished_spans()] == [add.__qualname__]

    async def test_async(self, memory_telemetry: TelemetryProvider) -> None:
        @traced("fetch", attributes={"peer": "db"})
        async def fetch(x: int) -> int:
            await asyncio.sleep(0)
            return x * 2

        assert inspect.iscoroutinefunction(fetch)
        assert await fetch(4) == 8
        (span,) = memory_telemetry.finished_spans()
        assert (span.name, span_attributes(span)) == ("fetch", {"peer": "db"})

    def test_generator(self, memory_telemetry: TelemetryProvider) -> None:
        @traced
        def numbers(n: int) -> Iterator[int]:
            for i in range(n):
                received = yield i
                if received:
                    yield received
            return None

        assert inspect.isgeneratorfunction(numbers)
        gen = numbers(3)
        assert next(gen) == 0
        assert trace.get_current_span() is trace.INVALID_SPAN  # nothing leaked to the consumer
        assert gen.send(10) == 10
        assert list(gen) == [1, 2]
        assert len(memory_telemetry.finished_spans()) == 1

    async def test_async_generator(self, memory_telemetry: TelemetryProvider) -> None:
        @traced
        async def ticks(n: int) -> AsyncIterator[int]:
            for i in range(n):
                yield i

        assert inspect.isasyncgenfunction(ticks)
        assert [i async for i in ticks(3)] == [0, 1, 2]
        assert len(memory_telemetry.finished_spans()) == 1

    def test_span_is_current_inside(self, memory_telemetry: TelemetryProvider) -> None:
        @traced
        def inner() -> int:
            return trace.get_current_span().get_span_context().span_id

        span_id = inner()
        assert span_id == memory_telemetry.finished_spans()[0].context.span_id

    def test_early_close_of_a_generator(self, memory_telemetry: TelemetryProvider) -> None:
        @traced
        def forever() -> Generator[int, None, None]:
            while True:
                yield 1

        gen = forever()
        next(gen)
        gen.close()
        (span,) = memory_telemetry.finished_spans()
        assert span.status.status_code is StatusCode.UNSET


class TestErrors:
    """Exceptions are recorded as ERROR and re-raised as the same object."""

    async def test_same_exception(self, memory_telemetry: TelemetryProvider) -> None:
        error = KeyError("missing")

        @traced
        async def fails() -> None:
            raise error

        with pytest.raises(KeyError) as caught:
            await fails()
        assert caught.value is error
        (span,) = memory_telemetry.finished_spans()
        assert span.status.status_code is StatusCode.ERROR
        assert span_attributes(span)["error.type"] == "KeyError"
        assert [e.name for e in span.events] == ["exception"]

    def test_record_exception_off(self, memory_telemetry: TelemetryProvider) -> None:
        @traced(record_exception=False)
        def fails() -> None:
            raise ValueError("x")

        with pytest.raises(ValueError, match="x"):
            fails()
        (span,) = memory_telemetry.finished_spans()
        assert span.status.status_code is StatusCode.ERROR
        assert span.events == ()

    def test_without_telemetry_it_is_a_plain_call(self) -> None:
        @traced
        def plain() -> str:
            return "ok"

        assert plain() == "ok"

    @pytest.mark.parametrize("bad", ["", "  ", 3])
    def test_bad_names(self, bad: object) -> None:
        with pytest.raises(ValueError, match="non-empty string"):
            traced(bad)  # type: ignore[call-overload]


class TestWrappers:
    """Plain functions get a wrapper with their own parameter list; anything
    else callable gets the general one. Both follow the default provider."""

    def test_decorated_before_telemetry_starts(self) -> None:
        @traced
        def ping(x: int) -> int:
            return x

        set_telemetry(None)
        assert ping(1) == 1
        provider = TelemetryProvider(TelemetrySettings(exporter="memory"))
        provider.initialize()
        set_telemetry(provider)
        try:
            assert ping(2) == 2
            assert [s.name for s in provider.finished_spans()] == [ping.__qualname__]
            set_telemetry(None)
            assert ping(3) == 3
            assert len(provider.finished_spans()) == 1  # off again: no span
        finally:
            provider.shutdown()

    def test_shutdown_of_the_default_provider_turns_spans_off(self) -> None:
        @traced
        def ping() -> None:
            return None

        provider = TelemetryProvider(TelemetrySettings(exporter="memory"))
        provider.initialize()
        set_telemetry(provider)
        ping()
        provider.shutdown()
        ping()  # must not reach the shut-down tracer
        assert len(provider.finished_spans()) == 1
        set_telemetry(None)

    def test_method(self, memory_telemetry: TelemetryProvider) -> None:
        class Repo:
            factor = 3

            @traced
            def scale(self, x: int, *, twice: bool = False) -> int:
                return x * self.factor * (2 if twice else 1)

        assert Repo().scale(2, twice=True) == 12
        assert memory_telemetry.finished_spans()[0].name.endswith("Repo.scale")

    def test_callable_object_and_partial(self, memory_telemetry: TelemetryProvider) -> None:
        class Adder:
            def __call__(self, a: int, b: int) -> int:
                return a + b

        add = traced("add")(Adder())
        add_one = traced("add_one")(functools.partial(Adder(), 1))
        assert (add(1, b=2), add_one(b=5)) == (3, 6)
        assert [s.name for s in memory_telemetry.finished_spans()] == ["add", "add_one"]

    def test_parameter_named_like_a_helper(self, memory_telemetry: TelemetryProvider) -> None:
        @traced
        def odd(_infrakit_func: int, _infrakit_tracer: int = 2) -> int:
            return _infrakit_func + _infrakit_tracer

        assert odd(1) == 3
        assert odd(_infrakit_func=1, _infrakit_tracer=1) == 2
        assert len(memory_telemetry.finished_spans()) == 2

    def test_traceback_shows_the_wrapper_line(self) -> None:
        @traced
        def boom(x: int) -> None:
            raise ValueError(x)

        with pytest.raises(ValueError, match="1") as caught:
            boom(1)
        rendered = "".join(traceback.format_exception(caught.value))
        assert "@traced sync wrapper (x)" in rendered
        assert "return _infrakit_func(x)" in rendered  # the source is in linecache
