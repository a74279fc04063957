"""Keyed chains and signed checkpoints: what a writer of the audit table cannot forge.

A plain chain (``hash = sha256(prev_hash || canonical_json(entry))``) shows
that stored entries were edited, removed or reordered, but anyone who can
write the table can recompute it. Two things close that gap; both need a
secret the database never sees (``audit.signing_key``):

**Keyed chain.** Each entry's hash becomes an HMAC-SHA256 of the same bytes.
The stored value names its scheme, so a verifier knows what it is looking at
(both forms are 64 characters, the width of the ``hash`` column)::

    plain   3f5c...e1                                64 lowercase hex digits
    keyed   hmac-sha256.<key id>.<mac>               key id: 8 hex digits,
                                                     mac: 43 characters base64url

The key id is the first 32 bits of ``HMAC(key, "infrakit.audit.key-id")``:
it says which key made an entry (for rotation) and reveals nothing of the
key. The chain and the checkpoints use sub-keys derived from the one secret
(``HMAC(key, "infrakit.audit.chain.v1")``, ``..."checkpoint.v1"``), so a MAC
of one kind is never valid as the other.

**Checkpoints.** The head of the chain (its ``seq``, entry id and hash, and
the time) signed with the checkpoint sub-key and written somewhere other than
the audit table: the log pipeline (event ``infrakit.audit.checkpoint``) and,
optionally, a file of JSON lines. A checkpoint pins every entry up to its
``seq``: deleting the newest entries, or all of them, no longer goes unseen.

The :class:`Checkpointer` writes them: every ``checkpoint_every`` entries or
``checkpoint_interval_s`` seconds (when something was written since the last
one), and once more when the logger closes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from infrakit.errors import AuditError, InfrastructureError
from infrakit.settings.models import MIN_SIGNING_KEY_LENGTH, AuditSettings

__all__ = [
    "CHECKPOINT_EVENT",
    "KEYED_PREFIX",
    "ChainKey",
    "Checkpoint",
    "CheckpointPolicy",
    "Checkpointer",
    "Head",
    "Keyring",
    "chain_options",
    "load_checkpoints",
]

#: The log event a checkpoint is written as.
CHECKPOINT_EVENT = "infrakit.audit.checkpoint"
#: How a keyed entry's hash begins (then the key id, a dot and the MAC).
KEYED_PREFIX = "hmac-sha256."
_KEY_ID_LEN = 8
#: The shortest key accepted (characters; the profile model checks the same).
MIN_KEY_LENGTH = MIN_SIGNING_KEY_LENGTH

_log = structlog.get_logger("infrakit.audit")

_encode_canonical = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


class ChainKey:
    """One signing key, as the two sub-keys derived from it and its public id.

    The secret itself is not kept; ``repr`` shows the key id only.
    """

    __slots__ = ("_checkpoint", "_entry", "key_id", "prefix")

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_KEY_LENGTH:
            raise ValueError(
                f"an audit signing key must be at least {MIN_KEY_LENGTH} characters "
                "(make one with `openssl rand -hex 32`)"
            )
        self.key_id = hmac.new(raw, b"infrakit.audit.key-id", hashlib.sha256).hexdigest()[
            :_KEY_ID_LEN
        ]
        entry_key = hmac.new(raw, b"infrakit.audit.chain.v1", hashlib.sha256).digest()
        checkpoint_key = hmac.new(raw, b"infrakit.audit.checkpoint.v1", hashlib.sha256).digest()
        # Keyed once; each MAC copies the keyed state (cheaper than re-keying).
        self._entry = hmac.new(entry_key, digestmod=hashlib.sha256)
        self._checkpoint = hmac.new(checkpoint_key, digestmod=hashlib.sha256)
        self.prefix = f"{KEYED_PREFIX}{self.key_id}."

    def __repr__(self) -> str:
        return f"ChainKey(key_id={self.key_id!r})"

    def entry_hash(self, prev_hash: str | None, canonical: bytes) -> str:
        """The keyed hash of an entry: ``hmac-sha256.<key id>.<mac>``."""
        mac = self._entry.copy()
        mac.update((prev_hash or "").encode("ascii"))
        mac.update(canonical)
        return self.prefix + _b64(mac.digest())

    def checkpoint_mac(self, payload: bytes) -> str:
        mac = self._checkpoint.copy()
        mac.update(payload)
        return _b64(mac.digest())


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def key_id_of(hash_: str) -> str | None:
    """The key id of a keyed hash; None for a plain SHA-256 one."""
    if hash_.startswith(KEYED_PREFIX):
        return hash_[len(KEYED_PREFIX) : len(KEYED_PREFIX) + _KEY_ID_LEN]
    return None


class Keyring:
    """The current signing key (which signs) and earlier ones (which still verify)."""

    __slots__ = ("_by_id", "current")

    def __init__(self, current: ChainKey, previous: Iterable[ChainKey] = ()) -> None:
        self.current = current
        self._by_id = {key.key_id: key for key in previous}
        self._by_id[current.key_id] = current

    @classmethod
    def from_secrets(
        cls, current: str | bytes | None, previous: Iterable[str | bytes] = ()
    ) -> Keyring | None:
        """A keyring of the given secrets; None when there is no current key."""
        if current is None:
            return None
        return cls(ChainKey(current), [ChainKey(secret) for secret in previous])

    def get(self, key_id: str) -> ChainKey | None:
        return self._by_id.get(key_id)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._by_id)

    def __repr__(self) -> str:
        return f"Keyring(current={self.current.key_id!r}, known={self.key_ids!r})"


#: The head of a chain: its ``seq``, the entry id and the entry's hash.
Head = tuple[int, str, str]

_CHECKPOINT_FIELDS = ("seq", "entry_id", "hash", "time", "key_id", "mac")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The signed head of the chain at one moment.

    ``seq`` is the head entry's position as the backend numbers it (the SQL
    table's ``seq`` column; insertion order, gaps possible), ``mac`` the
    HMAC of the other fields with the checkpoint sub-key of ``key_id``.
    """

    seq: int
    entry_id: str
    hash: str
    time: datetime
    key_id: str
    mac: str

    @classmethod
    def sign(cls, key: ChainKey, head: Head, time: datetime | None = None) -> Checkpoint:
        seq, entry_id, hash_ = head
        when = (time or datetime.now(UTC)).astimezone(UTC)
        unsigned = cls(seq, entry_id, hash_, when, key.key_id, "")
        return cls(seq, entry_id, hash_, when, key.key_id, key.checkpoint_mac(unsigned._payload()))

    def _payload(self) -> bytes:
        data = self.to_dict()
        del data["mac"]
        return b"infrakit.audit.checkpoint.v1\n" + _encode_canonical(data).encode()

    def signed_by(self, keys: Keyring) -> bool:
        """True when ``mac`` was made by the key ``key_id`` names, and it is in ``keys``."""
        key = keys.get(self.key_id)
        return key is not None and hmac.compare_digest(
            key.checkpoint_mac(self._payload()), self.mac
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "entry_id": self.entry_id,
            "hash": self.hash,
            "time": self.time.isoformat(timespec="microseconds"),
            "key_id": self.key_id,
            "mac": self.mac,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        """Read a checkpoint; other keys (a log line's ``event``, ``level`` ...) are ignored."""
        problems = [f"{name}: missing" for name in _CHECKPOINT_FIELDS if name not in data]
        seq = data.get("seq")
        if "seq" in data and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 1):
            problems.append(f"seq: expected a positive integer, got {seq!r}")
        for name in ("entry_id", "hash", "time", "key_id", "mac"):
            value = data.get(name)
            if name in data and (not isinstance(value, str) or not value):
                problems.append(f"{name}: expected a non-empty string")
        when: datetime | None = None
        if not problems:
            try:
                when = datetime.fromisoformat(data["time"])
            except ValueError:
                problems.append("time: not an ISO 8601 date-time")
            else:
                if when.tzinfo is None:
                    problems.append("time: must include a UTC offset")
        if problems:
            raise ValueError("not an audit checkpoint: " + "; ".join(problems))
        assert when is not None
        return cls(
            data["seq"],
            data["entry_id"],
            data["hash"],
            when.astimezone(UTC),
            data["key_id"],
            data["mac"],
        )


def load_checkpoints(source: str) -> list[Checkpoint]:
    """Checkpoints from ``source``: a JSON value (one checkpoint, or a log line
    carrying one) or a file of JSON lines (the checkpoint file, or a JSON log
    in which the lines of other events are skipped).

    Raises ValueError naming the file and line of anything that is not a
    checkpoint; signatures are checked later, against the keys.
    """
    text = source.strip()
    where = "the --checkpoint value"
    if not text.startswith("{"):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(
                f"{source}: no such file (give a checkpoint file or a checkpoint's JSON)"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{source}: cannot read it: {type(error).__name__}") from None
        where = source
    found: list[Checkpoint] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{where}:{number}: not JSON (one checkpoint per line)") from None
        if not isinstance(data, dict):
            raise ValueError(f"{where}:{number}: expected a JSON object")
        if data.get("event", CHECKPOINT_EVENT) != CHECKPOINT_EVENT:
            continue  # another event of a JSON log
        try:
            found.append(Checkpoint.from_dict(data))
        except ValueError as error:
            raise ValueError(f"{where}:{number}: {error}") from None
    if not found:
        raise ValueError(f"{where}: no audit checkpoint in it")
    return found


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When checkpoints are made and where they go besides the log pipeline
    (``every`` and ``interval_s`` both 0: only when asked, by ``checkpoint()``)."""

    every: int = 1000
    interval_s: float = 60.0
    file: Path | None = None


def chain_options(section: AuditSettings) -> tuple[Keyring | None, CheckpointPolicy]:
    """The keys and the checkpoint policy an audit profile section asks for."""
    keys = Keyring.from_secrets(
        None if section.signing_key is None else section.signing_key.get_secret_value(),
        [key.get_secret_value() for key in section.previous_signing_keys],
    )
    path = None if section.checkpoint_file is None else Path(section.checkpoint_file)
    return keys, CheckpointPolicy(section.checkpoint_every, section.checkpoint_interval_s, path)


class Checkpointer:
    """Signs the chain head and writes it out: to the log pipeline as
    ``infrakit.audit.checkpoint`` and, when configured, as a JSON line
    appended (and fsynced) to a file.

    Backends call :meth:`note` after each committed write: it never waits and
    never raises. The checkpoint itself is made in a task of its own, one at a
    time; a failure is logged as a warning (the entries are stored, only their
    checkpoint is late) and retried with the next one.
    """

    def __init__(
        self, key: ChainKey, head: Callable[[], Awaitable[Head | None]], policy: CheckpointPolicy
    ) -> None:
        self._key = key
        self._head = head
        self.policy = policy
        self._since = 0  # entries written since the last checkpoint
        self._count_lock = threading.Lock()  # note() runs on any thread
        self._last: Checkpoint | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[Checkpoint | None] | None = None
        self._timer: asyncio.Task[None] | None = None
        # The loop the logger started on: checkpoints are made there, whatever
        # loop (or thread) the write that calls note() ran on.
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def last(self) -> Checkpoint | None:
        """The latest checkpoint this process wrote."""
        return self._last

    def _check_file(self) -> None:
        path = self.policy.file
        if path is not None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.close(fd)

    async def start(self) -> None:
        """Check that the checkpoint file can be appended to, start the timer."""
        try:
            await asyncio.to_thread(self._check_file)
        except OSError as error:
            raise AuditError(
                f"cannot append to audit.checkpoint_file {self.policy.file}: "
                f"{type(error).__name__}: {error.strerror}"
            ) from error
        self._loop = asyncio.get_running_loop()
        if self.policy.interval_s > 0 and self._timer is None:
            self._timer = self._loop.create_task(self._tick())

    async def aclose(self) -> None:
        """Stop the timer and write a last checkpoint of what this process wrote."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._since and (self.policy.every or self.policy.interval_s):
            await self._background()

    def note(self, count: int) -> None:
        """``count`` entries were committed; start a checkpoint when ``every`` is reached.

        Never waits, never raises. The count is taken at once, on whatever
        thread or loop the write ran. The checkpoint task is made on the loop
        the logger started on while that loop runs (the task and its lock
        belong to it; a thread's own loop may end before the task could
        write), else on the loop of this call.
        """
        with self._count_lock:
            self._since += count
            due = self.policy.every and self._since >= self.policy.every
        if not due:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        owner = self._loop
        if owner is not None and owner is not running and owner.is_running():
            try:
                owner.call_soon_threadsafe(self._start)
            except RuntimeError:  # closed in the meantime: this loop, if any
                pass
            else:
                return
        if running is not None:
            self._start()

    def _start(self) -> None:
        """Start a checkpoint task on the running loop, unless one is at work."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._background())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.policy.interval_s)
            if self._since:
                await self._background()

    async def _background(self) -> Checkpoint | None:
        try:
            return await self.checkpoint()
        except Exception as error:  # noqa: BLE001 - the entries are stored; only their
            # checkpoint is late (the next one covers them), and a task's error
            # would otherwise only reach "Task exception was never retrieved"
            expected = isinstance(error, InfrastructureError | OSError)
            _log.warning(
                "infrakit.audit.checkpoint_failed",
                error=type(error).__name__,
                file=str(self.policy.file) if self.policy.file else None,
                # a bug, not an outage: its (scrubbed) traceback
                exc_info=None if expected else error,
            )
            return None

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current head and write it out now; None when the chain is empty.

        Raises what reading the head or writing the file raised.
        """
        async with self._lock:
            with self._count_lock:
                pending = self._since
            head = await self._head()
            if head is None:
                with self._count_lock:
                    self._since -= pending
                return None
            checkpoint = Checkpoint.sign(self._key, head)
            line = checkpoint.to_json()
            if self.policy.file is not None:
                await asyncio.to_thread(_append_line, self.policy.file, line)
            _log.info(CHECKPOINT_EVENT, **checkpoint.to_dict())
            with self._count_lock:
                self._since -= pending
            self._last = checkpoint
            return checkpoint


def _append_line(path: Path, line: str) -> None:
    """One ``write`` of the whole line with O_APPEND (processes sharing the file
    never interleave), then fsync: a checkpoint that is reported is on disk."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = (line + "\n").encode()
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to the checkpoint file ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def sorted_checkpoints(checkpoints: Sequence[Checkpoint]) -> list[Checkpoint]:
    """By ``seq``, one per ``seq`` (the same head checkpointed twice is one)."""
    unique: dict[tuple[int, str, str], Checkpoint] = {}
    for cp in checkpoints:
        unique.setdefault((cp.seq, cp.entry_id, cp.hash), cp)
    return sorted(unique.values(), key=lambda cp: cp.seq)
