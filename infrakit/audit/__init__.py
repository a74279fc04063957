"""The audit log: immutable UTC entries, append-only, optionally hash-chained."""

from typing import TYPE_CHECKING

from infrakit.audit.base import (
    AuditEntry,
    AuditFilter,
    AuditLogger,
    VerifyResult,
    canonical_json,
    chain_hash,
)
from infrakit.audit.chain import Checkpoint, Keyring, load_checkpoints
from infrakit.audit.memory import InMemoryAuditLogger

if TYPE_CHECKING:
    from infrakit.audit.sql import SqlAuditLogger

__all__ = [
    "AuditEntry",
    "AuditFilter",
    "AuditLogger",
    "Checkpoint",
    "InMemoryAuditLogger",
    "Keyring",
    "SqlAuditLogger",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
    "load_checkpoints",
]


def __getattr__(name: str) -> object:
    # The SQL backend pulls in SQLAlchemy's async engine; import it on first use.
    if name == "SqlAuditLogger":
        from infrakit.audit.sql import SqlAuditLogger

        return SqlAuditLogger
    raise AttributeError(f"module 'infrakit.audit' has no attribute {name!r}")
