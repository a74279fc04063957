"""The profile format, as pydantic models: one per component section.

Every section forbids unknown keys and checks its bounds; the loader turns
pydantic's errors into :class:`~infrakit.errors.ConfigError` lines that name
the file, line and key. The docs' profile reference is generated from these
models (field descriptions included), so they are the single source of truth.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from typing import Annotated, Any, ClassVar, Literal, Self, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from infrakit import registry
from infrakit.scrub import MASK
from infrakit.settings.auth import AuthSettings
from infrakit.settings.base import BackendSettings, Section
from infrakit.values import LOG_LEVELS, LogLevel, install_line

#: The shortest audit signing key accepted (characters): 32 random ones are beyond guessing.
MIN_SIGNING_KEY_LENGTH = 32

__all__ = [
    "LOG_LEVELS",
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
    "settings_model",
]


#: An HTTP token (RFC 9110): what method and header names are made of.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class ServiceSettings(Section):
    """Who is running: becomes telemetry resource attributes and log fields."""

    name: str | None = Field(
        None,
        description="Service name (OTel service.name); OTEL_SERVICE_NAME is used when unset.",
        min_length=1,
    )
    environment: str = Field("development", description="Deployment environment.", min_length=1)
    version: str = Field("0.0.0", description="Service version.", min_length=1)


# --- the component bases: each backend's model subclasses one ---------------------


class DatabaseSettings(BackendSettings):
    """The application's SQL database."""

    component: ClassVar[str] = "database"

    backend: str = Field("sqlalchemy", description="Database backend name.")


class TokensSettings(BackendSettings):
    """The JWT ``jti`` store used for revocation checks."""

    component: ClassVar[str] = "tokens"

    backend: str = Field("memory", description="memory | redis (or a registered backend).")
    max_lifetime_s: int = Field(
        30 * 24 * 3600,
        ge=1,
        description="Longest token lifetime accepted; revocations of unknown tokens "
        "and per-user cutoffs are kept this long.",
    )


class AuditSettings(BackendSettings):
    """The append-only audit log."""

    component: ClassVar[str] = "audit"

    backend: str = Field("memory", description="memory | sql (or a registered backend).")
    hash_chain: bool = Field(True, description="Chain entries by hash so tampering is detectable.")
    signing_key: SecretStr | None = Field(
        None,
        description="Key of a keyed chain (at least 32 characters, e.g. `openssl rand -hex 32`): "
        "each entry's hash becomes an HMAC-SHA256 with it, so a database writer without it "
        "cannot forge or re-hash entries, and checkpoints are signed with it. Keep it where "
        "the database's users cannot read it (`${file:/run/secrets/audit_key}`).",
    )
    previous_signing_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Keys that signed entries and checkpoints before `signing_key` "
        "(rotation): they still verify, they no longer sign.",
    )
    checkpoint_every: int = Field(
        1000,
        ge=0,
        description="With a signing key: sign and write the chain head after this many "
        "entries (0: not by count).",
    )
    checkpoint_interval_s: float = Field(
        60.0,
        ge=0,
        allow_inf_nan=False,
        description="With a signing key: also sign and write the head when this many seconds "
        "passed with entries not yet checkpointed (0: not by time).",
    )
    checkpoint_file: str | None = Field(
        None,
        min_length=1,
        description="Also append each checkpoint as a JSON line to this file (fsynced); keep it "
        "on storage the database's writers cannot change. Checkpoints always go to the log "
        "(event `infrakit.audit.checkpoint`).",
    )

    # Messages on the key fields start with a throwaway word: the text scrubber
    # masks the first word after a sensitive key's name, taking it for the value.
    @field_validator("signing_key")
    @classmethod
    def _signing_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return value
        _check_key_length(value, "key")
        if info.data.get("hash_chain") is False:
            raise ValueError(
                "key unusable with audit.hash_chain: false (the key signs the hash chain); "
                "set hash_chain: true or remove the key"
            )
        return value

    @field_validator("previous_signing_keys")
    @classmethod
    def _previous_keys(cls, value: list[SecretStr], info: ValidationInfo) -> list[SecretStr]:
        for key in value:
            _check_key_length(key, "keys")
        # (a signing_key that failed validation is missing from info.data: said already)
        if value and "signing_key" in info.data and info.data["signing_key"] is None:
            raise ValueError(
                "keys unused without audit.signing_key (the key that signs now); set it too"
            )
        return value

    @field_validator("checkpoint_file")
    @classmethod
    def _checkpoint_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and "signing_key" in info.data and info.data["signing_key"] is None:
            raise ValueError(
                "checkpoints need audit.signing_key (they are signed with it); set the key "
                "or remove checkpoint_file"
            )
        return value


def _check_key_length(key: SecretStr, word: str) -> None:
    if len(key.get_secret_value()) < MIN_SIGNING_KEY_LENGTH:
        raise ValueError(
            f"{word} too short: at least {MIN_SIGNING_KEY_LENGTH} characters are needed "
            "(make one with `openssl rand -hex 32`)"
        )


class InstrumentSettings(Section):
    """Optional OpenTelemetry contrib auto-instrumentation."""

    sqlalchemy: bool = Field(False, description="Instrument SQLAlchemy engines.")
    redis: bool = Field(False, description="Instrument redis-py clients.")


class TelemetrySettings(BackendSettings):
    """Traces and metrics (OpenTelemetry); ``exporter`` selects where they go."""

    component: ClassVar[str] = "telemetry"
    selector: ClassVar[str] = "exporter"

    exporter: str = Field("none", description="none | console | memory | otlp.")
    sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, allow_inf_nan=False, description="Share of traces sampled."
    )
    excluded_paths: list[str] = Field(
        default_factory=lambda: ["/health*", "/metrics"],
        description="Path globs (whole-path) the middleware does not trace.",
    )
    instrument: InstrumentSettings = Field(default_factory=InstrumentSettings)
    shutdown_timeout_s: float = Field(
        2.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Seconds stopping may spend exporting what is still buffered; "
        "the rest is dropped, with one warning.",
    )
    known_methods: list[str] | None = Field(
        None,
        description="HTTP methods named as they are on spans and metrics (others are "
        "_OTHER); unset: OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS, else the conventions' list.",
    )
    capture_request_headers: list[str] = Field(
        default_factory=list,
        description="Request headers recorded on server spans as "
        "http.request.header.<name> (opt-in; values scrubbed like any attribute).",
    )
    trusted_proxy: bool = Field(
        False,
        description="Read X-Forwarded-Host/-Proto/-For for server.address, url.scheme and "
        "client.address (only behind a proxy that sets them).",
    )

    def exporters(self, context: Any) -> Any:
        """Build the span exporter, span processor and metric reader (each
        exporter's model implements this: ``infrakit.telemetry.exporters``)."""
        raise NotImplementedError(f"the telemetry exporter {self.exporter!r} builds no exporters")

    @field_validator("known_methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        for method in value or ():
            if not _TOKEN.fullmatch(method) or method != method.upper():
                raise ValueError(
                    f"an HTTP method is an upper-case token like PROPFIND, got {method!r}"
                )
        return value

    @field_validator("capture_request_headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"not an HTTP header name: {name!r}")
        return [name.lower() for name in value]

    @field_validator("excluded_paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.startswith("/"):
                raise ValueError(f"excluded path patterns must start with '/', got {pattern!r}")
        return value


class RedactSettings(Section):
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


class LoggingSettings(Section):
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


#: Each component's settings base, by component name.
COMPONENT_SETTINGS: dict[str, type[BackendSettings]] = {
    "telemetry": TelemetrySettings,
    "database": DatabaseSettings,
    "tokens": TokensSettings,
    "audit": AuditSettings,
}


class InfraSettings(BaseSettings):
    """A whole validated profile.

    Build it with :func:`infrakit.load_settings`, which layers model defaults,
    the profile chain, ``INFRAKIT__SECTION__KEY`` env vars and explicit
    overrides, and remembers where each value came from (:meth:`sources`).

    The component sections are each validated by the model of the backend
    they select, among every registered backend (:func:`settings_model`
    assembles that union; constructing or validating ``InfraSettings`` uses
    it). ``InfraSettings(...)`` directly validates only what it is given: the
    loader owns the environment so that it can say which variable set which key.
    """

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, validate_default=True, hide_input_in_errors=True
    )

    service: ServiceSettings = Field(default_factory=ServiceSettings)
    # (lambdas: pydantic would hand a class factory the data validated so far)
    database: DatabaseSettings = Field(default_factory=lambda: DatabaseSettings())  # noqa: PLW0108
    tokens: TokensSettings = Field(default_factory=lambda: TokensSettings())  # noqa: PLW0108
    audit: AuditSettings = Field(default_factory=lambda: AuditSettings())  # noqa: PLW0108
    telemetry: TelemetrySettings = Field(default_factory=lambda: TelemetrySettings())  # noqa: PLW0108
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    _profile: str | None = PrivateAttr(default=None)
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    #: key paths whose value was read from a file: masked whatever their key
    _secret_paths: frozenset[tuple[str, ...]] = PrivateAttr(default_factory=frozenset)

    def __new__(cls, *args: Any, **data: Any) -> Self:
        model = settings_model(data) if cls is InfraSettings else cls
        return typing.cast(Self, super().__new__(model))

    def __init__(self, **values: Any) -> None:
        # BaseSettings takes _env_file=, _secrets_dir=, _env_prefix= ... and would
        # read them; here the loader owns every source, so they would be ignored
        ignored = sorted(k for k in values if k in _SOURCE_OPTIONS)
        if ignored:
            hint = ", ".join(f"{k}=" for k in ignored)
            raise TypeError(
                f"InfraSettings does not take {hint}: the profile loader reads every source; "
                "use load_settings(profile, env_file=..., secrets_dir=..., environ=...)"
            )
        super().__init__(**values)

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        if cls is InfraSettings:
            return settings_model(obj).model_validate(obj, *args, **kwargs)  # type: ignore[return-value]
        return super().model_validate(obj, *args, **kwargs)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if cls is InfraSettings:
            return settings_model().model_json_schema(*args, **kwargs)
        return super().model_json_schema(*args, **kwargs)

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

    @field_validator("auth")
    @classmethod
    def _token_lifetime(cls, value: AuthSettings, info: ValidationInfo) -> AuthSettings:
        # only when set: a profile that shortens tokens.max_lifetime_s and issues
        # no tokens through the kit is not wrong (issue_token then says so)
        if "access_token_ttl_s" not in value.model_fields_set:
            return value
        tokens = info.data.get("tokens")
        longest = getattr(tokens, "max_lifetime_s", None)
        if isinstance(longest, int) and value.access_token_ttl_s > longest:
            raise ValueError(
                f"auth.access_token_ttl_s ({value.access_token_ttl_s}) is longer than "
                f"tokens.max_lifetime_s ({longest}): the token store would refuse every issued "
                "token; shorten the first or raise the second"
            )
        return value

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
        """The settings as JSON-safe data with every secret masked: secret types,
        URL passwords, and every value read from a file (``${file:...}``, a
        ``*_FILE`` variable, the secrets directory), whatever its key."""
        data: dict[str, Any] = self.model_dump(mode="json")
        for path in self._secret_paths:
            _mask_at(data, path)
        return data

    def section(self, component: str) -> BackendSettings:
        """The validated section of ``component`` (typed by its backend's model)."""
        section: BackendSettings = getattr(self, component)
        return section

    def backend_name(self, component: str) -> str:
        """The backend ``component`` selects."""
        name: str = getattr(self.section(component), COMPONENT_SETTINGS[component].selector)
        return name


#: BaseSettings' source options (its ``_name=`` keyword arguments).
_SOURCE_OPTIONS = frozenset(
    name for name in inspect.signature(BaseSettings.__init__).parameters if name.startswith("_")
)


def _mask_at(data: Any, path: tuple[str, ...]) -> None:
    """Replace the value at ``path`` (mapping keys, list indexes) with the mask."""
    node = data
    for part in path[:-1]:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return
    last = path[-1]
    if isinstance(node, dict) and last in node:
        node[last] = MASK
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = MASK


def _installed(backend: registry.Backend) -> AfterValidator:
    """A missing optional package is a problem of the profile, reported with its fix."""

    def check(value: BackendSettings) -> BackendSettings:
        for module in backend.missing_modules():
            extra = backend.extra or module
            raise ValueError(
                f"the {backend.component} backend {backend.name!r} needs the {module!r} "
                f"package, which is not installed: {install_line(extra)}"
            )
        return value

    return AfterValidator(check)


def _pick(component: str) -> typing.Callable[[Any], str]:
    selector = COMPONENT_SETTINGS[component].selector
    default = registry.DEFAULT_BACKENDS[component]

    def pick(value: Any) -> str:
        if isinstance(value, dict):
            name = value.get(selector, default)
        else:
            name = getattr(value, selector, default)
        return name if isinstance(name, str) else repr(name)

    return pick


def _default(base: type[BackendSettings]) -> typing.Callable[[], BackendSettings]:
    """A no-argument factory (pydantic hands a class the data validated so far)."""

    def make() -> BackendSettings:
        return base()

    return make


Selection = tuple[tuple[str, str], ...]


@functools.cache
def _assemble(version: int, selection: Selection | None) -> type[InfraSettings]:
    chosen = dict(selection or ())
    fields: dict[str, Any] = {}
    for component, base in COMPONENT_SETTINGS.items():
        name = chosen.get(component)
        backend = registry.get_backend(component, name) if name is not None else None
        # the selected backend's model only (imports nothing else), or every
        # registered one (the schema, the reference, an unknown name's error)
        candidates = (
            {name: backend}
            if backend is not None and name is not None
            else registry.backends(component)
        )
        members = tuple(Annotated[b.settings, _installed(b), Tag(n)] for n, b in candidates.items())
        union: Any = Annotated[
            Union.__getitem__(members),  # a union built at run time
            Discriminator(_pick(component)),
        ]
        fields[component] = (union, Field(default_factory=_default(base), description=base.__doc__))
    model: type[InfraSettings] = create_model(
        "InfraSettings", __base__=InfraSettings, __module__=__name__, **fields
    )
    return model


def selected_backends(data: Any) -> Selection:
    """The backend each component's section of ``data`` selects (its default if none)."""
    chosen = []
    for component, base in COMPONENT_SETTINGS.items():
        section = data.get(component) if isinstance(data, dict) else None
        name = section.get(base.selector) if isinstance(section, dict) else None
        if isinstance(section, BaseModel):
            name = getattr(section, base.selector, None)
        if name is None and (section is None or isinstance(section, dict)):
            name = registry.DEFAULT_BACKENDS[component]
        if isinstance(name, str):
            chosen.append((component, name))
    return tuple(chosen)


def settings_model(data: Any = None) -> type[InfraSettings]:
    """The profile model: :class:`InfraSettings` with each component section a
    discriminated union of backend models — of every registered backend, or,
    given the data about to be validated, of the backends it selects (so
    loading a profile imports no backend it does not use). Rebuilt when a
    backend is registered."""
    selection = None if data is None else selected_backends(data)
    return _assemble(registry.version(), selection)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay leaves."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data} if prefix else {}
