"""RedisTokenStore under load on real Redis (standalone and a 3-master cluster):
load is never an outage, a full pool waits, and "log out everywhere" has no window."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from infrakit.errors import TokenStoreError
from infrakit.testing.contracts import soon
from infrakit.tokens import RedisTokenStore

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"

#: Hang protection only: a call that has to end by a timeout of its own.
NO_HANG_S = 60.0

#: 1,000 checks in flight at once: ten times redis-py's default pool of 100.
CONCURRENT_CHECKS = 1_000

Make = Callable[..., RedisTokenStore]


@pytest.fixture(params=["standalone", "cluster"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """``make(**options)``: a started store on standalone Redis or on the cluster,
    under a key prefix of the test's own, closed afterwards."""
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        url, prefix, cluster_mode = cluster.url, request.getfixturevalue("cluster_prefix"), True
    else:
        url, prefix, cluster_mode = REDIS_URL, request.getfixturevalue("redis_prefix"), False
    made: list[RedisTokenStore] = []

    def build(**options: Any) -> RedisTokenStore:
        options = {"key_prefix": prefix, "cluster": cluster_mode, **options}
        made.append(RedisTokenStore(url, **options))
        return made[-1]

    yield build
    for store in made:
        with contextlib.suppress(Exception):
            await store.aclose()


async def _tokens(store: RedisTokenStore, users: int, per_user: int) -> dict[str, bool]:
    """Store ``users * per_user`` tokens; revoke some directly and every token of
    some users; returns jti -> whether it must be valid."""
    expected: dict[str, bool] = {}
    for user in range(users):
        jtis = [f"u{user}-t{n}" for n in range(per_user)]
        await asyncio.gather(*(store.store(jti, f"user-{user}", soon(600)) for jti in jtis))
        expected.update(dict.fromkeys(jtis, True))
    for user in range(0, users, 4):  # every fourth user logs out everywhere
        await store.revoke_all_for_user(f"user-{user}")
        expected.update(dict.fromkeys((f"u{user}-t{n}" for n in range(per_user)), False))
    for jti in list(expected)[1::3]:  # and every third token is revoked on its own
        await store.revoke(jti)
        expected[jti] = False
    return expected


def _connections(store: RedisTokenStore) -> int:
    """The most connections the store holds to one Redis server."""
    client = store.client
    if store.cluster:
        return max(len(node._connections) for node in client.get_nodes())
    pool = client.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)


class TestConcurrentChecks:
    """1,000 checks at once: every one answered, every answer right."""

    @pytest.mark.parametrize("on_error", ["fail_closed", "fail_open"])
    async def test_thousand_concurrent_checks(self, make: Make, on_error: str) -> None:
        store = make(on_backend_error=on_error)
        await store.start()
        expected = await _tokens(store, users=8, per_user=25)  # 200 tokens, 125 revoked
        jtis = list(expected)
        users = {jti: f"user-{jti[1:].split('-')[0]}" for jti in jtis}
        calls = []
        for n in range(CONCURRENT_CHECKS):
            jti = jtis[n % len(jtis)]
            if n % 3 == 0:
                calls.append(store.is_valid(jti))
            elif n % 3 == 1:
                calls.append(store.is_valid(jti, user_id=users[jti]))
            else:
                calls.append(_negated(store.is_revoked(jti, user_id=users[jti])))
        async with asyncio.timeout(NO_HANG_S):
            answers = await asyncio.gather(*calls, return_exceptions=True)
        errors = [a for a in answers if isinstance(a, BaseException)]
        wrong = [
            n
            for n, answer in enumerate(answers)
            if not isinstance(answer, BaseException) and answer != expected[jtis[n % len(jtis)]]
        ]
        assert errors == [], f"{len(errors)} errors, the first: {errors[0]!r}"
        assert wrong == [], f"{len(wrong)} wrong answers"
        assert _connections(store) <= store.pool_size

    async def test_pipelined_checks_under_load(self, make: Make) -> None:
        store = make()
        expected = await _tokens(store, users=4, per_user=25)
        jtis = list(expected)
        async with asyncio.timeout(NO_HANG_S):
            batches = await asyncio.gather(*(store.is_revoked_many(jtis) for _ in range(200)))
        assert all(batch == [not expected[j] for j in jtis] for batch in batches)


async def _negated(check: Any) -> bool:
    return not await check


class TestPoolExhaustion:
    """A full pool is load: calls wait their turn; a wait past its bound is a
    clear error, never an outage answered permissively."""

    async def test_a_tiny_pool_waits_and_succeeds(self, make: Make) -> None:
        store = make(pool_size=2, on_backend_error="fail_open")
        await store.store("j", "u", soon())
        await store.store("r", "u", soon())
        await store.revoke("r")
        async with asyncio.timeout(NO_HANG_S):
            answers = await asyncio.gather(
                *(store.is_valid("j" if n % 2 else "r", user_id="u") for n in range(400))
            )
        assert answers == [n % 2 == 1 for n in range(400)]
        assert _connections(store) <= 2

    @pytest.mark.parametrize("on_error", ["fail_closed", "fail_open"])
    async def test_a_wait_past_its_bound_is_a_clear_error(
        self, make: Make, on_error: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = make(pool_size=1, pool_timeout_s=0.05, on_backend_error=on_error)
        await store.store("r", "u", soon())
        await store.revoke("r")
        release = asyncio.Event()
        # one call in flight that holds the only place until the test lets it go
        holder = asyncio.create_task(store._call("holding the pool", release.wait))
        await asyncio.sleep(0)
        try:
            with caplog.at_level(logging.WARNING, logger="infrakit.tokens"):
                for check in (store.is_valid("r"), store.is_valid("r", user_id="u")):
                    with pytest.raises(TokenStoreError) as caught:
                        await check
                    message = str(caught.value)
                    assert "pool exhausted" in message
                    assert "waited 0." in message
                    assert "raise tokens.pool_size" in message
                with pytest.raises(TokenStoreError, match="pool exhausted"):
                    await store.is_revoked_many(["r"])
            assert not [r for r in caplog.records if "answered" in r.getMessage()]
        finally:
            release.set()
            await holder
        assert await store.is_valid("r") is False  # the place is free again

    async def test_redis_py_pool_bound_is_not_an_outage(self, make: Make) -> None:
        store = make(pool_size=1, pool_timeout_s=0.05, on_backend_error="fail_open")
        await store.store("r", "u", soon())
        await store.revoke("r")
        # someone holds the only connection through the public client, outside the store's gate
        client = store.client
        if store.cluster:
            nodes = client.get_nodes()
            held = [node.acquire_connection() for node in nodes]
            try:
                with pytest.raises(TokenStoreError, match="pool exhausted"):
                    await store.is_valid("r")
            finally:
                for node, connection in zip(nodes, held, strict=True):
                    node.release(connection)
        else:
            connection = await client.connection_pool.get_connection()
            try:
                with pytest.raises(TokenStoreError, match="pool exhausted"):
                    await store.is_valid("r")
            finally:
                await client.connection_pool.release(connection)
        assert await store.is_valid("r") is False


class TestRevokeAllWindow:
    """A check that starts once the cutoff is written answers revoked, even while
    revoke_all_for_user is still marking the user's tokens."""

    async def test_checks_after_the_cutoff_see_it(self, make: Make) -> None:
        # 10,000 checks queue for 50 connections here: a long wait is load, and
        # this test is about the answers, so the wait is bounded only as a hang
        store = make(pool_timeout_s=NO_HANG_S)
        user, count = "many-sessions", 5_000
        jtis = [f"s{n}" for n in range(count)]
        for start in range(0, count, 500):
            await asyncio.gather(
                *(store.store(j, user, soon(600)) for j in jtis[start : start + 500])
            )
        assert await store.revoked_before(user) is None
        async with asyncio.timeout(NO_HANG_S):
            revoking = asyncio.create_task(store.revoke_all_for_user(user))
            # the cutoff is written by the first round trip of revoke_all; once a
            # read has seen it, every check started from here on must see it
            while await store.revoked_before(user) is None:
                assert not revoking.done() or revoking.exception() is None
            valid, revoked = await asyncio.gather(
                asyncio.gather(*(store.is_valid(j, user_id=user) for j in reversed(jtis))),
                asyncio.gather(*(store.is_revoked(j, user_id=user) for j in reversed(jtis))),
            )
            assert await revoking == count
        assert not any(valid), f"{sum(valid)} of {count} checks answered valid"
        assert all(revoked), f"{revoked.count(False)} of {count} checks answered not revoked"
