"""The one error tree of infrakit.

::

    Exception
    ├── InfrastructureError            anything the kit raises on purpose
    │   ├── ConfigError (+ ValueError) a profile, env var or override is wrong;
    │   │                              carries ``problems`` (file, line, key, fix)
    │   │   └── MissingDependencyError an optional extra is not installed
    │   ├── DatabaseError              a driver/connection failure, cause chained
    │   ├── TokenStoreError            a token backend failure, cause chained
    │   ├── AuthError                  the keys that verify JWTs cannot be had (JWKS down)
    │   ├── TokenRejectedError         a bearer JWT was refused (``detail``: the kit's words)
    │   ├── AuditError                 an audit write/read/verify failure
    │   │   └── AuditOutcomeUnknownError   the connection broke during COMMIT:
    │   │                                  the entries may be stored; retry them
    │   ├── TelemetryError             exporter or provider set-up failure
    │   └── ShutdownError              components that failed to stop, all listed
    └── ValueError                     bad arguments to a component (validation)

Validation of arguments raises ``ValueError`` (``ConfigError`` is one too);
failures of a backend are wrapped in the component's subclass with
``raise ... from exc`` so the original cause stays on ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from infrakit.values import install_line

__all__ = [
    "AuditError",
    "AuditOutcomeUnknownError",
    "AuthError",
    "ConfigError",
    "ConfigProblem",
    "DatabaseError",
    "InfrastructureError",
    "MissingDependencyError",
    "ShutdownError",
    "TelemetryError",
    "TokenRejectedError",
    "TokenStoreError",
]


class InfrastructureError(Exception):
    """Base class of every error the kit raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a profile, an env var or an override.

    ``where`` is the place an operator should look (``profiles/prod.yaml:14:3``,
    ``env INFRAKIT__DATABASE__POOL_SIZE``, ``override database.pool_size``);
    ``value`` is already masked, so a problem can be printed as it is.
    """

    message: str
    key: str = ""
    where: str = ""
    value: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        return self.render()

    def render(self, scrub: Callable[[str], str] = str) -> str:
        """The problem as a line (and its hint), ``scrub`` applied to the
        message, the value and the hint one by one: the place and the key are
        the kit's, and read with the message (``auth.secret: environment
        variable ...``) they would look like a name=value pair to a scrubber."""
        parts = [p for p in (self.where, self.key) if p]
        text = ": ".join([*parts, scrub(self.message)])
        if self.value is not None:
            text += f" (got {scrub(self.value)})"
        if self.hint:
            text += f"\n    Hint: {scrub(self.hint)}"
        return text


class ConfigError(InfrastructureError, ValueError):
    """A profile, environment variable or override is invalid.

    ``problems`` lists every problem found, not only the first; ``str()``
    prints one line per problem, each naming the file and line (or env var or
    override), the dotted key and what is wrong.
    """

    def __init__(
        self,
        problems: str | ConfigProblem | list[ConfigProblem],
        *,
        profile: str | None = None,
    ) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem(problems)]
        elif isinstance(problems, ConfigProblem):
            problems = [problems]
        if not problems:
            raise ValueError("ConfigError needs at least one problem")
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        self.profile = profile
        super().__init__(self._render())

    def _render(self) -> str:
        return self.render()

    def render(self, scrub: Callable[[str], str] = str) -> str:
        """``str(error)``, with ``scrub`` applied to each problem's text (see
        :meth:`ConfigProblem.render`)."""
        if len(self.problems) == 1:
            return self.problems[0].render(scrub)
        head = f"{len(self.problems)} problems"
        if self.profile:
            head += f" in profile {self.profile!r}"
        return head + ":\n" + "\n".join(f"  {p.render(scrub)}" for p in self.problems)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_config_error, (list(self.problems), self.profile))


def _rebuild_config_error(problems: list[ConfigProblem], profile: str | None) -> ConfigError:
    return ConfigError(problems, profile=profile)


class MissingDependencyError(ConfigError):
    """A backend named in the profile needs an extra that is not installed."""

    def __init__(self, what: str, *, extra: str, module: str, key: str = "") -> None:
        self.extra = extra
        self.module = module
        super().__init__(
            ConfigProblem(
                f"{what} needs the Python package {module!r}, which is not installed",
                key=key,
                hint=install_line(extra),
            )
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_config_error, (list(self.problems), self.profile))


class DatabaseError(InfrastructureError):
    """The database driver or connection failed; the cause is chained."""


class TokenStoreError(InfrastructureError):
    """The token store backend failed; the cause is chained."""


class AuthError(InfrastructureError):
    """The keys that verify JWTs could not be had (a JWKS endpoint that cannot
    be fetched): no token can be checked, the request is not the client's fault."""


class TokenRejectedError(InfrastructureError):
    """A bearer JWT was refused. ``detail`` is what a client may be told
    (``invalid token``, ``token expired``, ``token too large``): never which
    check failed, which would help an attacker more than a client."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class AuditError(InfrastructureError):
    """An audit entry could not be written, read or verified."""

    #: False: the write failed and nothing of it is stored.
    outcome_unknown: bool = False


class AuditOutcomeUnknownError(AuditError):
    """The connection broke while the write was being committed: the entries
    may or may not be stored. Log the same entries again (same ids) to be
    sure: an entry whose id is stored already is returned, never stored twice.
    """

    outcome_unknown = True


class TelemetryError(InfrastructureError):
    """The telemetry provider or an exporter could not be set up."""


class ShutdownError(InfrastructureError):
    """One or more components failed to stop; every failure is listed.

    ``errors`` maps component name to its exception; ``__cause__`` is the first.
    """

    def __init__(self, errors: dict[str, BaseException]) -> None:
        self.errors = dict(errors)
        lines = "; ".join(
            f"{name}: {type(exc).__name__}: {exc}" for name, exc in self.errors.items()
        )
        super().__init__(f"{len(self.errors)} component(s) failed to shut down: {lines}")
