"""Seed properties 11, 12, 15, 16, 17, 18 and 19 (telemetry)."""

from __future__ import annotations

import asyncio
import inspect
import string
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.trace import StatusCode

from infrakit.settings.models import ServiceSettings, TelemetrySettings
from infrakit.telemetry import TelemetryProvider, TracingMiddleware, set_telemetry, traced
from infrakit.telemetry.middleware import compile_excluded


def memory() -> TelemetryProvider:
    provider = TelemetryProvider(TelemetrySettings(exporter="memory"), ServiceSettings(name="p"))
    provider.initialize()
    set_telemetry(provider)
    return provider


class TestProperty11:
    """**Property 11: Telemetry Initialization Idempotence** (Validates: Requirements 4.2)."""

    @given(calls=st.integers(1, 8), threads=st.integers(1, 6))
    def test_repeated_and_concurrent_initialize(self, calls: int, threads: int) -> None:
        provider = TelemetryProvider(TelemetrySettings(exporter="memory"))
        seen: list[Any] = []

        def run() -> None:
            for _ in range(calls):
                provider.initialize()
                seen.append((provider.tracer_provider, provider._meter_provider))

        workers = [threading.Thread(target=run) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert len({(id(t), id(m)) for t, m in seen}) == 1
        assert provider.initialized
        provider.shutdown()


def _sync(x: int) -> int:
    return x


async def _async(x: int) -> int:
    return x


def _gen(x: int) -> Iterator[int]:
    yield x


async def _agen(x: int) -> AsyncIterator[int]:
    yield x


KINDS = [_sync, _async, _gen, _agen]
CHECKS = [
    inspect.iscoroutinefunction,
    inspect.isgeneratorfunction,
    inspect.isasyncgenfunction,
]


class TestProperty12:
    """**Property 12: Traced Decorator Function Type Detection** (Validates: Requirements 4.3)."""

    @given(
        func=st.sampled_from(KINDS),
        name=st.one_of(st.none(), st.text(string.ascii_letters, min_size=1, max_size=10)),
        x=st.integers(),
    )
    def test_kind_is_kept(self, func: Any, name: str | None, x: int) -> None:
        provider = memory()
        wrapped = traced(name)(func) if name else traced(func)
        assert [check(wrapped) for check in CHECKS] == [check(func) for check in CHECKS]
        assert inspect.signature(wrapped) == inspect.signature(func)
        assert wrapped.__name__ == func.__name__

        async def run() -> Any:
            if func is _async:
                return await wrapped(x)
            if func is _agen:
                return [i async for i in wrapped(x)]
            if func is _gen:
                return list(wrapped(x))
            return wrapped(x)

        expected = [x] if func in (_gen, _agen) else x
        assert asyncio.run(run()) == expected
        (span,) = provider.finished_spans()
        assert span.name == (name or func.__qualname__)
        provider.shutdown()

    @given(shape=st.data(), is_async=st.booleans(), on=st.booleans())
    def test_any_parameter_list_is_forwarded_unchanged(
        self, shape: st.DataObject, is_async: bool, on: bool
    ) -> None:
        """``@traced`` generates its wrapper from the function's own parameter
        list; whatever that list and whatever the call, the wrapped function
        answers exactly as the bare one (same values, same TypeError)."""
        source, names = shape.draw(parameter_lists(), label="parameters")
        keyword = "async def" if is_async else "def"
        namespace: dict[str, Any] = {}
        exec(f"{keyword} f({source}):\n    return locals()", namespace)
        func = namespace["f"]
        func.__defaults__ = tuple(object() for _ in func.__defaults__ or ())
        func.__kwdefaults__ = {k: object() for k in func.__kwdefaults__ or {}}
        provider = memory() if on else None
        if not on:
            set_telemetry(None)
        wrapped = traced(func)
        # the generated parameter list itself, not the one __wrapped__ points to
        assert inspect.signature(wrapped, follow_wrapped=False) == inspect.signature(func)
        assert inspect.iscoroutinefunction(wrapped) is is_async
        candidates = [*names, "zz", *(f"{n}x" for n in names)]
        args = shape.draw(st.lists(st.integers(), max_size=len(names) + 2), label="args")
        kwargs = shape.draw(
            st.dictionaries(st.sampled_from(candidates), st.integers(), max_size=4),
            label="kwargs",
        )

        def outcome(target: Any) -> Any:
            try:
                result = target(*args, **kwargs)
                return asyncio.run(result) if is_async else result
            except TypeError as error:
                return ("TypeError", str(error))

        expected = outcome(func)
        assert outcome(wrapped) == expected
        if provider is not None:
            called = not (isinstance(expected, tuple) and expected[0] == "TypeError")
            assert len(provider.finished_spans()) == called  # one span per call that ran
            provider.shutdown()


@st.composite
def parameter_lists(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A random Python parameter list: positional-only, regular (some with
    defaults), ``*args`` or a bare ``*``, keyword-only (some with defaults),
    ``**kwargs``; returns its source and its names."""
    names = iter(f"p{i}" for i in range(20))
    posonly = [next(names) for _ in range(draw(st.integers(0, 2)))]
    regular = [next(names) for _ in range(draw(st.integers(0, 3)))]
    defaults = draw(st.integers(0, len(posonly) + len(regular)))
    positional = [*posonly, *regular]
    rendered = [
        f"{n}=None" if i >= len(positional) - defaults else n for i, n in enumerate(positional)
    ]
    if posonly:
        rendered.insert(len(posonly), "/")
    star = "args" if draw(st.booleans()) else None
    kwonly = [next(names) for _ in range(draw(st.integers(0, 2)))]
    if star:
        rendered.append(f"*{star}")
    elif kwonly:
        rendered.append("*")
    rendered += [f"{n}=None" if draw(st.booleans()) else n for n in kwonly]
    double_star = "kwargs" if draw(st.booleans()) else None
    if double_star:
        rendered.append(f"**{double_star}")
    every = [*positional, *kwonly, *(x for x in (star, double_star) if x)]
    return ", ".join(rendered), every


paths = st.text(alphabet=string.ascii_lowercase + "/-_.", min_size=0, max_size=20).map(
    lambda s: "/" + s
)
patterns = st.lists(
    st.text(alphabet=string.ascii_lowercase + "/*?", min_size=0, max_size=8).map(lambda s: "/" + s),
    max_size=3,
)


async def _call(app: Any, path: str, status: int = 200) -> list[Any]:
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(
        {"type": "http", "method": "GET", "path": path, "headers": [], "scheme": "http"},
        receive,
        send,
    )
    return sent


def _status_app(status: int) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


class TestProperty15:
    """**Property 15: Tracing Path Exclusion** (Validates: Requirements 6.1)."""

    @given(path=paths, excluded=patterns)
    def test_excluded_paths_produce_nothing(self, path: str, excluded: list[str]) -> None:
        import fnmatch

        provider = memory()
        app = TracingMiddleware(_status_app(200), provider, excluded_paths=excluded)
        sent = asyncio.run(_call(app, path))
        assert sent[0]["status"] == 200  # the response always goes through
        is_excluded = any(fnmatch.fnmatchcase(path, p) for p in excluded)
        assert compile_excluded(excluded)(path) is is_excluded
        assert len(provider.finished_spans()) == (0 if is_excluded else 1)
        assert ("http.server.request.duration" in provider.metrics()) is (not is_excluded)
        provider.shutdown()


class TestProperty16And17:
    """**Property 16: HTTP Status to Span Status Mapping** and **Property 17: Metrics
    Labels Completeness** (Validates: Requirements 6.4, 6.5)."""

    @given(status=st.integers(0, 999))
    def test_status_and_labels(self, status: int) -> None:
        provider = memory()
        app = TracingMiddleware(_status_app(status), provider)
        asyncio.run(_call(app, "/x"))
        (span,) = provider.finished_spans()
        error = status >= 500 or not 100 <= status <= 599
        assert (span.status.status_code is StatusCode.ERROR) is error
        assert span.status.status_code in (StatusCode.ERROR, StatusCode.UNSET)  # never OK
        ((labels, point),) = provider.metrics()["http.server.request.duration"]
        assert labels["http.request.method"] == "GET"
        assert labels["http.response.status_code"] == status
        assert isinstance(labels["http.response.status_code"], int)
        assert "url.path" not in labels  # never the raw path
        assert point.count == 1
        provider.shutdown()


class TestProperty18And19:
    """**Property 18: Validation Error Type Consistency** and **Property 19: Exception
    Chain Preservation** (Validates: Requirements 8.1, 8.4)."""

    @given(pattern=st.text(alphabet=string.ascii_lowercase + "*", min_size=1, max_size=6))
    def test_relative_patterns_are_value_errors(self, pattern: str) -> None:
        with pytest.raises(ValueError, match=r".+"):
            compile_excluded([pattern])

    @given(ratio=st.floats(allow_nan=True).filter(lambda r: not 0 <= r <= 1))
    def test_sample_ratio_bounds(self, ratio: float) -> None:
        with pytest.raises(ValueError, match=r".+"):
            TelemetrySettings(sample_ratio=ratio)

    @given(message=st.text(max_size=20), cause=st.text(max_size=10))
    def test_traced_reraises_with_the_chain(self, message: str, cause: str) -> None:
        memory()
        root = OSError(cause)

        @traced
        async def fails() -> None:
            try:
                raise root
            except OSError as e:
                raise RuntimeError(message) from e

        with pytest.raises(RuntimeError) as caught:
            asyncio.run(fails())
        assert caught.value.__cause__ is root
