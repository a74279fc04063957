"""infrakit: one validated profile builds an application's infrastructure.

::

    from infrakit import Infra

    async with Infra.from_profile("local") as infra:
        ...
"""

from infrakit.auth import IssuedToken, JwtAuth, issue_token
from infrakit.container import ComponentInfo, Infra, InfraContainer
from infrakit.errors import (
    AuditError,
    AuditOutcomeUnknownError,
    AuthError,
    ConfigError,
    ConfigProblem,
    DatabaseError,
    InfrastructureError,
    MissingDependencyError,
    ShutdownError,
    TelemetryError,
    TokenRejectedError,
    TokenStoreError,
)
from infrakit.logging import configure_logging
from infrakit.registry import register_backend
from infrakit.settings import InfraSettings, load_settings

__version__ = "0.1.0"

__all__ = [
    "AuditError",
    "AuditOutcomeUnknownError",
    "AuthError",
    "ComponentInfo",
    "ConfigError",
    "ConfigProblem",
    "DatabaseError",
    "Infra",
    "InfraContainer",
    "InfraSettings",
    "InfrastructureError",
    "IssuedToken",
    "JwtAuth",
    "MissingDependencyError",
    "ShutdownError",
    "TelemetryError",
    "TokenRejectedError",
    "TokenStoreError",
    "configure_logging",
    "issue_token",
    "load_settings",
    "register_backend",
]
