"""The audit log's value types and the ``AuditLogger`` interface."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from infrakit.component import Component
from infrakit.logging.context import current_trace_ids, get_request_id
from infrakit.values import as_utc

__all__ = [
    "AuditEntry",
    "AuditFilter",
    "AuditLogger",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
]

MAX_LIMIT = 10_000
_REQUIRED = ("id", "timestamp", "action", "resource_type", "result")
_OPTIONAL_STR = ("resource_id", "user_id", "ip_address", "user_agent", "request_id", "trace_id")
_HASHES = ("prev_hash", "hash")


def _freeze(value: Any, path: str) -> Any:
    """A deep, immutable copy of a JSON value; anything else is a ValueError."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"details{path}: {value!r} is not a JSON number")
        return value
    if isinstance(value, Mapping):
        frozen: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"details{path}: keys must be strings, got {key!r}")
            frozen[key] = _freeze(item, f"{path}.{key}")
        return MappingProxyType(frozen)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item, f"{path}[{i}]") for i, item in enumerate(value))
    raise ValueError(f"details{path}: {type(value).__name__} is not a JSON value")


def _thaw(value: Any) -> Any:
    # Only _freeze's output comes here, so exact type checks suffice (and are
    # much cheaper than an ABC isinstance on this per-entry path).
    kind = type(value)
    if kind is MappingProxyType:
        return {key: _thaw(item) for key, item in value.items()}
    if kind is tuple:
        return [_thaw(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One immutable audit record; timestamps are always UTC.

    ``details`` holds JSON values only and is stored as a read-only deep
    copy (mappings become read-only mappings, lists become tuples), so an
    entry cannot change after it was written. ``prev_hash`` and ``hash`` are
    set by a logger that keeps a hash chain.
    """

    id: str
    timestamp: datetime
    action: str
    resource_type: str
    result: str
    resource_id: str | None = None
    user_id: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    ip_address: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    prev_hash: str | None = None
    hash: str | None = None

    def __post_init__(self) -> None:
        for name in ("id", "action", "resource_type", "result"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"AuditEntry.{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.timestamp, datetime):
            raise ValueError(
                f"AuditEntry.timestamp must be a datetime, got {type(self.timestamp).__name__}"
            )
        object.__setattr__(self, "timestamp", as_utc("AuditEntry.timestamp", self.timestamp))
        for name in (*_OPTIONAL_STR, *_HASHES):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"AuditEntry.{name} must be a string or None, got {value!r}")
        if not isinstance(self.details, Mapping):
            raise ValueError(
                f"AuditEntry.details must be a mapping, got {type(self.details).__name__}"
            )
        object.__setattr__(self, "details", _freeze(self.details, ""))

    # --- serialisation ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; ``from_dict`` turns it back into an equal entry."""
        # Spelled out rather than looped over fields(): this runs for every
        # entry written and hashed.
        return {
            "id": self.id,
            "timestamp": self.timestamp.isoformat(timespec="microseconds"),
            "action": self.action,
            "resource_type": self.resource_type,
            "result": self.result,
            "resource_id": self.resource_id,
            "user_id": self.user_id,
            "details": _thaw(self.details),
            "ip_address": self.ip_address,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    def to_json(self) -> str:
        return encode_compact(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        """Build an entry, naming every missing or mistyped field in one ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"AuditEntry.from_dict expects a mapping, got {type(data).__name__}")
        problems: list[str] = []
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            problems.append(f"unknown field(s): {', '.join(unknown)}")
        problems.extend(f"{name}: missing" for name in _REQUIRED if data.get(name) is None)
        for name in ("id", "action", "resource_type", "result"):
            value = data.get(name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                problems.append(f"{name}: expected a non-empty string, got {value!r}")
        for name in (*_OPTIONAL_STR, *_HASHES):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                problems.append(f"{name}: expected a string or null, got {type(value).__name__}")
        stamp = data.get("timestamp")
        if isinstance(stamp, str):
            try:
                stamp = datetime.fromisoformat(stamp)
            except ValueError:
                problems.append(f"timestamp: not an ISO 8601 date-time: {stamp!r}")
        if isinstance(stamp, datetime) and stamp.tzinfo is None:
            problems.append("timestamp: must include a UTC offset")
        elif stamp is not None and not isinstance(stamp, datetime | str):
            problems.append(f"timestamp: expected an ISO 8601 string, got {type(stamp).__name__}")
        details = data.get("details", {})
        if details is None:
            details = {}
        if not isinstance(details, Mapping):
            problems.append(f"details: expected an object, got {type(details).__name__}")
        if problems:
            raise ValueError("invalid audit entry: " + "; ".join(problems))
        values: dict[str, Any] = {name: data.get(name) for name in known if name in data}
        values["timestamp"] = stamp
        values["details"] = details
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> AuditEntry:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"invalid audit entry JSON: {error}") from error
        return cls.from_dict(data)

    def with_chain(self, prev_hash: str | None, hash_: str | None) -> AuditEntry:
        """A copy with the chain hashes set (the rest is already validated)."""
        if not all(h is None or isinstance(h, str) for h in (prev_hash, hash_)):
            raise ValueError("chain hashes must be strings or None")
        # Slot descriptors write past the frozen __setattr__ without re-running
        # validation; every field of self is already valid.
        copy = object.__new__(AuditEntry)
        for slot in _SLOTS:
            slot.__set__(copy, slot.__get__(self, AuditEntry))
        _SLOT_PREV.__set__(copy, prev_hash)
        _SLOT_HASH.__set__(copy, hash_)
        return copy


_FIELD_NAMES = tuple(f.name for f in fields(AuditEntry))
_SLOTS = tuple(AuditEntry.__dict__[name] for name in _FIELD_NAMES if name not in _HASHES)
_SLOT_PREV = AuditEntry.__dict__["prev_hash"]
_SLOT_HASH = AuditEntry.__dict__["hash"]
_LOG_ACTION_FIELDS = frozenset(_FIELD_NAMES) - {"id", "timestamp", "prev_hash", "hash"}


# Encoders built once: json.dumps() with options builds a new encoder per call.
_encode_canonical = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode
encode_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _canonical(data: Mapping[str, Any]) -> bytes:
    payload = {key: value for key, value in data.items() if key not in _HASHES}
    return _encode_canonical(payload).encode()


def canonical_json(entry: AuditEntry) -> bytes:
    """The bytes a chain hash covers: every field but the hashes, sorted, compact."""
    return _canonical(entry.to_dict())


def hash_of_content(prev_hash: str | None, content: Mapping[str, Any]) -> str:
    """The chain hash of ``to_dict()`` data from which the two hash keys were removed."""
    digest = hashlib.sha256((prev_hash or "").encode("ascii"))
    digest.update(_encode_canonical(content).encode())
    return digest.hexdigest()


def chain_hash(prev_hash: str | None, entry: AuditEntry) -> str:
    """``sha256(prev_hash || canonical_json(entry))`` as hex (no prev: empty)."""
    content = entry.to_dict()
    del content["prev_hash"], content["hash"]
    return hash_of_content(prev_hash, content)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Criteria for :meth:`AuditLogger.query`; all given criteria must match.

    ``start_time`` is inclusive and ``end_time`` exclusive; both must be
    timezone-aware. Results are ordered newest first (timestamp, then id).
    """

    user_id: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    result: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if (
            isinstance(self.limit, bool)
            or not isinstance(self.limit, int)
            or not 1 <= self.limit <= MAX_LIMIT
        ):
            raise ValueError(
                f"AuditFilter.limit must be between 1 and {MAX_LIMIT}, got {self.limit!r}"
            )
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 0:
            raise ValueError(f"AuditFilter.offset must be >= 0, got {self.offset!r}")
        for name in ("start_time", "end_time"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, datetime):
                    raise ValueError(f"AuditFilter.{name} must be a datetime, got {value!r}")
                object.__setattr__(self, name, as_utc(f"AuditFilter.{name}", value))
        if self.start_time and self.end_time and self.start_time > self.end_time:
            raise ValueError(
                f"AuditFilter.start_time ({self.start_time.isoformat()}) is after "
                f"end_time ({self.end_time.isoformat()})"
            )

    def matches(self, entry: AuditEntry) -> bool:
        for name in ("user_id", "action", "resource_type", "resource_id", "result"):
            wanted = getattr(self, name)
            if wanted is not None and getattr(entry, name) != wanted:
                return False
        if self.start_time is not None and entry.timestamp < self.start_time:
            return False
        return not (self.end_time is not None and entry.timestamp >= self.end_time)


def sort_key(entry: AuditEntry) -> tuple[datetime, str]:
    return (entry.timestamp, entry.id)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :meth:`AuditLogger.verify` found."""

    ok: bool
    checked: int
    first_bad_id: str | None = None
    reason: str | None = None


class AuditLogger(Component):
    """An append-only audit log. Entries are never updated or deleted."""

    @abstractmethod
    async def log(self, entry: AuditEntry) -> AuditEntry:
        """Append ``entry``; returns it as stored (with its chain hashes)."""

    async def log_many(self, entries: Iterable[AuditEntry]) -> list[AuditEntry]:
        """Append several entries; backends override this to batch."""
        return [await self.log(entry) for entry in entries]

    async def log_action(
        self, action: str, resource_type: str, *, result: str = "success", **fields_: Any
    ) -> AuditEntry:
        """Record that ``action`` happened to ``resource_type`` now (UTC).

        ``request_id`` and ``trace_id`` come from the current context unless
        given; other keyword arguments are :class:`AuditEntry` fields.
        """
        allowed = _LOG_ACTION_FIELDS
        unknown = fields_.keys() - allowed
        if unknown:
            raise ValueError(
                f"log_action: unexpected field(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(allowed - {'action', 'resource_type', 'result'}))}"
            )
        fields_.setdefault("request_id", get_request_id())
        fields_.setdefault("trace_id", current_trace_ids()[0])
        entry = AuditEntry(
            id=str(uuid.uuid4()),
            timestamp=datetime.now(UTC),
            action=action,
            resource_type=resource_type,
            result=result,
            **fields_,
        )
        return await self.log(entry)

    @abstractmethod
    async def query(self, audit_filter: AuditFilter | None = None) -> list[AuditEntry]:
        """Entries matching every criterion, newest first (timestamp, id)."""

    @abstractmethod
    async def count(self, audit_filter: AuditFilter | None = None) -> int:
        """How many entries match (``limit``/``offset`` ignored)."""

    @abstractmethod
    async def verify(self) -> VerifyResult:
        """Check the hash chain, naming the first entry that does not fit."""


class ChainChecker:
    """Checks a hash chain one entry at a time (so a million rows can stream)."""

    __slots__ = ("_expected_prev", "checked", "failure")

    def __init__(self, start_prev: str | None = None) -> None:
        self._expected_prev = start_prev
        self.checked = 0
        self.failure: VerifyResult | None = None

    def feed(self, entry: AuditEntry) -> bool:
        """Check the next entry; False (and ``failure`` set) at the first bad one."""
        self.checked += 1
        if entry.prev_hash != self._expected_prev:
            self.failure = VerifyResult(
                False,
                self.checked,
                entry.id,
                "prev_hash does not match the entry before it (an entry was removed or reordered)",
            )
            return False
        if entry.hash != chain_hash(entry.prev_hash, entry):
            self.failure = VerifyResult(
                False, self.checked, entry.id, "hash does not match the entry's content (edited)"
            )
            return False
        self._expected_prev = entry.hash
        return True

    def result(self) -> VerifyResult:
        return self.failure or VerifyResult(True, self.checked)


def verify_chain(entries: Iterable[AuditEntry], *, start_prev: str | None = None) -> VerifyResult:
    """Walk entries in chain order and check each link."""
    checker = ChainChecker(start_prev)
    for entry in entries:
        if not checker.feed(entry):
            break
    return checker.result()
