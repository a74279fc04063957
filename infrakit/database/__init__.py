"""The application's SQL database: sessions, health, and the migration runner.

Names are imported on first use: the backend module is imported to validate a
profile, the migration runner only when migrations run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from infrakit.database.migrate import current_revision, upgrade, upgrade_sync
    from infrakit.database.session import (
        DatabaseSession,
        HealthResult,
        SqlAlchemyDatabaseSettings,
    )

__all__ = [
    "DatabaseSession",
    "HealthResult",
    "SqlAlchemyDatabaseSettings",
    "current_revision",
    "upgrade",
    "upgrade_sync",
]

_WHERE = {
    "DatabaseSession": "infrakit.database.session",
    "HealthResult": "infrakit.database.session",
    "SqlAlchemyDatabaseSettings": "infrakit.database.session",
    "current_revision": "infrakit.database.migrate",
    "upgrade": "infrakit.database.migrate",
    "upgrade_sync": "infrakit.database.migrate",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'infrakit.database' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
