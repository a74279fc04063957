"""``InMemoryTokenStore``: the token store in one process, O(1) per call."""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from infrakit.component import HealthResult
from infrakit.registry import Backend
from infrakit.settings.models import TokensSettings
from infrakit.tokens.base import (
    DEFAULT_MAX_LIFETIME_S,
    StoredToken,
    TokenStore,
    _check_id,
    as_list,
    revocation_until,
    validate_store,
)

if TYPE_CHECKING:
    from infrakit.settings.models import InfraSettings

__all__ = ["BACKEND", "InMemoryTokenStore", "MemoryTokenSettings"]


class MemoryTokenSettings(TokensSettings):
    """``tokens.backend: memory``: a bounded store in this process."""

    backend: Literal["memory"] = "memory"
    max_entries: int = Field(100_000, ge=1, description="Tokens held; the oldest are evicted.")


class _Record:
    __slots__ = ("created_at", "expires", "expires_at", "revoked", "user_id")

    def __init__(self, user_id: str, created_at: datetime, expires_at: datetime) -> None:
        self.user_id = user_id
        self.created_at = created_at
        self.expires_at = expires_at
        self.expires = expires_at.timestamp()
        self.revoked = False


class InMemoryTokenStore(TokenStore):
    """A bounded, thread-safe token store for one process (and for tests).

    Holds at most ``max_entries`` tokens; storing more evicts the oldest
    (property 6). An evicted token is simply unknown, so it is never valid;
    an evicted *revoked* token leaves a revocation marker behind so its jti
    cannot be stored again (up to ``max_revocations`` markers, by default ten
    times ``max_entries``, kept until the token would have expired). Per-user
    "log out everywhere" cutoffs share that bound: at most ``max_revocations``,
    each kept ``max_lifetime_s`` (no token created before it can live longer),
    the oldest dropped first. Expired tokens, markers and cutoffs are purged
    lazily; the expiry heap holds O(tokens held) entries however often a token
    is stored again. Every call is O(1) amortised, except
    ``revoke_all_for_user``, which is O(tokens of that user). One lock makes it
    safe from many threads and tasks.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        *,
        max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S,
        max_revocations: int | None = None,
    ) -> None:
        # Trusts its (typed) arguments: the profile model validated them.
        self.max_entries = max_entries
        self.max_lifetime_s = float(max_lifetime_s)
        # Revocations outlive eviction (a revoked jti is never stored afresh),
        # so they get a budget of their own, far larger than the token table.
        self.max_revocations = max_revocations or max(10 * max_entries, 10_000)
        self._tokens: OrderedDict[str, _Record] = OrderedDict()
        self._by_user: dict[str, set[str]] = {}
        # user -> (cutoff, keep until), oldest first (every cutoff is kept
        # max_lifetime_s, so insertion order is expiry order)
        self._cutoffs: OrderedDict[str, tuple[datetime, float]] = OrderedDict()
        self._markers: OrderedDict[str, float] = OrderedDict()  # revoked jti -> keep until
        self._expiries: list[tuple[float, str]] = []  # heap for lazy purging
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"InMemoryTokenStore(max_entries={self.max_entries}, tokens={len(self._tokens)})"

    # --- internals (called with the lock held) --------------------------------

    def _drop(self, jti: str, record: _Record) -> None:
        del self._tokens[jti]
        jtis = self._by_user.get(record.user_id)
        if jtis is not None:
            jtis.discard(jti)
            if not jtis:
                del self._by_user[record.user_id]

    def _mark(self, jti: str, until: float) -> None:
        self._markers[jti] = max(until, self._markers.get(jti, 0.0))
        self._markers.move_to_end(jti)
        while len(self._markers) > self.max_revocations:
            self._markers.popitem(last=False)

    def _push_expiry(self, expires: float, jti: str) -> None:
        heapq.heappush(self._expiries, (expires, jti))
        self._compact()

    def _compact(self) -> None:
        # Entries of evicted tokens and superseded expiries of re-stored ones
        # linger in the heap (lazy deletion); rebuild it when they outnumber
        # the live ones, so it stays O(tokens held) at O(1) amortised cost.
        if len(self._expiries) > 2 * len(self._tokens) + 64:
            self._expiries = [(r.expires, j) for j, r in self._tokens.items()]
            heapq.heapify(self._expiries)

    def _purge(self, now: float) -> None:
        heap = self._expiries
        while heap and heap[0][0] <= now:
            _, jti = heapq.heappop(heap)
            record = self._tokens.get(jti)
            if record is not None and record.expires <= now:
                self._drop(jti, record)
        self._compact()
        markers = self._markers
        while markers:
            jti, until = next(iter(markers.items()))
            if until > now:
                break
            del markers[jti]
        cutoffs = self._cutoffs
        while cutoffs:
            user, (_, keep_until) = next(iter(cutoffs.items()))
            if keep_until > now:
                break
            del cutoffs[user]

    def _live(self, jti: str, now: float) -> _Record | None:
        record = self._tokens.get(jti)
        if record is not None and record.expires <= now:
            self._drop(jti, record)
            return None
        return record

    def _cut(self, record: _Record, now: float) -> bool:
        cutoff = self._cutoffs.get(record.user_id)
        if cutoff is None:
            return False
        if cutoff[1] <= now:
            del self._cutoffs[record.user_id]
            return False
        return record.created_at <= cutoff[0]

    def _revoked(self, record: _Record, now: float) -> bool:
        return record.revoked or self._cut(record, now)

    def _snapshot(self, jti: str, record: _Record, now: float) -> StoredToken:
        revoked = self._revoked(record, now)
        return StoredToken(jti, record.user_id, record.created_at, record.expires_at, revoked)

    # --- the TokenStore protocol ------------------------------------------------

    async def store(self, jti: str, user_id: str, expires_at: datetime) -> StoredToken:
        """Store a token; returns it as stored (a re-store only extends its lifetime)."""
        now_dt = datetime.now(UTC)
        expires = validate_store(
            jti, user_id, expires_at, now=now_dt, max_lifetime_s=self.max_lifetime_s
        )
        now = now_dt.timestamp()
        with self._lock:
            if jti in self._markers and self._markers[jti] > now:
                raise ValueError(f"jti {jti!r} was revoked; a revoked jti cannot be stored again")
            existing = self._live(jti, now)
            if existing is not None:
                if existing.user_id != user_id:
                    raise ValueError(f"jti {jti!r} is already stored for another user")
                if self._revoked(existing, now):
                    raise ValueError(
                        f"jti {jti!r} was revoked; a revoked jti cannot be stored again"
                    )
                if expires > existing.expires_at:  # lifetimes only ever grow
                    existing.expires_at = expires
                    existing.expires = expires.timestamp()
                    self._push_expiry(existing.expires, jti)
                return self._snapshot(jti, existing, now)
            self._purge(now)
            record = _Record(user_id, now_dt, expires)
            self._tokens[jti] = record
            self._by_user.setdefault(user_id, set()).add(jti)
            self._push_expiry(record.expires, jti)
            while len(self._tokens) > self.max_entries:
                old_jti = next(iter(self._tokens))  # the oldest
                old = self._tokens[old_jti]
                self._drop(old_jti, old)
                if self._revoked(old, now):
                    # keep the revocation, or the jti could be stored afresh
                    self._mark(old_jti, old.expires)
            return self._snapshot(jti, record, now)

    async def get(self, jti: str) -> StoredToken | None:
        _check_id("jti", jti)
        now = time.time()
        with self._lock:
            record = self._live(jti, now)
            return None if record is None else self._snapshot(jti, record, now)

    async def revoke(self, jti: str, *, expires_at: datetime | None = None) -> bool:
        """Revoke ``jti``; an unknown one is remembered as revoked until ``expires_at``
        (default: ``max_lifetime_s`` from now) so it cannot be stored later.
        """
        _check_id("jti", jti)
        now = time.time()
        until = revocation_until(expires_at, now, self.max_lifetime_s)
        with self._lock:
            record = self._live(jti, now)
            if record is None:
                self._mark(jti, until)
                return False
            if self._revoked(record, now):
                return False
            record.revoked = True
            return True

    # The two checks below are the hot path. They take no lock: each reads
    # one dict entry and one record's fields, every one of which is replaced
    # whole by the writers, and they mutate nothing (purging is for writers).

    async def is_revoked(self, jti: str, *, user_id: str | None = None) -> bool:
        # user_id is not needed here: the record names its user, read at once.
        now = time.time()
        record = self._tokens.get(jti)
        if record is None or record.expires <= now:
            until = self._markers.get(jti)
            return until is not None and until > now
        if record.revoked:
            return True
        cutoff = self._cutoffs.get(record.user_id) if self._cutoffs else None
        return cutoff is not None and cutoff[1] > now and record.created_at <= cutoff[0]

    async def is_valid(self, jti: str, *, user_id: str | None = None) -> bool:
        now = time.time()
        record = self._tokens.get(jti)
        if record is None or record.expires <= now or record.revoked:
            return False
        cutoff = self._cutoffs.get(record.user_id) if self._cutoffs else None
        return cutoff is None or cutoff[1] <= now or record.created_at > cutoff[0]

    async def is_revoked_many(self, jtis: Iterable[str]) -> list[bool]:
        return [await self.is_revoked(jti) for jti in as_list(jtis)]

    async def revoke_all_for_user(self, user_id: str) -> int:
        _check_id("user_id", user_id)
        now_dt = datetime.now(UTC)
        now = now_dt.timestamp()
        with self._lock:
            self._purge(now)
            records = [
                record
                for record in (self._live(jti, now) for jti in list(self._by_user.get(user_id, ())))
                if record is not None and not self._revoked(record, now)
            ]
            # The cutoff first: the lock-free checks of other threads see it
            # before the first record is marked. It outlives every token
            # created before it (none lives longer than max_lifetime_s).
            self._cutoffs[user_id] = (now_dt, now + self.max_lifetime_s)
            self._cutoffs.move_to_end(user_id)
            while len(self._cutoffs) > self.max_revocations:
                # the user's tokens held here are marked below; dropping the
                # oldest cutoff forgets only the cutoff itself
                self._cutoffs.popitem(last=False)
            for record in records:
                record.revoked = True
            return len(records)

    async def count(self) -> int:
        with self._lock:
            self._purge(time.time())
            return len(self._tokens)

    async def health_check(self) -> HealthResult:
        """Always up: the store is this process's memory."""
        start = time.perf_counter()
        with self._lock:
            pass
        return HealthResult(ok=True, latency_ms=(time.perf_counter() - start) * 1000)

    async def aclose(self) -> None:
        with self._lock:
            self._tokens.clear()
            self._by_user.clear()
            self._cutoffs.clear()
            self._markers.clear()
            self._expiries.clear()

    async def revoked_before(self, user_id: str) -> datetime | None:
        """The user's "log out everywhere" cutoff, if one is in force."""
        cutoff = self._cutoffs.get(user_id)
        return cutoff[0] if cutoff and cutoff[1] > time.time() else None


def create(section: MemoryTokenSettings, settings: InfraSettings, **_: Any) -> InMemoryTokenStore:
    return InMemoryTokenStore(section.max_entries, max_lifetime_s=section.max_lifetime_s)


BACKEND = Backend(
    "tokens", "memory", MemoryTokenSettings, create, description="bounded in-process token store"
)
