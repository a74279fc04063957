from __future__ import annotations

import asyncio
import threading
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
