"""The audit log's value types and the ``AuditLogger`` interface."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import uuid
from abc import abstractmethod
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from infrakit.audit.chain import ChainKey, Checkpoint, Keyring, key_id_of, sorted_checkpoints
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


def hash_of_content(
    prev_hash: str | None, content: Mapping[str, Any], key: ChainKey | None = None
) -> str:
    """The chain hash of ``to_dict()`` data from which the two hash keys were removed.

    Without ``key``: ``sha256(prev_hash || canonical_json)`` as hex. With it:
    ``hmac-sha256.<key id>.<mac>`` (see :mod:`infrakit.audit.chain`).
    """
    payload = _encode_canonical(content).encode()
    if key is not None:
        return key.entry_hash(prev_hash, payload)
    digest = hashlib.sha256((prev_hash or "").encode("ascii"))
    digest.update(payload)
    return digest.hexdigest()


def chain_hash(prev_hash: str | None, entry: AuditEntry, key: ChainKey | None = None) -> str:
    """``sha256(prev_hash || canonical_json(entry))`` as hex (no prev: empty), or
    its keyed form (an HMAC-SHA256 with ``key``)."""
    content = entry.to_dict()
    del content["prev_hash"], content["hash"]
    return hash_of_content(prev_hash, content, key)


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


def same_entry(a: AuditEntry, b: AuditEntry) -> bool:
    """The same entry, whatever its chain hashes (a retry of a logged entry)."""
    return a.with_chain(None, None) == b.with_chain(None, None)


def sort_key(entry: AuditEntry) -> tuple[datetime, str]:
    return (entry.timestamp, entry.id)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :meth:`AuditLogger.verify` found."""

    ok: bool
    checked: int
    first_bad_id: str | None = None
    reason: str | None = None
    #: The chain could not be checked: it is keyed and the key is not given
    #: (or not the one that made it). Not "broken", not "intact" either.
    needs_key: bool = False
    #: How many of the checked entries carry a keyed hash.
    keyed: int = 0
    #: How many checkpoints the chain was checked against (all matched when ok).
    checkpoints: int = 0


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
    async def verify(self, *, checkpoints: Iterable[Checkpoint] = ()) -> VerifyResult:
        """Check the hash chain, naming the first entry that does not fit.

        With the logger's keys, keyed entries are checked too (without them a
        keyed entry answers ``needs_key``); each checkpoint given must be
        signed by one of those keys and its entry must be in the chain,
        unchanged (so deleting the newest entries, or all, is found).
        """

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the chain head now and write it where checkpoints go.

        None when the chain is empty or the logger has no signing key.
        """
        return None


class ChainChecker:
    """Checks a hash chain one entry at a time (so a million rows can stream).

    ``keys`` check keyed entries; ``checkpoints`` (already sorted, see
    :meth:`for_checkpoints`) are matched by ``seq`` as the entries go by, and
    those left at the end name entries that were deleted.
    """

    __slots__ = (
        "_expected_prev",
        "_keys",
        "_last",
        "_pending",
        "checked",
        "checkpoints",
        "failure",
        "keyed",
    )

    def __init__(
        self,
        start_prev: str | None = None,
        *,
        keys: Keyring | None = None,
        checkpoints: Iterable[Checkpoint] = (),
    ) -> None:
        self._expected_prev = start_prev
        self._keys = keys
        self._pending = deque(sorted_checkpoints(list(checkpoints)))
        self._last: tuple[int, str] | None = None
        self.checked = 0
        self.keyed = 0
        self.checkpoints = len(self._pending)
        self.failure: VerifyResult | None = self._check_signatures()

    def _check_signatures(self) -> VerifyResult | None:
        for cp in self._pending:
            if self._keys is None:
                return VerifyResult(
                    False,
                    0,
                    reason="checkpoints are signed: give the signing key (audit.signing_key) "
                    "to check them",
                    needs_key=True,
                )
            if not cp.signed_by(self._keys):
                known = self._keys.get(cp.key_id) is not None
                why = "its signature does not match" if known else "its key id is not configured"
                return VerifyResult(
                    False,
                    0,
                    cp.entry_id,
                    f"the checkpoint of {cp.time.isoformat()} (seq {cp.seq}) is not genuine: "
                    f"{why} (key id {cp.key_id}; configured: {', '.join(self._keys.key_ids)}). "
                    "It was forged or altered, or audit.previous_signing_keys lacks its key",
                    needs_key=not known,
                )
        return None

    def _fail(self, entry_id: str | None, reason: str, *, needs_key: bool = False) -> bool:
        self.failure = VerifyResult(
            False, self.checked, entry_id, reason, needs_key, self.keyed, self.checkpoints
        )
        return False

    def feed(self, entry: AuditEntry, seq: int | None = None) -> bool:
        """Check the next entry (``seq``: its position, for checkpoints; by default
        the count of entries fed); False (and ``failure`` set) at the first bad one."""
        if self.failure is not None:
            return False
        self.checked += 1
        if entry.prev_hash != self._expected_prev:
            return self._fail(
                entry.id,
                "prev_hash does not match the entry before it (an entry was removed or reordered)",
            )
        stored = entry.hash or ""
        key_id = key_id_of(stored)
        if key_id is not None:
            if self._keys is None:
                return self._fail(
                    entry.id,
                    f"the chain is keyed from this entry on (HMAC, key id {key_id}): give the "
                    "signing key (audit.signing_key) to verify it",
                    needs_key=True,
                )
            key = self._keys.get(key_id)
            if key is None:
                return self._fail(
                    entry.id,
                    f"the entry is signed with key id {key_id}, which is not configured "
                    f"({', '.join(self._keys.key_ids)}): add that key to "
                    "audit.previous_signing_keys, or the entry is forged",
                    needs_key=True,
                )
            self.keyed += 1
            if not hmac.compare_digest(chain_hash(entry.prev_hash, entry, key), stored):
                return self._fail(
                    entry.id,
                    "hash does not match the entry's content "
                    "(edited, or re-hashed without the key)",
                )
        elif self.keyed:
            return self._fail(
                entry.id,
                "a plain SHA-256 hash after keyed entries: the entry was written or re-hashed "
                "by someone without the signing key",
            )
        elif stored != chain_hash(entry.prev_hash, entry):
            return self._fail(entry.id, "hash does not match the entry's content (edited)")
        self._expected_prev = entry.hash
        position = self.checked if seq is None else seq
        self._last = (position, entry.id)
        return self._match_checkpoints(entry, position)

    def _match_checkpoints(self, entry: AuditEntry, seq: int) -> bool:
        pending = self._pending
        while pending and pending[0].seq <= seq:
            cp = pending.popleft()
            when = cp.time.isoformat()
            if cp.seq < seq:
                return self._fail(
                    cp.entry_id,
                    f"entry {cp.entry_id} (seq {cp.seq}), the head at the checkpoint of {when}, "
                    "is missing: it was deleted",
                )
            if cp.entry_id != entry.id or not hmac.compare_digest(cp.hash, entry.hash or ""):
                return self._fail(
                    entry.id,
                    f"the entry at seq {seq} is not the one the checkpoint of {when} signed "
                    f"({cp.entry_id}): the chain was rewritten up to it",
                )
        return True

    def result(self) -> VerifyResult:
        if self.failure is not None:
            return self.failure
        if self._pending:
            cp = self._pending[-1]
            when = cp.time.isoformat()
            if self._last is None:
                reason = (
                    f"the audit log is empty, but the checkpoint of {when} signed a chain of "
                    f"entries up to seq {cp.seq} (entry {cp.entry_id}): every entry was deleted"
                )
            else:
                seq, entry_id = self._last
                reason = (
                    f"the chain ends at seq {seq} (entry {entry_id}), but the checkpoint of "
                    f"{when} signed entries up to seq {cp.seq} (entry {cp.entry_id}): "
                    "the newest entries were deleted (truncated)"
                )
            return VerifyResult(
                False, self.checked, None, reason, keyed=self.keyed, checkpoints=self.checkpoints
            )
        if self._keys is not None and self.checked and not self.keyed:
            # Indistinguishable from a chain re-hashed from its first entry on
            # by someone without the key, so it cannot pass as keyed.
            return VerifyResult(
                False,
                self.checked,
                None,
                "no entry is keyed although a signing key is given: either nothing was "
                "logged since the key was set (log one entry, then verify again), or the "
                "keyed entries were removed and the chain re-hashed without the key",
                checkpoints=self.checkpoints,
            )
        return VerifyResult(True, self.checked, keyed=self.keyed, checkpoints=self.checkpoints)


def verify_chain(
    entries: Iterable[AuditEntry],
    *,
    start_prev: str | None = None,
    keys: Keyring | None = None,
    checkpoints: Iterable[Checkpoint] = (),
    first_seq: int = 1,
) -> VerifyResult:
    """Walk entries in chain order and check each link (the first has ``first_seq``)."""
    checker = ChainChecker(start_prev, keys=keys, checkpoints=checkpoints)
    for seq, entry in enumerate(entries, first_seq):
        if not checker.feed(entry, seq):
            break
    return checker.result()
