"""FastAPI/Starlette integration: lifespan, middleware, dependencies.

::

    app = FastAPI()
    install(app, profile="local")          # lifespan + TracingMiddleware

    @app.get("/me")
    async def me(claims: dict = Depends(require_token(key=SECRET))): ...

``install`` loads the profile when the app is created, so a missing or
broken profile stops the start with its ``ConfigError`` line.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

# At run time, not under TYPE_CHECKING: FastAPI reads the annotations of the
# dependencies below to know what to inject.
from starlette.requests import Request

from infrakit.container import Infra
from infrakit.errors import InfrastructureError, TokenStoreError
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
    app.router.lifespan_context = lifespan(settings)
    if health is not None:
        health_routes(app, prefix=health)
    native = getattr(app, "_telemetry", None)
    if isinstance(native, dict) and "tracing" in native:
        # Recent FastAPI traces natively through OTel's global provider, which
        # infrakit installs: its server spans and metrics would duplicate ours.
        native.update(tracing=False, metrics=False)
    telemetry = settings.telemetry
    app.add_middleware(
        TracingMiddleware,
        excluded_paths=tuple(telemetry.excluded_paths),
        known_methods=telemetry.known_methods,
        capture_request_headers=tuple(telemetry.capture_request_headers),
        trusted_proxy=telemetry.trusted_proxy,
    )
    return settings


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

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"status": "up"})

    async def ready(request: Request) -> JSONResponse:
        infra = getattr(request.app.state, "infra", None)
        if not isinstance(infra, Infra):
            return JSONResponse({"status": "down"}, status_code=503)
        report = await infra.health(timeout_s=timeout_s)
        return JSONResponse({"status": report.status}, status_code=200 if report.ok else 503)

    base = prefix.rstrip("/")
    app.router.add_route(f"{base}/live", live, methods=["GET"], include_in_schema=False)
    app.router.add_route(f"{base}/ready", ready, methods=["GET"], include_in_schema=False)


# --- dependencies ------------------------------------------------------------------


# The dependencies are coroutines so FastAPI runs them on the event loop:
# a sync dependency would run in a worker thread, away from the loop that
# owns the running components.


def _infra(request: Request) -> Infra:
    infra = getattr(request.app.state, "infra", None)
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


def require_token(
    *,
    key: str | bytes,
    algorithms: Sequence[str] = ("HS256",),
    audience: str | None = None,
    issuer: str | None = None,
) -> Callable[[Request], Any]:
    """A dependency that accepts a request only with a live bearer JWT.

    The token must verify with ``key``, carry a ``jti`` and a ``sub``, and be
    valid in the token store (not revoked, not expired). It answers 401 with
    a JSON error for a missing, malformed, forged, expired or revoked token,
    and 503 when the token store cannot answer (fail closed). Returns the
    token's claims.
    """
    import jwt
    from fastapi import HTTPException

    def unauthorized(detail: str) -> HTTPException:
        return HTTPException(
            status_code=401,
            detail=detail,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    async def dependency(request: Request) -> dict[str, Any]:
        headers = request.headers.getlist("authorization")
        if len(headers) > 1:
            # which one a proxy, the framework and this check each read differs:
            # refuse rather than guess
            raise unauthorized("more than one Authorization header")
        header = headers[0] if headers else ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("missing or malformed Authorization header; expected 'Bearer <jwt>'")
        try:
            claims: dict[str, Any] = jwt.decode(
                token.strip(),
                key,
                algorithms=list(algorithms),
                audience=audience,
                issuer=issuer,
                options={"require": ["jti", "sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("token expired") from None
        except jwt.InvalidTokenError as error:
            # the kit's own words: PyJWT's detail (which claim, which key, which
            # algorithm) helps an attacker more than a client
            _log.info("infrakit: token refused: %s", type(error).__name__)
            raise unauthorized("invalid token") from None
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti.strip():
            raise unauthorized("invalid token")
        sub = claims.get("sub")
        try:
            # the token's user: the check then sees a "log out everywhere" in
            # progress, in the same round trip
            valid = await (await get_token_store(request)).is_valid(
                jti, user_id=sub if isinstance(sub, str) else None
            )
        except TokenStoreError:
            _log.warning("infrakit: token store unavailable; refusing the request (fail closed)")
            raise HTTPException(status_code=503, detail="token store unavailable") from None
        if not valid:
            raise unauthorized("token revoked or unknown")
        return claims

    return dependency
