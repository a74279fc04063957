"""Token store value types, the ``TokenStore`` protocol and shared validation."""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from infrakit.component import Component
from infrakit.values import as_utc

__all__ = [
    "DEFAULT_MAX_LIFETIME_S",
    "StoredToken",
    "TokenStore",
    "utc_now",
    "validate_store",
]

#: The longest token lifetime a store accepts by default (30 days). It also
#: bounds how long revocations of unknown tokens and per-user cutoffs are kept.
DEFAULT_MAX_LIFETIME_S = 30 * 24 * 3600
MAX_ID_LENGTH = 512


def utc_now() -> datetime:
    return datetime.now(UTC)


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} cannot be empty, got {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"{name} is longer than {MAX_ID_LENGTH} characters ({len(value)})")
    return value


def validate_store(
    jti: object, user_id: object, expires_at: object, *, now: datetime, max_lifetime_s: float
) -> datetime:
    """The seed's checks for ``store()``; returns ``expires_at`` in UTC."""
    _check_id("jti", jti)
    _check_id("user_id", user_id)
    expires = as_utc("expires_at", expires_at)
    if expires <= now:
        raise ValueError(
            f"expires_at must be in the future, got {expires.isoformat()} (now {now.isoformat()})"
        )
    if expires - now > timedelta(seconds=max_lifetime_s):
        raise ValueError(
            f"expires_at is more than max_lifetime_s={max_lifetime_s:g} s ahead "
            f"({expires.isoformat()}); raise tokens.max_lifetime_s if tokens really live that long"
        )
    return expires


def revocation_until(expires_at: datetime | None, now: float, max_lifetime_s: float) -> float:
    """How long to remember a revocation (epoch seconds): ``expires_at`` if given,
    else as long as any token the store accepts can live."""
    if expires_at is None:
        return now + max_lifetime_s
    return as_utc("expires_at", expires_at).timestamp()


@dataclass(frozen=True, slots=True)
class StoredToken:
    """What a token store knows of one token (JWT ``jti``)."""

    jti: str
    user_id: str
    created_at: datetime
    expires_at: datetime
    revoked: bool = False

    def __post_init__(self) -> None:
        _check_id("jti", self.jti)
        _check_id("user_id", self.user_id)
        object.__setattr__(self, "created_at", as_utc("created_at", self.created_at))
        object.__setattr__(self, "expires_at", as_utc("expires_at", self.expires_at))
        if self.expires_at <= self.created_at:
            raise ValueError(
                f"expires_at ({self.expires_at.isoformat()}) must be after "
                f"created_at ({self.created_at.isoformat()})"
            )
        if not isinstance(self.revoked, bool):
            raise ValueError(f"revoked must be a bool, got {self.revoked!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "jti": self.jti,
            "user_id": self.user_id,
            "created_at": self.created_at.isoformat(timespec="microseconds"),
            "expires_at": self.expires_at.isoformat(timespec="microseconds"),
            "revoked": self.revoked,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredToken:
        if not isinstance(data, Mapping):
            raise ValueError(f"StoredToken.from_dict expects a mapping, got {type(data).__name__}")
        problems: list[str] = []
        known = {"jti", "user_id", "created_at", "expires_at", "revoked"}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            problems.append(f"unknown field(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        problems.extend(
            f"{name}: missing"
            for name in ("jti", "user_id", "created_at", "expires_at")
            if data.get(name) is None
        )
        for name in ("created_at", "expires_at"):
            raw = data.get(name)
            if isinstance(raw, str):
                try:
                    values[name] = datetime.fromisoformat(raw)
                except ValueError:
                    problems.append(f"{name}: not an ISO 8601 date-time: {raw!r}")
            elif raw is not None:
                values[name] = raw
        revoked = data.get("revoked", False)
        if not isinstance(revoked, bool):
            problems.append(f"revoked: expected true or false, got {revoked!r}")
        if problems:
            raise ValueError("invalid stored token: " + "; ".join(problems))
        return cls(
            jti=data["jti"],
            user_id=data["user_id"],
            created_at=values["created_at"],
            expires_at=values["expires_at"],
            revoked=revoked,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredToken:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"invalid stored token JSON: {error}") from error
        return cls.from_dict(data)


class TokenStore(Component):
    """Where JWT ids live between issue and expiry, and how they are revoked.

    Applications check :meth:`is_valid` (an allowlist): an unknown, evicted,
    expired or revoked ``jti`` is not valid. Every method is a coroutine in
    every backend, so code written against one runs on all.
    """

    @abstractmethod
    async def store(self, jti: str, user_id: str, expires_at: datetime) -> StoredToken:
        """Remember a newly issued token until ``expires_at``; returns it as stored."""

    @abstractmethod
    async def get(self, jti: str) -> StoredToken | None:
        """The token, or None when unknown or expired."""

    @abstractmethod
    async def revoke(self, jti: str, *, expires_at: datetime | None = None) -> bool:
        """Revoke one token; True when a valid token became revoked. An unknown
        ``jti`` is remembered as revoked (until ``expires_at``) so it cannot be
        stored later."""

    @abstractmethod
    async def is_revoked(self, jti: str, *, user_id: str | None = None) -> bool:
        """True for a known token that was revoked (directly or by its user's cutoff).

        ``user_id``, when the caller knows it (the user the token was stored
        for, e.g. the JWT's ``sub``), lets a backend read the user's cutoff in
        the same round trip: a check that starts after
        :meth:`revoke_all_for_user` wrote its cutoff then answers revoked even
        while that call is still at work. The answer never depends on it
        otherwise (a token of another user is checked against its own user).
        """

    @abstractmethod
    async def is_valid(self, jti: str, *, user_id: str | None = None) -> bool:
        """True only for a known, unexpired, unrevoked token (``user_id``: as for
        :meth:`is_revoked`)."""

    async def is_revoked_many(self, jtis: Iterable[str]) -> list[bool]:
        """:meth:`is_revoked` for many jtis (backends batch it)."""
        return [await self.is_revoked(jti) for jti in as_list(jtis)]

    @abstractmethod
    async def revoke_all_for_user(self, user_id: str) -> int:
        """Revoke every token of the user ("log out everywhere"); how many this call revoked."""

    @abstractmethod
    async def revoked_before(self, user_id: str) -> datetime | None:
        """The user's "log out everywhere" cutoff, if one is in force."""

    @abstractmethod
    async def count(self) -> int:
        """How many tokens are held (revoked ones included, expired ones not)."""


def as_list(jtis: Iterable[str]) -> list[str]:
    items = list(jtis)
    for jti in items:
        _check_id("jti", jti)
    return items
