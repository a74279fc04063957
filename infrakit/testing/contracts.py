"""Backend contract suites: every backend of a protocol passes the same tests.

Subclass a contract and provide one fixture, ``make_logger``, an async
factory that returns a fresh, empty backend (the contract starts it with
``start()`` and closes it with ``aclose()``)::

    class TestMyAuditLogger(AuditLoggerContract):
        @pytest.fixture
        def make_logger(self, tmp_path):
            async def make():
                return MyAuditLogger(tmp_path / "audit")
            return make

Requires pytest and pytest-asyncio (the ``dev`` extra has both).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from infrakit.audit.base import AuditEntry, AuditFilter, AuditLogger
from infrakit.errors import AuditError
from infrakit.logging.context import request_context
from infrakit.tokens.base import TokenStore

__all__ = ["AuditLoggerContract", "TokenStoreContract"]

MakeLogger = Callable[[], Awaitable[AuditLogger]]

_T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def entry(n: int, **fields: object) -> AuditEntry:
    """A deterministic entry; ``n`` orders timestamps (one second apart)."""
    values: dict[str, object] = {
        "id": f"e-{n:05d}",
        "timestamp": _T0 + timedelta(seconds=n),
        "action": "login" if n % 2 else "logout",
        "resource_type": "session",
        "result": "success",
        "user_id": f"user-{n % 3}",
        "resource_id": f"r-{n % 4}",
    }
    values.update(fields)
    return AuditEntry(**values)  # type: ignore[arg-type]


@pytest.mark.asyncio
class AuditLoggerContract:
    """What every :class:`~infrakit.audit.AuditLogger` backend must do."""

    @pytest.fixture
    async def logger(self, make_logger: MakeLogger) -> AsyncIterator[AuditLogger]:
        instance = await make_logger()
        await instance.start()
        try:
            yield instance
        finally:
            await instance.aclose()

    async def test_log_action_fills_id_time_and_context(self, logger: AuditLogger) -> None:
        before = datetime.now(UTC)
        with request_context("req-contract"):
            stored = await logger.log_action("login", "session", user_id="u1", details={"ok": True})
        assert stored.timestamp.tzinfo is UTC
        assert before <= stored.timestamp <= datetime.now(UTC)
        assert stored.request_id == "req-contract"
        assert len(stored.id) == 36
        assert await logger.query(AuditFilter(user_id="u1")) == [stored]

    async def test_entries_come_back_exactly(self, logger: AuditLogger) -> None:
        original = entry(
            1,
            details={"nested": {"list": [1, 2.5, None, "ü✓"], "deep": {"a": [{"b": False}]}}},
            ip_address="203.0.113.9",
            user_agent="agent/1.0 (ünïcode)",
            request_id="r-1",
            trace_id="0" * 31 + "1",
        )
        stored = await logger.log(original)
        (back,) = await logger.query()
        assert back == stored
        assert back.details == original.details
        assert back.timestamp == original.timestamp  # microseconds and UTC kept
        assert back.to_json() == stored.to_json()

    async def test_query_filters_and_orders_newest_first(self, logger: AuditLogger) -> None:
        await logger.log_many([entry(n) for n in range(12)])
        everything = await logger.query(AuditFilter(limit=100))
        assert [e.id for e in everything] == [f"e-{n:05d}" for n in reversed(range(12))]
        found = await logger.query(AuditFilter(user_id="user-1", action="login"))
        assert [e.id for e in found] == ["e-00007", "e-00001"]
        window = AuditFilter(
            start_time=_T0 + timedelta(seconds=3), end_time=_T0 + timedelta(seconds=6)
        )
        assert [e.id for e in await logger.query(window)] == ["e-00005", "e-00004", "e-00003"]
        resource = AuditFilter(resource_type="session", resource_id="r-2", result="success")
        assert [e.id for e in await logger.query(resource)] == ["e-00010", "e-00006", "e-00002"]
        assert await logger.count(AuditFilter(user_id="user-0")) == 4
        assert await logger.count() == 12

    async def test_limit_and_offset(self, logger: AuditLogger) -> None:
        await logger.log_many([entry(n) for n in range(10)])
        page = await logger.query(AuditFilter(limit=3, offset=2))
        assert [e.id for e in page] == ["e-00007", "e-00006", "e-00005"]
        assert await logger.count(AuditFilter(limit=3, offset=2)) == 10

    async def test_same_timestamp_orders_by_id_descending(self, logger: AuditLogger) -> None:
        await logger.log_many([entry(1, id=name, timestamp=_T0) for name in ("b", "c", "a")])
        assert [e.id for e in await logger.query()] == ["c", "b", "a"]

    async def test_chain_verifies(self, logger: AuditLogger) -> None:
        await logger.log_many([entry(n) for n in range(5)])
        await logger.log_action("export", "report", result="failure")
        result = await logger.verify()
        assert result.ok, result
        assert result.checked == 6
        assert result.first_bad_id is None

    async def test_empty_log(self, logger: AuditLogger) -> None:
        assert await logger.query() == []
        assert await logger.count() == 0
        assert (await logger.verify()).ok

    async def test_concurrent_writers_lose_nothing(self, logger: AuditLogger) -> None:
        async def write(task: int) -> None:
            for i in range(10):
                await logger.log_action("write", "doc", user_id=f"t{task}", details={"i": i})

        await asyncio.gather(*(write(t) for t in range(8)))
        assert await logger.count() == 80
        assert await logger.count(AuditFilter(user_id="t3")) == 10
        assert (await logger.verify()).ok

    async def test_an_entry_id_is_stored_once(self, logger: AuditLogger) -> None:
        # a retry (after an "outcome unknown" error) must not duplicate the entry
        first = await logger.log(entry(1))
        assert await logger.log(entry(1)) == first
        assert await logger.log_many([entry(1), entry(2), entry(2)]) == [
            first,
            *[await logger.log(entry(2))] * 2,
        ]
        assert await logger.count() == 2
        with pytest.raises(AuditError, match="already stored with other content"):
            await logger.log(entry(1, result="failure"))
        assert await logger.count() == 2
        assert (await logger.verify()).ok

    async def test_concurrent_callers_get_their_own_entries(self, logger: AuditLogger) -> None:
        """Each concurrent call returns its own entries as stored; a batch stays in one piece."""

        async def single(n: int) -> list[AuditEntry]:
            return [await logger.log_action("one", "doc", resource_id=str(n))]

        async def batch(n: int) -> list[AuditEntry]:
            return await logger.log_many([entry(1000 + n * 10 + i) for i in range(5)])

        results = await asyncio.gather(*(batch(n) if n % 4 == 0 else single(n) for n in range(40)))
        stored = [e for result in results for e in result]
        back = {e.id: e for e in await logger.query(AuditFilter(limit=1000))}
        assert len(back) == len(stored) == 30 + 10 * 5
        assert all(back[e.id] == e for e in stored)
        if stored[0].hash is not None:  # chained: one chain, each batch a run of it
            for result in results:
                assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(result))
            after = {e.prev_hash: e for e in stored}
            first = [e for e in stored if e.prev_hash not in {s.hash for s in stored}]
            assert len(first) == 1
            walked, at = 0, first[0]
            while True:
                walked += 1
                following = after.get(at.hash)
                if following is None:
                    break
                at = following
            assert walked == len(stored)
        assert (await logger.verify()).ok

    async def test_retries_beside_new_writes(self, logger: AuditLogger) -> None:
        """Retries of stored entries at the same moment as new writes (one group, where
        writes are grouped): a retry is answered with the stored entry, an entry logged
        twice at once is stored once, and no new write fails because of a retry."""
        first = await logger.log(entry(1))
        outcomes = await asyncio.gather(
            logger.log(entry(1)),  # a retry of a stored entry
            logger.log_action("fresh", "doc", resource_id="a"),
            logger.log_many([entry(2), entry(1)]),  # part new, part stored
            logger.log(entry(3)),
            logger.log(entry(3)),  # the same new entry twice at once
            logger.log(entry(1, result="failure")),  # a stored id, other content
            logger.log_action("fresh", "doc", resource_id="b"),
            return_exceptions=True,
        )
        assert outcomes[0] == first
        two = outcomes[2]
        assert isinstance(two, list)
        assert two[1] == first
        assert two[0].id == entry(2).id
        assert isinstance(outcomes[3], AuditEntry)
        assert outcomes[4] == outcomes[3]
        assert isinstance(outcomes[5], AuditError)
        assert "already stored with other content" in str(outcomes[5])
        for n in (1, 6):
            fresh = outcomes[n]
            assert isinstance(fresh, AuditEntry), fresh
            assert fresh.action == "fresh"
        back = {e.id: e for e in await logger.query(AuditFilter(limit=100))}
        assert len(back) == 5  # 1, 2, 3 and the two fresh ones
        assert back[entry(2).id] == two[0]
        assert back[entry(3).id] == outcomes[3]
        assert (await logger.verify()).ok

    async def test_append_only_interface(self, logger: AuditLogger) -> None:
        for name in ("update", "delete", "remove", "clear", "truncate"):
            assert not hasattr(logger, name)

    async def test_bad_input_is_value_error(self, logger: AuditLogger) -> None:
        with pytest.raises(ValueError, match="unexpected field"):
            await logger.log_action("a", "b", colour="red")
        with pytest.raises(ValueError, match="non-empty"):
            await logger.log_action("", "b")
        with pytest.raises(ValueError, match="AuditEntry"):
            await logger.log("not an entry")  # type: ignore[arg-type]


MakeStore = Callable[[], Awaitable["TokenStore"]]

#: How long tasks get to end after being stopped or cancelled; generous, for
#: busy machines: a task that does not end at all is what the tests catch.
_SETTLE_S = 30.0


def soon(seconds: float = 300) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def _stop_for_good(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel again and again tasks that ignored a cancellation, until they end."""
    for _ in range(10_000):
        if all(task.done() for task in tasks):
            return
        for task in tasks:
            task.cancel()
        await asyncio.sleep(0.001)


@pytest.mark.asyncio
class TokenStoreContract:
    """What every :class:`~infrakit.tokens.TokenStore` backend must do.

    Provide ``make_store``: an async factory returning a fresh, empty store
    (its own key prefix for shared backends), accepting tokens of up to one
    day.
    """

    @pytest.fixture
    async def store(self, make_store: MakeStore) -> AsyncIterator[TokenStore]:
        instance = await make_store()
        await instance.start()
        try:
            yield instance
        finally:
            await instance.aclose()

    async def test_is_a_token_store(self, store: TokenStore) -> None:
        assert isinstance(store, TokenStore)

    async def test_store_get_round_trip(self, store: TokenStore) -> None:
        expires = soon()
        before = datetime.now(UTC)
        await store.store("j1", "alice", expires)
        token = await store.get("j1")
        assert token is not None
        assert (token.jti, token.user_id, token.revoked) == ("j1", "alice", False)
        assert token.expires_at == expires
        assert before <= token.created_at <= datetime.now(UTC)
        assert await store.is_valid("j1")
        assert not await store.is_revoked("j1")
        assert await store.count() == 1

    @pytest.mark.parametrize(
        ("jti", "user_id", "expires", "message"),
        [
            ("", "u", "future", "jti cannot be empty"),
            ("   ", "u", "future", "jti cannot be empty"),
            ("j", "", "future", "user_id cannot be empty"),
            ("j", " \t", "future", "user_id cannot be empty"),
            ("j", "u", "past", "expires_at must be in the future"),
            ("j", "u", "naive", "timezone-aware"),
            ("j", "u", "too_far", "max_lifetime_s"),
        ],
    )
    async def test_store_validation(
        self, store: TokenStore, jti: str, user_id: str, expires: str, message: str
    ) -> None:
        when = {
            "future": soon(),
            "past": datetime.now(UTC) - timedelta(seconds=1),
            "naive": datetime.now() + timedelta(hours=1),
            "too_far": datetime.now(UTC) + timedelta(days=3650),
        }[expires]
        with pytest.raises(ValueError, match=message):
            await store.store(jti, user_id, when)
        assert await store.count() == 0

    async def test_revoke(self, store: TokenStore) -> None:
        await store.store("j1", "alice", soon())
        assert await store.revoke("j1") is True
        assert await store.revoke("j1") is False  # idempotent
        assert not await store.is_valid("j1")
        assert await store.is_revoked("j1")
        token = await store.get("j1")
        assert token is not None
        assert token.revoked

    async def test_unknown_tokens_are_not_valid(self, store: TokenStore) -> None:
        assert not await store.is_valid("never-stored")
        assert not await store.is_revoked("never-stored")
        assert await store.get("never-stored") is None

    async def test_revoking_an_unknown_jti_blocks_it(self, store: TokenStore) -> None:
        assert await store.revoke("ghost") is False
        assert await store.revoke("ghost") is False
        assert await store.is_revoked("ghost")
        assert not await store.is_valid("ghost")
        with pytest.raises(ValueError, match="revoked"):
            await store.store("ghost", "alice", soon())
        assert not await store.is_valid("ghost")

    async def test_expired_tokens_are_gone(self, store: TokenStore) -> None:
        expires = datetime.now(UTC) + timedelta(milliseconds=300)
        await store.store("short", "alice", expires)
        # valid until it expires (a slow machine may already be past that)
        assert await store.is_valid("short") or datetime.now(UTC) >= expires
        await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
        assert not await store.is_valid("short")
        assert await store.get("short") is None

    async def test_revoke_all_for_user(self, store: TokenStore) -> None:
        for n in range(5):
            await store.store(f"a{n}", "alice", soon())
        await store.store("b0", "bob", soon())
        await store.revoke("a0")
        assert await store.revoke_all_for_user("alice") == 4  # a0 was already revoked
        assert await store.revoke_all_for_user("alice") == 0
        assert not any([await store.is_valid(f"a{n}") for n in range(5)])
        assert all([await store.is_revoked(f"a{n}") for n in range(5)])
        assert await store.is_valid("b0")
        assert await store.revoke_all_for_user("nobody") == 0
        await asyncio.sleep(0.002)
        await store.store("a-new", "alice", soon())  # logging in again afterwards works
        assert await store.is_valid("a-new")

    async def test_a_revoked_token_cannot_be_stored_again(self, store: TokenStore) -> None:
        await store.store("j", "alice", soon())
        await store.revoke("j")
        with pytest.raises(ValueError, match="revoked"):
            await store.store("j", "alice", soon())
        assert not await store.is_valid("j")

    async def test_lifetimes_only_grow(self, store: TokenStore) -> None:
        long, short = soon(600), soon(60)
        await store.store("j", "alice", long)
        await store.store("j", "alice", short)
        token = await store.get("j")
        assert token is not None
        assert token.expires_at == long

    async def test_a_jti_belongs_to_one_user(self, store: TokenStore) -> None:
        await store.store("j", "alice", soon())
        with pytest.raises(ValueError, match="another user"):
            await store.store("j", "mallory", soon())
        token = await store.get("j")
        assert token is not None
        assert token.user_id == "alice"

    async def test_checks_given_the_user_answer_alike(self, store: TokenStore) -> None:
        """``user_id=`` never changes an answer: not for the token's own user,
        not for another user, not for an unknown or revoked token."""
        await store.store("own", "alice", soon())
        await store.store("cut", "bob", soon())
        await store.store("gone", "alice", soon())
        await store.revoke("gone")
        await store.revoke("ghost")
        assert await store.revoke_all_for_user("bob") == 1
        expected = {"own": True, "cut": False, "gone": False, "ghost": False, "never": False}
        for jti, valid in expected.items():
            for user in (None, "alice", "bob", "mallory"):
                assert await store.is_valid(jti, user_id=user) is valid, (jti, user)
                revoked = await store.is_revoked(jti, user_id=user)
                assert revoked is (jti in ("cut", "gone", "ghost")), (jti, user)

    async def test_ids_with_odd_characters(self, store: TokenStore) -> None:
        for user in ("{user}", "a}b{c", "ünï cödé", "x%7By"):
            await store.store(f"jti-{user}", user, soon())
            assert await store.revoke_all_for_user(user) == 1
            assert not await store.is_valid(f"jti-{user}")

    async def test_concurrent_store_and_revoke_all(self, store: TokenStore) -> None:
        """50 tasks store tokens for one user while another revokes all in a loop."""
        stored: list[str] = []
        born_revoked = 0  # stored while a revoke-all ran: revoked from the start
        revoked_total = 0
        stop = asyncio.Event()

        async def writer(task: int) -> None:
            nonlocal born_revoked
            for i in range(10):
                jti = f"c{task}-{i}"
                token = await store.store(jti, "carol", soon())
                stored.append(jti)
                born_revoked += token.revoked
                await asyncio.sleep(0)

        async def revoker() -> None:
            nonlocal revoked_total
            while not stop.is_set():
                revoked_total += await store.revoke_all_for_user("carol")
                await asyncio.sleep(0)

        task = asyncio.create_task(revoker())
        try:
            await asyncio.gather(*(writer(t) for t in range(50)))
        finally:
            stop.set()  # a failed writer must not leave the revoker running
            if not task.done():
                await asyncio.wait([task], timeout=_SETTLE_S)
            task.cancel()
        await task
        revoked_total += await store.revoke_all_for_user("carol")  # the last one
        # every token stored before the last revoke-all is revoked ...
        assert len(stored) == 500
        for jti in stored:
            assert not await store.is_valid(jti), jti
            assert await store.is_revoked(jti), jti
        # ... and the counts add up: each was revoked exactly once
        assert revoked_total + born_revoked == len(stored)
        assert await store.count() == len(stored)

    async def test_cancelled_calls_end_and_the_store_still_works(self, store: TokenStore) -> None:
        """Bursts of calls cancelled mid-flight end with CancelledError and leave
        nothing running; afterwards every answer is still right."""
        for n in range(100):
            await store.store(f"k{n}", "erin", soon())
        await store.revoke("k0")
        this_task = asyncio.current_task()
        before = {t for t in asyncio.all_tasks() if t is not this_task}

        async def busy(burst: int, n: int) -> None:
            # loops until cancelled: a swallowed cancellation would keep it going
            for i in itertools.count():
                # few revoke-alls: on a cluster each sends up to 64 scripts at once
                kind = 0 if n % 20 == 0 else 1 + n % 4
                if kind == 0:
                    await store.revoke_all_for_user("frank")
                elif kind == 1:
                    await store.is_valid(f"k{i % 100}")
                elif kind == 2:
                    await store.is_revoked(f"k{i % 100}")
                elif kind == 3:
                    await store.store(f"f{burst}-{n}-{i}", "frank", soon())
                else:
                    await store.get(f"k{i % 100}")
                await asyncio.sleep(0)

        for burst in range(6):
            tasks = [asyncio.create_task(busy(burst, n)) for n in range(40)]
            for _ in range(burst * 3 + 1):  # cancel at a different point each burst
                await asyncio.sleep(0)
            await asyncio.sleep(0.005 * burst)
            for task in tasks:
                task.cancel()
            done, pending = await asyncio.wait(tasks, timeout=_SETTLE_S)
            await _stop_for_good(pending)  # so a failure here cannot hang the run
            assert not pending, f"{len(pending)} of {len(tasks)} cancelled tasks kept running"
            errors = [t.exception() for t in done if not t.cancelled()]
            assert not errors, errors  # ended by the cancellation, not by an error
        # nothing keeps running: a driver's own housekeeping (a node
        # disconnecting in the background) may take a moment, but ends
        leftover = {t for t in asyncio.all_tasks() if t is not this_task} - before
        if leftover:
            await asyncio.wait(leftover, timeout=_SETTLE_S)
        assert not [t for t in leftover if not t.done()]
        # the store answers right afterwards
        assert [await store.is_valid(f"k{n}") for n in range(100)] == [False] + [True] * 99
        assert await store.is_revoked("k0")
        assert not await store.is_revoked("k1")
        token = await store.get("k5")
        assert token is not None
        assert (token.user_id, token.revoked) == ("erin", False)
        await store.store("after", "erin", soon())
        assert await store.is_valid("after")
        assert await store.revoke_all_for_user("erin") == 100

    async def test_is_revoked_many(self, store: TokenStore) -> None:
        """One answer per jti, in order, each what ``is_revoked`` answers: stored,
        revoked, unknown, revoked before it was stored, logged out everywhere,
        expired, repeated."""
        many = getattr(store, "is_revoked_many", None)
        if many is None:
            pytest.skip("optional method is_revoked_many not provided by this backend")
        assert await many([]) == []
        short = datetime.now(UTC) + timedelta(milliseconds=300)
        await store.store("short", "u", short)
        await store.store("x", "u", soon())
        await store.store("y", "u", soon())
        await store.revoke("y")
        await store.revoke("ghost")
        for n in range(2):
            await store.store(f"a{n}", "alice", soon())
        await store.revoke_all_for_user("alice")
        assert await many(["x", "y", "z"]) == [False, True, False]
        assert await many(iter(["y", "x", "y", "y"])) == [True, False, True, True]
        await asyncio.sleep(max(0.0, (short - datetime.now(UTC)).total_seconds()) + 0.05)
        mixed = ["x", "y", "z", "ghost", "a0", "a1", "short", "y", "x", "z"]
        assert await many(mixed) == [
            False,
            True,
            False,
            True,
            True,
            True,
            False,
            True,
            False,
            False,
        ]
        assert await many(mixed) == [await store.is_revoked(jti) for jti in mixed]
        with pytest.raises(ValueError, match="jti cannot be empty"):
            await many(["x", ""])

    async def test_is_revoked_many_of_thousands(self, store: TokenStore) -> None:
        """A batch larger than any backend's chunk of it (and one that ends on a
        chunk's edge) answers every jti in its place."""
        many = getattr(store, "is_revoked_many", None)
        if many is None:
            pytest.skip("optional method is_revoked_many not provided by this backend")
        size = 2_500
        edges = {0, 999, 1000, 1001, 1999, 2000, 2001, size - 1}
        revoked = {n for n in range(size) if n % 7 == 0} | edges
        stored = [n for n in range(size) if n % 5 == 0]
        for start in range(0, len(stored), 50):
            await asyncio.gather(
                *(store.store(f"b{n}", f"user{n % 3}", soon()) for n in stored[start : start + 50])
            )
        for n in sorted(revoked):
            await store.revoke(f"b{n}")
        jtis = [f"b{n}" for n in range(size)]
        assert await many(jtis) == [n in revoked for n in range(size)]
        assert await many(jtis[:2000]) == [n in revoked for n in range(2000)]
        assert await many(jtis[::-1]) == [n in revoked for n in reversed(range(size))]
