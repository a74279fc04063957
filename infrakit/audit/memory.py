"""``InMemoryAuditLogger``: the audit log as a bounded, thread-safe deque."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from infrakit.audit.base import (
    AuditEntry,
    AuditFilter,
    AuditLogger,
    VerifyResult,
    chain_hash,
    same_entry,
    sort_key,
    verify_chain,
)
from infrakit.audit.chain import (
    Checkpoint,
    Checkpointer,
    CheckpointPolicy,
    Head,
    Keyring,
    chain_options,
)
from infrakit.component import HealthResult
from infrakit.errors import AuditError
from infrakit.registry import Backend
from infrakit.settings.models import AuditSettings

if TYPE_CHECKING:
    from infrakit.settings.models import InfraSettings

__all__ = ["BACKEND", "InMemoryAuditLogger", "MemoryAuditSettings"]


class InMemoryAuditLogger(AuditLogger):
    """Keeps the newest ``max_entries`` entries; the oldest are trimmed first.

    One lock guards appends and reads, so writers on threads and tasks at
    once never lose a newer entry to trimming. With ``hash_chain`` the
    entries are chained like the SQL backend's (keyed with ``keys``);
    ``verify()`` checks the retained window (the first retained entry anchors
    it). An entry id already retained is not stored twice: logging it again
    returns the stored entry.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        *,
        hash_chain: bool = True,
        keys: Keyring | None = None,
        checkpoints: CheckpointPolicy | None = None,
    ) -> None:
        # Trusts its (typed) arguments: the profile model validated them.
        self.max_entries = max_entries
        self.hash_chain = hash_chain
        self._keys = keys
        self._key = keys.current if keys is not None and hash_chain else None
        self._entries: deque[AuditEntry] = deque(maxlen=max_entries)
        self._by_id: dict[str, AuditEntry] = {}
        self._appended = 0  # entries ever appended: the seq of the newest
        self._last_hash: str | None = None
        self._lock = threading.Lock()
        self._checkpointer = (
            Checkpointer(self._key, self._head, checkpoints or CheckpointPolicy(0, 0))
            if self._key is not None
            else None
        )

    def __repr__(self) -> str:
        keyed = f", key_id={self._key.key_id!r}" if self._key is not None else ""
        return (
            f"InMemoryAuditLogger(max_entries={self.max_entries}, "
            f"hash_chain={self.hash_chain}{keyed})"
        )

    async def start(self) -> None:
        if self._checkpointer is not None:
            await self._checkpointer.start()

    async def aclose(self) -> None:
        if self._checkpointer is not None:
            await self._checkpointer.aclose()

    def _append(self, entry: AuditEntry) -> AuditEntry:
        known = self._by_id.get(entry.id)
        if known is not None:
            if not same_entry(known, entry):
                raise AuditError(
                    f"audit entry id {entry.id!r} is already stored with other content; "
                    "an id names one entry (retry with the same entry, or use a new id)"
                )
            return known
        if self.hash_chain:
            entry = entry.with_chain(self._last_hash, chain_hash(self._last_hash, entry, self._key))
            self._last_hash = entry.hash
        else:
            entry = entry.with_chain(None, None)
        if len(self._entries) == self.max_entries:
            del self._by_id[self._entries[0].id]
        self._entries.append(entry)  # a full deque drops its oldest entry
        self._by_id[entry.id] = entry
        self._appended += 1
        return entry

    async def log(self, entry: AuditEntry) -> AuditEntry:
        if not isinstance(entry, AuditEntry):
            raise ValueError(f"log() takes an AuditEntry, got {type(entry).__name__}")
        with self._lock:
            stored = self._append(entry)
        if self._checkpointer is not None:
            self._checkpointer.note(1)
        return stored

    async def log_many(self, entries: Iterable[AuditEntry]) -> list[AuditEntry]:
        batch = list(entries)
        for entry in batch:
            if not isinstance(entry, AuditEntry):
                raise ValueError(f"log_many() takes AuditEntry items, got {type(entry).__name__}")
        with self._lock:
            stored = [self._append(entry) for entry in batch]
        if self._checkpointer is not None and stored:
            self._checkpointer.note(len(stored))
        return stored

    async def _head(self) -> Head | None:
        with self._lock:
            if not self._entries:
                return None
            last = self._entries[-1]
            return (self._appended, last.id, last.hash or "")

    async def checkpoint(self) -> Checkpoint | None:
        if self._checkpointer is None:
            return None
        return await self._checkpointer.checkpoint()

    def _snapshot(self) -> list[AuditEntry]:
        with self._lock:
            return list(self._entries)

    async def query(self, audit_filter: AuditFilter | None = None) -> list[AuditEntry]:
        f = audit_filter or AuditFilter()
        found = sorted((e for e in self._snapshot() if f.matches(e)), key=sort_key, reverse=True)
        return found[f.offset : f.offset + f.limit]

    async def count(self, audit_filter: AuditFilter | None = None) -> int:
        f = audit_filter or AuditFilter()
        return sum(1 for e in self._snapshot() if f.matches(e))

    async def verify(self, *, checkpoints: Iterable[Checkpoint] = ()) -> VerifyResult:
        with self._lock:
            entries = list(self._entries)
            first_seq = self._appended - len(entries) + 1
        if not self.hash_chain:
            return VerifyResult(True, len(entries), reason="hash chain disabled")
        # entries trimmed away cannot be checked against their checkpoints
        kept = [cp for cp in checkpoints if cp.seq >= first_seq or not entries]
        return verify_chain(
            entries,
            start_prev=entries[0].prev_hash if entries else None,
            keys=self._keys,
            checkpoints=kept,
            first_seq=first_seq,
        )

    async def health_check(self) -> HealthResult:
        """Always up: the log is this process's memory."""
        return HealthResult(True, 0.0)

    def __len__(self) -> int:
        return len(self._entries)


class MemoryAuditSettings(AuditSettings):
    """``audit.backend: memory``: the newest entries, in this process."""

    backend: Literal["memory"] = "memory"
    max_entries: int = Field(10_000, ge=1, description="Entries kept; the oldest are trimmed.")


def create(section: MemoryAuditSettings, settings: InfraSettings, **_: Any) -> InMemoryAuditLogger:
    keys, policy = chain_options(section)
    return InMemoryAuditLogger(
        section.max_entries, hash_chain=section.hash_chain, keys=keys, checkpoints=policy
    )


BACKEND = Backend(
    "audit", "memory", MemoryAuditSettings, create, description="bounded in-memory audit log"
)
