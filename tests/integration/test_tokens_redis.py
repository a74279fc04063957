"""RedisTokenStore against real Redis: standalone, a 3-master cluster, Sentinel."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as redis

from infrakit.errors import TokenStoreError
from infrakit.testing.contracts import MakeStore, TokenStoreContract, soon
from infrakit.tokens import RedisTokenStore

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"


class TestRedisStandalone(TokenStoreContract):
    """RedisTokenStore on the standalone server keeps the contract."""

    @pytest.fixture
    def make_store(self, redis_prefix: str) -> MakeStore:
        async def make() -> RedisTokenStore:
            store = RedisTokenStore(REDIS_URL, key_prefix=redis_prefix, max_lifetime_s=86_400)
            await store.initialize()
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
            await store.initialize()
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
        await store.close()


class TestRedisSentinel(TokenStoreContract):
    """RedisTokenStore through a Sentinel URL keeps the contract."""

    @pytest.fixture
    def make_store(self, redis_sentinel: Any, redis_prefix: str) -> MakeStore:
        async def make() -> RedisTokenStore:
            store = RedisTokenStore(
                redis_sentinel.url, key_prefix=redis_prefix, max_lifetime_s=86_400
            )
            await store.initialize()
            return store

        return make


class TestRedisTLS(TokenStoreContract):
    """RedisTokenStore over rediss:// (TLS, verified against a test CA) keeps the contract."""

    @pytest.fixture
    def make_store(self, redis_tls: Any) -> MakeStore:
        prefix = f"infrakit:test:{uuid.uuid4().hex[:12]}:"

        async def make() -> RedisTokenStore:
            # The contract's burst of 50 concurrent first connections means 50
            # TLS handshakes at once on two cores: give connects 2 s, not 0.5.
            store = RedisTokenStore(
                redis_tls.url, key_prefix=prefix, max_lifetime_s=86_400, socket_timeout_s=2.0
            )
            await store.initialize()
            return store

        return make


class TestKeysAndTTLs:
    """Every key the store writes expires; TTLs end at expires_at and only grow."""

    async def test_no_key_without_expiry(self, redis_prefix: str) -> None:
        store = RedisTokenStore(REDIS_URL, key_prefix=redis_prefix, max_lifetime_s=86_400)
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
        await store.close()

    async def test_ttl_is_ceil_seconds_and_never_shrinks(self, redis_prefix: str) -> None:
        store = RedisTokenStore(REDIS_URL, key_prefix=redis_prefix)
        await store.store("j", "u", datetime.now(UTC) + timedelta(seconds=100.2))
        assert await store.client.ttl(store.token_key("j")) == 101
        await store.store("j", "u", datetime.now(UTC) + timedelta(seconds=10))
        assert await store.client.ttl(store.token_key("j")) >= 100
        assert await store.client.ttl(store.user_key("u")) >= 100
        await store.close()

    async def test_one_round_trip_per_check(self, redis_prefix: str) -> None:
        store = RedisTokenStore(REDIS_URL, key_prefix=redis_prefix)
        await store.store("j", "u", soon())
        monitor = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        before = (await monitor.info("commandstats")).get("cmdstat_hget", {}).get("calls", 0)
        total_before = (await monitor.info("stats"))["total_commands_processed"]
        for _ in range(10):
            assert not await store.is_revoked("j")
        after = (await monitor.info("commandstats"))["cmdstat_hget"]["calls"]
        total_after = (await monitor.info("stats"))["total_commands_processed"]
        assert after - before == 10
        # 10 HGETs plus the two INFO calls of this test itself, nothing else
        assert total_after - total_before == 10 + 2
        await monitor.aclose()
        await store.close()


class TestRedisGoesAway:
    """A Redis that dies or hangs: errors within the timeout, then recovery."""

    async def test_killed_then_back(self, own_redis: Any) -> None:
        store = RedisTokenStore(own_redis.url, socket_timeout_s=0.5)
        await store.store("j", "u", soon())
        assert not await store.is_revoked("j")
        own_redis.kill()
        start = time.monotonic()
        with pytest.raises(TokenStoreError) as caught:
            await store.is_revoked("j")
        assert time.monotonic() - start < 0.5 + 0.1
        assert caught.value.__cause__ is not None
        for call in (
            store.is_valid("j"),
            store.revoke("j"),
            store.get("j"),
            store.revoke_all_for_user("u"),
            store.store("k", "u", soon()),
        ):
            with pytest.raises(TokenStoreError):
                await call
        own_redis.start()  # same port, empty (no persistence)
        await store.store("j2", "u", soon())  # the same object works again
        assert await store.is_valid("j2")
        await store.close()

    async def test_hanging_server_times_out(self, own_redis: Any) -> None:
        store = RedisTokenStore(own_redis.url, socket_timeout_s=0.5)
        await store.store("j", "u", soon())
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGSTOP)  # accepts, never answers
        try:
            start = time.monotonic()
            with pytest.raises(TokenStoreError, match="Timeout"):
                await store.is_revoked("j")
            assert time.monotonic() - start < 0.5 + 0.1
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        await asyncio.sleep(0.05)
        assert await store.is_valid("j")
        await store.close()

    async def test_fail_open_answers_permissively_with_one_warning(
        self, own_redis: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = RedisTokenStore(own_redis.url, socket_timeout_s=0.5, on_backend_error="fail_open")
        await store.store("j", "u", soon())
        await store.revoke("j")
        own_redis.kill()
        with caplog.at_level(logging.WARNING, logger="infrakit.tokens"):
            for _ in range(5):
                assert await store.is_valid("j") is True
                assert await store.is_revoked("j") is False
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1
        with pytest.raises(TokenStoreError):  # writes still fail loudly
            await store.store("k", "u", soon())
        own_redis.start()
        with caplog.at_level(logging.WARNING, logger="infrakit.tokens"):
            await store.store("k", "u", soon())
        assert any("answers again" in r.getMessage() for r in caplog.records)
        await store.close()

    async def test_start_up_reports_a_dead_redis(self) -> None:
        store = RedisTokenStore("redis://:pw@127.0.0.1:9/0", socket_timeout_s=0.3)
        with pytest.raises(
            TokenStoreError, match=r"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1:9/0"
        ) as caught:
            await store.initialize()
        assert ":pw@" not in str(caught.value)
        await store.close()
