"""Seed properties 4, 5, 6, 7, 18 and 19 (token stores)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infrakit.errors import TokenStoreError
from infrakit.tokens import InMemoryTokenStore, RedisTokenStore, StoredToken
from infrakit.tokens.memory import MemoryTokenSettings

ids = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())
blank = st.text(alphabet=" \t\n\r", max_size=5)


def future(seconds: int = 3600) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


class TestProperty4:
    """**Property 4: Token Store Input Validation** (Validates: Requirements 2.1)."""

    @given(
        jti=st.one_of(blank, ids),
        user_id=st.one_of(blank, ids),
        offset=st.integers(-(10**6), 10**6),
    )
    def test_bad_input_raises_value_error(self, jti: str, user_id: str, offset: int) -> None:
        store = InMemoryTokenStore(max_lifetime_s=10**7)
        expires = datetime.now(UTC) + timedelta(seconds=offset)
        bad = not jti.strip() or not user_id.strip() or offset <= 0
        if bad:
            with pytest.raises(ValueError, match=r"cannot be empty|must be in the future"):
                asyncio.run(store.store(jti, user_id, expires))
            assert asyncio.run(store.count()) == 0
        else:
            token = asyncio.run(store.store(jti, user_id, expires))
            assert token.jti == jti

    @given(seconds=st.integers(1, 10**6))
    def test_naive_datetimes_are_rejected(self, seconds: int) -> None:
        store = InMemoryTokenStore()
        naive = datetime.now() + timedelta(seconds=seconds)
        with pytest.raises(ValueError, match="timezone-aware"):
            asyncio.run(store.store("j", "u", naive))


offsets = [UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-3, minutes=-30))]
aware = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(offsets),
)


class TestProperty5:
    """**Property 5: Token Serialization Round-Trip** (Validates: Requirements 2.2)."""

    @given(
        jti=ids,
        user_id=ids,
        created=aware,
        lifetime=st.timedeltas(timedelta(microseconds=1), timedelta(days=400)),
        revoked=st.booleans(),
    )
    def test_dict_and_json(
        self, jti: str, user_id: str, created: datetime, lifetime: timedelta, revoked: bool
    ) -> None:
        token = StoredToken(jti, user_id, created, created + lifetime, revoked)
        assert StoredToken.from_dict(token.to_dict()) == token
        assert StoredToken.from_json(token.to_json()) == token


class TestProperty6:
    """**Property 6: Token Store Eviction Order** (Validates: Requirements 2.3)."""

    @given(n=st.integers(1, 40), m=st.integers(0, 40))
    def test_n_plus_m(self, n: int, m: int) -> None:
        store = InMemoryTokenStore(max_entries=n)

        async def run() -> None:
            for i in range(n + m):
                await store.store(f"j{i}", f"u{i % 3}", future())
            assert await store.count() == n
            for i in range(n + m):
                assert await store.is_valid(f"j{i}") is (i >= m)

        asyncio.run(run())

    @given(n=st.integers(1, 20), m=st.integers(1, 20), revoked=st.sets(st.integers(0, 39)))
    def test_eviction_never_makes_a_revoked_token_valid(
        self, n: int, m: int, revoked: set[int]
    ) -> None:
        store = InMemoryTokenStore(max_entries=n)

        async def run() -> None:
            for i in range(n + m):
                await store.store(f"j{i}", "u", future())
                if i in revoked:
                    await store.revoke(f"j{i}")
            for i in range(n + m):
                if i in revoked:
                    assert not await store.is_valid(f"j{i}")
                    with pytest.raises(ValueError, match="revoked"):
                        await store.store(f"j{i}", "u", future())

        asyncio.run(run())


class TestProperty7:
    """**Property 7: User Token Revocation Completeness** (Validates: Requirements 2.4)."""

    @given(
        counts=st.dictionaries(
            st.sampled_from(["a", "b", "c", "{d}"]), st.integers(0, 15), min_size=1
        ),
        pre_revoked=st.integers(0, 3),
    )
    def test_revokes_exactly_k(self, counts: dict[str, int], pre_revoked: int) -> None:
        store = InMemoryTokenStore()

        async def run() -> None:
            for user, k in counts.items():
                for i in range(k):
                    await store.store(f"{user}-{i}", user, future())
            target = next(iter(counts))
            k = counts[target]
            already = min(pre_revoked, k)
            for i in range(already):
                await store.revoke(f"{target}-{i}")
            assert await store.revoke_all_for_user(target) == k - already
            assert not any([await store.is_valid(f"{target}-{i}") for i in range(k)])
            for user, other_k in counts.items():
                if user != target:
                    assert all([await store.is_valid(f"{user}-{i}") for i in range(other_k)])

        asyncio.run(run())


class TestProperty18:
    """**Property 18: Validation Error Type Consistency** (Validates: Requirements 8.1)."""

    @given(jti=blank)
    def test_every_method_rejects_blank_ids(self, jti: str) -> None:
        store = InMemoryTokenStore()
        for call in (store.get(jti), store.revoke(jti), store.revoke_all_for_user(jti)):
            with pytest.raises(ValueError, match=r".+"):
                asyncio.run(call)

    @given(max_entries=st.integers(max_value=0))
    def test_capacity(self, max_entries: int) -> None:
        with pytest.raises(ValueError, match=r"max_entries"):
            MemoryTokenSettings(max_entries=max_entries)


class TestProperty19:
    """**Property 19: Exception Chain Preservation** (Validates: Requirements 8.4)."""

    @given(port=st.sampled_from([1, 9]), jti=ids)
    def test_backend_errors_keep_their_cause(self, port: int, jti: str) -> None:
        async def run() -> None:
            store = RedisTokenStore(f"redis://127.0.0.1:{port}/0", socket_timeout_s=0.2)
            for call in (store.is_revoked(jti), store.is_valid(jti), store.revoke(jti)):
                with pytest.raises(TokenStoreError) as caught:
                    await call
                assert caught.value.__cause__ is not None
                assert isinstance(caught.value.__cause__, OSError | Exception)
            await store.aclose()

        asyncio.run(run())
