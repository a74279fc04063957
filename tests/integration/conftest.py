"""Real services for integration tests.

PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are used when they
answer. With ``INFRAKIT_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a missing
service fails the test instead of skipping it, so CI cannot pass by skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def services_required() -> bool:
    return os.environ.get("INFRAKIT_REQUIRE_SERVICES", "").strip().lower() in {"1", "true", "yes"}


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def need(service: str, host: str, port: int) -> None:
    """Skip (or, when services are required, fail) unless ``host:port`` answers."""
    if port_open(host, port):
        return
    message = f"{service} is not reachable on {host}:{port}"
    if services_required():
        pytest.fail(f"{message} and INFRAKIT_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_available() -> None:
    need("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)


@pytest.fixture(scope="session")
def redis_available() -> None:
    need("Redis", REDIS_HOST, REDIS_PORT)


@pytest.fixture(scope="session")
def pg_admin_url(postgres_available: None) -> str:
    return f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres"


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=POSTGRES_HOST, port=POSTGRES_PORT, user="postgres", database="postgres"
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def _own_database() -> Iterator[str]:
    """A database made for the caller, dropped afterwards whatever happens."""
    name = f"infrakit_it_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A database of this test session's own, dropped at the end."""
    with _own_database() as url:
        yield url


@pytest.fixture
def fresh_pg_url(pg_admin_url: str) -> Iterator[str]:
    """A database for one test, dropped after it."""
    with _own_database() as url:
        yield url


@pytest.fixture
def redis_prefix(redis_available: None) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"infrakit:test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    asyncio.run(_delete_prefix(f"redis://{REDIS_HOST}:{REDIS_PORT}/0", prefix, cluster=False))


async def _delete_prefix(url: str, prefix: str, *, cluster: bool) -> None:
    import redis.asyncio as redis
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for key in keys:
            await client.delete(key)
    finally:
        await client.aclose()


def _start_or_fail(factory: Any, what: str) -> Any:
    try:
        return factory().start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        if services_required():
            pytest.fail(f"cannot start {what}: {error}", pytrace=False)
        pytest.skip(f"cannot start {what}: {error}")


def _running(factory: Any, what: str) -> Iterator[Any]:
    """Start a test-owned server for a fixture and stop it afterwards."""
    server = _start_or_fail(factory, what)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Any]:
    from tests.integration.redisprocs import RedisCluster

    yield from _running(RedisCluster, "a 3-master Redis Cluster")


@pytest.fixture
def cluster_prefix(redis_cluster: Any) -> Iterator[str]:
    prefix = f"infrakit:test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    asyncio.run(_delete_prefix(redis_cluster.url, prefix, cluster=True))


@pytest.fixture
def own_redis() -> Iterator[Any]:
    """A redis-server of this test's own, which the test may kill."""
    from tests.integration.redisprocs import RedisProcess

    yield from _running(RedisProcess, "a test-owned redis-server")


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[Any]:
    from tests.integration.redisprocs import RedisSentinel

    yield from _running(RedisSentinel, "a Redis master with a Sentinel")


@pytest.fixture(scope="session")
def redis_tls() -> Iterator[Any]:
    from tests.integration.redisprocs import RedisTLS

    yield from _running(RedisTLS, "a TLS redis-server")


@pytest.fixture(autouse=True)
def _telemetry_flushes_end_with_their_test() -> Iterator[None]:
    """A provider stopped with its collector down or hanging flushes on in a
    daemon thread after ``shutdown()`` returns (bounded for the application,
    not for the exporter's retries): wait for it here, so its warnings are not
    written into whatever a later test configured logging to (a property test
    counting its lines failed so)."""
    yield
    for thread in threading.enumerate():
        if thread.name == "infrakit-telemetry-shutdown":
            thread.join(60)  # generous: the tests' exporters time out in 1-2 s
            assert not thread.is_alive(), "a telemetry flush outlived its test by 60 s"
