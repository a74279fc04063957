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
import uuid
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

from infrakit.scrub import DEFAULT_PATTERNS, REDACTED, SAME, Scrubber, is_sensitive_key

__all__ = [
    "DEFAULT_PATTERNS",
    "REDACTED",
    "PIIRedactor",
    "is_sensitive_key",
]

_MAX_DEPTH = 32
_PLAIN = frozenset({int, float, bool, type(None)})
#: Objects left in the event as they are (``captured_logs`` sees them; the
#: renderers print their repr, which holds only numbers and fixed words).
_KEPT = frozenset(
    {
        datetime.datetime, datetime.date, datetime.time, datetime.timedelta,
        datetime.timezone, uuid.UUID, decimal.Decimal, fractions.Fraction, complex,
    }
)  # fmt: skip
#: Values the pipeline itself put in the event: never free text, never scanned.
_KIT_KEYS = frozenset(
    {"timestamp", "level", "logger", "request_id", "trace_id", "span_id", "_from_structlog"}
)
#: Values for the renderer itself (an exc_info tuple, the stdlib record): the
#: console renderer formats the exception through the scrubber on its own.
_PASS_KEYS = frozenset({"exc_info", "_record"})
#: structlog's ProcessorFormatter reads (and deletes) these after the chain.
_META_KEYS = ("_record", "_from_structlog")


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

    __slots__ = ("_keys", "_scrub", "_states", "_text", "_texts", "replacement", "scrubber")

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
        self._scrub = self.scrubber.text
        # short strings' answers, remembered by the scrubber: read inline below
        self._texts = self.scrubber.texts
        self._text = self.scrubber.remember
        self.replacement = replacement

    def __call__(self, logger: object, method_name: str, event_dict: Any) -> Any:
        try:
            return self._redact(event_dict)
        except Exception as error:  # noqa: BLE001 - never raise into a log call, never leak
            return self._fallback(event_dict, error)

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

    def _redact(self, event_dict: Any) -> Any:
        # structlog hands each processor a dict of its own making, so the top
        # level is redacted in place; nested values are the caller's and are
        # copied on write. This loop is the hot path of every log line.
        states = self._states
        texts = self._texts
        renamed = None
        for key, value in event_dict.items():
            state = states.get(key)
            if state is None:
                state = self._key_state(key)
            if state is False:
                if type(value) is str:
                    if key not in _KIT_KEYS:
                        hit = texts.get(value)
                        if hit is None:
                            event_dict[key] = self._text(value)
                        elif hit is not SAME:
                            event_dict[key] = hit
                elif type(value) not in _PLAIN and key not in _PASS_KEYS:
                    event_dict[key] = self._value(value, 1)
            elif state is True:
                event_dict[key] = self.replacement
            else:  # a key that is itself scrubbed (a URL with a password, say)
                renamed = [*(renamed or ()), (key, state)]
        for key, (shown, sensitive) in renamed or ():
            value = event_dict.pop(key)
            event_dict[_unique(event_dict, shown)] = (
                self.replacement if sensitive else self._value(value, 1)
            )
        return event_dict

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
            return value
        if isinstance(value, str):  # a str subclass
            return self._scrub(str(value))
        if isinstance(value, int | float):
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
            return value if scrubbed is text else scrubbed
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
        out: list[Any] | None = None
        texts = self._texts
        for index, item in enumerate(value):
            kind = type(item)
            if kind in _PLAIN or (kind is str and texts.get(item) is SAME):
                continue
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
        out: dict[Any, Any] | None = None
        states = self._states
        texts = self._texts
        for key, item in value.items():
            state = states.get(key)
            if state is None:
                state = self._key_state(key)
            if state is False:
                shown = key
                if (kind := type(item)) in _PLAIN or (kind is str and texts.get(item) is SAME):
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
