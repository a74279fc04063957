"""RedisTokenStore's construction: validated, masked, and connects to nothing."""

from __future__ import annotations

import pytest

from infrakit.tokens import RedisTokenStore
from infrakit.tokens.redis_store import _parse_sentinel, _tag


class TestConstruction:
    """Bad arguments are ValueErrors; secrets never show."""

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"url": "http://x"}, "unsupported Redis URL scheme 'http'"),
            ({"url": "localhost:6379"}, "tokens.url: not a URL"),
            (
                {"url": "redis://h", "key_prefix": ""},
                "tokens.key_prefix: String should have at least 1",
            ),
            ({"url": "redis://h", "key_prefix": "a{b}:"}, "must not contain braces"),
            ({"url": "redis://h", "socket_timeout_s": 0}, "socket_timeout_s"),
            ({"url": "redis://h", "on_backend_error": "ignore"}, "on_backend_error"),
            ({"url": "redis+sentinel://h:26379/m", "cluster": True}, "cannot be combined"),
            ({"url": "redis://h", "pool_size": 0}, "tokens.pool_size: Input should be greater"),
            ({"url": "redis://h", "pool_size": 10_001}, "tokens.pool_size: Input should be less"),
            ({"url": "redis://h", "pool_timeout_s": 0}, "tokens.pool_timeout_s: Input should be"),
            ({"url": "redis://h", "pool_timeout_s": float("inf")}, "tokens.pool_timeout_s"),
        ],
    )
    def test_validation(self, kwargs: dict[str, object], message: str) -> None:
        url = kwargs.pop("url")
        with pytest.raises(ValueError, match=message):
            RedisTokenStore(url, **kwargs)  # type: ignore[arg-type]

    def test_repr_masks_the_password(self) -> None:
        store = RedisTokenStore("rediss://user:s3cr3t@cache:6380/2")
        assert "s3cr3t" not in repr(store)
        assert store.url == "rediss://user:***@cache:6380/2"

    def test_nothing_connects_until_used(self) -> None:
        store = RedisTokenStore("redis://127.0.0.1:9/0")
        assert store._client is None

    def test_the_pool_is_bounded(self) -> None:
        store = RedisTokenStore("redis://h", pool_size=7, pool_timeout_s=1.5)
        assert store.client.connection_pool.max_connections == 7
        cluster = RedisTokenStore("redis://h", pool_size=7, cluster=True)
        assert cluster.client.connection_kwargs["max_connections"] == 7

    def test_rediss_builds_a_tls_client(self) -> None:
        store = RedisTokenStore("rediss://cache:6380/0")
        pool = store.client.connection_pool
        assert pool.connection_class.__name__ == "SSLConnection"


class TestKeys:
    """Hash tags keep a user's keys together, whatever the user id holds."""

    def test_tags_escape_braces(self) -> None:
        assert _tag("a{b}c%") == "a%7Bb%7Dc%25"
        store = RedisTokenStore("redis://h", key_prefix="p:")
        assert store.user_key("{x}") == "p:u:{%7Bx%7D}"
        assert store.cutoff_key("{x}") == "p:u:{%7Bx%7D}:cut"
        assert store.token_key("j1") == "p:t:j1"

    def test_sentinel_urls(self) -> None:
        hosts, service, db, auth = _parse_sentinel(
            "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/3"
        )
        assert hosts == [("s1", 26379), ("s2", 26380)]
        assert (service, db, auth["password"]) == ("mymaster", 3, "pw")
        with pytest.raises(ValueError, match="names no service"):
            _parse_sentinel("redis+sentinel://s1:26379")
