"""PII and secret redaction for log events.

A key is sensitive when any *word suffix* of it, with ``-``/``_``/``.``/case
folded away, equals a pattern. Keys are split into words at ``-``, ``_``,
``.``, spaces and camelCase humps, so ``X-Api-Key``, ``api_key`` and
``apiKey`` all end in ``api key``; ``access_token`` and ``db_password`` end
in ``token`` and ``password``; while ``tokenizer``, ``token_count``,
``author`` and ``session_count`` end in no pattern and are left alone.

This module imports nothing heavy: the settings loader uses it to mask
values in error messages.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from infrakit._secrets import mask_url

__all__ = [
    "DEFAULT_PATTERNS",
    "REDACTED",
    "PIIRedactor",
    "is_sensitive_key",
]

REDACTED = "[REDACTED]"

#: Sentry's ``DEFAULT_DENYLIST`` and ``DEFAULT_PII_DENYLIST`` (sentry_sdk.scrubber),
#: the compound names exact matching misses, and common personal data.
DEFAULT_PATTERNS: frozenset[str] = frozenset(
    {
        # sentry DEFAULT_DENYLIST
        "password", "passwd", "secret", "api_key", "apikey", "auth", "credentials",
        "mysql_pwd", "privatekey", "private_key", "token", "session", "csrftoken",
        "sessionid", "x_csrftoken", "x_forwarded_for", "set_cookie", "cookie",
        "authorization", "proxy-authorization", "x_api_key", "aiohttp_session",
        "connect.sid", "csrf_token", "csrf", "_csrf", "_csrf_token", "PHPSESSID",
        "_session", "symfony", "user_session", "_xsrf", "XSRF-TOKEN",
        # sentry DEFAULT_PII_DENYLIST
        "x_real_ip", "ip_address", "remote_addr",
        # compound secrets
        "access_token", "refresh_token", "id_token", "api_token", "client_secret",
        "secret_key", "db_password", "pwd", "passphrase", "jwt", "bearer", "dsn",
        "signature", "otp",
        # personal data
        "email", "email_address", "phone", "phone_number", "mobile", "ssn",
        "social_security_number", "credit_card", "card_number", "cc_number", "cvv",
        "cvc", "iban", "national_id", "passport_number", "date_of_birth", "dob",
    }
)  # fmt: skip

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_SEPARATORS = re.compile(r"[\s_\-.:/]+")


def _words(key: str) -> list[str]:
    words: list[str] = []
    for part in _SEPARATORS.split(key):
        if part:
            words.extend(w.lower() for w in _WORD.findall(part))
    return words


def _normalise(pattern: str) -> str:
    return "".join(_words(pattern))


class _Matcher:
    """Decides sensitivity of keys, remembering its answers.

    Event keys repeat endlessly, so each distinct key is split once; the cache
    is bounded so a stream of unique keys cannot grow it without limit.
    """

    __slots__ = ("_patterns", "cache")

    _CACHE_LIMIT = 4096

    def __init__(self, patterns: Iterable[str]) -> None:
        self._patterns = frozenset(n for n in map(_normalise, patterns) if n)
        #: key -> sensitive?; read directly on the hot path (see PIIRedactor).
        self.cache: dict[object, bool] = {}

    def __call__(self, key: object) -> bool:
        hit = self.cache.get(key)
        return self.classify(key) if hit is None else hit

    def classify(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        words = _words(key)
        suffix = ""
        hit = False
        for word in reversed(words):
            suffix = word + suffix
            if suffix in self._patterns:
                hit = True
                break
        if len(self.cache) >= self._CACHE_LIMIT:
            self.cache.clear()
        self.cache[key] = hit
        return hit


_default_matcher = _Matcher(DEFAULT_PATTERNS)


def is_sensitive_key(key: object, extra_patterns: Iterable[str] = ()) -> bool:
    """True when ``key`` names a secret or personal datum."""
    if extra_patterns:
        return _Matcher([*DEFAULT_PATTERNS, *extra_patterns])(key)
    return _default_matcher(key)


_MAX_DEPTH = 32
_SCALARS = (str, int, float, bool, type(None))
_PLAIN = frozenset({int, float, bool, type(None)})


class PIIRedactor:
    """A structlog processor replacing sensitive values at any depth.

    Walks dicts, lists, tuples, sets, dataclasses and pydantic models (the
    last two rendered as dicts); a sensitive key's whole value (including a
    nested container or ``bytes``) becomes ``replacement``. Works copy-on-write:
    a container is copied only when something inside it changes, and the
    caller's objects are never mutated. Strings that hold a URL with a
    password have the password masked whatever their key.
    """

    __slots__ = ("_cache", "_is_sensitive", "replacement")

    def __init__(
        self,
        additional_patterns: Iterable[str] | None = None,
        replacement: str = REDACTED,
        *,
        patterns: Iterable[str] | None = None,
    ) -> None:
        base = DEFAULT_PATTERNS if patterns is None else frozenset(patterns)
        extra = frozenset(additional_patterns or ())
        for pattern in extra:
            if not isinstance(pattern, str) or not _normalise(pattern):
                raise ValueError(f"redaction pattern must be a non-empty key name, got {pattern!r}")
        self._is_sensitive = _Matcher(base | extra)
        self._cache = self._is_sensitive.cache
        self.replacement = replacement

    def __call__(self, logger: object, method_name: str, event_dict: Any) -> Any:
        # structlog hands each processor a dict of its own making, so the top
        # level is redacted in place; nested values are the caller's and are
        # copied on write. This loop is the hot path of every log line.
        cache = self._cache
        for key, value in event_dict.items():
            sensitive = cache.get(key)
            if sensitive is None:
                sensitive = self._is_sensitive.classify(key)
            if sensitive:
                event_dict[key] = self.replacement
            elif type(value) is str:
                if "://" in value and "@" in value:
                    event_dict[key] = mask_url(value)
            elif type(value) not in _PLAIN:
                event_dict[key] = self._value(value, 1)
        return event_dict

    def redact(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted shallow copy of ``event`` (nested parts copied as needed)."""
        result: dict[str, Any] = self(None, "", dict(event))
        return result

    def _value(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return mask_url(value) if "://" in value and "@" in value else value
        if kind in _PLAIN:
            return value
        if depth > _MAX_DEPTH:
            return "[TOO DEEP]"
        # Exact-type checks first: ABC isinstance checks cost more than the walk.
        if kind is dict:
            return self._mapping(value, depth)
        if kind is list or kind is tuple:
            return self._sequence(value, depth)
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, Mapping):
            return self._mapping(value, depth)
        if isinstance(value, list | tuple):
            return self._sequence(value, depth)
        if isinstance(value, set | frozenset):
            items = [self._value(v, depth + 1) for v in value]
            try:
                return type(value)(items) if type(value) in (set, frozenset) else items
            except TypeError:  # a redacted item became unhashable
                return items
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return self._mapping(fields, depth, force_copy=True)
        dump = getattr(value, "model_dump", None)
        if callable(dump) and not isinstance(value, type):
            return self._mapping(dump(), depth, force_copy=True)
        return value

    def _sequence(self, value: list[Any] | tuple[Any, ...], depth: int) -> Any:
        out: list[Any] | None = None
        for index, item in enumerate(value):
            kind = type(item)
            if kind in _PLAIN or (kind is str and not ("://" in item and "@" in item)):
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
        out: dict[Any, Any] | None = dict(value) if force_copy else None
        cache = self._cache
        for key, item in value.items():
            sensitive = cache.get(key)
            if sensitive is None:
                sensitive = self._is_sensitive.classify(key)
            if sensitive:
                new = self.replacement
            elif (kind := type(item)) in _PLAIN or (
                kind is str and not ("://" in item and "@" in item)
            ):
                continue
            else:
                new = self._value(item, depth + 1)
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out
