from __future__ import annotations

import asyncio
import threading
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from infrakit import Infra, load_settings
from infrakit.errors import ConfigError
from infrakit.testing.contracts import soon
from infrakit.tokens import InMemoryTokenStore, StoredToken, TokenStore
from infrakit.tokens.memory import MemoryTokenSettings

T0 = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


class TestStoredToken:
    """Validated on creation; exact round trips."""

    def test_round_trip(self) -> None:
        token = StoredToken("j", "u", T0, T0 + timedelta(hours=1), revoked=True)
        assert StoredToken.from_dict(token.to_dict()) == token
        assert StoredToken.from_json(token.to_json()) == token

    def test_utc_normalised(self) -> None:
        plus2 = timezone(timedelta(hours=2))
        token = StoredToken("j", "u", T0.astimezone(plus2), T0 + timedelta(hours=1))
        assert token.created_at == T0
        assert token.created_at.tzinfo is UTC

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"jti": " "}, "jti cannot be empty"),
            ({"user_id": ""}, "user_id cannot be empty"),
            ({"created_at": datetime(2026, 1, 1)}, "timezone-aware"),
            ({"expires_at": T0}, "must be after created_at"),
            ({"revoked": "yes"}, "revoked must be a bool"),
        ],
    )
    def test_validation(self, fields: dict[str, Any], message: str) -> None:
        values: dict[str, Any] = {
            "jti": "j",
            "user_id": "u",
            "created_at": T0,
            "expires_at": T0 + timedelta(hours=1),
        }
        values.update(fields)
        with pytest.raises(ValueError, match=message):
            StoredToken(**values)

    def test_from_dict_names_every_problem(self) -> None:
        with pytest.raises(ValueError, match="invalid stored token") as exc:
            StoredToken.from_dict({"jti": "j", "created_at": "soon", "revoked": 1, "x": 0})
        for part in ("unknown field(s): x", "user_id: missing", "expires_at: missing",
                     "created_at: not an ISO 8601", "revoked: expected true or false"):  # fmt: skip
            assert part in str(exc.value)


class TestInMemoryEviction:
    """Property 6 in examples, and what eviction must never do."""

    async def test_oldest_are_evicted(self) -> None:
        store = InMemoryTokenStore(max_entries=3)
        for n in range(5):
            await store.store(f"j{n}", "u", soon())
        assert await store.count() == 3
        assert [await store.is_valid(f"j{n}") for n in range(5)] == [False, False, True, True, True]

    async def test_eviction_never_revives_a_revoked_token(self) -> None:
        store = InMemoryTokenStore(max_entries=2)
        await store.store("revoked", "u", soon())
        await store.revoke("revoked")
        await store.store("a", "u", soon())
        await store.store("b", "u", soon())  # evicts "revoked"
        assert await store.get("revoked") is None
        assert not await store.is_valid("revoked")
        assert await store.is_revoked("revoked")
        with pytest.raises(ValueError, match="cannot be stored again"):
            await store.store("revoked", "u", soon())
        assert not await store.is_valid("revoked")

    async def test_user_revoked_by_cutoff_stays_revoked_after_eviction(self) -> None:
        store = InMemoryTokenStore(max_entries=2)
        await store.store("old", "u", soon())
        await store.revoke_all_for_user("u")
        assert await store.revoked_before("u") is not None
        await store.store("x", "v", soon())
        await store.store("y", "v", soon())
        with pytest.raises(ValueError, match="cannot be stored again"):
            await store.store("old", "u", soon())

    async def test_cutoff_rejects_tokens_created_before_it(self) -> None:
        store = InMemoryTokenStore()
        await store.store("j", "u", soon())
        record = store._tokens["j"]
        store._cutoffs["u"] = (record.created_at, 1e12)  # a cutoff exactly at creation
        assert not await store.is_valid("j")
        assert await store.is_revoked("j")

    async def test_threads_and_tasks(self) -> None:
        store = InMemoryTokenStore(max_entries=500)

        def thread_work(t: int) -> None:
            async def run() -> None:
                for i in range(300):
                    await store.store(f"t{t}-{i}", f"user{t}", soon())
                    await store.is_valid(f"t{t}-{i}")

            asyncio.run(run())

        threads = [threading.Thread(target=thread_work, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()

        async def task_work(t: int) -> None:
            for i in range(300):
                await store.store(f"k{t}-{i}", f"kuser{t}", soon())
                await asyncio.sleep(0)

        await asyncio.gather(*(task_work(t) for t in range(4)))
        for thread in threads:
            thread.join()
        assert await store.count() == 500
        assert sum(len(v) for v in store._by_user.values()) == 500

    async def test_expired_tokens_are_purged(self) -> None:
        store = InMemoryTokenStore()
        for n in range(10):
            await store.store(f"j{n}", "u", datetime.now(UTC) + timedelta(milliseconds=50))
        await store.store("keep", "u", soon())
        await asyncio.sleep(0.08)
        assert await store.count() == 1
        assert list(store._by_user["u"]) == ["keep"]

    def test_bad_settings(self) -> None:
        # validated once, by the settings model; the store trusts its arguments
        with pytest.raises(ValueError, match="max_entries"):
            MemoryTokenSettings(max_entries=0)
        with pytest.raises(ValueError, match="max_lifetime_s"):
            MemoryTokenSettings(max_lifetime_s=0)


class TestInMemoryBounds:
    """Memory stays bounded: per-user cutoffs and the expiry heap."""

    async def test_cutoffs_of_many_users_are_capped(self) -> None:
        users, cap = 10_000, 500
        store = InMemoryTokenStore(100, max_revocations=cap)
        await store.revoke_all_for_user("warm-up")
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(users):
                await store.revoke_all_for_user(f"user-{n:08d}")
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(store._cutoffs) <= cap
        # a cutoff costs a few hundred bytes: 2 KB each for the cap is generous,
        # and well below what 10,000 kept cutoffs take (about 2.5 MB)
        assert grown < cap * 2048, f"{grown} bytes for {users} users"
        # the newest users keep theirs; the oldest went first
        assert await store.revoked_before(f"user-{users - 1:08d}") is not None
        assert await store.revoked_before("user-00000000") is None

    async def test_a_capped_cutoff_keeps_its_users_tokens_revoked(self) -> None:
        store = InMemoryTokenStore(100, max_revocations=2)
        await store.store("j", "alice", soon())
        await store.revoke_all_for_user("alice")
        for n in range(5):
            await store.revoke_all_for_user(f"other-{n}")
        assert await store.revoked_before("alice") is None  # the cutoff itself went
        assert not await store.is_valid("j")  # the token it revoked did not come back
        assert await store.is_revoked("j")

    async def test_cutoffs_expire_with_the_token_lifetime(self) -> None:
        store = InMemoryTokenStore(100, max_lifetime_s=0.05)
        await store.revoke_all_for_user("old")
        await asyncio.sleep(0.06)  # no token created before the cutoff lives on now
        await store.revoke_all_for_user("new")  # a writer purges what expired
        assert list(store._cutoffs) == ["new"]

    async def test_restoring_one_jti_keeps_the_heap_small(self) -> None:
        store = InMemoryTokenStore(100)
        base = soon(600)
        for n in range(20_000):  # every store extends the lifetime by 1 us
            await store.store("same", "u", base + timedelta(microseconds=n))
        assert len(store._expiries) <= 2 * len(store._tokens) + 64
        token = await store.get("same")
        assert token is not None
        assert token.expires_at == base + timedelta(microseconds=19_999)

    async def test_the_heap_is_bounded_by_distinct_jtis(self) -> None:
        store = InMemoryTokenStore(10_000)
        base = soon(600)
        for n in range(20_000):
            await store.store(f"j{n % 100}", "u", base + timedelta(microseconds=n))
        assert len(store._expiries) <= 2 * 100 + 64


class TestWiring:
    """tokens.backend selects the store; the redis extra is checked at build time."""

    async def test_memory_from_profile(self) -> None:
        async with Infra.from_profile("test", environ={}) as infra:
            assert isinstance(infra.tokens, InMemoryTokenStore)
            assert isinstance(infra.tokens, TokenStore)
            assert infra.tokens.max_entries == 10_000

    def test_redis_needs_its_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a: None if n == "redis" else real(n, *a)
        )
        # reported by validation, naming the key and the pip line
        with pytest.raises(
            ConfigError,
            match=r"tokens\.backend: .*needs the \'redis\' package.*infrakit-compose\[redis\]",
        ):
            load_settings("test", environ={}, overrides={"tokens.backend": "redis"})

    def test_redis_store_is_not_imported_for_memory(self) -> None:
        import subprocess
        import sys

        code = (
            "import sys, asyncio; from infrakit import Infra\n"
            "async def main():\n"
            "    async with Infra.from_profile('test', environ={}) as infra:\n"
            "        await infra.tokens.is_valid('x')\n"
            "asyncio.run(main())\n"
            "print('redis' in sys.modules, 'redis.asyncio' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip().splitlines()[-1] == "False False"
