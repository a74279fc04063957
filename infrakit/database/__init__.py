"""The application's SQL database: sessions, health, and the kit's migrations."""

from infrakit.database.migrate import current_revision, upgrade, upgrade_sync
from infrakit.database.session import DatabaseSession, HealthResult, from_settings

__all__ = [
    "DatabaseSession",
    "HealthResult",
    "current_revision",
    "from_settings",
    "upgrade",
    "upgrade_sync",
]
