"""Secret and PII redaction for log events: the logging face of :mod:`infrakit.scrub`.

:class:`PIIRedactor` applies the kit's rules to a whole event: a sensitive key's
value is replaced whatever it holds, every string is run through the text
scrubber (messages, ``%``-formatted stdlib messages, exception messages,
rendered tracebacks and frame locals), and objects the renderer would ``repr``
are turned into their scrubbed ``repr`` here, so nothing reaches the output
unscrubbed — except objects whose ``repr`` cannot hold a secret (dates,
times, UUIDs, decimals; enums and paths whose ``repr`` the scrubber leaves
alone), which stay as they are. An object's ``__structlog__`` is honoured:
its result is redacted like any value. It never raises into the caller and
never mutates the caller's objects.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import enum
import fractions
import math
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

from infrakit.scrub import DEFAULT_PATTERNS, REDACTED, SAME, Scrubber, is_sensitive_key

__all__ = [
    "DEFAULT_PATTERNS",
    "ENCODERS_DIFFER",
    "REDACTED",
    "EncodersDiffer",
    "PIIRedactor",
    "is_sensitive_key",
]

_MAX_DEPTH = 32
#: Values shown as they are (floats too, checked for NaN and infinities on the way).
_PLAIN = frozenset({int, bool, type(None)})
#: Objects left in the event as they are (``captured_logs`` sees them; the
#: renderers print their repr, which holds only numbers and fixed words).
_KEPT = frozenset(
    {
        datetime.datetime, datetime.date, datetime.time, datetime.timedelta,
        datetime.timezone, uuid.UUID, decimal.Decimal, fractions.Fraction, complex,
    }
)  # fmt: skip


class EncodersDiffer(threading.local):
    """Per thread: whether the redactor has let through, since the flag was
    last cleared, a value that the stdlib JSON encoder and orjson write
    differently: a NaN or an infinity (json writes ``NaN``, orjson ``null``),
    a UUID or an enum member (json, like structlog, prints its ``repr``
    through ``default``; orjson writes a UUID's hex, an enum's value).

    The orjson renderer reads it to hand such an event to the stdlib
    encoder, so the line is the same with or without orjson, and clears it.
    The redactor already looks at every value; looking again in the renderer
    would cost more than the rest of the rendering.
    """

    seen = False


#: The flag the redactors set (one per thread, shared by every redactor).
ENCODERS_DIFFER = EncodersDiffer()

#: Values the pipeline itself put in the event: never free text, never scanned.
_KIT_KEYS = frozenset(
    {"timestamp", "level", "logger", "request_id", "trace_id", "span_id", "_from_structlog"}
)
#: Values for the renderer itself (an exc_info tuple, the stdlib record): the
#: console renderer formats the exception through the scrubber on its own.
_PASS_KEYS = frozenset({"exc_info", "_record"})
#: structlog's ProcessorFormatter reads (and deletes) these after the chain.
_META_KEYS = ("_record", "_from_structlog")
#: Top-level key states besides those of ``PIIRedactor._states``: a key of
#: ``_KIT_KEYS`` (a string value left alone) or of ``_PASS_KEYS`` (left alone).
_OWN: Any = object()
_PASS: Any = object()


class PIIRedactor:
    """A structlog processor replacing sensitive values at any depth.

    Walks dicts, lists, tuples, sets, dataclasses and pydantic models (the
    last two rendered as dicts); a sensitive key's whole value (including a
    nested container or ``bytes``) becomes ``replacement``. ``bytes`` keys and
    values are decoded, ``(name, value)`` pairs (header lists) are judged by
    their name, an object with ``__structlog__`` becomes its (redacted)
    result, dates, times, UUIDs and decimals stay as they are, and any other
    object becomes its scrubbed ``repr``. Works
    copy-on-write: a container is copied only when something inside it
    changes, and the caller's objects are never mutated.
    """

    __slots__ = (
        "_keys", "_scrub", "_states", "_text", "_texts", "_top_states", "replacement", "scrubber"
    )  # fmt: skip

    _KEY_CACHE_LIMIT = 4096

    def __init__(
        self,
        additional_patterns: Iterable[str] | None = None,
        replacement: str = REDACTED,
        *,
        extra_params: Iterable[str] = (),
    ) -> None:
        self.scrubber = Scrubber(additional_patterns or (), extra_params, replacement)
        self._keys = self.scrubber.keys
        #: key -> False (shown as is), True (its value redacted) or, for a key
        #: to be shown otherwise (scrubbed, decoded), (shown key, redacted?)
        self._states: dict[object, Any] = {}
        #: the same for the event's own keys, plus _OWN and _PASS
        self._top_states: dict[object, Any] = {}
        self._scrub = self.scrubber.text
        # short strings' answers, remembered by the scrubber: read inline below
        self._texts = self.scrubber.texts
        self._text = self.scrubber.remember
        self.replacement = replacement

    def __call__(self, logger: object, method_name: str, event_dict: Any) -> Any:
        # structlog hands each processor a dict of its own making, so the top
        # level is redacted in place; nested values are the caller's and are
        # copied on write. This loop is the hot path of every log line: the
        # commonest cases come first, and dicts and lists skip _value's dispatch.
        states = self._top_states
        texts = self._texts
        renamed = None
        try:
            for key, value in event_dict.items():
                try:
                    state = states[key]
                except KeyError:
                    state = self._top_state(key)
                if state is False:
                    kind = type(value)
                    if kind is str:
                        hit = texts.get(value)
                        if hit is None:
                            event_dict[key] = self._text(value)
                        elif hit is not SAME:
                            event_dict[key] = hit
                    elif kind in _PLAIN:
                        pass
                    elif kind is float:
                        if value - value:  # NaN for a NaN and for both infinities
                            ENCODERS_DIFFER.seen = True
                    elif kind is dict:
                        event_dict[key] = self._mapping(value, 1)
                    elif kind is list:
                        event_dict[key] = self._sequence(value, 1)
                    else:
                        event_dict[key] = self._value(value, 1)
                elif state is _OWN:
                    if type(value) is not str:
                        event_dict[key] = self._value(value, 1)
                elif state is True:
                    event_dict[key] = self.replacement
                elif state is not _PASS:  # a key itself scrubbed (a URL with a password, say)
                    renamed = [*(renamed or ()), (key, state)]
            for key, (shown, sensitive) in renamed or ():
                value = event_dict.pop(key)
                event_dict[_unique(event_dict, shown)] = (
                    self.replacement if sensitive else self._value(value, 1)
                )
        except Exception as error:  # noqa: BLE001 - never raise into a log call, never leak
            return self._fallback(event_dict, error)
        return event_dict

    def _fallback(self, event_dict: Any, error: Exception) -> dict[str, Any]:
        """What is left of an event the redactor failed on: its scrubbed text,
        the pipeline's own plain values, and the keys structlog's stdlib
        formatter needs (``_record``, ``_from_structlog``): without them it
        fails too, and logging's handleError would print the raw record."""
        fallback: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            fallback["event"] = self._scrub(_safe_str(event_dict.get("event", "")))
            for key in _KIT_KEYS:
                if type(event_dict.get(key)) in (str, bool):
                    fallback[key] = event_dict[key]
            for key in _META_KEYS:
                if key in event_dict:
                    fallback[key] = event_dict[key]
        fallback["redaction_error"] = type(error).__name__
        return fallback

    def _top_state(self, key: object) -> Any:
        """How the event's own ``key`` is shown: see ``_top_states``."""
        state = self._key_state(key)
        if state is False and key in _KIT_KEYS:
            state = _OWN
        elif state is False and key in _PASS_KEYS:
            state = _PASS
        if type(key) is str:  # structlog's keys are; a stdlib record's extras may not be
            if len(self._top_states) >= self._KEY_CACHE_LIMIT:
                self._top_states.clear()
            self._top_states[key] = state
        return state

    def _key_state(self, key: object) -> Any:
        """How ``key`` is shown: see ``_states``."""
        sensitive = self._keys(key)
        shown = _key(key)
        scrubbed = self._scrub(shown)
        state = sensitive if scrubbed is key else (scrubbed, sensitive)
        if type(key) is str or type(key) is bytes:  # 1 == True: other keys are not cached
            if len(self._states) >= self._KEY_CACHE_LIMIT:
                self._states.clear()
            self._states[key] = state
        return state

    def redact(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted shallow copy of ``event`` (nested parts copied as needed)."""
        result: dict[str, Any] = self(None, "", dict(event))
        return result

    def _value(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            hit = self._texts.get(value)
            if hit is None:
                return self._text(value)
            return value if hit is SAME else hit
        if kind in _PLAIN:
            return value
        if kind is float:
            if value - value:  # NaN for a NaN and for both infinities
                ENCODERS_DIFFER.seen = True
            return value
        if depth > _MAX_DEPTH:
            return "[TOO DEEP]"
        # Exact-type checks first: ABC isinstance checks cost more than the walk.
        if kind is dict:
            return self._mapping(value, depth)
        if kind is tuple and len(value) == 2 and type(value[0]) in (str, bytes):
            if self._keys(value[0]):  # a (name, value) pair, as in header lists
                return (_key(value[0]), self.replacement)
            return self._sequence(value, depth)
        if kind is list or kind is tuple:
            return self._sequence(value, depth)
        if kind in _KEPT:  # their repr holds no text of anyone's choosing
            if kind is uuid.UUID:
                ENCODERS_DIFFER.seen = True
            return value
        if isinstance(value, str):  # a str subclass
            return self._scrub(str(value))
        if isinstance(value, int | float):
            if isinstance(value, float) and not math.isfinite(value):
                ENCODERS_DIFFER.seen = True
            return value
        if isinstance(value, bytes | bytearray):
            return self._scrub(bytes(value).decode("utf-8", "backslashreplace"))
        if isinstance(value, Mapping):
            return self._mapping(value, depth)
        if isinstance(value, list | tuple):
            return self._sequence(value, depth)
        if isinstance(value, set | frozenset):
            items = [self._value(v, depth + 1) for v in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            try:
                return type(value)(items) if type(value) in (set, frozenset) else items
            except TypeError:  # a redacted item became unhashable
                return items
        hook = getattr(type(value), "__structlog__", None)
        if callable(hook):  # the object says how it is logged: that, scrubbed
            try:
                shown = hook(value)
            except Exception:  # noqa: BLE001 - a broken hook must not break the call
                return self._scrub(safe_repr(value))
            return self._value(shown, depth + 1)
        if isinstance(value, enum.Enum | PurePath):
            # kept when their repr (what the renderers print) holds no secret
            text = safe_repr(value)
            scrubbed = self._scrub(text)
            if scrubbed is not text:
                return scrubbed
            if isinstance(value, enum.Enum):
                ENCODERS_DIFFER.seen = True
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {
                f.name: getattr(value, f.name, "<unset>")  # field(init=False), never set
                for f in dataclasses.fields(value)
            }
            return self._mapping(fields, depth, force_copy=True)
        dump = getattr(value, "model_dump", None)
        if callable(dump) and not isinstance(value, type):
            with contextlib.suppress(Exception):  # a broken model must not break the call
                return self._mapping(dump(), depth, force_copy=True)
        # Anything else reaches the output as its repr (what the JSON and console
        # renderers would print): render it now, through the scrubber.
        return self._scrub(safe_repr(value))

    def _sequence(self, value: list[Any] | tuple[Any, ...], depth: int) -> Any:
        texts = self._texts
        for item in value:  # the usual case: nothing to change, so no index, no copy
            kind = type(item)
            if kind is str:
                if texts.get(item) is SAME:
                    continue
            elif kind is float:
                if item - item:  # NaN for a NaN and for both infinities
                    ENCODERS_DIFFER.seen = True
                continue
            elif kind in _PLAIN:
                continue
            return self._sequence_copied(value, depth)
        return value

    def _sequence_copied(self, value: list[Any] | tuple[Any, ...], depth: int) -> Any:
        out: list[Any] | None = None
        for index, item in enumerate(value):
            new = self._value(item, depth + 1)
            if new is not item:
                if out is None:
                    out = list(value)
                out[index] = new
        if out is None:
            return value
        return tuple(out) if type(value) is tuple else out

    def _mapping(
        self, value: Mapping[Any, Any], depth: int, *, force_copy: bool = False
    ) -> Mapping[Any, Any]:
        if not force_copy:  # the usual case: known keys, nothing to change
            states = self._states
            texts = self._texts
            for key, item in value.items():
                if states.get(key) is not False:
                    break
                kind = type(item)
                if kind is str:
                    if texts.get(item) is not SAME:
                        break
                elif kind is float:
                    if item - item:  # NaN for a NaN and for both infinities
                        ENCODERS_DIFFER.seen = True
                elif kind not in _PLAIN:
                    break
            else:
                return value
        return self._mapping_copied(value, depth, force_copy)

    def _mapping_copied(
        self, value: Mapping[Any, Any], depth: int, force_copy: bool
    ) -> Mapping[Any, Any]:
        out: dict[Any, Any] | None = None
        states = self._states
        texts = self._texts
        for key, item in value.items():
            state = states.get(key)
            if state is None:
                state = self._key_state(key)
            if state is False:
                shown = key
                kind = type(item)
                if kind is str:
                    new = item if texts.get(item) is SAME else self._value(item, depth + 1)
                elif kind is float:
                    if item - item:  # NaN for a NaN and for both infinities
                        ENCODERS_DIFFER.seen = True
                    new = item
                elif kind in _PLAIN:
                    new = item
                else:
                    new = self._value(item, depth + 1)
            elif state is True:
                shown, new = key, self.replacement
            else:
                shown, sensitive = state
                new = self.replacement if sensitive else self._value(item, depth + 1)
            if out is None:
                if new is item and shown is key:
                    continue
                out = {}
                for before, kept in value.items():  # all shown as they are
                    if before is key:
                        break
                    out[before] = kept
            out[_unique(out, shown) if shown is not key else shown] = new
        if out is not None:
            return out
        return dict(value) if force_copy else value


def _unique(mapping: Mapping[str, Any], key: str) -> str:
    """``key``, or ``key (2)``, ``key (3)``... if ``mapping`` has it already (two
    keys that scrub to the same text both stay)."""
    shown, n = key, 1
    while shown in mapping:
        n += 1
        shown = f"{key} ({n})"
    return shown


def _key(key: object) -> str:
    """A key the JSON renderer accepts: ``bytes`` decoded, anything else ``str()``."""
    if type(key) is str:
        return key
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("latin-1")
    return safe_repr(key) if not isinstance(key, str | int | float) else str(key)


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception as error:  # noqa: BLE001
        return f"<{type(value).__name__} (str failed: {type(error).__name__})>"


def safe_repr(value: object) -> str:
    """``repr(value)``, or a note of what failed: a log call never raises."""
    try:
        return repr(value)
    except Exception as error:  # noqa: BLE001 - a broken __repr__ must not break the log call
        return f"<{type(value).__name__} (repr failed: {type(error).__name__})>"
