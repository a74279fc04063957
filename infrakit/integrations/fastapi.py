"""FastAPI/Starlette integration: lifespan, middleware, dependencies.

::

    app = FastAPI()
    install(app, profile="local")          # lifespan + TracingMiddleware

    @app.get("/me")
    async def me(claims: dict = Depends(require_token)): ...   # the profile's auth section

``install`` loads the profile when the app is created, so a missing or
broken profile stops the start with its ``ConfigError`` line.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, overload

from pydantic import ValidationError

# At run time, not under TYPE_CHECKING: FastAPI reads the annotations of the
# dependencies below to know what to inject.
from starlette.requests import Request

from infrakit.auth import JwtAuth
from infrakit.container import Infra
from infrakit.errors import (
    AuthError,
    ConfigError,
    ConfigProblem,
    InfrastructureError,
    TokenRejectedError,
    TokenStoreError,
)
from infrakit.settings.auth import HMAC_ALGORITHMS, AuthSettings
from infrakit.settings.loader import load_settings
from infrakit.settings.models import InfraSettings
from infrakit.telemetry.middleware import TracingMiddleware

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from infrakit.audit.base import AuditLogger
    from infrakit.tokens.base import TokenStore

__all__ = [
    "get_audit_logger",
    "get_db_session",
    "get_infra",
    "get_token_store",
    "health_routes",
    "install",
    "lifespan",
    "require_token",
]

_log = logging.getLogger("infrakit.integrations")


def _mark_coroutine_function(func: Callable[..., Any]) -> None:
    """Make ``func`` (a plain function returning a coroutine when FastAPI calls
    it) count as a coroutine function for FastAPI: ``inspect``'s marker on
    Python 3.12+, and asyncio's, which FastAPI checks on 3.11 and 3.12."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        mark(func)
    legacy = getattr(asyncio.coroutines, "_is_coroutine", None)
    if legacy is not None:
        func._is_coroutine = legacy  # type: ignore[attr-defined]


def _settings(profile: str | InfraSettings | None, **kwargs: Any) -> InfraSettings:
    return profile if isinstance(profile, InfraSettings) else load_settings(profile, **kwargs)


def lifespan(
    profile: str | InfraSettings | None = None, **load_settings_kwargs: Any
) -> Callable[[Any], Any]:
    """A lifespan for ``FastAPI(lifespan=...)`` that runs :class:`Infra` with the app.

    The profile is loaded now (a bad one fails here); ``Infra`` starts with
    the app and stops with it, and is at ``app.state.infra``. A backend that
    is down at start-up stops the start with one line naming it.
    """
    settings = _settings(profile, **load_settings_kwargs)

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[dict[str, Any]]:
        infra = Infra(settings)
        try:
            await infra.start()
        except InfrastructureError as error:
            # one line naming the component and its masked address, not a
            # stack of driver frames; also kept on the app for whoever runs it
            message = f"infrakit could not start: {error}"
            app.state.infrakit_start_error = message
            raise RuntimeError(message) from None
        app.state.infra = infra
        try:
            yield {"infra": infra}
        finally:
            await infra.aclose()

    return run


def install(
    app: Any,
    profile: str | InfraSettings | None = None,
    *,
    health: str | None = "/health",
    **load_settings_kwargs: Any,
) -> InfraSettings:
    """Give ``app`` the kit: the lifespan above, ``TracingMiddleware`` (with
    the profile's excluded paths) and, unless ``health=None``, the probes of
    :func:`health_routes` under ``health``. Returns the loaded settings."""
    settings = _settings(profile, **load_settings_kwargs)
    run = lifespan(settings)

    @asynccontextmanager
    async def run_alone(app: Any) -> AsyncIterator[dict[str, Any]]:
        # FastAPI apps mounted since install(): their native telemetry too
        _native_telemetry_off(app)
        if _uses_profile_auth(app):
            # every request to those routes would answer 500: stop the start
            JwtAuth(settings.auth).require_key()
        async with run(app) as state:
            yield state

    app.router.lifespan_context = run_alone
    if health is not None:
        health_routes(app, prefix=health)
    _native_telemetry_off(app)
    telemetry = settings.telemetry
    app.add_middleware(
        TracingMiddleware,
        excluded_paths=tuple(telemetry.excluded_paths),
        known_methods=telemetry.known_methods,
        capture_request_headers=tuple(telemetry.capture_request_headers),
        trusted_proxy=telemetry.trusted_proxy,
    )
    return settings


def _apps(app: Any) -> Iterator[Any]:
    """``app`` and the apps (FastAPI apps, routers) mounted in it, at any depth."""
    yield app
    for route in getattr(getattr(app, "router", app), "routes", ()):
        inner = getattr(route, "app", None)
        if hasattr(route, "path_regex") and hasattr(inner, "routes"):  # a Mount
            yield from _apps(inner)


def _uses_profile_auth(app: Any) -> bool:
    """Whether a route of ``app`` (mounts included) depends on ``require_token``
    with the profile's ``auth`` section (bare or without a key)."""
    for each in _apps(app):
        for route in getattr(getattr(each, "router", each), "routes", ()):
            pending = [getattr(route, "dependant", None)]
            while pending:
                dependant = pending.pop()
                if dependant is None:
                    continue
                if getattr(dependant, "call", None) in (require_token, _with_profile):
                    return True
                pending.extend(getattr(dependant, "dependencies", ()))
    return False


def _native_telemetry_off(app: Any) -> None:
    """Switch off the native telemetry of ``app`` and of the FastAPI apps
    mounted in it. Recent FastAPI traces natively through OTel's global
    provider, which infrakit installs: its server spans and metrics would
    duplicate ours, and a mounted app's endpoint spans would hang under them.
    Its OTel log records too: the kit's logging pipeline owns the logs (and
    FastAPI looks the logger provider up, environment included, on every
    request to find out whether it has one)."""
    for each in _apps(app):
        native = getattr(each, "_telemetry", None)
        if isinstance(native, dict) and "tracing" in native:
            native.update(tracing=False, metrics=False, logs=False)


def health_routes(app: Any, *, prefix: str = "/health", timeout_s: float = 2.0) -> None:
    """Add ``GET {prefix}/live`` and ``GET {prefix}/ready``, for orchestrators.

    - live: 200 ``{"status": "up"}`` while the process answers requests; it
      asks no backend (a database outage must not get the pod restarted);
    - ready: one round of health checks (each within ``timeout_s``): 200 with
      ``{"status": "up"}`` or ``{"status": "degraded"}`` (telemetry in
      trouble: requests still work), 503 with ``{"status": "down"}`` when the
      database, the token store or the audit log cannot answer, or the kit is
      not running.

    Both answer with the status only: hosts, users and errors are for
    operators (``infrakit check``, or a route of yours behind authentication
    serving ``(await infra.health()).to_dict()``).
    """
    from starlette.responses import JSONResponse
    from starlette.routing import Match, Route

    class Probe(Route):
        """A probe's route. It sits before the app's routes, so every request
        is matched against it: a request for another path is turned away with
        one substring test (the path it would match is part of the request's
        path) instead of Starlette's route-path computation and regex."""

        def matches(self, scope: Any) -> tuple[Match, MutableMapping[str, Any]]:
            # the literal text after the last parameter of the path (all of
            # it, for "/health/live") is in any path this route matches
            if self.path.rpartition("}")[2] not in scope.get("path", ""):
                return Match.NONE, {}
            return super().matches(scope)

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"status": "up"})

    async def ready(request: Request) -> JSONResponse:
        infra = getattr(request.app.state, "infra", None)
        if not isinstance(infra, Infra):
            return JSONResponse({"status": "down"}, status_code=503)
        report = await infra.health(timeout_s=timeout_s)
        return JSONResponse({"status": report.status}, status_code=200 if report.ok else 503)

    base = prefix.rstrip("/")
    for path, endpoint in ((f"{base}/live", live), (f"{base}/ready", ready)):
        app.router.routes.append(Probe(path, endpoint, methods=["GET"], include_in_schema=False))


# --- dependencies ------------------------------------------------------------------


# The dependencies are coroutines so FastAPI runs them on the event loop:
# a sync dependency would run in a worker thread, away from the loop that
# owns the running components.


def _infra(request: Request) -> Infra:
    try:
        infra = request.app.state.infra
    except AttributeError:
        infra = None
    if infra is None:
        raise RuntimeError(
            "no Infra on this app: create it with FastAPI(lifespan=lifespan(...)) or install(app)"
        )
    if not isinstance(infra, Infra):
        raise TypeError(f"app.state.infra is a {type(infra).__name__}, not an Infra")
    return infra


async def get_infra(request: Request) -> Infra:
    """The running :class:`Infra` of the app."""
    return _infra(request)


async def get_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request: committed after the handler, rolled back on error."""
    async with _infra(request).database.session() as session:
        yield session


async def get_token_store(request: Request) -> TokenStore:
    store: TokenStore = _infra(request).tokens
    return store


async def get_audit_logger(request: Request) -> AuditLogger:
    audit: AuditLogger = _infra(request).audit
    return audit


def _unauthorized(detail: str) -> Exception:
    from fastapi import HTTPException

    return HTTPException(
        status_code=401,
        detail=detail,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def _bearer(request: Request) -> str:
    headers = request.headers.getlist("authorization")
    if len(headers) > 1:
        # which one a proxy, the framework and this check each read differs:
        # refuse rather than guess
        raise _unauthorized("more than one Authorization header")
    header = headers[0] if headers else ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing or malformed Authorization header; expected 'Bearer <jwt>'")
    return token.strip()


async def _check(request: Request, auth: JwtAuth) -> dict[str, Any]:
    """The request's bearer token verified by ``auth`` and valid in the token store."""
    from fastapi import HTTPException

    token = _bearer(request)
    try:
        claims = await auth.verify(token)
    except TokenRejectedError as error:
        raise _unauthorized(error.detail) from None
    except AuthError:
        _log.warning("infrakit: the keys that verify tokens are unavailable; refusing the request")
        raise HTTPException(status_code=503, detail="token keys unavailable") from None
    sub = claims.get("sub")
    try:
        # the token's user: the check then sees a "log out everywhere" in
        # progress, in the same round trip
        valid = await (await get_token_store(request)).is_valid(
            claims["jti"], user_id=sub if isinstance(sub, str) else None
        )
    except TokenStoreError:
        _log.warning("infrakit: token store unavailable; refusing the request (fail closed)")
        raise HTTPException(status_code=503, detail="token store unavailable") from None
    if not valid:
        raise _unauthorized("token revoked or unknown")
    return claims


async def _with_profile(request: Request) -> dict[str, Any]:
    return await _check(request, _infra(request).auth)


class _Explicit:
    """``require_token(key=...)``: the profile's ``auth`` section with the given
    values over it, validated like the profile (built once per ``Infra``)."""

    __slots__ = ("_built", "_overrides")

    def __init__(self, overrides: dict[str, Any]) -> None:
        self._overrides = overrides
        self._built: tuple[AuthSettings, JwtAuth] | None = None
        if "algorithms" in overrides or "secret" in overrides or "public_key" in overrides:
            self._settings(AuthSettings())  # a bad key or algorithm fails now, not per request

    def _settings(self, base: AuthSettings) -> AuthSettings:
        data = base.model_dump()
        data.update(self._overrides)
        try:
            return AuthSettings.model_validate(data)
        except ValidationError as error:
            problems = [
                ConfigProblem(
                    str(item["msg"]).removeprefix("Value error, "),
                    key="require_token(" + ".".join(str(p) for p in item["loc"]) + "=...)",
                )
                for item in error.errors(include_url=False)
            ]
            raise ConfigError(problems) from None

    def auth(self, infra: Infra) -> JwtAuth:
        base = infra.settings.auth
        built = self._built
        if built is None or built[0] is not base:
            built = (base, JwtAuth(self._settings(base)))
            self._built = built
        return built[1]


def _explicit_overrides(
    key: str | bytes | None,
    algorithms: Sequence[str] | None,
    audience: str | None,
    issuer: str | None,
) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if key is not None:
        text = key.decode() if isinstance(key, bytes) else key
        names = list(algorithms) if algorithms is not None else ["HS256"]
        overrides["algorithms"] = names
        # a key given here replaces every key source of the profile
        overrides.update(
            secret=None,
            public_key=None,
            public_key_file=None,
            private_key=None,
            private_key_file=None,
            jwks_url=None,
            key_id=None,
        )
        if names and names[0] in HMAC_ALGORITHMS:
            overrides["secret"] = text
        else:
            overrides["public_key"] = text
    elif algorithms is not None:
        overrides["algorithms"] = list(algorithms)
    if audience is not None:
        overrides["audience"] = audience
    if issuer is not None:
        overrides["issuer"] = issuer
    return overrides


@overload
def require_token(
    request: None = None,
    *,
    key: str | bytes | None = None,
    algorithms: Sequence[str] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
) -> Callable[[Request], Coroutine[Any, Any, dict[str, Any]]]: ...
@overload
def require_token(request: Request) -> Coroutine[Any, Any, dict[str, Any]]: ...
def require_token(
    request: Request | None = None,
    *,
    key: str | bytes | None = None,
    algorithms: Sequence[str] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
) -> Any:
    """A dependency that accepts a request only with a live bearer JWT; it
    returns the token's claims.

    ``Depends(require_token)`` and ``Depends(require_token())`` verify with the
    profile's ``auth`` section (algorithms, key or JWKS, issuer, audience,
    leeway, required claims, size bound), read from the running ``Infra`` at
    request time. Arguments override the section: ``key=`` (an HMAC secret, or
    a PEM public key when ``algorithms`` are public-key ones) replaces its key
    source, with ``algorithms`` defaulting to ``("HS256",)``; ``audience=`` and
    ``issuer=`` replace those. They are validated like the profile.

    The token must verify, carry the required claims (``exp``, ``jti`` and
    ``sub`` by default) and be valid in the token store (not revoked, not
    expired; the JWT's ``sub`` is passed as ``user_id``). 401 with a JSON error
    for a missing, malformed, oversize, forged, expired or revoked token (and
    for two ``Authorization`` headers); 503 when the token store or the JWKS
    cannot answer (fail closed).
    """
    if request is not None:
        # used bare, as Depends(require_token): FastAPI passed the request
        return _with_profile(request)
    overrides = _explicit_overrides(key, algorithms, audience, issuer)
    if not overrides:
        return _with_profile
    explicit = _Explicit(overrides)

    async def dependency(request: Request) -> dict[str, Any]:
        return await _check(request, explicit.auth(_infra(request)))

    return dependency


# FastAPI reads a dependency's parameters from its signature and awaits it when
# it is a coroutine function. Bare, require_token must look like
# ``async def (request: Request)``: its keyword arguments would otherwise be
# query parameters (a client could pick the key), and its result would not be
# awaited.
require_token.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)],
    return_annotation=dict[str, Any],
)
_mark_coroutine_function(require_token)
