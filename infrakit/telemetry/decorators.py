"""``@traced``: a span around a function, whatever kind of function it is."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, overload

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from infrakit.telemetry.provider import _state

__all__ = ["traced"]

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def _span(
    tracer: trace.Tracer,
    name: str,
    attributes: Mapping[str, Any] | None,
    record: bool,
    *,
    current: bool = True,
) -> Iterator[trace.Span]:
    """The one span code path every kind of wrapper shares.

    Generators pass ``current=False`` and activate the span only while their
    body runs (see :func:`_step`), so the span never leaks into the code that
    consumes them between items.
    """
    span = tracer.start_span(name, attributes=attributes)
    try:
        if current:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                yield span
        else:
            yield span
    except BaseException as error:
        if not isinstance(error, GeneratorExit):
            if record:
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.set_attribute("error.type", type(error).__qualname__)
        raise
    finally:
        span.end()


def _step(span: trace.Span) -> Any:
    return trace.use_span(span, record_exception=False, set_status_on_exception=False)


def _wrap_async_gen(
    func: Callable[..., Any], name: str, attributes: Mapping[str, Any] | None, record: bool
) -> Any:
    state = _state

    @functools.wraps(func)
    async def async_gen_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        tracer = state.tracer
        agen = func(*args, **kwargs)
        if tracer is None:
            async for item in agen:
                yield item
            return
        with _span(tracer, name, attributes, record, current=False) as span:
            try:
                throwing, value = False, None
                while True:
                    with _step(span):  # the span is current only inside the body
                        try:
                            step = agen.athrow(value) if throwing else agen.asend(value)
                            item = await step
                        except StopAsyncIteration:
                            return
                    try:
                        throwing, value = False, (yield item)
                    except GeneratorExit:
                        raise
                    except BaseException as thrown:  # noqa: BLE001 - handed to the generator
                        throwing, value = True, thrown
            finally:
                await agen.aclose()

    return async_gen_wrapper


def _wrap_gen(
    func: Callable[..., Any], name: str, attributes: Mapping[str, Any] | None, record: bool
) -> Any:
    state = _state

    @functools.wraps(func)
    def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        tracer = state.tracer
        gen = func(*args, **kwargs)
        if tracer is None:
            return (yield from gen)
        with _span(tracer, name, attributes, record, current=False) as span:
            try:
                throwing, value = False, None
                while True:
                    with _step(span):  # the span is current only inside the body
                        try:
                            item = gen.throw(value) if throwing else gen.send(value)
                        except StopIteration as stop:
                            return stop.value
                    try:
                        throwing, value = False, (yield item)
                    except GeneratorExit:
                        raise
                    except BaseException as thrown:  # noqa: BLE001 - handed to the generator
                        throwing, value = True, thrown
            finally:
                gen.close()

    return gen_wrapper


def _wrap_coro(
    func: Callable[..., Any], name: str, attributes: Mapping[str, Any] | None, record: bool
) -> Any:
    state = _state

    @functools.wraps(func)
    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        tracer = state.tracer
        if tracer is None:
            return await func(*args, **kwargs)
        with _span(tracer, name, attributes, record):
            return await func(*args, **kwargs)

    return async_wrapper


def _wrap_sync(
    func: Callable[..., Any], name: str, attributes: Mapping[str, Any] | None, record: bool
) -> Any:
    state = _state

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tracer = state.tracer
        if tracer is None:  # telemetry off: one attribute read, then the call
            return func(*args, **kwargs)
        with _span(tracer, name, attributes, record):
            return func(*args, **kwargs)

    return wrapper


def _wrap(
    func: Callable[..., Any], name: str, attributes: Mapping[str, Any] | None, record: bool
) -> Any:
    if inspect.isasyncgenfunction(func):
        return _wrap_async_gen(func, name, attributes, record)
    if inspect.iscoroutinefunction(func):
        return _wrap_coro(func, name, attributes, record)
    if inspect.isgeneratorfunction(func):
        return _wrap_gen(func, name, attributes, record)
    return _wrap_sync(func, name, attributes, record)


@overload
def traced(name: F, /) -> F: ...
@overload
def traced(
    name: str | None = None,
    *,
    attributes: Mapping[str, Any] | None = None,
    record_exception: bool = True,
) -> Callable[[F], F]: ...


def traced(
    name: str | Callable[..., Any] | None = None,
    *,
    attributes: Mapping[str, Any] | None = None,
    record_exception: bool = True,
) -> Any:
    """Trace calls of a function: ``@traced``, ``@traced("name")`` or
    ``@traced(attributes={...})``.

    Keeps the function's kind — sync, async, generator or async generator —
    so ``inspect.iscoroutinefunction`` and friends agree with the original,
    and keeps its name, docstring and signature. An exception is recorded on
    the span, sets ERROR status and ``error.type``, and is re-raised as the
    same object. Spans come from the default provider (:func:`set_telemetry`,
    which ``Infra`` sets while it runs); with none, the function is simply
    called.
    """
    if callable(name):
        func = name
        return _wrap(func, func.__qualname__, attributes, record_exception)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"traced(name) must be a non-empty string, got {name!r}")
    if attributes is not None and not isinstance(attributes, Mapping):
        raise ValueError(
            f"traced(attributes=...) must be a mapping, got {type(attributes).__name__}"
        )

    def decorate(func: F) -> F:
        if not callable(func):
            raise ValueError(f"@traced decorates functions, got {type(func).__name__}")
        result: F = _wrap(func, name or func.__qualname__, attributes, record_exception)
        return result

    return decorate
