"""Real services for integration tests.

PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are used when they
answer. With ``INFRAKIT_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a missing
service fails the test instead of skipping it, so CI cannot pass by skipping.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator

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


@pytest.fixture(scope="session")
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A database of this test session's own, dropped at the end."""
    name = f"infrakit_it_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def fresh_pg_url(pg_admin_url: str) -> Iterator[str]:
    """A database for one test, dropped after it."""
    name = f"infrakit_it_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
