"""The profile format, as pydantic models: one per component section.

Every section forbids unknown keys and checks its bounds; the loader turns
pydantic's errors into :class:`~infrakit.errors.ConfigError` lines that name
the file, line and key. The docs' profile reference is generated from these
models (field descriptions included), so they are the single source of truth.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from infrakit import registry
from infrakit.scrub import SecretUrl

__all__ = [
    "AuditSettings",
    "DatabaseSettings",
    "InfraSettings",
    "LoggingSettings",
    "RedactSettings",
    "ServiceSettings",
    "TelemetrySettings",
    "TokensSettings",
]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _check_backend(component: str, value: str) -> str:
    if value in registry.BUILTIN_NAMES.get(component, ()):
        return value
    known = registry.known_names(component)
    if value in known:
        return value
    close = difflib.get_close_matches(value, known, n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown backend{suggestion}; expected one of: {', '.join(known)}")


class ServiceSettings(_Section):
    """Who is running: becomes telemetry resource attributes and log fields."""

    name: str | None = Field(
        None,
        description="Service name (OTel service.name); OTEL_SERVICE_NAME is used when unset.",
        min_length=1,
    )
    environment: str = Field("development", description="Deployment environment.", min_length=1)
    version: str = Field("0.0.0", description="Service version.", min_length=1)


class DatabaseSettings(_Section):
    """The application's SQL database (SQLAlchemy async engine)."""

    backend: str = Field("sqlalchemy", description="Database backend name.")
    url: SecretUrl = Field(
        SecretUrl("sqlite+aiosqlite:///:memory:"),
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path.db or postgresql+asyncpg://...",
    )
    pool_size: int = Field(5, ge=1, description="Connections kept open (not used by SQLite).")
    max_overflow: int = Field(10, ge=0, description="Extra connections allowed under load.")
    pool_pre_ping: bool = Field(True, description="Test a connection before handing it out.")
    pool_recycle_s: int = Field(1800, ge=-1, description="Recycle connections after N seconds.")
    connect_timeout_s: float = Field(
        5.0, gt=0, allow_inf_nan=False, description="Connect timeout in seconds."
    )
    echo: bool = Field(
        False,
        description="Log every SQL statement (development only); bound parameters are not shown.",
    )
    echo_parameters_unsafe: bool = Field(
        False,
        description="Also show bound parameters in echoed statements and SQL error messages. "
        "UNSAFE: they carry passwords, tokens and audit details; never in production.",
    )
    auto_migrate: bool = Field(
        False, description="Apply the kit's migrations at start-up (else: infrakit db upgrade)."
    )

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        return _check_backend("database", value)


class TokensSettings(_Section):
    """The JWT ``jti`` store used for revocation checks."""

    backend: str = Field("memory", description="memory | redis (or a registered backend).")
    url: SecretUrl = Field(
        SecretUrl("redis://127.0.0.1:6379/0"),
        description="redis://, rediss:// or redis+sentinel:// URL (redis backend).",
    )
    cluster: bool = Field(False, description="Connect to a Redis Cluster.")
    key_prefix: str = Field("infrakit:tok:", min_length=1, description="Prefix of every key.")
    max_entries: int = Field(100_000, ge=1, description="Capacity of the memory backend.")
    max_lifetime_s: int = Field(
        30 * 24 * 3600,
        ge=1,
        description="Longest token lifetime accepted; revocations of unknown tokens "
        "and per-user cutoffs are kept this long.",
    )
    socket_timeout_s: float = Field(
        0.5,
        gt=0,
        lt=60,
        allow_inf_nan=False,
        description="Redis timeout in seconds for one command on an open connection.",
    )
    connect_timeout_s: float = Field(
        5.0,
        gt=0,
        lt=300,
        allow_inf_nan=False,
        description="Redis timeout in seconds for opening a connection, TLS handshake "
        "included (a burst of new TLS connections is slow, not an outage).",
    )
    on_backend_error: Literal["fail_closed", "fail_open"] = Field(
        "fail_closed",
        description="fail_closed raises when the backend is down; fail_open answers permissively.",
    )

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        return _check_backend("tokens", value)


class AuditSettings(_Section):
    """The append-only audit log."""

    backend: str = Field("memory", description="memory | sql (or a registered backend).")
    max_entries: int = Field(10_000, ge=1, description="Capacity of the memory backend.")
    hash_chain: bool = Field(True, description="Chain entries by hash so tampering is detectable.")

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str) -> str:
        return _check_backend("audit", value)


class InstrumentSettings(_Section):
    """Optional OpenTelemetry contrib auto-instrumentation."""

    sqlalchemy: bool = Field(False, description="Instrument SQLAlchemy engines.")
    redis: bool = Field(False, description="Instrument redis-py clients.")


class TelemetrySettings(_Section):
    """Traces and metrics (OpenTelemetry)."""

    exporter: str = Field("none", description="none | console | memory | otlp.")
    endpoint: SecretUrl | None = Field(
        None,
        description="OTLP endpoint; OTEL_EXPORTER_OTLP_ENDPOINT is used when unset.",
    )
    protocol: Literal["http/protobuf", "grpc"] = Field(
        "http/protobuf", description="OTLP protocol."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Headers sent to the collector (values are secret)."
    )
    timeout_s: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="Export timeout in seconds."
    )
    compression: Literal["none", "gzip"] = Field("none", description="OTLP compression.")
    sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, allow_inf_nan=False, description="Share of traces sampled."
    )
    excluded_paths: list[str] = Field(
        default_factory=lambda: ["/health*", "/metrics"],
        description="Path globs (whole-path) the middleware does not trace.",
    )
    max_queue_size: int = Field(2048, ge=1, description="Spans buffered before dropping.")
    instrument: InstrumentSettings = Field(default_factory=InstrumentSettings)

    @field_validator("exporter")
    @classmethod
    def _exporter(cls, value: str) -> str:
        return _check_backend("telemetry", value)


class RedactSettings(_Section):
    """What is never shown: redaction in logs, spans and error messages."""

    extra_patterns: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Key names redacted in addition to the defaults."
    )
    replacement: str = Field("[REDACTED]", description="What a redacted value becomes.")
    extra_params: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="URL query/fragment parameter names masked in logs, spans and errors, "
        "in addition to the defaults (password, token, key, sig, ...).",
    )


class LoggingSettings(_Section):
    """The structlog pipeline (stdlib logging is routed through it too)."""

    level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    format: Literal["json", "console"] = Field("json", description="json lines or console.")
    development: bool = Field(False, description="Colourful console output for humans.")
    traceback_locals: bool = Field(
        False,
        description="Show each frame's local variables in logged tracebacks (redacted like "
        "the rest). Off by default: locals hold passwords, tokens and request bodies.",
    )
    redact: RedactSettings = Field(default_factory=RedactSettings)

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


class InfraSettings(BaseSettings):
    """A whole validated profile.

    Build it with :func:`infrakit.load_settings`, which layers model defaults,
    the profile chain, ``INFRAKIT__SECTION__KEY`` env vars and explicit
    overrides, and remembers where each value came from (:meth:`sources`).
    Constructing ``InfraSettings(...)`` directly validates only what it is
    given: the loader owns the environment so that it can say which variable
    set which key.
    """

    model_config = SettingsConfigDict(extra="forbid", frozen=True, validate_default=True)

    service: ServiceSettings = Field(default_factory=ServiceSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    tokens: TokensSettings = Field(default_factory=TokensSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    _profile: str | None = PrivateAttr(default=None)
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The loader already merged env vars, with provenance; reading them
        # here again would apply them twice and lose where they came from.
        return (init_settings,)

    @property
    def profile(self) -> str | None:
        """The profile this was loaded from (name or path), if any."""
        return self._profile

    def sources(self) -> dict[str, str]:
        """Where each leaf key's value came from, by dotted key.

        Values look like ``default``, ``profiles/prod.yaml:14:3``,
        ``env INFRAKIT__DATABASE__POOL_SIZE`` or ``override``.
        """
        return {key: self._sources.get(key, "default") for key in flatten(self.masked())}

    def masked(self) -> dict[str, Any]:
        """The settings as JSON-safe data with every secret masked."""
        return self.model_dump(mode="json")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay leaves."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data} if prefix else {}
