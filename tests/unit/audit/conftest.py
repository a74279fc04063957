"""Fixtures shared by the audit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infrakit.database import DatabaseSession, upgrade


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[DatabaseSession]:
    """A migrated SQLite file of this test's own."""
    db = DatabaseSession(f"sqlite+aiosqlite:///{tmp_path}/audit.db")
    await upgrade(db)
    yield db
    await db.aclose()
