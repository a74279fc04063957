"""Validated profiles: the settings models and the loader."""

from infrakit.settings.base import BackendSettings, Section, mask_value
from infrakit.settings.loader import (
    EMBEDDED_PROFILES_DIR,
    ENV_PREFIX,
    available_profiles,
    load_settings,
    resolve_profile,
)
from infrakit.settings.models import (
    AuditSettings,
    AuthSettings,
    DatabaseSettings,
    InfraSettings,
    InstrumentSettings,
    LoggingSettings,
    RedactSettings,
    ServiceSettings,
    TelemetrySettings,
    TokensSettings,
    settings_model,
)

__all__ = [
    "EMBEDDED_PROFILES_DIR",
    "ENV_PREFIX",
    "AuditSettings",
    "AuthSettings",
    "BackendSettings",
    "DatabaseSettings",
    "InfraSettings",
    "InstrumentSettings",
    "LoggingSettings",
    "RedactSettings",
    "Section",
    "ServiceSettings",
    "TelemetrySettings",
    "TokensSettings",
    "available_profiles",
    "load_settings",
    "mask_value",
    "resolve_profile",
    "settings_model",
]
