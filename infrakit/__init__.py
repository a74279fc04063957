"""infrakit: one validated profile builds an application's infrastructure.

::

    from infrakit import Infra

    async with Infra.from_profile("local") as infra:
        ...
"""

from infrakit.container import ComponentInfo, Infra, InfraContainer
from infrakit.errors import (
    AuditError,
    AuditOutcomeUnknownError,
    ConfigError,
    ConfigProblem,
    DatabaseError,
    InfrastructureError,
    MissingDependencyError,
    ShutdownError,
    TelemetryError,
    TokenStoreError,
)
from infrakit.logging import configure_logging
from infrakit.registry import register_backend
from infrakit.settings import InfraSettings, load_settings

__version__ = "0.1.0"

__all__ = [
    "AuditError",
    "AuditOutcomeUnknownError",
    "ComponentInfo",
    "ConfigError",
    "ConfigProblem",
    "DatabaseError",
    "Infra",
    "InfraContainer",
    "InfraSettings",
    "InfrastructureError",
    "MissingDependencyError",
    "ShutdownError",
    "TelemetryError",
    "TokenStoreError",
    "configure_logging",
    "load_settings",
    "register_backend",
]
