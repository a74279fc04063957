"""Secret-bearing values: URLs whose password must never be printed.

``SecretUrl`` is to a connection URL what pydantic's ``SecretStr`` is to a
password: ``str()``, ``repr()`` and JSON serialisation show the URL with its
password replaced by ``***``; only ``get_secret_value()`` hands out the real
one, and only backends call it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

MASK = "***"

# Same shape as SQLAlchemy's URL grammar: the password runs up to the *last*
# '@' of the URL, so a password holding '/', ':' or even an unencoded '@'
# is masked whole rather than half-leaked.
_URL_CREDENTIALS = re.compile(
    r"^(?P<scheme>[A-Za-z][\w+.\-]*://)(?P<user>[^:/@]*):(?P<password>.*)@(?P<rest>[^@]*)$",
    re.DOTALL,
)


def mask_url(url: str) -> str:
    """Return ``url`` with the password of its user-info part replaced by ``***``."""
    match = _URL_CREDENTIALS.match(url)
    if match is None or not match.group("password"):
        return url
    return f"{match.group('scheme')}{match.group('user')}:{MASK}@{match.group('rest')}"


def url_password(url: str) -> str | None:
    """The password part of ``url`` as written (still percent-encoded), if any."""
    match = _URL_CREDENTIALS.match(url)
    if match is None or not match.group("password"):
        return None
    return match.group("password")


class SecretUrl:
    """A URL whose password is masked everywhere but ``get_secret_value()``."""

    __slots__ = ("_masked", "_value")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"SecretUrl takes a str, got {type(value).__name__}")
        self._value = value
        self._masked = mask_url(value)

    def get_secret_value(self) -> str:
        return self._value

    @property
    def masked(self) -> str:
        return self._masked

    @property
    def scheme(self) -> str:
        return self._value.split("://", 1)[0].lower() if "://" in self._value else ""

    def __str__(self) -> str:
        return self._masked

    def __repr__(self) -> str:
        return f"SecretUrl({self._masked!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretUrl):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __len__(self) -> int:
        return len(self._value)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> SecretUrl:
            if isinstance(value, SecretUrl):
                return value
            if not isinstance(value, str):
                raise ValueError("expected a URL string")
            value = value.strip()
            if not value:
                raise ValueError("URL cannot be empty")
            if "://" not in value:
                raise ValueError(
                    "not a URL: expected scheme://host..., e.g. redis://127.0.0.1:6379/0"
                )
            return cls(value)

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: v.masked, when_used="json"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "uri", "writeOnly": True}


def reveal(value: object) -> object:
    """The real value behind ``SecretUrl``/``SecretStr``; anything else as is."""
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else value
