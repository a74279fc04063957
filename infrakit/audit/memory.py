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
    sort_key,
    verify_chain,
)
from infrakit.component import HealthResult
from infrakit.registry import Backend
from infrakit.settings.models import AuditSettings

if TYPE_CHECKING:
    from infrakit.settings.models import InfraSettings

__all__ = ["BACKEND", "InMemoryAuditLogger", "MemoryAuditSettings"]


class InMemoryAuditLogger(AuditLogger):
    """Keeps the newest ``max_entries`` entries; the oldest are trimmed first.

    One lock guards appends and reads, so writers on threads and tasks at
    once never lose a newer entry to trimming. With ``hash_chain`` the
    entries are chained like the SQL backend's; ``verify()`` checks the
    retained window (the first retained entry anchors it).
    """

    def __init__(self, max_entries: int = 10_000, *, hash_chain: bool = True) -> None:
        # Trusts its (typed) arguments: the profile model validated them.
        self.max_entries = max_entries
        self.hash_chain = hash_chain
        self._entries: deque[AuditEntry] = deque(maxlen=max_entries)
        self._last_hash: str | None = None
        self._lock = threading.Lock()

    def _append(self, entry: AuditEntry) -> AuditEntry:
        if self.hash_chain:
            entry = entry.with_chain(self._last_hash, chain_hash(self._last_hash, entry))
            self._last_hash = entry.hash
        else:
            entry = entry.with_chain(None, None)
        self._entries.append(entry)  # a full deque drops its oldest entry
        return entry

    async def log(self, entry: AuditEntry) -> AuditEntry:
        if not isinstance(entry, AuditEntry):
            raise ValueError(f"log() takes an AuditEntry, got {type(entry).__name__}")
        with self._lock:
            return self._append(entry)

    async def log_many(self, entries: Iterable[AuditEntry]) -> list[AuditEntry]:
        batch = list(entries)
        for entry in batch:
            if not isinstance(entry, AuditEntry):
                raise ValueError(f"log_many() takes AuditEntry items, got {type(entry).__name__}")
        with self._lock:
            return [self._append(entry) for entry in batch]

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

    async def verify(self) -> VerifyResult:
        entries = self._snapshot()
        if not self.hash_chain:
            return VerifyResult(True, len(entries), reason="hash chain disabled")
        if not entries:
            return VerifyResult(True, 0)
        return verify_chain(entries, start_prev=entries[0].prev_hash)

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
    return InMemoryAuditLogger(section.max_entries, hash_chain=section.hash_chain)


BACKEND = Backend(
    "audit", "memory", MemoryAuditSettings, create, description="bounded in-memory audit log"
)
