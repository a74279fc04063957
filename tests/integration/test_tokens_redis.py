"""RedisTokenStore against real Redis: standalone, a 3-master cluster, Sentinel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as redis

from infrakit.errors import TokenStoreError
from infrakit.testing.contracts import MakeStore, TokenStoreContract, soon
from infrakit.tokens import RedisTokenStore

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"

#: Outer bound for calls that must end by a timeout of their own; generous, so
#: a busy machine never fails it: only a call that hangs does.
NO_HANG_S = 30.0

Stores = Callable[..., RedisTokenStore]


@pytest.fixture
async def stores() -> AsyncIterator[Stores]:
    """``stores(url, **options)``: a RedisTokenStore that is closed after the test,
    whatever the test did."""
    made: list[RedisTokenStore] = []

    def make(url: str, **options: Any) -> RedisTokenStore:
        made.append(RedisTokenStore(url, **options))
        return made[-1]

    yield make
    for store in made:
        with contextlib.suppress(Exception):
            await store.aclose()


class TestRedisStandalone(TokenStoreContract):
    """RedisTokenStore on the standalone server keeps the contract."""

    @pytest.fixture
    def make_store(self, redis_prefix: str) -> MakeStore:
        async def make() -> RedisTokenStore:
            store = RedisTokenStore(REDIS_URL, key_prefix=redis_prefix, max_lifetime_s=86_400)
            await store.start()
            return store

        return make


class TestRedisCluster(TokenStoreContract):
    """RedisTokenStore on a 3-master Redis Cluster keeps the contract."""

    @pytest.fixture
    def make_store(self, redis_cluster: Any, cluster_prefix: str) -> MakeStore:
        async def make() -> RedisTokenStore:
            store = RedisTokenStore(
                redis_cluster.url, key_prefix=cluster_prefix, cluster=True, max_lifetime_s=86_400
            )
            await store.start()
            return store

        return make

    async def test_user_keys_share_a_slot(self, redis_cluster: Any, cluster_prefix: str) -> None:
        from redis.crc import key_slot

        store = RedisTokenStore(redis_cluster.url, key_prefix=cluster_prefix, cluster=True)
        for user in ("alice", "{odd}", "b}o{b"):
            assert key_slot(store.user_key(user).encode()) == key_slot(
                store.cutoff_key(user).encode()
            )
        slots = {key_slot(store.user_key(f"user{n}").encode()) for n in range(50)}
        assert len(slots) > 10  # users spread over the cluster
        await store.aclose()

    async def test_cluster_against_a_standalone_server(self, stores: Stores) -> None:
        """``tokens.cluster: true`` against a plain Redis is a TokenStoreError
        saying so (redis-py's RedisClusterException is not a RedisError)."""
        store = stores(REDIS_URL, cluster=True, connect_timeout_s=5)
        with pytest.raises(TokenStoreError) as caught:
            await store.start()
        assert "not a Redis Cluster node" in str(caught.value)
        with pytest.raises(TokenStoreError):
            await store.is_revoked("j")
        health = await store.health_check()
        assert not health.ok
        assert health.error is not None
        assert "Cluster mode is not enabled" in health.error


class TestRedisSentinel(TokenStoreContract):
    """RedisTokenStore through a Sentinel URL keeps the contract."""

    @pytest.fixture
    def make_store(self, redis_sentinel: Any, redis_prefix: str) -> MakeStore:
        async def make() -> RedisTokenStore:
            store = RedisTokenStore(
                redis_sentinel.url, key_prefix=redis_prefix, max_lifetime_s=86_400
            )
            await store.start()
            return store

        return make


class TestRedisTLS(TokenStoreContract):
    """RedisTokenStore over rediss:// (TLS, verified against a test CA) keeps the contract."""

    @pytest.fixture
    def make_store(self, redis_tls: Any) -> MakeStore:
        prefix = f"infrakit:test:{uuid.uuid4().hex[:12]}:"

        async def make() -> RedisTokenStore:
            # The default timeouts: the contract's burst of 50 first connections
            # (50 TLS handshakes at once) is bounded by connect_timeout_s.
            store = RedisTokenStore(redis_tls.url, key_prefix=prefix, max_lifetime_s=86_400)
            await store.start()
            return store

        return make

    async def test_a_burst_of_connections_builds_one_tls_context(
        self, redis_tls: Any, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """redis-py builds an SSLContext per connection, each reading the system
        CA bundle on the event loop: 50 new connections at once blocked the loop
        for 1-7 s here, and connects timed out. The store's pool shares one."""
        built: list[ssl.SSLContext] = []
        create = ssl.create_default_context

        def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
            built.append(create(*args, **kwargs))
            return built[-1]

        monkeypatch.setattr(ssl, "create_default_context", counting)
        store = RedisTokenStore(redis_tls.url, key_prefix=redis_prefix, max_lifetime_s=86_400)
        await store.start()
        try:
            await asyncio.gather(*(store.store(f"j{n}", "u", soon()) for n in range(50)))
            pool = store.client.connection_pool
            assert len(pool._available_connections) + len(pool._in_use_connections) > 1
        finally:
            await store.aclose()
        assert len(built) == 1


class TestKeysAndTTLs:
    """Every key the store writes expires; TTLs end at expires_at and only grow."""

    async def test_no_key_without_expiry(self, stores: Stores, redis_prefix: str) -> None:
        store = stores(REDIS_URL, key_prefix=redis_prefix, max_lifetime_s=86_400)
        for n in range(20):
            await store.store(f"j{n}", f"user{n % 3}", soon(60 + n))
        await store.revoke("j1")
        await store.revoke("unknown-jti")
        await store.revoke_all_for_user("user2")
        keys = [k async for k in store.client.scan_iter(match=f"{redis_prefix}*")]
        assert len(keys) >= 20 + 3 + 1
        ttls = {k: await store.client.ttl(k) for k in keys}
        assert all(ttl > 0 for ttl in ttls.values()), ttls
        assert 1 <= ttls[store.token_key("j0")] <= 60

    async def test_ttl_is_ceil_seconds_and_never_shrinks(
        self, stores: Stores, redis_prefix: str
    ) -> None:
        store = stores(REDIS_URL, key_prefix=redis_prefix)
        await store.store("j", "u", datetime.now(UTC) + timedelta(seconds=100.2))
        assert await store.client.ttl(store.token_key("j")) == 101
        await store.store("j", "u", datetime.now(UTC) + timedelta(seconds=10))
        assert await store.client.ttl(store.token_key("j")) >= 100
        assert await store.client.ttl(store.user_key("u")) >= 100

    async def test_one_round_trip_per_check(self, stores: Stores, own_redis: Any) -> None:
        # a server of the test's own: nobody else's commands in the counts
        store = stores(own_redis.url)
        await store.store("j", "u", soon())
        monitor = redis.Redis.from_url(own_redis.url, decode_responses=True)
        try:
            before = (await monitor.info("commandstats")).get("cmdstat_hget", {}).get("calls", 0)
            total_before = (await monitor.info("stats"))["total_commands_processed"]
            for _ in range(10):
                assert not await store.is_revoked("j")
            after = (await monitor.info("commandstats"))["cmdstat_hget"]["calls"]
            total_after = (await monitor.info("stats"))["total_commands_processed"]
        finally:
            await monitor.aclose()
        assert after - before == 10
        # 10 HGETs plus the two INFO calls of this test itself, nothing else
        assert total_after - total_before == 10 + 2

    async def test_a_check_given_the_user_sends_two_reads_in_one_pipeline(
        self, stores: Stores, own_redis: Any
    ) -> None:
        store = stores(own_redis.url)
        await store.store("j", "u", soon())
        monitor = redis.Redis.from_url(own_redis.url, decode_responses=True)
        try:
            total_before = (await monitor.info("stats"))["total_commands_processed"]
            for _ in range(10):
                assert await store.is_valid("j", user_id="u")
            stats = await monitor.info("commandstats")
            total_after = (await monitor.info("stats"))["total_commands_processed"]
        finally:
            await monitor.aclose()
        # the token's HMGET and the user's cutoff GET, written together (one
        # pipeline, one round trip); nothing else but this test's INFO calls
        assert stats["cmdstat_hmget"]["calls"] >= 10
        assert total_after - total_before == 10 * 2 + 2


async def _command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command so far, and ``total``: every command the server ran
    (the commands scripts ran, and the INFO calls that read them except this
    one, included)."""
    stats = await client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}
    calls["total"] = int((await client.info("stats"))["total_commands_processed"])
    return calls


class TestManyChecks:
    """``is_revoked_many`` on one server: one script per 1,000 jtis, right answers
    however the call ends."""

    async def test_one_script_per_thousand_jtis(self, stores: Stores, own_redis: Any) -> None:
        store = stores(own_redis.url)
        await store.store("j10", "u", soon())
        for n in (10, 999, 1000, 2499):
            await store.revoke(f"j{n}")
        assert await store.is_revoked_many(["warm"]) == [False]  # the script is loaded
        jtis = [f"j{n}" for n in range(2500)]
        monitor = redis.Redis.from_url(own_redis.url, decode_responses=True)
        try:
            before = await _command_calls(monitor)
            assert await store.is_revoked_many([]) == []  # sends nothing
            answers = await store.is_revoked_many(jtis)
            after = await _command_calls(monitor)
        finally:
            await monitor.aclose()
        assert answers == [n in (10, 999, 1000, 2499) for n in range(2500)]
        assert after["evalsha"] - before["evalsha"] == 3
        # the server counts the commands a script runs: one HGET per key
        assert after["hget"] - before["hget"] == 2500
        # three scripts, their reads and the two INFO calls of the second count
        assert after["total"] - before["total"] == 3 + 2500 + 2

    async def test_a_user_who_may_not_run_scripts(self, stores: Stores, own_redis: Any) -> None:
        """An ACL user that may read but not run scripts (a service that only
        checks tokens) gets its answers from a pipeline of HGETs."""
        admin = stores(own_redis.url)
        await admin.store("kept", "u", soon())
        await admin.store("gone", "u", soon())
        await admin.revoke("gone")
        raw = redis.Redis.from_url(own_redis.url)
        try:
            await raw.acl_setuser(
                "checker",
                enabled=True,
                passwords=["+checker-pw"],
                keys=["*"],
                categories=["+@read", "+@connection", "-@scripting"],
            )
        finally:
            await raw.aclose()
        host_port = own_redis.url.split("://", 1)[1]
        checker = stores(f"redis://checker:checker-pw@{host_port}")
        jtis = ["gone", "kept", "never", *[f"x{n}" for n in range(1500)], "gone"]
        expected = [True, False, False, *([False] * 1500), True]
        assert await checker.is_revoked_many(jtis) == expected
        assert await checker.is_revoked_many(["kept", "gone"]) == [False, True]
        assert await admin.is_revoked_many(jtis) == expected  # the script, for the admin

    async def test_scripts_flushed_or_lost_are_loaded_again(
        self, stores: Stores, own_redis: Any
    ) -> None:
        store = stores(own_redis.url)
        await store.revoke("r")
        assert await store.is_revoked_many(["r", "x"]) == [True, False]
        await store.client.script_flush()
        assert await store.is_revoked_many(["x", "r"]) == [False, True]

    async def test_cancelled_between_chunks(self, stores: Stores, own_redis: Any) -> None:
        """A cancelled batch ends with CancelledError and sends no further chunk."""
        store = stores(own_redis.url)
        await store.revoke("j0")
        await store.is_revoked_many(["warm"])
        chunks = 40
        jtis = [f"j{n}" for n in range(chunks * 1000)]
        monitor = redis.Redis.from_url(own_redis.url, decode_responses=True)
        try:
            before = await _command_calls(monitor)
            task = asyncio.create_task(store.is_revoked_many(jtis))
            await asyncio.sleep(0.01)  # a few chunks in: each is a round trip of ~1 ms
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await store.is_revoked_many(["j1", "j0"]) == [False, True]
            after = await _command_calls(monitor)
        finally:
            await monitor.aclose()
        assert after["evalsha"] - before["evalsha"] < chunks

    async def test_a_key_of_another_type_is_an_error_not_an_outage(
        self, stores: Stores, redis_prefix: str
    ) -> None:
        """A key under the prefix that is not a token's hash: the error Redis
        gave, never a permissive answer (as for ``is_revoked``)."""
        store = stores(REDIS_URL, key_prefix=redis_prefix, on_backend_error="fail_open")
        await store.client.set(store.token_key("odd"), "not a hash")
        for check in (store.is_revoked_many(["x", "odd"]), store.is_revoked("odd")):
            with pytest.raises(
                TokenStoreError, match=r"checking (tokens|a token) failed .*WRONGTYPE"
            ):
                await check


class TestRedisGoesAway:
    """A Redis that dies or hangs: errors by the store's own timeouts, then recovery."""

    async def test_killed_then_back(self, stores: Stores, own_redis: Any) -> None:
        store = stores(own_redis.url, socket_timeout_s=0.5)
        await store.store("j", "u", soon())
        assert not await store.is_revoked("j")
        own_redis.kill()
        async with asyncio.timeout(NO_HANG_S):
            with pytest.raises(TokenStoreError) as caught:
                await store.is_revoked("j")
            assert caught.value.__cause__ is not None
            for call in (
                store.is_valid("j"),
                store.is_revoked_many(["j", "k"]),
                store.revoke("j"),
                store.get("j"),
                store.revoke_all_for_user("u"),
                store.store("k", "u", soon()),
            ):
                with pytest.raises(TokenStoreError):
                    await call
        own_redis.start()  # same port, empty (no persistence)
        await store.revoke("j3")  # scripts are loaded again, each on its first use
        assert await store.is_revoked_many(["j3", "j"]) == [True, False]
        await store.store("j2", "u", soon())  # the same object works again
        assert await store.is_valid("j2")

    async def test_hanging_server_times_out(self, stores: Stores, own_redis: Any) -> None:
        store = stores(own_redis.url, socket_timeout_s=0.5)
        await store.store("j", "u", soon())
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGSTOP)  # accepts, never answers
        try:
            # ended by the per-command socket timeout, not by the outer bound
            async with asyncio.timeout(NO_HANG_S):
                with pytest.raises(TokenStoreError, match="Timeout reading"):
                    await store.is_revoked("j")
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        assert await store.is_valid("j")

    async def test_fail_open_answers_permissively_with_one_warning(
        self, stores: Stores, own_redis: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = stores(own_redis.url, socket_timeout_s=0.5, on_backend_error="fail_open")
        await store.store("j", "u", soon())
        await store.revoke("j")
        own_redis.kill()
        with caplog.at_level(logging.WARNING, logger="infrakit.tokens"):
            for _ in range(5):
                assert await store.is_valid("j") is True
                assert await store.is_revoked("j") is False
            assert await store.is_revoked_many(["j", "k"]) == [False, False]
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1  # 12 permissive answers, one warning
        assert "answered 'valid' without Redis" in warnings[0].getMessage()
        with pytest.raises(TokenStoreError):  # writes still fail loudly
            await store.store("k", "u", soon())
        own_redis.start()
        with caplog.at_level(logging.WARNING, logger="infrakit.tokens"):
            await store.store("k", "u", soon())
        back = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
        assert len(back) == 1
        assert "12 token check(s) were answered permissively" in back[0]

    async def test_start_up_reports_a_dead_redis(self, stores: Stores) -> None:
        store = stores("redis://:pw@127.0.0.1:9/0", socket_timeout_s=0.3)
        with pytest.raises(
            TokenStoreError, match=r"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1:9/0"
        ) as caught:
            await store.start()
        assert ":pw@" not in str(caught.value)


class _SlowDoor:
    """A TCP relay to a real server that holds every new connection for
    ``delay_s`` before passing bytes: a TLS handshake through it takes at least
    that long, however fast the machine."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> _SlowDoor:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        assert this is not None
        self._track(this)
        try:
            await asyncio.sleep(self.delay_s)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except BaseException:
            writer.close()
            raise
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            self._track(asyncio.create_task(self._pump(source, sink)))

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            sink.close()


class TestConnectTimeout:
    """Opening a connection (the TLS handshake included) has its own timeout."""

    async def test_a_slow_handshake_is_not_an_outage(self, stores: Stores, redis_tls: Any) -> None:
        async with _SlowDoor(redis_tls.server.port, delay_s=1.0) as door:
            url = redis_tls.url.replace(f":{redis_tls.server.port}/", f":{door.port}/")
            store = stores(url, socket_timeout_s=0.2, connect_timeout_s=NO_HANG_S)
            await store.start()  # 1 s to connect, more than socket_timeout_s: fine
            await store.store("j", "u", soon())
            assert await store.is_valid("j")

    async def test_connect_timeout_bounds_the_handshake(
        self, stores: Stores, redis_tls: Any
    ) -> None:
        async with _SlowDoor(redis_tls.server.port, delay_s=4 * NO_HANG_S) as door:
            url = redis_tls.url.replace(f":{redis_tls.server.port}/", f":{door.port}/")
            store = stores(url, socket_timeout_s=2 * NO_HANG_S - 1, connect_timeout_s=0.2)
            # ended by connect_timeout_s; the command timeout is far longer
            async with asyncio.timeout(NO_HANG_S):
                with pytest.raises(TokenStoreError, match="Timeout connecting"):
                    await store.is_valid("j")
