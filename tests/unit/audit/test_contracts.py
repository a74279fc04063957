"""The audit contract suite on the in-process backends (PostgreSQL: tests/integration)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infrakit.audit import InMemoryAuditLogger, SqlAuditLogger
from infrakit.database import DatabaseSession, upgrade
from infrakit.testing.contracts import AuditLoggerContract, MakeLogger


class TestInMemoryAuditLogger(AuditLoggerContract):
    """InMemoryAuditLogger keeps the contract."""

    @pytest.fixture
    def make_logger(self) -> MakeLogger:
        async def make() -> InMemoryAuditLogger:
            return InMemoryAuditLogger(max_entries=1000)

        return make


class TestSqlAuditLoggerOnSqliteFile(AuditLoggerContract):
    """SqlAuditLogger on a SQLite file keeps the contract."""

    @pytest.fixture
    async def database(self, tmp_path: Path) -> AsyncIterator[DatabaseSession]:
        db = DatabaseSession(f"sqlite+aiosqlite:///{tmp_path}/audit.db")
        await upgrade(db)
        yield db
        await db.aclose()

    @pytest.fixture
    def make_logger(self, database: DatabaseSession) -> MakeLogger:
        async def make() -> SqlAuditLogger:
            logger = SqlAuditLogger(database)
            await logger.start()
            return logger

        return make


class TestSqlAuditLoggerOnSqliteMemory(AuditLoggerContract):
    """SqlAuditLogger on in-memory SQLite keeps the contract too."""

    @pytest.fixture
    async def database(self) -> AsyncIterator[DatabaseSession]:
        db = DatabaseSession("sqlite+aiosqlite:///:memory:", auto_migrate=True)
        await db.start()
        yield db
        await db.aclose()

    @pytest.fixture
    def make_logger(self, database: DatabaseSession) -> MakeLogger:
        async def make() -> SqlAuditLogger:
            return SqlAuditLogger(database)

        return make
