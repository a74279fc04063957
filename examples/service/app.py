"""The example service: log in, call a protected route, log out, audit, health.

It runs unchanged on ``local`` (SQLite, in-memory tokens, no telemetry) and
on ``production`` (PostgreSQL, Redis, OTLP): only the profile differs.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from infrakit import Infra, IssuedToken, issue_token
from infrakit.audit import AuditFilter, AuditLogger
from infrakit.integrations.fastapi import (
    get_audit_logger,
    get_infra,
    get_token_store,
    install,
    require_token,
)
from infrakit.telemetry import traced
from infrakit.tokens import TokenStore

log = structlog.get_logger("example.service")

# Demo users: sha256 of their passwords (a real service would use argon2/bcrypt).
USERS = {
    "ann": hashlib.sha256(b"wonderland").hexdigest(),
    "bob": hashlib.sha256(b"builder").hexdigest(),
}


class Login(BaseModel):
    username: str
    password: str


@traced("auth.issue_token")
async def sign_in(infra: Infra, user: str) -> IssuedToken:
    """Sign with the profile's auth key and store the token's jti in one call:
    a token is never handed out without being in the store."""
    return await issue_token(infra, user)


def create_app(profile: str | None = None, **load_settings_kwargs: Any) -> FastAPI:
    app = FastAPI(title="infrakit example service")
    install(app, profile, **load_settings_kwargs)
    # verifies with the profile's auth section (algorithms, key, issuer, lifetime)
    authenticated = require_token()

    @app.post("/login")
    async def login(
        body: Login,
        request: Request,
        infra: Infra = Depends(get_infra),  # noqa: B008 - FastAPI's idiom
        audit: AuditLogger = Depends(get_audit_logger),  # noqa: B008
    ) -> dict[str, Any]:
        client = request.client.host if request.client else None
        digest = hashlib.sha256(body.password.encode()).hexdigest()
        known = USERS.get(body.username)
        # the password is in this log call on purpose: the pipeline redacts it
        log.info("login attempt", username=body.username, password=body.password)
        if known is None or not hmac.compare_digest(known, digest):
            await audit.log_action(
                "login", "session", result="failure", user_id=body.username, ip_address=client
            )
            raise HTTPException(status_code=401, detail="wrong username or password")
        issued = await sign_in(infra, body.username)
        await audit.log_action(
            "login", "session", user_id=body.username, resource_id=issued.jti, ip_address=client
        )
        return {
            "access_token": issued.token,
            "token_type": "bearer",
            "expires_at": issued.expires_at.isoformat(),
        }

    @app.get("/me")
    async def me(claims: dict[str, Any] = Depends(authenticated)) -> dict[str, Any]:  # noqa: B008
        return {"user": claims["sub"], "session": claims["jti"]}

    @app.post("/logout")
    async def logout(
        claims: dict[str, Any] = Depends(authenticated),  # noqa: B008
        tokens: TokenStore = Depends(get_token_store),  # noqa: B008
        audit: AuditLogger = Depends(get_audit_logger),  # noqa: B008
    ) -> dict[str, Any]:
        revoked = await tokens.revoke(claims["jti"])
        await audit.log_action(
            "logout", "session", user_id=claims["sub"], resource_id=claims["jti"]
        )
        return {"revoked": revoked}

    @app.post("/logout-all")
    async def logout_all(
        claims: dict[str, Any] = Depends(authenticated),  # noqa: B008
        tokens: TokenStore = Depends(get_token_store),  # noqa: B008
        audit: AuditLogger = Depends(get_audit_logger),  # noqa: B008
    ) -> dict[str, Any]:
        count = await tokens.revoke_all_for_user(claims["sub"])
        await audit.log_action(
            "logout_all", "session", user_id=claims["sub"], details={"sessions": count}
        )
        return {"revoked_sessions": count}

    @app.get("/audit")
    async def my_audit(
        claims: dict[str, Any] = Depends(authenticated),  # noqa: B008
        audit: AuditLogger = Depends(get_audit_logger),  # noqa: B008
    ) -> dict[str, Any]:
        entries = await audit.query(AuditFilter(user_id=claims["sub"], limit=50))
        return {"entries": [e.to_dict() for e in entries], "chain_ok": (await audit.verify()).ok}

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """Public: the status only. Hosts, users and database names are for
        operators (``/health/details`` or ``infrakit check``), not the internet."""
        report = await (await get_infra(request)).health(timeout_s=2.0)
        return JSONResponse({"status": report.status}, status_code=200 if report.ok else 503)

    @app.get("/health/details")
    async def health_details(
        request: Request,
        claims: dict[str, Any] = Depends(authenticated),  # noqa: B008
    ) -> JSONResponse:
        """Authenticated: every component with its (masked) detail."""
        report = await (await get_infra(request)).health(timeout_s=2.0)
        return JSONResponse(report.to_dict(), status_code=200 if report.ok else 503)

    return app
