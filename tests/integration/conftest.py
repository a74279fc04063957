"""Real services for integration tests.

PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are used when they
answer. With ``INFRAKIT_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a missing
service fails the test instead of skipping it, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import socket

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
