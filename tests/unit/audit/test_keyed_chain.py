"""Keyed chains, checkpoints and retries on SQLite (PostgreSQL: tests/integration)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infrakit.audit import InMemoryAuditLogger, SqlAuditLogger, chain_hash, load_checkpoints
from infrakit.audit.chain import CHECKPOINT_EVENT, ChainKey, Checkpoint, CheckpointPolicy
from infrakit.cli import main as cli_main
from infrakit.database import DatabaseSession
from infrakit.errors import AuditError, AuditOutcomeUnknownError
from infrakit.logging import configure_logging
from infrakit.testing.contracts import entry
from tests.unit.audit.scenarios import (
    KEY,
    OLD_KEY,
    TamperScenarios,
    forge,
    keyring,
    truncate,
    write,
)


class TestTamperingOnSqlite(TamperScenarios):
    """What a writer of the SQLite file can do, and what finds it."""


async def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll until ``predicate`` holds (a generous bound only against hangs)."""
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class TestRetries:
    """An entry id names one entry: logging it again never stores it twice."""

    async def test_the_same_entry_twice_is_stored_once(self, database: DatabaseSession) -> None:
        audit = SqlAuditLogger(database, keys=keyring())
        first = await audit.log_action("login", "session", user_id="u1")
        again = await audit.log(first.with_chain(None, None))
        assert again == first
        assert await audit.count() == 1
        result = await audit.verify()
        assert (result.ok, result.checked) == (True, 1)

    async def test_a_batch_with_some_stored_entries(self, database: DatabaseSession) -> None:
        audit = SqlAuditLogger(database)
        stored = await audit.log_many([entry(n) for n in range(3)])
        mixed = await audit.log_many([entry(n) for n in (1, 3, 3, 4, 2)])
        assert [e.id for e in mixed] == [entry(n).id for n in (1, 3, 3, 4, 2)]
        assert mixed[0] == stored[1]
        assert mixed[4] == stored[2]
        assert mixed[1] == mixed[2]
        assert await audit.count() == 5
        assert (await audit.verify()).ok

    async def test_the_same_id_with_other_content_is_refused(
        self, database: DatabaseSession
    ) -> None:
        audit = SqlAuditLogger(database)
        await audit.log(entry(1))
        with pytest.raises(AuditError, match="already stored with other content"):
            await audit.log(entry(1, result="failure"))
        assert await audit.count() == 1
        assert not isinstance(AuditError("x"), AuditOutcomeUnknownError)
        assert AuditOutcomeUnknownError("x").outcome_unknown
        assert not AuditError("x").outcome_unknown


class TestCheckpointer:
    """Checkpoints go to the log and the file, every N entries, every T seconds, at close."""

    async def test_every_n_entries_to_the_file_and_the_log(
        self, database: DatabaseSession, tmp_path: Path
    ) -> None:
        path = tmp_path / "checkpoints.jsonl"
        audit = SqlAuditLogger(database, keys=keyring(), checkpoints=CheckpointPolicy(3, 0, path))
        stream = io.StringIO()
        configure_logging("INFO", "json", stream=stream)
        await audit.start()
        await audit.log_many([entry(n) for n in range(2)])
        await asyncio.sleep(0.05)
        assert _lines(path) == []  # 2 < 3
        await audit.log(entry(2))
        await _wait_for(lambda: len(_lines(path)) == 1, "the first checkpoint")
        (line,) = _lines(path)
        assert (line["seq"], line["entry_id"]) == (3, "e-00002")
        logged = [json.loads(text) for text in stream.getvalue().splitlines()]
        logged = [e for e in logged if e["event"] == CHECKPOINT_EVENT]
        assert len(logged) == 1
        assert {k: logged[0][k] for k in line} == line  # the log line is the checkpoint
        assert load_checkpoints(json.dumps(logged[0])) == load_checkpoints(str(path))
        checkpoints = load_checkpoints(str(path))
        assert (await audit.verify(checkpoints=checkpoints)).checkpoints == 1
        await audit.aclose()

    async def test_every_t_seconds_and_at_close(
        self, database: DatabaseSession, tmp_path: Path
    ) -> None:
        path = tmp_path / "cp.jsonl"
        audit = SqlAuditLogger(
            database, keys=keyring(), checkpoints=CheckpointPolicy(0, 0.05, path)
        )
        await audit.start()
        await audit.log(entry(0))
        await _wait_for(lambda: len(_lines(path)) == 1, "a timed checkpoint")
        await asyncio.sleep(0.2)
        assert len(_lines(path)) == 1  # nothing new written: no new checkpoint
        await audit.log(entry(1))
        await audit.aclose()  # whatever the timer did, the close covers entry 1
        assert _lines(path)[-1]["entry_id"] == "e-00001"
        assert (await audit.verify(checkpoints=load_checkpoints(str(path)))).ok

    async def test_an_unwritable_file_fails_at_start(
        self, database: DatabaseSession, tmp_path: Path
    ) -> None:
        policy = CheckpointPolicy(10, 0, tmp_path / "missing-dir" / "cp.jsonl")
        for audit in (
            SqlAuditLogger(database, keys=keyring(), checkpoints=policy),
            InMemoryAuditLogger(keys=keyring(), checkpoints=policy),
        ):
            with pytest.raises(AuditError, match=r"cannot append to audit\.checkpoint_file"):
                await audit.start()

    async def test_a_failing_sink_never_fails_a_write(
        self, database: DatabaseSession, tmp_path: Path
    ) -> None:
        path = tmp_path / "cp.jsonl"
        audit = SqlAuditLogger(database, keys=keyring(), checkpoints=CheckpointPolicy(1, 0, path))
        await audit.start()
        path.unlink()
        path.mkdir()  # the file became a directory: appending fails
        stream = io.StringIO()
        configure_logging("INFO", "json", stream=stream)
        await audit.log(entry(0))
        await _wait_for(
            lambda: "infrakit.audit.checkpoint_failed" in stream.getvalue(), "the warning"
        )
        assert '"error":"IsADirectoryError"' in stream.getvalue().replace(" ", "")
        assert await audit.count() == 1
        path.rmdir()
        await audit.aclose()
        assert _lines(path)[-1]["entry_id"] == "e-00000"  # the close retried it

    async def test_a_write_from_another_event_loop_is_checkpointed_on_the_loggers(
        self, database: DatabaseSession, tmp_path: Path
    ) -> None:
        """A thread with a loop of its own writes; the checkpoint is made on the
        loop the logger started on (a task on the thread's loop died with
        ``asyncio.run`` before it could write anything)."""
        path = tmp_path / "cp.jsonl"
        audit = SqlAuditLogger(database, keys=keyring(), checkpoints=CheckpointPolicy(1, 0, path))
        await audit.start()
        errors: list[BaseException] = []

        def elsewhere() -> None:
            try:
                asyncio.run(audit.log(entry(0)))
            except BaseException as error:  # reported by the assertion below
                errors.append(error)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        await asyncio.to_thread(thread.join, 60)  # this loop keeps running meanwhile
        assert not thread.is_alive()
        assert errors == []
        await _wait_for(lambda: len(_lines(path)) == 1, "the checkpoint of the thread's write")
        assert _lines(path)[0]["entry_id"] == "e-00000"
        await audit.aclose()
        assert (await audit.verify(checkpoints=load_checkpoints(str(path)))).ok

    def test_started_on_a_loop_that_no_longer_runs(self, tmp_path: Path) -> None:
        """Started on one loop (a fixture's), written on another: the loop it
        started on is idle, so the checkpoint is made on the writer's."""
        path = tmp_path / "cp.jsonl"
        audit = InMemoryAuditLogger(keys=keyring(), checkpoints=CheckpointPolicy(1, 0, path))
        fixture_loop = asyncio.new_event_loop()
        try:
            fixture_loop.run_until_complete(audit.start())

            async def body() -> None:
                await audit.log(entry(0))
                await _wait_for(lambda: len(_lines(path)) == 1, "the checkpoint")
                await audit.aclose()

            asyncio.run(body())
        finally:
            fixture_loop.close()
        assert [line["entry_id"] for line in _lines(path)] == ["e-00000"]

    async def test_no_key_no_checkpoint(self, database: DatabaseSession) -> None:
        audit = SqlAuditLogger(database)
        await audit.log(entry(0))
        assert await audit.checkpoint() is None
        assert await SqlAuditLogger(database, keys=keyring()).checkpoint() is not None
        assert await InMemoryAuditLogger(keys=keyring()).checkpoint() is None  # empty


class TestMemoryBackend:
    """The in-memory double keys, checkpoints and verifies like the SQL backend."""

    async def test_keyed_chain_and_checkpoints(self) -> None:
        audit = InMemoryAuditLogger(max_entries=4, keys=keyring())
        for n in range(3):
            await audit.log(entry(n))
        checkpoint = await audit.checkpoint()
        assert checkpoint is not None
        assert checkpoint.seq == 3
        assert (await audit.verify(checkpoints=[checkpoint])).ok
        result = await InMemoryAuditLogger(keys=keyring(OLD_KEY)).verify(checkpoints=[checkpoint])
        assert (result.ok, result.needs_key) == (False, True)
        for n in range(3, 8):
            await audit.log(entry(n))  # entries 0-3 trimmed: the checkpoint is out of the window
        result = await audit.verify(checkpoints=[checkpoint])
        assert (result.ok, result.keyed, result.checkpoints) == (True, 4, 0)

    async def test_plain_hashes_are_unchanged(self) -> None:
        plain = InMemoryAuditLogger()
        stored = await plain.log(entry(0))
        assert stored.hash == chain_hash(None, entry(0))
        assert len(stored.hash or "") == 64
        keyed = await InMemoryAuditLogger(keys=keyring()).log(entry(0))
        assert keyed.hash != stored.hash
        assert (keyed.hash or "").startswith("hmac-sha256.")
        assert len(keyed.hash or "") == 64


class TestCheckpointValues:
    """Checkpoints read from a file, a JSON value or a JSON log; bad input named."""

    def test_sources(self, tmp_path: Path) -> None:
        key = ChainKey(KEY)
        one = Checkpoint.sign(key, (7, "e-7", "h7"))
        two = Checkpoint.sign(key, (9, "e-9", "h9"))
        assert load_checkpoints(one.to_json()) == [one]
        log = tmp_path / "app.log"
        log.write_text(
            json.dumps({"event": "http.request", "path": "/"})
            + "\n"
            + json.dumps({"event": CHECKPOINT_EVENT, "level": "info", **one.to_dict()})
            + "\n\n"
            + two.to_json()
            + "\n",
            encoding="utf-8",
        )
        assert load_checkpoints(str(log)) == [one, two]
        ring = keyring()
        assert one.signed_by(ring)
        assert not dataclasses.replace(one, hash="h8").signed_by(ring)
        assert not one.signed_by(keyring(OLD_KEY))
        assert KEY not in repr(key) + repr(ring) + one.to_json()

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("{not json", "not JSON"),
            ('{"seq": 1}', "entry_id: missing"),
            (
                '{"seq": 0, "entry_id": "e", "hash": "h", "time": "2026-01-01T00:00:00+00:00", '
                '"key_id": "k", "mac": "m"}',
                "seq: expected a positive integer",
            ),
            (
                '{"seq": 1, "entry_id": "e", "hash": "h", "time": "2026-01-01T00:00:00", '
                '"key_id": "k", "mac": "m"}',
                "must include a UTC offset",
            ),
            ("/no/such/file", "no such file"),
        ],
    )
    def test_bad_input(self, text: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            load_checkpoints(text)

    def test_a_file_without_checkpoints(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.jsonl"
        path.write_text('{"event": "other"}\n', encoding="utf-8")
        with pytest.raises(ValueError, match="no audit checkpoint in it"):
            load_checkpoints(str(path))

    def test_a_short_key_is_refused(self) -> None:
        with pytest.raises(ValueError, match="at least 32 characters"):
            ChainKey("short")


class TestCli:
    """`infrakit audit verify [--checkpoint]` and `infrakit audit checkpoint`, as printed."""

    @pytest.fixture
    def profile(self, tmp_path: Path) -> Callable[..., str]:
        def make(*, key: bool = True, checkpoint_file: Path | None = None) -> str:
            lines = [
                f"database: {{url: 'sqlite+aiosqlite:///{tmp_path}/audit.db'}}",
                "logging: {level: ERROR}",
                "audit:",
                "  backend: sql",
            ]
            if key:
                lines.append(f"  signing_key: {KEY}")
            if checkpoint_file is not None:
                lines.append(f"  checkpoint_file: {checkpoint_file}")
            path = tmp_path / ("keyed.yaml" if key else "plain.yaml")
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            return str(path)

        return make

    @staticmethod
    async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        # the CLI runs its own event loop, so it gets a thread of its own here
        code = await asyncio.to_thread(cli_main, list(argv))
        out, err = capsys.readouterr()
        assert KEY not in out + err
        return code, out, err

    async def test_verify_with_and_without_the_key_and_a_checkpoint(
        self,
        database: DatabaseSession,
        profile: Callable[..., str],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        cp_file = tmp_path / "checkpoints.jsonl"
        keyed, plain = profile(checkpoint_file=cp_file), profile(key=False)
        await write(SqlAuditLogger(database, keys=keyring()), 6)

        code, out, _ = await self.run(capsys, "audit", "checkpoint", keyed)
        assert code == 0
        # the checkpoint's own line (log lines may come too, by the profile's logging)
        (printed,) = [line for line in out.splitlines() if line.startswith('{"seq":')]
        assert json.loads(printed)["seq"] == 6
        assert load_checkpoints(str(cp_file)) == load_checkpoints(printed)

        code, out, _ = await self.run(capsys, "audit", "verify", keyed)
        assert (code, out.strip()) == (0, "ok: 6 audit entries verified (6 keyed)")
        code, out, _ = await self.run(
            capsys, "audit", "verify", keyed, "--checkpoint", str(cp_file)
        )
        assert (code, out.strip()) == (
            0,
            "ok: 6 audit entries verified (6 keyed; 1 checkpoint matched)",
        )
        code, _, err = await self.run(capsys, "audit", "verify", plain)
        assert code == 3
        assert "could not check the audit chain at entry e-0000" in err
        assert "give the signing key (audit.signing_key)" in err
        code, _, err = await self.run(
            capsys, "audit", "verify", plain, "--checkpoint", str(cp_file)
        )
        assert code == 3
        assert "checkpoints are signed" in err

        await truncate(database, 4)
        code, out, _ = await self.run(capsys, "audit", "verify", keyed)
        assert code == 0  # undetectable without the checkpoint
        code, out, err = await self.run(
            capsys, "audit", "verify", keyed, "--checkpoint", cp_file.read_text(encoding="utf-8")
        )
        assert (code, out) == (1, "")
        assert err.startswith("BROKEN: the chain ends at seq 4 (entry e-0003)")
        assert "the newest entries were deleted (truncated)" in err

        await truncate(database, 0)
        code, out, _ = await self.run(capsys, "audit", "verify", keyed)
        assert (code, out.strip()) == (0, "ok: 0 audit entries verified")
        code, _, err = await self.run(
            capsys, "audit", "verify", keyed, "--checkpoint", str(cp_file)
        )
        assert code == 1
        assert "BROKEN: the audit log is empty" in err
        assert "every entry was deleted" in err

    async def test_a_forged_row(
        self,
        database: DatabaseSession,
        profile: Callable[..., str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        await write(SqlAuditLogger(database, keys=keyring()), 5)
        forged = await forge(database, 2)
        code, _, err = await self.run(capsys, "audit", "verify", profile())
        assert code == 1
        assert f"BROKEN: audit chain fails at entry {forged} (entry 3 in insertion order)" in err

    async def test_bad_checkpoint_input_is_a_usage_error(
        self, profile: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code, _, err = await self.run(
            capsys, "audit", "verify", profile(), "--checkpoint", str(tmp_path / "nope")
        )
        assert code == 2
        assert "--checkpoint" in err
        assert "no such file" in err
        code, _, err = await self.run(capsys, "audit", "verify", profile(), "--checkpoint", "{x")
        assert code == 2
        assert "not JSON" in err

    async def test_checkpoint_without_a_key(
        self,
        database: DatabaseSession,
        profile: Callable[..., str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        await write(SqlAuditLogger(database), 1)
        code, _, err = await self.run(capsys, "audit", "checkpoint", profile(key=False))
        assert code == 1
        assert "audit.signing_key is not set" in err

    async def test_the_key_is_never_shown(
        self, profile: Callable[..., str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        keyed = profile()
        for argv in (
            ("config", "show", keyed),
            ("config", "show", keyed, "--sources"),
            ("config", "show", keyed, "--format", "json"),
            ("describe", keyed),
        ):
            await self.run(capsys, *argv)
        code, _, err = await self.run(
            capsys, "config", "validate", keyed, "--set", "audit.signing_key=" + KEY[:20]
        )
        assert code == 1
        assert "audit.signing_key" in err
        assert KEY[:20] not in err
