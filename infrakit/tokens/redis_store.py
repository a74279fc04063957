"""``RedisTokenStore``: tokens in Redis (standalone, Sentinel or Cluster).

Keys, under ``key_prefix`` (``P``):

- ``P t:<jti>`` — a hash per token: ``u`` user, ``c`` created and ``e`` expires
  (epoch µs), ``r`` revoked (``0``/``1``), ``m`` set on a revocation marker
  (a jti revoked before it was stored). Its TTL ends at ``expires_at``.
- ``P u:{<user>}`` — a sorted set of the user's jtis, scored by expiry.
- ``P u:{<user>}:cut`` — the user's "revoked before" cutoff (epoch µs).

The two user keys share a hash tag, so everything per user runs as one Lua
script in one cluster slot. Checking a token is one round trip: an
``HGET``/``HMGET`` of its own key (revocations are written to the token's
hash) and, when the caller names the user (``user_id=``), a ``GET`` of the
user's cutoff pipelined with it: the only way a check can see a revoke-all
that has written its cutoff but not yet marked every token.

Log out everywhere: ``store()`` first adds the jti to the user's set (and
reads the cutoff) in the user's slot, then writes the token; ``revoke_all``
sets the cutoff and collects the set in the user's slot, then marks every
token revoked, leaving a marker for a token whose write is still in flight.
Whichever order the two land in, a token stored concurrently with a
revoke-all ends up revoked: either the revoke-all saw it in the set, or the
store saw a cutoff at or after its creation time.

The pool: at most ``pool_size`` round trips are in flight at once (a
semaphore, so the wait has the call's own deadline, ``pool_timeout_s``, and
its own error), and redis-py's pool holds at most ``pool_size`` connections
(per node on a cluster), so it never runs out: a call past the bound waits
its turn rather than failing as redis-py's pools do. Load waits; only
failing to reach Redis is an outage, and only an outage lets ``fail_open``
answer permissively.

Timeouts: ``connect_timeout_s`` bounds opening a connection (TCP connect and,
for ``rediss://``, the TLS handshake), ``socket_timeout_s`` bounds each command
on an open one. They are separate because a burst of new TLS connections on a
busy host is slow to open but not an outage.

Cancellation: a cancelled call always ends with ``CancelledError``. redis-py
writes under ``asyncio.wait_for``, which on Python 3.11 returns normally when
the cancellation lands just as the write completes; the store notices the
pending cancellation when the round trip returns and raises it then, so a
cancelled task can never carry on as if nothing happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from pydantic import Field, field_validator, model_validator

from infrakit.component import HealthResult
from infrakit.errors import TokenStoreError
from infrakit.registry import Backend
from infrakit.scrub import SecretUrl, mask_url, parse_url, scrub_text
from infrakit.settings.base import build
from infrakit.settings.models import TokensSettings
from infrakit.tokens.base import (
    StoredToken,
    TokenStore,
    _check_id,
    as_list,
    revocation_until,
    validate_store,
)

if TYPE_CHECKING:
    from infrakit.settings.models import InfraSettings

__all__ = ["BACKEND", "RedisTokenSettings", "RedisTokenStore"]

_log = logging.getLogger("infrakit.tokens")
DEFAULT_SOCKET_TIMEOUT_S = 0.5
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_POOL_SIZE = 50
DEFAULT_POOL_TIMEOUT_S = 5.0
#: Within a fail_open outage, the "still unreachable" warning repeats at most this often.
OUTAGE_WARNING_INTERVAL_S = 60.0
T = TypeVar("T")
OnError = Literal["fail_closed", "fail_open"]
_SCHEMES = ("redis", "rediss", "redis+sentinel", "unix")

_STORE_USER = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
local cut = redis.call('GET', KEYS[2])
if cut and redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return cut
"""

_STORE_RECORD = """
local cur = redis.call('HMGET', KEYS[1], 'u', 'r', 'e', 'm')
local ttl = tonumber(ARGV[4])
if cur[2] then
  if cur[1] ~= ARGV[1] then
    if cur[2] == '1' and cur[1] == '' then return {'revoked'} end
    return {'conflict'}
  end
  -- a revoked token stays revoked; only a revoke-all's marker for this very
  -- (in-flight) store is taken over, as a revoked token
  if cur[2] == '1' and not cur[4] then return {'revoked'} end
  if cur[4] then
    redis.call('HSET', KEYS[1], 'c', ARGV[2], 'e', ARGV[3])
    redis.call('HDEL', KEYS[1], 'm')
  elseif tonumber(ARGV[3]) > tonumber(cur[3]) then
    redis.call('HSET', KEYS[1], 'e', ARGV[3])
  end
  if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'r', '1') end
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
else
  redis.call('HSET', KEYS[1], 'u', ARGV[1], 'c', ARGV[2], 'e', ARGV[3], 'r', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local now = redis.call('HMGET', KEYS[1], 'c', 'e', 'r')
return {'ok', now[1], now[2], now[3]}
"""

_REVOKE_ALL = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local ttl = redis.call('PTTL', KEYS[1])
local old = redis.call('GET', KEYS[2])
if (not old) or tonumber(old) < tonumber(ARGV[1]) then redis.call('SET', KEYS[2], ARGV[1]) end
local keep = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[2]) < keep then redis.call('PEXPIRE', KEYS[2], keep) end
return {ttl, members}
"""

_MARK = """
local cur = redis.call('HMGET', KEYS[1], 'u', 'r')
if cur[2] then
  if cur[1] ~= ARGV[1] or cur[2] == '1' then return 0 end
  redis.call('HSET', KEYS[1], 'r', '1')
  return 1
end
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'r', '1', 'm', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
"""

_REVOKE = """
local cur = redis.call('HMGET', KEYS[1], 'r', 'e', 'm')
if cur[1] == '0' and tonumber(cur[2]) > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'r', '1')
  return 1
end
if cur[1] then return 0 end
redis.call('HSET', KEYS[1], 'u', '', 'r', '1', 'm', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"""

# is_revoked_many on one server: the "r" field of every key, as one string of
# '1' (revoked) and '0' (anything else: not revoked, unknown, expired), one
# character per key, in order. One EVALSHA in place of a pipeline of HGETs:
# redis-py spends ~4-6 us of Python per pipelined reply (its parser is called
# once per reply, hiredis or not), which made 1,000 HGETs cost 8-10 ms of CPU
# for a 0.3 ms round trip; one reply costs that once.
_REVOKED_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'r') == '1' then out[i] = '1' else out[i] = '0' end
end
return table.concat(out)
"""

# Keys per is_revoked_many script: the server runs one script at a time, and
# 1,000 keys hold it ~0.3 ms (about what a pipeline of as many HGETs costs it).
# Larger batches send one script per chunk, one after another.
_MANY_CHUNK = 1000

# Tokens marked per round trip by revoke_all_for_user; on a cluster also the
# number of scripts sent side by side (each still takes its turn at the pool).
_MARK_BATCH = 64


class _UnreachableError(TokenStoreError):
    """Redis could not be reached (refused, reset, timed out, cluster down): an
    outage, the one failure ``fail_open`` may answer permissively."""


class _PoolExhaustedError(TokenStoreError):
    """Every pooled connection stayed busy for the whole wait: load, not an outage."""


def _is_outage(error: BaseException) -> bool:
    """Whether ``error`` means Redis could not be reached (as opposed to load, a
    refused command or a misconfiguration)."""
    from redis.exceptions import (
        AuthenticationError,
        ClusterDownError,
        MaxConnectionsError,
        RedisClusterException,
        ResponseError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(error, MaxConnectionsError | AuthenticationError):
        return False
    if isinstance(error, ClusterDownError):  # a ResponseError, but the cluster is down
        return True
    if isinstance(error, ResponseError):
        return False
    return isinstance(
        error,
        RedisConnectionError | RedisTimeoutError | RedisClusterException | OSError | TimeoutError,
    )


def _cancel_requests() -> int:
    """Cancellations requested of the running task and not yet taken back."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _honour_cancel(before: int) -> None:
    """Raise the cancellation that redis-py swallowed, if one arrived since ``before``."""
    if _cancel_requests() > before:
        raise asyncio.CancelledError


def _micros(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


def _from_micros(value: str | bytes) -> datetime:
    return datetime.fromtimestamp(int(value) / 1_000_000, UTC)


def _tag(user_id: str) -> str:
    """The user's id as a hash tag body: braces and '%' escaped, so a user id
    holding '{' or '}' cannot move the tag."""
    return user_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _without_credentials(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` without its user-info, and the user and password as redis-py keywords.

    redis-py parses URLs with ``urllib``, which ends the user-info at the first
    ``/`` or ``@``: a password holding either would be split into the host and
    port, and echoed in redis-py's errors ("Port could not be cast to integer
    value as '<half the password>'"). The kit's own parse hands them over whole.
    """
    parts = parse_url(url)
    bare = f"{parts.scheme}://{parts.netloc}{parts.path}" + (
        f"?{parts.query}" if parts.query else ""
    )
    credentials = {
        key: value
        for key, value in (("username", parts.username), ("password", parts.password))
        if value
    }
    return bare, credentials


def _parse_sentinel(url: str) -> tuple[list[tuple[str, int]], str, int, dict[str, Any]]:
    """``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``."""
    parts = parse_url(url)
    netloc = parts.netloc
    password, username = parts.password or None, parts.username or None
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        if port and not port.isdigit():
            raise ValueError(f"sentinel URL {mask_url(url)!r}: port {port!r} is not a number")
        hosts.append((host or "127.0.0.1", int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError(
            f"sentinel URL {mask_url(url)!r} names no service: "
            "redis+sentinel://host:26379/<service-name>[/db]"
        )
    db = int(path[1]) if len(path) > 1 else 0
    return hosts, path[0], db, {"password": password, "username": username}


class RedisTokenSettings(TokensSettings):
    """``tokens.backend: redis``: Redis standalone, Sentinel or Cluster."""

    backend: Literal["redis"] = "redis"
    url: SecretUrl = Field(
        SecretUrl("redis://127.0.0.1:6379/0"),
        description="redis://, rediss:// (TLS), redis+sentinel://host:26379/service[/db] "
        "or unix:// URL.",
    )
    cluster: bool = Field(False, description="Connect to a Redis Cluster.")
    key_prefix: str = Field("infrakit:tok:", min_length=1, description="Prefix of every key.")
    socket_timeout_s: float = Field(
        DEFAULT_SOCKET_TIMEOUT_S,
        gt=0,
        lt=60,
        allow_inf_nan=False,
        description="Redis timeout in seconds for one command on an open connection.",
    )
    connect_timeout_s: float = Field(
        DEFAULT_CONNECT_TIMEOUT_S,
        gt=0,
        lt=300,
        allow_inf_nan=False,
        description="Redis timeout in seconds for opening a connection, TLS handshake "
        "included (a burst of new TLS connections is slow, not an outage).",
    )
    pool_size: int = Field(
        DEFAULT_POOL_SIZE,
        ge=1,
        le=10_000,
        description="Connections to Redis this store holds at most (per node with "
        "cluster: true); a call beyond them waits for a free one.",
    )
    pool_timeout_s: float = Field(
        DEFAULT_POOL_TIMEOUT_S,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="How long one call waits in total for a free pooled connection "
        "before it fails with 'pool exhausted' (load, never treated as an outage).",
    )
    on_backend_error: Literal["fail_closed", "fail_open"] = Field(
        "fail_closed",
        description="fail_closed raises when Redis is unreachable; fail_open answers "
        "permissively, but only when Redis is unreachable (never for an exhausted pool).",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: SecretUrl) -> SecretUrl:
        url = value.get_secret_value()
        scheme = value.scheme
        if scheme not in _SCHEMES:
            raise ValueError(
                f"unsupported Redis URL scheme {scheme!r} in {value.masked!r}; "
                "use redis://, rediss:// or redis+sentinel://"
            )
        if scheme == "redis+sentinel":
            _parse_sentinel(url)  # names its problem: a service, numeric ports
        elif scheme != "unix":
            parts = parse_url(url)
            try:
                parts.port  # noqa: B018 - raises for a port that is not a number
            except ValueError as error:
                raise ValueError(f"{value.masked!r}: {error}") from None
            if not parts.host:
                raise ValueError(f"{value.masked!r} names no host")
            database = parts.path.strip("/")
            if database and not database.isdigit():
                raise ValueError(f"{value.masked!r}: the database {database!r} is not a number")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError(
                f"key_prefix {value!r} must not contain braces: they would override "
                "the per-user hash tags"
            )
        return value

    @model_validator(mode="after")
    def _mode(self) -> Self:
        if self.cluster and self.url.scheme == "redis+sentinel":
            raise ValueError("cluster: true cannot be combined with a redis+sentinel:// URL")
        return self


class RedisTokenStore(TokenStore):
    """Tokens in Redis with per-token TTLs and atomic per-user operations.

    ``on_backend_error="fail_closed"`` (the default) raises
    :class:`TokenStoreError` from every method when Redis cannot answer, so
    ``is_revoked``/``is_valid`` never say "fine" by accident.
    ``"fail_open"`` makes the checks return the permissive answer instead,
    only when Redis is unreachable (never for an exhausted pool), with one
    rate-limited warning and a note when it is back.
    """

    def __init__(self, url: str | RedisTokenSettings, **options: Any) -> None:
        """``RedisTokenStore(settings)``, or ``RedisTokenStore(url, key_prefix=...,
        socket_timeout_s=..., connect_timeout_s=..., on_backend_error=..., cluster=...,
        max_lifetime_s=...)``, which builds (and so validates) the settings model."""
        settings = (
            url
            if isinstance(url, RedisTokenSettings)
            else build(RedisTokenSettings, url=url, **options)
        )
        self.settings = settings
        self._url = settings.url.get_secret_value()
        self.url = settings.url.masked
        self.prefix = settings.key_prefix
        self.socket_timeout_s = settings.socket_timeout_s
        self.connect_timeout_s = settings.connect_timeout_s
        self.on_backend_error: OnError = settings.on_backend_error
        self.cluster = settings.cluster
        self.max_lifetime_s = float(settings.max_lifetime_s)
        self.pool_size = settings.pool_size
        self.pool_timeout_s = settings.pool_timeout_s
        self._client: Any = None
        self._sentinel: Any = None
        self._scripts: dict[str, Any] = {}
        # Round trips in flight at once, at most pool_size: the wait for a
        # connection, with its own deadline and its own error (see _turn).
        self._pool_gate: asyncio.Semaphore | None = None
        # A cluster client learns the slots once, before its first command:
        # redis-py 8.1 breaks connections (AttributeError on a None writer)
        # when many first commands initialise it at once.
        self._cluster_pending = False
        self._cluster_lock: asyncio.Lock | None = None
        # is_revoked_many's script refused by the server's ACL (NOPERM): the
        # pipeline of HGETs from then on
        self._scripts_denied = False
        # fail_open bookkeeping: one warning per OUTAGE_WARNING_INTERVAL_S at most
        self._degraded = False
        self._permissive_answers = 0
        self._next_warning = 0.0

    def __repr__(self) -> str:
        kind = "cluster" if self.cluster else "standalone"
        return f"RedisTokenStore({self.url!r}, {kind}, prefix={self.prefix!r})"

    # --- connection -------------------------------------------------------------

    def _connect(self) -> Any:
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options: dict[str, Any] = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.connect_timeout_s,
            "decode_responses": True,
            "max_connections": self.pool_size,
        }
        url, credentials = _without_credentials(self._url)
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster

            # redis-py's cluster pool per node does not block (it raises
            # MaxConnectionsError); the store's gate keeps the round trips in
            # flight at pool_size, so no node is ever asked for more.
            return RedisCluster.from_url(url, **options, **credentials)
        # Fail fast: one attempt per call, so a dead server is reported within
        # one timeout rather than after a series of retries.
        options["retry"] = Retry(NoBackoff(), 0)
        if self._url.lower().startswith("redis+sentinel://"):
            from redis.asyncio.sentinel import Sentinel

            hosts, service, db, auth = _parse_sentinel(self._url)
            sentinel = self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                hosts,
                sentinel_kwargs={
                    "socket_timeout": self.socket_timeout_s,
                    "socket_connect_timeout": self.connect_timeout_s,
                },
                **options,
            )
            master = sentinel.master_for(service, db=db, **{k: v for k, v in auth.items() if v})
            _share_tls_context(master.connection_pool)
            return master
        # Bounded at pool_size, and never asked for more: the store's gate
        # lets at most pool_size round trips through at once and does the
        # waiting, with the call's deadline. Not redis-py's
        # BlockingConnectionPool: its Condition, timeout and metrics cost
        # ~20 us a call (15% of a loopback check), and its give-up is a plain
        # ConnectionError that reads like an outage.
        client = redis.Redis.from_url(url, **options, **credentials)
        _share_tls_context(client.connection_pool)
        return client

    @property
    def client(self) -> Any:
        """The redis-py client (created on first use, never connected by the constructor)."""
        if self._client is None:
            self._client = self._connect()
            self._pool_gate = asyncio.BoundedSemaphore(self.pool_size)
            self._cluster_pending = self.cluster
            self._cluster_lock = asyncio.Lock()
            self._scripts = {
                name: self._client.register_script(source)
                for name, source in (
                    ("store_user", _STORE_USER),
                    ("store_record", _STORE_RECORD),
                    ("revoke_all", _REVOKE_ALL),
                    ("mark", _MARK),
                    ("revoke", _REVOKE),
                    ("revoked_many", _REVOKED_MANY),
                )
            }
        return self._client

    async def start(self) -> None:
        """Check that Redis answers (the container calls this at start-up)."""
        result = await self.health_check()
        if not result.ok:
            hint = ""
            if self.cluster and "cluster mode is not enabled" in (result.error or "").lower():
                hint = " (tokens.cluster is true but this server is not a Redis Cluster node)"
            raise TokenStoreError(f"cannot reach Redis at {self.url}: {result.error}{hint}")

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        if self._sentinel is not None:
            sentinel, self._sentinel = self._sentinel, None
            for connection in sentinel.sentinels:
                await connection.aclose()

    # --- keys -------------------------------------------------------------------

    def token_key(self, jti: str) -> str:
        return f"{self.prefix}t:{jti}"

    def user_key(self, user_id: str) -> str:
        return f"{self.prefix}u:{{{_tag(user_id)}}}"

    def cutoff_key(self, user_id: str) -> str:
        return f"{self.user_key(user_id)}:cut"

    # --- error handling -----------------------------------------------------------

    def _error(self, what: str, error: BaseException) -> TokenStoreError:
        from redis.exceptions import MaxConnectionsError

        detail = scrub_text(str(error).splitlines()[0]) if str(error) else type(error).__name__
        message = f"{what} failed on Redis at {self.url}: {type(error).__name__}: {detail}"
        if isinstance(error, MaxConnectionsError):  # redis-py's own bound, behind the gate
            return _PoolExhaustedError(
                f"{message} (connection pool exhausted; raise tokens.pool_size, "
                f"now {self.pool_size})"
            )
        return _UnreachableError(message) if _is_outage(error) else TokenStoreError(message)

    async def _turn(self, what: str) -> asyncio.Semaphore:
        """Wait for one of the ``pool_size`` places for a round trip, at most
        ``pool_timeout_s``; past that, a :class:`_PoolExhaustedError` error.
        Returns the gate taken: the place goes back to it, even if ``aclose``
        and a new client replaced the store's gate meanwhile."""
        gate = self._pool_gate
        assert gate is not None  # created with the client
        if not gate.locked():
            await gate.acquire()  # a free place: taken without yielding
            return gate
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.pool_timeout_s):
                await gate.acquire()
        except TimeoutError:
            waited = time.monotonic() - start
            raise _PoolExhaustedError(
                f"{what} failed: Redis connection pool exhausted at {self.url}: waited "
                f"{waited:.2f} s for a connection (tokens.pool_timeout_s="
                f"{self.pool_timeout_s:g}), all {self.pool_size} busy; raise "
                "tokens.pool_size (Redis is reachable: this is load, not an outage)"
            ) from None
        return gate

    async def _call(
        self, what: str, operation: Callable[[], Awaitable[T]], *, gated: bool = True
    ) -> T:
        """Run ``operation`` (its round trips one after another) with Redis errors
        mapped to :class:`TokenStoreError`. ``gated``: it takes one turn at the
        pool first; an operation that sends round trips side by side takes a
        turn for each itself (``gated=False``)."""
        from redis.exceptions import RedisClusterException, RedisError

        cancels = _cancel_requests()
        gate = None
        if gated:
            self.client  # noqa: B018 - creates the client and its gate
            gate = await self._turn(what)
        try:
            if self._cluster_pending:
                await self._initialise_cluster()
            result = await operation()
        # RedisClusterException is not a RedisError ("Cluster mode is not
        # enabled on this node", no reachable startup node)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as error:
            # a connection torn down by the cancellation is not an outage
            _honour_cancel(cancels)
            raise self._error(what, error) from error
        finally:
            if gate is not None:
                gate.release()
        _honour_cancel(cancels)
        if self._degraded:
            self._back()
        return result

    async def _initialise_cluster(self) -> None:
        lock = self._cluster_lock
        assert lock is not None  # created with the client
        async with lock:
            if self._cluster_pending:
                await self.client.initialize()
                self._cluster_pending = False

    async def _gated(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """One round trip of an ungated :meth:`_call`, with its turn at the pool."""
        gate = await self._turn(what)
        try:
            return await operation()
        finally:
            gate.release()

    def _back(self) -> None:
        self._degraded = False
        answered, self._permissive_answers = self._permissive_answers, 0
        _log.warning(
            "infrakit.tokens: Redis at %s answers again; %d token check(s) were answered "
            "permissively (on_backend_error=fail_open) while it was unreachable",
            self.url,
            answered,
        )

    def _fail_open(self, error: TokenStoreError, answer: str, checks: int = 1) -> None:
        """Re-raise ``error`` unless it is an outage and the store fails open;
        then count the permissive answers and warn (at most once a minute)."""
        if self.on_backend_error == "fail_closed" or not isinstance(error, _UnreachableError):
            raise error
        self._permissive_answers += checks
        now = time.monotonic()
        if now >= self._next_warning:
            self._next_warning = now + OUTAGE_WARNING_INTERVAL_S
            self._degraded = True
            cause = error.__cause__
            _log.warning(
                "infrakit.tokens: answered %r without Redis: Redis at %s is unreachable (%s) "
                "and on_backend_error=fail_open; %d check(s) answered permissively so far "
                "(this warning repeats at most every %g s while it lasts)",
                answer,
                self.url,
                type(cause).__name__ if cause is not None else "error",
                self._permissive_answers,
                OUTAGE_WARNING_INTERVAL_S,
            )

    async def _check(
        self, what: str, operation: Callable[[], Awaitable[bool]], permissive: bool
    ) -> bool:
        try:
            return await self._call(what, operation)
        except TokenStoreError as error:
            self._fail_open(error, "valid" if permissive else "not revoked")
            return permissive

    # --- the TokenStore protocol ----------------------------------------------------

    async def store(self, jti: str, user_id: str, expires_at: datetime) -> StoredToken:
        """Store a token; returns it as stored.

        ``revoked`` is already true when the store ran concurrently with a
        :meth:`revoke_all_for_user` of the same user (the token was created at
        or before its cutoff). Storing a jti again for the same user only
        ever extends its lifetime.
        """
        now = datetime.now(UTC)
        expires = validate_store(
            jti, user_id, expires_at, now=now, max_lifetime_s=self.max_lifetime_s
        )
        ttl_s = math.ceil((expires - now).total_seconds())
        if ttl_s <= 0:  # validate_store already refuses this; never send a TTL <= 0
            raise ValueError(f"expires_at {expires.isoformat()} leaves no time to live")
        ttl_ms = ttl_s * 1000
        created_us, expires_us = _micros(now), _micros(expires)
        self.client  # noqa: B018 - creates the client and its scripts

        async def write() -> list[str]:
            cutoff = await self._scripts["store_user"](
                keys=[self.user_key(user_id), self.cutoff_key(user_id)],
                args=[jti, int(expires.timestamp() * 1000), ttl_ms, int(now.timestamp() * 1000)],
            )
            revoked = cutoff is not None and created_us <= int(cutoff)
            outcome: list[str] = await self._scripts["store_record"](
                keys=[self.token_key(jti)],
                args=[user_id, created_us, expires_us, ttl_ms, "1" if revoked else "0"],
            )
            return outcome

        result = await self._call("storing a token", write)
        outcome = result[0]
        if outcome in ("revoked", "conflict"):
            # undo the user-set entry made before the refusal (best effort)
            with contextlib.suppress(TokenStoreError):
                await self._call(
                    "tidying up", lambda: self.client.zrem(self.user_key(user_id), jti)
                )
        if outcome == "revoked":
            raise ValueError(f"jti {jti!r} was revoked; a revoked jti cannot be stored again")
        if outcome == "conflict":
            raise ValueError(f"jti {jti!r} is already stored for another user")
        created, stored_expires, revoked_flag = result[1:]
        return StoredToken(
            jti, user_id, _from_micros(created), _from_micros(stored_expires), revoked_flag == "1"
        )

    async def get(self, jti: str) -> StoredToken | None:
        _check_id("jti", jti)
        data: dict[str, str] = await self._call(
            "reading a token", lambda: self.client.hgetall(self.token_key(jti))
        )
        if not data or "m" in data or not data.get("u"):
            return None
        expires = _from_micros(data["e"])
        if expires <= datetime.now(UTC):
            return None
        return StoredToken(jti, data["u"], _from_micros(data["c"]), expires, data.get("r") == "1")

    async def revoke(self, jti: str, *, expires_at: datetime | None = None) -> bool:
        """Revoke ``jti``; an unknown one is remembered as revoked until ``expires_at``
        (default: ``max_lifetime_s`` from now) so it cannot be stored later.
        """
        _check_id("jti", jti)
        now = time.time()
        until = revocation_until(expires_at, now, self.max_lifetime_s)
        keep_ms = max(1000, math.ceil(until - now) * 1000)
        self.client  # noqa: B018
        changed = await self._call(
            "revoking a token",
            lambda: self._scripts["revoke"](
                keys=[self.token_key(jti)], args=[keep_ms, int(now * 1_000_000)]
            ),
        )
        return bool(changed)

    async def _read_with_cutoff(self, jti: str, user_id: str) -> tuple[list[str | None], bool]:
        """The token's ``r``/``e``/``c`` fields and whether its user's cutoff
        covers it, in one round trip: the token's hash and the cutoff of
        ``user_id`` read side by side (two slots on a cluster: one command
        each, sent together). A token of another user than ``user_id`` costs
        a second round trip, for its own user's cutoff."""
        client = self.client
        async with client.pipeline(transaction=False) as pipe:
            pipe.hmget(self.token_key(jti), ("r", "e", "c", "u"))
            pipe.get(self.cutoff_key(user_id))
            (revoked, expires, created, owner), cutoff = await pipe.execute()
        if created is None or owner is None:  # unknown, or a marker
            return [revoked, expires, created], False
        if owner != user_id:
            cutoff = await client.get(self.cutoff_key(owner))
        return [revoked, expires, created], cutoff is not None and int(created) <= int(cutoff)

    async def is_revoked(self, jti: str, *, user_id: str | None = None) -> bool:
        """True for a revoked token. With ``user_id`` (the user the token was
        stored for, e.g. the JWT's ``sub``) the user's "log out everywhere"
        cutoff is read in the same round trip, so a check that starts once
        :meth:`revoke_all_for_user` has written it answers revoked even while
        that call is still marking the user's tokens."""
        key = self.token_key(jti)
        client = self.client

        if user_id is not None:
            owner = user_id

            async def check_both() -> bool:
                (revoked, _, _), cut = await self._read_with_cutoff(jti, owner)
                return revoked == "1" or cut

            return await self._check("checking a token", check_both, permissive=False)

        async def check() -> bool:
            revoked: str | None = await client.hget(key, "r")
            return revoked == "1"

        return await self._check("checking a token", check, permissive=False)

    async def is_valid(self, jti: str, *, user_id: str | None = None) -> bool:
        """True only for a known, unexpired, unrevoked token. ``user_id``: as for
        :meth:`is_revoked` (same one round trip, and no window during a
        "log out everywhere")."""
        key = self.token_key(jti)
        client = self.client

        if user_id is not None:
            owner = user_id

            async def check_both() -> bool:
                (revoked, expires, _), cut = await self._read_with_cutoff(jti, owner)
                return revoked == "0" and not cut and int(expires or 0) > time.time() * 1_000_000

            return await self._check("checking a token", check_both, permissive=True)

        async def check() -> bool:
            revoked, expires = await client.hmget(key, ("r", "e"))
            return revoked == "0" and int(expires) > time.time() * 1_000_000

        return await self._check("checking a token", check, permissive=True)

    async def is_revoked_many(self, jtis: Iterable[str]) -> list[bool]:
        """``is_revoked`` for many jtis: one script per 1,000 jtis on a standalone
        or Sentinel-managed server, one pipeline of ``HGET``s on a cluster
        (a script can only read keys of one slot, and the jtis' keys are spread
        over all of them)."""
        keys = [self.token_key(jti) for jti in as_list(jtis)]
        if not keys:
            return []
        client = self.client
        scripted = not (self.cluster or self._scripts_denied)
        check = self._revoked_scripted if scripted else self._revoked_pipelined
        try:
            return await self._call("checking tokens", functools.partial(check, client, keys))
        except TokenStoreError as error:
            self._fail_open(error, "not revoked", len(keys))
            return [False] * len(keys)

    async def _revoked_scripted(self, client: Any, keys: list[str]) -> list[bool]:
        """The revoked flags of ``keys``, one ``_REVOKED_MANY`` script per chunk."""
        from redis.exceptions import NoPermissionError

        script = self._scripts["revoked_many"]
        cancels = _cancel_requests()
        flags: list[bool] = []
        for start in range(0, len(keys), _MANY_CHUNK):
            _honour_cancel(cancels)  # stop between chunks, not after the last one
            chunk = keys[start : start + _MANY_CHUNK]
            try:
                answer: str = await script(keys=chunk, client=client)
            except NoPermissionError:
                # an ACL user that may read but not run scripts (a service
                # that only checks tokens): one HGET each, from now on
                self._scripts_denied = True
                return flags + await self._revoked_pipelined(client, keys[start:])
            flags += [flag == "1" for flag in answer]
        return flags

    @staticmethod
    async def _revoked_pipelined(client: Any, keys: list[str]) -> list[bool]:
        """The revoked flags of ``keys``: one ``HGET`` each, pipelined (the
        cluster client sends each node its share side by side)."""
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "r")
            return [value == "1" for value in await pipe.execute()]

    async def revoke_all_for_user(self, user_id: str) -> int:
        """Revoke every token of the user. The cutoff is written first (one
        script in the user's slot); checks given the user (``user_id=``) see it
        from then on. The tokens are then marked in batches, for checks that
        name only the jti. Each round trip takes its own turn at the pool."""
        _check_id("user_id", user_id)
        now = time.time()
        self.client  # noqa: B018
        cancels = _cancel_requests()
        what = "revoking a user's tokens"

        async def revoke_all() -> int:
            ttl_ms, members = await self._gated(
                what,
                lambda: self._scripts["revoke_all"](
                    keys=[self.user_key(user_id), self.cutoff_key(user_id)],
                    args=[int(now * 1_000_000), int(now * 1000), int(self.max_lifetime_s * 1000)],
                ),
            )
            marker_ttl = max(int(ttl_ms), 1000)
            revoked = 0
            mark = self._scripts["mark"]

            async def mark_one(jti: str) -> int:
                return int(
                    await self._gated(
                        what, lambda: mark(keys=[self.token_key(jti)], args=[user_id, marker_ttl])
                    )
                )

            async def mark_batch(batch: list[str]) -> list[int]:
                async with self.client.pipeline(transaction=False) as pipe:
                    for jti in batch:
                        await mark(
                            keys=[self.token_key(jti)], args=[user_id, marker_ttl], client=pipe
                        )
                    return [int(r) for r in await pipe.execute()]

            for start in range(0, len(members), _MARK_BATCH):
                _honour_cancel(cancels)  # stop between batches, not after the last one
                batch = members[start : start + _MARK_BATCH]
                if self.cluster:
                    # redis-py's cluster pipeline refuses scripts; the token keys
                    # live on many nodes, so send them side by side instead.
                    results = await asyncio.gather(*(mark_one(j) for j in batch))
                else:  # one pipelined round trip per batch
                    results = await self._gated(what, functools.partial(mark_batch, batch))
                revoked += sum(results)
            return revoked

        return await self._call(what, revoke_all, gated=False)

    async def revoked_before(self, user_id: str) -> datetime | None:
        """The user's "log out everywhere" cutoff, if one is in force."""
        _check_id("user_id", user_id)
        value = await self._call(
            "reading a cutoff", lambda: self.client.get(self.cutoff_key(user_id))
        )
        return None if value is None else _from_micros(value)

    async def count(self) -> int:
        """Tokens held (revoked included, markers and expired excluded). Walks the
        keyspace with SCAN: O(number of keys), for operators rather than hot paths."""
        client = self.client
        pattern = f"{self.prefix}t:*"

        async def count() -> int:
            now_us = time.time() * 1_000_000
            total = 0
            keys: list[str] = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(keys), 1000):
                async with client.pipeline(transaction=False) as pipe:
                    for key in keys[start : start + 1000]:
                        pipe.hmget(key, ("m", "e"))
                    rows = await pipe.execute()
                for marker, expires in rows:
                    if marker is None and expires is not None and int(expires) > now_us:
                        total += 1
            return total

        return await self._call("counting tokens", count)

    async def health_check(self) -> HealthResult:
        """Time one ``PING``; never raises for a Redis that is down."""
        start = time.perf_counter()
        try:
            await self._call("PING", self.client.ping)
        except TokenStoreError as error:
            return HealthResult(False, (time.perf_counter() - start) * 1000, str(error))
        return HealthResult(True, (time.perf_counter() - start) * 1000)


def create(section: RedisTokenSettings, settings: InfraSettings, **_: Any) -> RedisTokenStore:
    return RedisTokenStore(section)


BACKEND = Backend(
    "tokens",
    "redis",
    RedisTokenSettings,
    create,
    extra="redis",
    modules=("redis",),
    description="Redis (standalone, Sentinel or Cluster) token store",
)


def _share_tls_context(pool: Any) -> None:
    """One TLS context for every connection of ``pool``.

    redis-py builds an ``SSLContext`` per connection, and
    ``ssl.create_default_context()`` reads the system's CA bundle each time:
    tens of milliseconds of CPU on the event loop per new connection. A burst
    of 50 new ``rediss://`` connections blocked the loop for seconds, long
    enough for connects to time out (an "outage" made by the client). A
    context is meant to be shared by connections with the same settings, and
    a pool's connections all have the same.
    """
    from redis.asyncio.connection import SSLConnection

    base = pool.connection_class
    if not (isinstance(base, type) and issubclass(base, SSLConnection)):
        return
    shared: list[Any] = []

    class SharedContextConnection(base):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            if shared:
                self.ssl_context = shared[0]  # built once, on first connect
            else:
                shared.append(self.ssl_context)

    SharedContextConnection.__name__ = SharedContextConnection.__qualname__ = base.__name__
    pool.connection_class = SharedContextConnection
