"""``@traced``: a span around a function, whatever kind of function it is."""

from __future__ import annotations

import functools
import inspect
import linecache
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from types import CodeType, FunctionType
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


# Wrappers of sync and async callables, generated with the parameter list of
# the function they wrap.
#
# A ``def wrapper(*args, **kwargs)`` costs far more than the check it guards:
# packing a tuple and a dict, then unpacking them again. Generated with the
# function's own parameter list (as dataclasses and attrs generate
# ``__init__``), a call with telemetry off is one global read, one test and
# one plain call. The source only depends on the shape of the parameter
# list, so it is compiled once per shape.

_PREFIX = "_infrakit_"
_TEMPLATE = (
    "def _infrakit_factory(_infrakit_func, _infrakit_span,\n"
    "                      _infrakit_name, _infrakit_attributes, _infrakit_record):\n"
    "    {async_}def wrapper({params}):\n"
    "        _infrakit_t = _infrakit_tracer  # a global: see _State.publish\n"
    "        if _infrakit_t is None:  # telemetry off: the call, nothing else\n"
    "            return {await_}_infrakit_func({args})\n"
    "        with _infrakit_span(_infrakit_t, _infrakit_name,\n"
    "                            _infrakit_attributes, _infrakit_record):\n"
    "            return {await_}_infrakit_func({args})\n"
    "    return wrapper\n"
)


def _parameters(code: CodeType) -> tuple[str, str] | None:
    """The parameter list of a function's code and the call that forwards it.

    Read from the code object, not ``inspect.signature`` (which follows
    ``__wrapped__`` to some inner function's parameters). ``None`` when a
    parameter name could shadow one of the generated helpers.
    """
    names = code.co_varnames
    n_pos, n_kw = code.co_argcount, code.co_kwonlyargcount
    positional, keyword_only = names[:n_pos], names[n_pos : n_pos + n_kw]
    rest = n_pos + n_kw
    star = names[rest] if code.co_flags & inspect.CO_VARARGS else None
    rest += star is not None
    double_star = names[rest] if code.co_flags & inspect.CO_VARKEYWORDS else None
    every = (*positional, *keyword_only, star or "", double_star or "")
    if any(name.startswith(_PREFIX) for name in every):
        return None
    params = list(positional)
    if code.co_posonlyargcount:
        params.insert(code.co_posonlyargcount, "/")
    if star is not None:
        params.append(f"*{star}")
    elif keyword_only:
        params.append("*")
    params.extend(keyword_only)
    args = list(positional)
    if star is not None:
        args.append(f"*{star}")
    args.extend(f"{name}={name}" for name in keyword_only)
    if double_star is not None:
        params.append(f"**{double_star}")
        args.append(f"**{double_star}")
    return ", ".join(params), ", ".join(args)


@functools.lru_cache(maxsize=256)
def _factory(kind: str, params: str, args: str) -> Callable[..., Any]:
    prefix = "async " if kind == "async" else ""
    source = _TEMPLATE.format(async_=prefix, await_=prefix and "await ", params=params, args=args)
    filename = f"<infrakit @traced {kind} wrapper ({params})>"
    local: dict[str, Any] = {}
    # Globals shared by every generated wrapper: the tracer is published there.
    exec(compile(source, filename, "exec"), _state.namespace, local)  # noqa: S102 - built from identifiers
    # Tracebacks through the wrapper show its source, as attrs does for its methods.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    factory: Callable[..., Any] = local["_infrakit_factory"]
    return factory


_ANY = ("*args, **kwargs", "*args, **kwargs")  # for callables without a parameter list of their own


def _wrap_call(
    kind: str,
    func: Callable[..., Any],
    name: str,
    attributes: Mapping[str, Any] | None,
    record: bool,
) -> Any:
    """The wrapper of a sync or async callable: with the function's own
    parameter list for a plain function, ``*args, **kwargs`` for anything
    else (a callable object, a partial, a builtin)."""
    exact = _parameters(func.__code__) if isinstance(func, FunctionType) else None
    wrapper = _factory(kind, *(exact or _ANY))(func, _span, name, attributes, record)
    if exact is not None:
        wrapper.__defaults__ = func.__defaults__
        wrapper.__kwdefaults__ = dict(func.__kwdefaults__) if func.__kwdefaults__ else None
    return functools.wraps(func)(wrapper)


def _wrap(
    func: Callable[..., Any], name: str, attributes: Mapping[str, Any] | None, record: bool
) -> Any:
    if inspect.isasyncgenfunction(func):
        return _wrap_async_gen(func, name, attributes, record)
    if inspect.isgeneratorfunction(func):
        return _wrap_gen(func, name, attributes, record)
    kind = "async" if inspect.iscoroutinefunction(func) else "sync"
    return _wrap_call(kind, func, name, attributes, record)


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
