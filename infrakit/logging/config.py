"""``configure_logging``: one structlog pipeline for structlog and stdlib records."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, NamedTuple, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor

from infrakit.logging.context import current_trace_ids, get_request_id
from infrakit.logging.redaction import ENCODERS_DIFFER, REDACTED, PIIRedactor, safe_repr
from infrakit.scrub import Scrubber
from infrakit.values import LOG_LEVELS

__all__ = [
    "LOG_LEVELS",
    "build_processors",
    "configure_logging",
    "configure_logging_from",
    "reset_logging",
]

LOG_FORMATS = ("json", "console")

#: stdlib loggers that install handlers of their own; we send them through ours.
DEFAULT_CAPTURED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
#: Loggers that narrate every operation at DEBUG; held at WARNING unless asked.
DEFAULT_QUIET_LOGGERS = ("aiosqlite", "alembic.runtime.migration", "alembic.runtime.plugins")

_lock = threading.Lock()
_configured = False


class _StdoutLogger:
    """Writes each rendered line to the configured stream, else to the
    *current* ``sys.stdout``.

    Looking ``sys.stdout`` up per line keeps output going where pytest's capture
    or a redirect has put it, even for loggers created before. One instance
    serves every structlog logger; :func:`configure_logging` sets its stream.

    A ``str`` line gets its newline here. A ``bytes`` line (orjson's) comes
    with it and goes to the stream's binary ``buffer`` (sys.stdout's, a file's)
    without a decode and encode, after whatever the text layer holds, so it
    stays in order with ``print()``; a stream without one (``StringIO``) gets
    it decoded. Either way the bytes are UTF-8, as JSON travels.
    """

    __slots__ = ("stream",)

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream

    def msg(self, message: str | bytes) -> None:
        stream = self.stream or sys.stdout
        if type(message) is bytes:
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                stream.flush()
                buffer.write(message)
                buffer.flush()
                return
            stream.write(message.decode())
        else:
            stream.write(cast(str, message) + "\n")
        stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


#: The one writer behind every structlog logger of the kit's configuration.
_writer = _StdoutLogger()


def _writer_factory(*args: Any) -> _StdoutLogger:
    return _writer


class _FilteringBoundLogger(structlog.BoundLoggerBase):
    """structlog's ``make_filtering_bound_logger`` class for the configured
    level, as one class whose methods each configuration replaces.

    The kit's loggers are cached on first use (structlog's
    ``cache_logger_on_first_use``: a logger from ``structlog.get_logger()``
    is otherwise assembled anew on every call, about 1 µs). A cached logger
    keeps its class, its processor list and its writer for good: so all three
    stay the same objects, changed in place by :func:`configure_logging` and
    :func:`reset_logging`, and a logger cached by one configuration logs
    through the next one, at its level, to its stream.
    """


def _filter_at(level: int) -> None:
    """Give :class:`_FilteringBoundLogger` the methods structlog builds for ``level``
    (``return None`` below it)."""
    source = structlog.make_filtering_bound_logger(level)
    for name, method in vars(source).items():
        if not name.startswith("__"):
            setattr(_FilteringBoundLogger, name, method)


_filter_at(logging.NOTSET)  # structlog's default

#: The processor list structlog holds, for the life of the process: each
#: configuration replaces its contents in one step (as
#: ``structlog.testing.capture_logs`` does), so cached loggers run the chain
#: configured last. Every configuration of the kit has the same four roles at
#: the same places (context, stamp and exceptions, redaction, renderer): a
#: thread running the chain while it is replaced runs each role once, old or
#: new, and never skips the redactor.
_processors: list[Processor] = []


class _PipelineHandler(logging.Handler):
    """The stdlib handler that renders records through the structlog pipeline
    and writes them as structlog's lines are: a line with non-ASCII (orjson
    writes it raw) as UTF-8 bytes, which a text stream's encoding (``ascii``
    under ``PYTHONIOENCODING``, say) could not refuse."""

    infrakit_handler = True

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__()
        self._out = _StdoutLogger(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            self._out.msg(line if line.isascii() else (line + "\n").encode())
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """Say that a record could not be written, and where it came from.

        logging's own ``handleError`` prints the record's message, its
        arguments and the call stack's source lines: the unredacted values
        this pipeline exists to hide. Only the error's type is shown here.
        """
        if not logging.raiseExceptions or sys.stderr is None:
            return
        error = sys.exc_info()[1]
        with contextlib.suppress(Exception):
            sys.stderr.write(
                f"--- Logging error: {type(error).__name__} in infrakit's pipeline; a record"
                f" of logger {record.name!r} ({record.pathname}:{record.lineno}) was not"
                " written (its message and arguments are not shown: they may hold secrets)\n"
            )


class UTCTimestamper:
    """structlog processor: ``timestamp`` as ISO 8601 UTC with microseconds and ``Z``.

    Same output as ``TimeStamper(fmt="iso", utc=True)`` at a third of the
    cost: the formatted date and time are reused within one second.
    """

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, logger: object, method_name: str, event_dict: EventDict) -> EventDict:
        # integer nanoseconds: no float to round, and divmod splits them in one step
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        cached_second, prefix = self._cached  # one tuple: safe across threads
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self._cached = (second, prefix)
        event_dict["timestamp"] = "%s%06dZ" % (prefix, nanoseconds // 1000)  # noqa: UP031
        return event_dict


#: structlog's ``add_log_level`` names: ``warn`` is ``warning``, ``exception`` is ``error``.
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}


class _Stamp:
    """``add_request_id``, ``add_trace_context``, structlog's ``add_log_level``,
    :class:`UTCTimestamper` and, for JSON, :class:`_JsonExceptions`, in that
    order, as one processor: the same event, without four more calls through
    structlog's chain on every line."""

    __slots__ = ("_exceptions", "_timestamp")

    def __init__(self, exceptions: _JsonExceptions | None = None) -> None:
        self._timestamp = UTCTimestamper()
        self._exceptions = exceptions

    def __call__(self, logger: object, method_name: str, event_dict: EventDict) -> EventDict:
        request_id = get_request_id()
        if request_id is not None:
            event_dict.setdefault("request_id", request_id)
        trace_id, span_id = current_trace_ids()
        if trace_id is not None:
            event_dict.setdefault("trace_id", trace_id)
            event_dict.setdefault("span_id", span_id)
        event_dict["level"] = _LEVEL_NAMES.get(method_name, method_name)
        self._timestamp(logger, method_name, event_dict)
        if self._exceptions is None or "exc_info" not in event_dict:
            return event_dict
        return self._exceptions(logger, method_name, event_dict)


#: How much of a frame local's repr is read (for secrets) and how much shown.
LOCALS_READ = 4096
LOCALS_SHOWN = 80


class _JsonExceptions:
    """structlog's ``dict_tracebacks``, skipped outright for the usual event
    without an exception. Frame locals only when asked for: they hold
    passwords, tokens and request bodies. A local whose name mentions a
    secret (``auth_args``, ``password_hash``) is replaced; any other is
    scrubbed on its repr's first 4 KB *before* being cut to 80 characters (a
    URL cut before its ``@`` would show its password). The redactor, which
    runs next, then judges the locals like the rest of the event."""

    __slots__ = ("_render", "_scrubber", "_show_locals")

    def __init__(self, show_locals: bool, scrubber: Scrubber) -> None:
        self._show_locals = show_locals
        self._scrubber = scrubber
        self._render = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(
                show_locals=show_locals, locals_max_string=LOCALS_READ, use_rich=False
            )
        )

    def __call__(self, logger: object, method_name: str, event_dict: EventDict) -> EventDict:
        if "exc_info" not in event_dict:
            return event_dict
        rendered: EventDict = self._render(logger, method_name, event_dict)
        if self._show_locals and isinstance(rendered.get("exception"), list):
            self._locals(rendered["exception"])
        return rendered

    def _locals(self, stacks: list[Any]) -> None:
        scrubber = self._scrubber
        for stack in stacks:
            if not isinstance(stack, dict):
                continue
            for frame in stack.get("frames") or ():
                variables = frame.get("locals") if isinstance(frame, dict) else None
                if not variables:
                    continue
                shown = {}
                for name, value in variables.items():
                    if scrubber.keys.mentions(str(name)):
                        shown[name] = scrubber.replacement
                    else:
                        text = scrubber.text(str(value))
                        cut = len(text) - LOCALS_SHOWN
                        shown[name] = f"{text[:LOCALS_SHOWN]}+{cut}" if cut > 0 else text
                frame["locals"] = shown
            nested = stack.get("exceptions")
            if isinstance(nested, list):
                self._locals(nested)


class _ScrubbedTraceback:
    """The console renderer's exception formatter: a plain traceback (never
    rich's, whose colours and line wrapping would split secrets past the
    scrubber), locals only when asked for (those whose name mentions a secret
    replaced), and the text scrubbed."""

    __slots__ = ("_scrubber", "_show_locals")

    def __init__(self, scrubber: Scrubber, show_locals: bool) -> None:
        self._scrubber = scrubber
        self._show_locals = show_locals

    def __call__(self, sio: TextIO, exc_info: Any) -> None:
        exc_type, exc_value, tb = exc_info
        exception = traceback.TracebackException(
            exc_type, exc_value, tb, capture_locals=self._show_locals
        )
        if self._show_locals:
            self._locals(exception, set())
        sio.write("\n" + self._scrubber.text("".join(exception.format())))

    def _locals(self, exception: traceback.TracebackException, seen: set[int]) -> None:
        if id(exception) in seen:
            return
        seen.add(id(exception))
        for frame in exception.stack:
            for name in list(frame.locals or ()):
                if self._scrubber.keys.mentions(name):
                    frame.locals[name] = self._scrubber.replacement  # type: ignore[index]
        for other in (exception.__cause__, exception.__context__, *(exception.exceptions or ())):
            if other is not None:
                self._locals(other, seen)


def _json_default(scrub: Callable[[str], str]) -> Callable[[object], object]:
    """The JSON renderers' ``default``: an object's ``__structlog__`` or its
    ``repr`` (as structlog's own), scrubbed.

    orjson also asks it for what the stdlib encoder writes itself: tuple
    subclasses (named tuples), as arrays, and float subclasses (numpy's
    ``float64``), as numbers.
    """

    def default(value: object) -> object:
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, float):
            return float(value)
        hook = getattr(type(value), "__structlog__", None)
        if callable(hook):
            with contextlib.suppress(Exception):
                return scrub(str(hook(value)))
        return scrub(safe_repr(value))

    return default


class _JsonRenderer:
    """structlog's ``JSONRenderer(default=..., skipkeys=True)``, same output,
    from one encoder built once: ``json.dumps`` given a ``default`` builds a
    new ``JSONEncoder`` on every call (about a tenth of a 12-key event's cost).
    An encoder keeps no state between calls, so threads can share it."""

    __slots__ = ("_encode", "_iterencode")

    def __init__(self, default: Callable[[object], object]) -> None:
        encoder = json.JSONEncoder(default=default, skipkeys=True)
        self._encode = encoder.encode
        # The C encoder itself, made once (``encode`` makes one per call).
        # Without its circular-reference markers: the redactor ran before and
        # hands over finite data (a cycle ends in "[TOO DEEP]" at depth 32).
        make = getattr(json.encoder, "c_make_encoder", None)  # CPython's _json
        self._iterencode: Callable[[object, int], Any] | None = (
            make(
                None, default, json.encoder.encode_basestring_ascii, None,
                ": ", ", ", False, True, True,
            )
            if make is not None
            else None
        )  # fmt: skip

    def __call__(self, logger: object, method_name: str, event_dict: EventDict) -> str:
        if self._iterencode is None:  # no C accelerator in this Python
            return self._encode(event_dict)
        return "".join(self._iterencode(event_dict, 0))


class _OrjsonRenderer:
    """The JSON line by orjson: the keys and values :class:`_JsonRenderer`
    writes, several times faster. As ``bytes`` ending in a newline for the
    writer, or (``text=True``) as ``str`` for the stdlib formatter.

    orjson spells a line differently (no space after ``:`` and ``,``;
    non-ASCII as UTF-8, not ``\\u`` escapes) and treats some values its own way;
    for those the line is the stdlib encoder's, as without orjson:

    - what orjson refuses (a ``TypeError``): an int past 64 bits, a string
      with a lone surrogate, a key that is not a string (the redactor leaves
      none, but a failed redaction's fallback might);
    - NaN and infinities, which orjson writes as ``null``, and a UUID or an
      enum member, which orjson writes as its hex or its value, the stdlib
      encoder (and structlog) as its ``repr``: the redactor, which sees every
      value, marks such events
      (:data:`~infrakit.logging.redaction.ENCODERS_DIFFER`).

    Dates and times go to ``default`` (their ``repr``) as with the stdlib
    encoder, and so do dataclasses (the redactor made them dicts already).
    """

    __slots__ = ("_default", "_differ", "_dumps", "_fallback", "_option", "_text")

    def __init__(
        self,
        dumps: Callable[..., bytes],
        option: int,
        default: Callable[[object], object],
        fallback: _JsonRenderer,
        *,
        text: bool,
    ) -> None:
        self._dumps = dumps
        self._option = option
        self._default = default
        self._fallback = fallback
        self._text = text
        self._differ = ENCODERS_DIFFER

    def __call__(self, logger: object, method_name: str, event_dict: EventDict) -> str | bytes:
        differ = self._differ
        if differ.seen:
            differ.seen = False
            return self._fallback(logger, method_name, event_dict)
        try:
            line = self._dumps(event_dict, default=self._default, option=self._option)
        except TypeError:  # orjson.JSONEncodeError is one
            return self._fallback(logger, method_name, event_dict)
        if not line.isascii():
            line = _escape_line_breaks(line)
        return line.decode() if self._text else line


def _escape_line_breaks(line: bytes) -> bytes:
    """``line`` with the characters that can fool a reader of the log as
    ``\\u`` escapes, as the stdlib encoder (ASCII only) writes every non-ASCII
    one: U+2028, U+2029 and the C1 controls (U+0085 among them), where
    ``str.splitlines()`` and terminals end a line or run a control sequence,
    and the bidirectional overrides and isolates, which reorder what a
    terminal or an editor shows. JSON allows them raw and orjson writes them
    raw. Only lines with non-ASCII bytes get here."""
    text = line.decode()
    escaped = text.translate(_SPOOFING)
    return line if len(escaped) == len(text) else escaped.encode()


_SPOOFING = {
    code: f"\\u{code:04x}"
    for code in (*range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def _json_renderers(default: Callable[[object], object]) -> tuple[Processor, Processor]:
    """The JSON renderer for structlog's chain and the one for the stdlib
    formatter: orjson's (bytes, and text) when it is installed, else the
    stdlib encoder's for both."""
    stdlib = _JsonRenderer(default)
    try:
        import orjson
    except ImportError:  # the optional extra: pip install "infrakit-compose[orjson]"
        return stdlib, stdlib
    option = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
    lines = _OrjsonRenderer(
        orjson.dumps, option | orjson.OPT_APPEND_NEWLINE, default, stdlib, text=False
    )
    return lines, _OrjsonRenderer(orjson.dumps, option, default, stdlib, text=True)


class _SafeRenderer:
    """The final renderer, which must never raise into a log call: if it
    fails, the line says so, with the (scrubbed) event text."""

    __slots__ = ("_render", "_scrub")

    def __init__(self, render: Processor, scrub: Callable[[str], str]) -> None:
        self._render = render
        self._scrub = scrub

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> Any:
        try:
            return self._render(logger, method_name, event_dict)
        except Exception as error:  # noqa: BLE001 - logging must never raise into the caller
            return json.dumps(
                {
                    "event": self._scrub(str(event_dict.get("event", ""))),
                    "level": method_name,
                    "log_error": f"the event could not be rendered: {type(error).__name__}",
                }
            )


def _validate(log_level: str, log_format: str) -> tuple[str, str]:
    if not isinstance(log_level, str) or log_level.strip().upper() not in LOG_LEVELS:
        raise ValueError(
            f"invalid log_level {log_level!r}: expected one of {', '.join(LOG_LEVELS)} "
            "(case-insensitive)"
        )
    if log_format not in LOG_FORMATS:
        raise ValueError(f"invalid log_format {log_format!r}: expected 'json' or 'console'")
    return log_level.strip().upper(), log_format


#: Lists that receive a copy of every (redacted) event while a :func:`tap` is
#: open (what ``infrakit.testing``'s ``captured_logs`` reads). A tuple,
#: replaced whole, so a thread tapping an event meanwhile sees one or the other.
_taps: tuple[list[dict[str, Any]], ...] = ()
#: The live processor chains of the current configuration (structlog's, and the
#: stdlib formatter's), with the redactor's position: while a tap is open, the
#: redactor there is swapped for one that also taps, so production pipelines
#: carry no test hook. The swap assigns one item, never inserts or removes:
#: threads iterating the chain meanwhile see the old processor or the new one,
#: never a shifted list.
_chains: list[tuple[list[Processor], int]] = []


def _tap(logger: object, method_name: str, event_dict: EventDict) -> EventDict:
    event = dict(event_dict)
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    for tap in _taps:
        tap.append(event)
    return event_dict


class _Tapped:
    """The redactor, then the tap."""

    __slots__ = ("redactor",)

    def __init__(self, redactor: Processor) -> None:
        self.redactor = redactor

    def __call__(self, logger: object, method_name: str, event_dict: EventDict) -> EventDict:
        redacted = cast(EventDict, self.redactor(logger, method_name, event_dict))
        return _tap(logger, method_name, redacted)


def _place_tap() -> None:
    for chain, at in _chains:
        current = chain[at]
        if _taps and not isinstance(current, _Tapped):
            chain[at] = _Tapped(current)
        elif not _taps and isinstance(current, _Tapped):
            chain[at] = current.redactor


@contextmanager
def tap() -> Iterator[list[dict[str, Any]]]:
    """Every event logged inside the block, as the dicts the pipeline rendered
    (redacted), structlog and stdlib alike, whether logging is configured
    before or during the block."""
    global _taps  # noqa: PLW0603 - replaced whole, never changed in place
    events: list[dict[str, Any]] = []
    with _lock:
        _taps = (*_taps, events)
        _place_tap()
    try:
        yield events
    finally:
        with _lock:
            _taps = tuple(t for t in _taps if t is not events)  # by identity: [] == []
            _place_tap()


#: Record extras that only restate the message for a terminal: uvicorn's
#: ``color_message`` is the message's format string with ANSI colour codes.
_PRESENTATION_EXTRAS = ("color_message",)


def _drop_presentation_extras(logger: object, method_name: str, event_dict: EventDict) -> EventDict:
    for key in _PRESENTATION_EXTRAS:
        event_dict.pop(key, None)
    return event_dict


class _Pipeline(NamedTuple):
    shared: list[Processor]
    #: structlog's renderer: ``bytes`` lines with orjson, else ``str``
    renderer: Processor
    #: the stdlib formatter's: always ``str``
    text_renderer: Processor


def _build(
    *,
    log_format: str,
    development: bool,
    additional_pii_patterns: Iterable[str] | None,
    replacement: str,
    extra_params: Iterable[str],
    traceback_locals: bool,
) -> _Pipeline:
    redactor = PIIRedactor(additional_pii_patterns, replacement, extra_params=extra_params)
    scrubber = redactor.scrubber
    scrub = scrubber.text
    renderer: Processor
    text_renderer: Processor
    if log_format == "console" or development:
        console = structlog.dev.ConsoleRenderer(
            colors=development, exception_formatter=_ScrubbedTraceback(scrubber, traceback_locals)
        )
        stamp = _Stamp()  # the console renderer formats exceptions itself
        renderer = text_renderer = _SafeRenderer(console, scrub)
    else:
        # rendered before redaction, so messages, tracebacks and locals are scrubbed
        stamp = _Stamp(_JsonExceptions(traceback_locals, scrubber))
        # The redactor leaves only JSON-safe values, keys strings, and objects
        # whose repr holds no secret (dates, UUIDs...): these print those, and
        # are a second line for anything else.
        renderer, text_renderer = _json_renderers(_json_default(scrub))
    # request id, trace ids, level, timestamp, exceptions
    shared: list[Processor] = [structlog.contextvars.merge_contextvars, stamp, redactor]
    return _Pipeline(shared, renderer, text_renderer)


def build_processors(
    *,
    log_format: str = "json",
    development: bool = False,
    additional_pii_patterns: Iterable[str] | None = None,
    replacement: str = REDACTED,
    extra_params: Iterable[str] = (),
    traceback_locals: bool = False,
) -> tuple[list[Processor], Processor]:
    """The shared processors (context, level, time, exceptions, redaction) and
    a renderer returning ``str``."""
    pipeline = _build(
        log_format=log_format,
        development=development,
        additional_pii_patterns=additional_pii_patterns,
        replacement=replacement,
        extra_params=extra_params,
        traceback_locals=traceback_locals,
    )
    return pipeline.shared, pipeline.text_renderer


def configure_logging(
    log_level: str = "INFO",
    log_format: str = "json",
    development: bool = False,
    additional_pii_patterns: Iterable[str] | None = None,
    replacement: str = REDACTED,
    *,
    extra_params: Iterable[str] = (),
    traceback_locals: bool = False,
    stream: IO[str] | None = None,
    capture_loggers: Iterable[str] = DEFAULT_CAPTURED_LOGGERS,
    quiet_loggers: Iterable[str] = DEFAULT_QUIET_LOGGERS,
) -> None:
    """Configure structlog and stdlib logging to one redacting pipeline.

    JSON lines (or console output) go to ``stream``, by default the current
    ``sys.stdout``. Records of stdlib loggers (uvicorn, sqlalchemy, ...) go
    through the same processors, redaction included. Tracebacks carry no
    frame locals unless ``traceback_locals`` (then redacted). JSON is written
    by orjson when it is installed (the ``orjson`` extra), else by the stdlib
    encoder: the same keys and values. Calling it again replaces the previous
    configuration, for loggers already in use too; :func:`reset_logging`
    undoes it.
    """
    global _configured  # noqa: PLW0603 - logging is process-global by nature
    level_name, log_format = _validate(log_level, log_format)
    level = logging.getLevelNamesMapping()[level_name]
    shared, renderer, text_renderer = _build(
        log_format=log_format,
        development=development,
        additional_pii_patterns=additional_pii_patterns,
        replacement=replacement,
        extra_params=extra_params,
        traceback_locals=traceback_locals,
    )
    foreign: list[Processor] = [
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_presentation_extras,
        *shared,
    ]
    with _lock:
        _processors[:] = [*shared, renderer]
        _chains[:] = [(_processors, len(shared) - 1), (foreign, len(foreign) - 1)]
        _place_tap()
        _writer.stream = stream
        _filter_at(level)
        structlog.configure(
            processors=_processors,
            wrapper_class=_FilteringBoundLogger,
            logger_factory=_writer_factory,
            cache_logger_on_first_use=True,
        )
        formatter = structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=foreign,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, text_renderer],
        )
        handler = _PipelineHandler(stream)
        handler.setFormatter(formatter)
        root = logging.getLogger()
        _remove_handlers(root)
        root.addHandler(handler)
        root.setLevel(level)
        for name in quiet_loggers:
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
        for name in capture_loggers:
            captured = logging.getLogger(name)
            for old in list(captured.handlers):
                captured.removeHandler(old)
            captured.propagate = True
        _configured = True


def _remove_handlers(root: logging.Logger) -> None:
    for old in list(root.handlers):
        if getattr(old, "infrakit_handler", False):
            root.removeHandler(old)
            old.close()


def configure_logging_from(section: Any, *, stream: IO[str] | None = None) -> None:
    """:func:`configure_logging` with a profile's ``logging`` section
    (``InfraSettings.logging``): level, format, development, redaction and
    traceback locals as the profile says, lines to ``stream`` (stdout)."""
    configure_logging(
        log_level=section.level,
        log_format=section.format,
        development=section.development,
        additional_pii_patterns=section.redact.extra_patterns,
        replacement=section.redact.replacement,
        extra_params=section.redact.extra_params,
        traceback_locals=section.traceback_locals,
        stream=stream,
    )


def reset_logging() -> None:
    """Undo :func:`configure_logging` (tests call this between cases).

    structlog is back to its defaults, loggers cached meanwhile included:
    they run structlog's default processors, at every level, to
    ``sys.stdout``. The default processors stay in the list structlog and
    those loggers share, so ``structlog.testing.capture_logs`` reaches them.
    """
    global _configured  # noqa: PLW0603
    with _lock:
        structlog.reset_defaults()
        _processors[:] = structlog.get_config()["processors"]
        structlog.configure(processors=_processors)
        _writer.stream = None
        _filter_at(logging.NOTSET)
        _remove_handlers(logging.getLogger())
        logging.getLogger().setLevel(logging.WARNING)
        _chains.clear()
        _configured = False


def is_configured() -> bool:
    return _configured
