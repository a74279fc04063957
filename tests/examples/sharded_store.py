"""A token store in one module: the example of docs/writing-a-backend.md.

Tokens live in ``shards`` dicts (a stand-in for a sharded service), chosen by
a hash of the jti. Its one key of its own, ``shards``, is validated, shown by
``infrakit config show``, documented by ``infrakit config reference``; its
``signing_secret`` shows how a secret value is masked everywhere.
"""

from __future__ import annotations

import time
import zlib
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, SecretStr

from infrakit.component import HealthResult
from infrakit.registry import Backend
from infrakit.settings import InfraSettings, TokensSettings
from infrakit.tokens.base import StoredToken, TokenStore, validate_store


class ShardedTokenSettings(TokensSettings):
    """``tokens.backend: sharded``: tokens spread over in-process shards."""

    backend: Literal["sharded"] = "sharded"
    shards: int = Field(4, ge=1, le=64, description="How many shards the tokens spread over.")
    signing_secret: SecretStr = Field(
        SecretStr("change-me"), description="A secret of the backend's own (masked everywhere)."
    )


class ShardedTokenStore(TokenStore):
    """Tokens in ``shards`` dicts, chosen by a hash of the jti (a stand-in for a
    sharded service). Keeps the whole TokenStore contract."""

    def __init__(self, settings: ShardedTokenSettings) -> None:
        self.settings = settings
        self._shards: list[dict[str, StoredToken]] = [{} for _ in range(settings.shards)]
        self._revoked_unknown: dict[str, float] = {}  # jti -> remembered until (epoch s)
        self._cutoffs: dict[str, datetime] = {}

    def _shard(self, jti: str) -> dict[str, StoredToken]:
        return self._shards[zlib.crc32(jti.encode()) % len(self._shards)]

    def _live(self, jti: str) -> StoredToken | None:
        token = self._shard(jti).get(jti)
        return token if token is not None and token.expires_at > datetime.now(UTC) else None

    def _is_revoked(self, token: StoredToken) -> bool:
        cutoff = self._cutoffs.get(token.user_id)
        return token.revoked or (cutoff is not None and token.created_at <= cutoff)

    async def store(self, jti: str, user_id: str, expires_at: datetime) -> StoredToken:
        now = datetime.now(UTC)
        expires = validate_store(
            jti, user_id, expires_at, now=now, max_lifetime_s=self.settings.max_lifetime_s
        )
        if self._revoked_unknown.get(jti, 0) > time.time():
            raise ValueError(f"jti {jti!r} was revoked; a revoked jti cannot be stored again")
        old = self._live(jti)
        if old is not None and old.user_id != user_id:
            raise ValueError(f"jti {jti!r} is already stored for another user")
        if old is not None and self._is_revoked(old):
            raise ValueError(f"jti {jti!r} was revoked; a revoked jti cannot be stored again")
        created = old.created_at if old is not None else now
        token = StoredToken(jti, user_id, created, max(expires, old.expires_at) if old else expires)
        self._shard(jti)[jti] = token
        return token

    async def get(self, jti: str) -> StoredToken | None:
        token = self._live(jti)
        if token is None:
            return None
        revoked = self._is_revoked(token)
        return StoredToken(token.jti, token.user_id, token.created_at, token.expires_at, revoked)

    async def revoke(self, jti: str, *, expires_at: datetime | None = None) -> bool:
        token = self._live(jti)
        if token is None:
            until = (
                expires_at.timestamp() if expires_at else time.time() + self.settings.max_lifetime_s
            )
            self._revoked_unknown[jti] = until
            return False
        if self._is_revoked(token):
            return False
        self._shard(jti)[jti] = StoredToken(
            jti, token.user_id, token.created_at, token.expires_at, True
        )
        return True

    async def is_revoked(self, jti: str, *, user_id: str | None = None) -> bool:
        if self._revoked_unknown.get(jti, 0) > time.time():
            return True
        token = self._live(jti)
        return token is not None and self._is_revoked(token)

    async def is_valid(self, jti: str, *, user_id: str | None = None) -> bool:
        token = self._live(jti)
        return token is not None and not self._is_revoked(token)

    async def revoke_all_for_user(self, user_id: str) -> int:
        count = 0
        for shard in self._shards:
            for jti in list(shard):
                token = self._live(jti)
                if token is not None and token.user_id == user_id and await self.revoke(jti):
                    count += 1
        self._cutoffs[user_id] = datetime.now(UTC)
        return count

    async def revoked_before(self, user_id: str) -> datetime | None:
        return self._cutoffs.get(user_id)

    async def count(self) -> int:
        now = datetime.now(UTC)
        return sum(1 for shard in self._shards for t in shard.values() if t.expires_at > now)

    async def health_check(self) -> HealthResult:
        return HealthResult(True, 0.0)


def create(section: ShardedTokenSettings, settings: InfraSettings, **_: Any) -> ShardedTokenStore:
    return ShardedTokenStore(section)


BACKEND = Backend(
    "tokens", "sharded", ShardedTokenSettings, create, description="tokens in sharded dicts"
)
