"""Token stores: where JWT ids live between issue and expiry, and how they are revoked."""

from typing import TYPE_CHECKING

from infrakit.tokens.base import DEFAULT_MAX_LIFETIME_S, StoredToken, TokenStore
from infrakit.tokens.memory import InMemoryTokenStore

if TYPE_CHECKING:
    from infrakit.tokens.redis_store import RedisTokenStore

__all__ = [
    "DEFAULT_MAX_LIFETIME_S",
    "InMemoryTokenStore",
    "RedisTokenStore",
    "StoredToken",
    "TokenStore",
]


def __getattr__(name: str) -> object:
    # redis-py is an optional extra; import it only when the Redis store is used.
    if name == "RedisTokenStore":
        from infrakit.tokens.redis_store import RedisTokenStore

        return RedisTokenStore
    raise AttributeError(f"module 'infrakit.tokens' has no attribute {name!r}")
