"""What a writer of the audit table can do, and what finds it: one suite, run on
SQLite (tests/unit/audit/test_keyed_chain.py) and PostgreSQL
(tests/integration/test_audit_postgres.py).

Each attack is done the way someone with write access to the table but
without the signing key would do it: plain SQL, and the kit's own public hash
function to recompute the chain after a forged row. For each one the suite
shows both sides: found with the key or a checkpoint, not found without.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from infrakit.audit import AuditEntry, Keyring, SqlAuditLogger, chain_hash
from infrakit.audit.chain import ChainKey
from infrakit.audit.sql import AUDIT_TABLE, audit_log
from infrakit.database import DatabaseSession

__all__ = ["KEY", "OLD_KEY", "TamperScenarios", "chain_rows", "forge", "truncate"]

KEY = "test-audit-signing-key-0123456789abcdef"
OLD_KEY = "an-older-audit-signing-key-fedcba9876543210"
ATTACKER_KEY = "the-attackers-own-key-00000000000000000000"


def keyring(*secrets: str) -> Keyring:
    current, *previous = secrets or (KEY,)
    ring = Keyring.from_secrets(current, previous)
    assert ring is not None
    return ring


async def chain_rows(db: DatabaseSession) -> list[tuple[int, AuditEntry]]:
    """``(seq, entry)`` in chain order, read straight from the table."""
    columns = [c for c in audit_log.columns if c.name != "seq"]
    async with db.engine.connect() as conn:
        rows = (await conn.execute(sa.select(audit_log.c.seq, *columns).order_by("seq"))).all()
    out = []
    for row in rows:
        data = dict(row._mapping)
        seq = data.pop("seq")
        stamp: datetime = data["timestamp"]
        data["timestamp"] = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        data["details"] = json.loads(data["details"])
        out.append((seq, AuditEntry(**data)))
    return out


async def forge(
    db: DatabaseSession,
    index: int,
    *,
    key: ChainKey | None = None,
    copy_key_id: bool = False,
    stop: int | None = None,
) -> str:
    """Change entry ``index`` (its user becomes ``mallory``) and recompute its
    hash and every one after it (up to ``stop``, whose prev_hash is then
    relinked): plain SHA-256 (``key`` None), or an HMAC with a key of the
    attacker's own, under the real key id when ``copy_key_id``.
    Returns the forged entry's id."""
    rows = await chain_rows(db)
    prev = rows[index - 1][1].hash if index else None
    end = len(rows) if stop is None else stop
    async with db.engine.begin() as conn:
        for position, (seq, row) in enumerate(rows[index:end], index):
            entry = dataclasses.replace(row, user_id="mallory") if position == index else row
            digest = chain_hash(prev, entry, key)
            if copy_key_id and entry.hash is not None and key is not None:
                real_prefix = entry.hash[: len(key.prefix)]
                digest = real_prefix + digest[len(key.prefix) :]
            await conn.execute(
                sa.update(audit_log)
                .where(audit_log.c.seq == seq)
                .values(user_id=entry.user_id, prev_hash=prev, hash=digest)
            )
            prev = digest
        if end < len(rows):
            await conn.execute(
                sa.update(audit_log).where(audit_log.c.seq == rows[end][0]).values(prev_hash=prev)
            )
    return rows[index][1].id


async def truncate(db: DatabaseSession, keep: int) -> None:
    """Delete every entry after the first ``keep`` (all of them when 0)."""
    rows = await chain_rows(db)
    async with db.engine.begin() as conn:
        if keep == 0:
            await conn.execute(sa.text(f"DELETE FROM {AUDIT_TABLE}"))
        else:
            await conn.execute(sa.delete(audit_log).where(audit_log.c.seq > rows[keep - 1][0]))


async def write(logger: SqlAuditLogger, count: int, start: int = 0) -> list[AuditEntry]:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    return [
        await logger.log(
            AuditEntry(
                id=f"e-{n:04d}",
                timestamp=t0 + timedelta(seconds=n),
                action="export",
                resource_type="report",
                result="success",
                user_id=f"u{n % 3}",
                details={"n": n},
            )
        )
        for n in range(start, start + count)
    ]


class TamperScenarios:
    """Forged, truncated and deleted chains: found with the key or a checkpoint, not without.

    Subclasses provide ``database``: a migrated database whose audit table is empty.
    """

    @pytest.fixture
    async def plain(self, database: DatabaseSession) -> SqlAuditLogger:
        return SqlAuditLogger(database)

    @pytest.fixture
    async def keyed(self, database: DatabaseSession) -> SqlAuditLogger:
        return SqlAuditLogger(database, keys=keyring())

    # --- a forged entry, every hash after it recomputed ----------------------------

    async def test_a_forged_row_passes_a_plain_chain(
        self, plain: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        await write(plain, 8)
        await forge(database, 3)
        result = await plain.verify()
        assert (result.ok, result.checked) == (True, 8)  # undetectable without a key
        assert (await chain_rows(database))[3][1].user_id == "mallory"

    async def test_a_forged_row_fails_a_keyed_chain(
        self, keyed: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        stored = await write(keyed, 8)
        assert all(e.hash is not None and e.hash.startswith("hmac-sha256.") for e in stored)
        assert (await keyed.verify()).ok
        forged = await forge(database, 3)  # re-hashed with plain SHA-256
        result = await keyed.verify()
        assert not result.ok
        assert not result.needs_key
        assert result.first_bad_id == forged
        assert "without the signing key" in (result.reason or "")

    async def test_a_row_re_hashed_with_another_key_fails(
        self, keyed: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        await write(keyed, 8)
        forged = await forge(database, 5, key=ChainKey(ATTACKER_KEY), copy_key_id=True)
        result = await keyed.verify()
        assert (result.ok, result.first_bad_id) == (False, forged)
        assert "re-hashed without the key" in (result.reason or "")

    async def test_a_chain_re_hashed_from_its_first_entry_fails(
        self, keyed: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        await write(keyed, 5)
        await forge(database, 0)  # every entry now has a plain hash
        assert (await SqlAuditLogger(database).verify()).ok  # without the key: passes
        result = await keyed.verify()
        assert not result.ok
        assert "no entry is keyed" in (result.reason or "")

    async def test_a_keyed_chain_without_the_key_cannot_be_checked(
        self, keyed: SqlAuditLogger, plain: SqlAuditLogger
    ) -> None:
        stored = await write(keyed, 3)
        result = await plain.verify()
        assert (result.ok, result.needs_key, result.first_bad_id) == (False, True, stored[0].id)
        assert "give the signing key" in (result.reason or "")
        assert KEY not in repr(keyed) + repr(result)

    async def test_an_unkeyed_chain_keeps_verifying_and_a_key_continues_it(
        self, plain: SqlAuditLogger, keyed: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        old = await write(plain, 3)
        assert all(e.hash is not None and len(e.hash) == 64 for e in old)
        assert all(e.hash == chain_hash(e.prev_hash, e) for e in old)  # unchanged format
        new = await write(keyed, 3, start=3)
        assert new[0].prev_hash == old[-1].hash
        result = await keyed.verify()
        assert (result.ok, result.checked, result.keyed) == (True, 6, 3)
        # the keyed entries protect the plain ones before them
        assert await forge(database, 1, stop=3) == old[1].id
        result = await keyed.verify()
        assert (result.ok, result.first_bad_id) == (False, new[0].id)
        # and re-hashing the keyed ones too leaves no keyed entry
        await forge(database, 1)
        result = await keyed.verify()
        assert not result.ok
        assert "no entry is keyed" in (result.reason or "")

    async def test_rotated_keys_still_verify(self, database: DatabaseSession) -> None:
        await write(SqlAuditLogger(database, keys=keyring(OLD_KEY)), 3)
        cp_old = await SqlAuditLogger(database, keys=keyring(OLD_KEY)).checkpoint()
        rotated = SqlAuditLogger(database, keys=keyring(KEY, OLD_KEY))
        await write(rotated, 3, start=3)
        assert cp_old is not None
        result = await rotated.verify(checkpoints=[cp_old])
        assert (result.ok, result.keyed, result.checkpoints) == (True, 6, 1)
        new_only = await SqlAuditLogger(database, keys=keyring(KEY)).verify()
        assert (new_only.ok, new_only.needs_key) == (False, True)
        assert "previous_signing_keys" in (new_only.reason or "")

    # --- the newest entries deleted ------------------------------------------------

    async def test_a_truncated_tail_is_found_only_with_a_checkpoint(
        self, keyed: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        stored = await write(keyed, 8)
        checkpoint = await keyed.checkpoint()
        assert checkpoint is not None
        assert (checkpoint.entry_id, checkpoint.hash) == (stored[-1].id, stored[-1].hash)
        await truncate(database, 5)
        assert (await keyed.verify()).ok  # undetectable without the checkpoint
        result = await keyed.verify(checkpoints=[checkpoint])
        assert not result.ok
        assert "truncated" in (result.reason or "")
        assert stored[4].id in (result.reason or "")
        assert stored[-1].id in (result.reason or "")

    async def test_a_truncated_plain_chain_passes(
        self, plain: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        await write(plain, 8)
        await truncate(database, 5)
        assert (await plain.verify()).ok

    async def test_a_checkpoint_needs_the_key(
        self, keyed: SqlAuditLogger, plain: SqlAuditLogger
    ) -> None:
        await write(keyed, 2)
        checkpoint = await keyed.checkpoint()
        assert checkpoint is not None
        result = await plain.verify(checkpoints=[checkpoint])
        assert (result.ok, result.needs_key) == (False, True)

    async def test_entries_after_the_last_checkpoint_are_not_covered(
        self, keyed: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        await write(keyed, 5)
        checkpoint = await keyed.checkpoint()
        await write(keyed, 3, start=5)
        await truncate(database, 5)
        assert checkpoint is not None
        assert (await keyed.verify(checkpoints=[checkpoint])).ok  # a documented limit

    # --- everything deleted --------------------------------------------------------

    async def test_deleting_everything_is_found_only_with_a_checkpoint(
        self, keyed: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        await write(keyed, 4)
        checkpoint = await keyed.checkpoint()
        assert checkpoint is not None
        await truncate(database, 0)
        result = await keyed.verify()
        assert (result.ok, result.checked) == (True, 0)  # undetectable without the checkpoint
        result = await keyed.verify(checkpoints=[checkpoint])
        assert not result.ok
        assert "every entry was deleted" in (result.reason or "")

    async def test_deleting_everything_and_writing_anew_is_found(
        self, keyed: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        await write(keyed, 4)
        checkpoint = await keyed.checkpoint()
        assert checkpoint is not None
        await truncate(database, 0)
        await write(keyed, 6, start=100)  # a fresh, valid keyed chain (the kit wrote it)
        assert (await keyed.verify()).ok
        result = await keyed.verify(checkpoints=[checkpoint])
        assert not result.ok
        assert "deleted" in (result.reason or "") or "rewritten" in (result.reason or "")

    async def test_an_entry_before_the_checkpoint_deleted(
        self, keyed: SqlAuditLogger, database: DatabaseSession
    ) -> None:
        stored = await write(keyed, 6)
        checkpoint = await keyed.checkpoint()
        assert checkpoint is not None
        async with database.engine.begin() as conn:
            await conn.execute(sa.delete(audit_log).where(audit_log.c.id == stored[2].id))
        result = await keyed.verify(checkpoints=[checkpoint])
        assert (result.ok, result.first_bad_id) == (False, stored[3].id)

    async def test_a_forged_checkpoint_is_refused(self, keyed: SqlAuditLogger) -> None:
        await write(keyed, 4)
        checkpoint = await keyed.checkpoint()
        assert checkpoint is not None
        moved = dataclasses.replace(checkpoint, seq=checkpoint.seq + 10)
        result = await keyed.verify(checkpoints=[moved])
        assert not result.ok
        assert "not genuine" in (result.reason or "")
        assert KEY not in (result.reason or "")
