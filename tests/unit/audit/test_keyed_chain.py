"""Keyed chains, checkpoints and retries on SQLite (PostgreSQL: tests/integration)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infrakit.database import DatabaseSession, upgrade
from tests.unit.audit.scenarios import TamperScenarios


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[DatabaseSession]:
    db = DatabaseSession(f"sqlite+aiosqlite:///{tmp_path}/audit.db")
    await upgrade(db)
    yield db
    await db.aclose()


class TestTamperingOnSqlite(TamperScenarios):
    """What a writer of the SQLite file can do, and what finds it."""
