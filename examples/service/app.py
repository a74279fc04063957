"""The example service: log in, call a protected route, log out, audit, health.

It runs unchanged on ``local`` (SQLite, in-memory tokens, no telemetry) and
on ``production`` (PostgreSQL, Redis, OTLP): only the profile differs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import structlog
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

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
TOKEN_LIFETIME = timedelta(minutes=15)


class Login(BaseModel):
    username: str
    password: str


def _secret() -> str:
    return os.environ.get("EXAMPLE_JWT_SECRET", "dev-only-secret-change-me-0123456789")


@traced("auth.issue_token")
def issue_token(user: str) -> tuple[str, str, datetime]:
    jti = uuid.uuid4().hex
    expires = datetime.now(UTC) + TOKEN_LIFETIME
    token = jwt.encode({"sub": user, "jti": jti, "exp": expires}, _secret(), algorithm="HS256")
    return token, jti, expires


def create_app(profile: str | None = None, **load_settings_kwargs: Any) -> FastAPI:
    app = FastAPI(title="infrakit example service")
    install(app, profile, **load_settings_kwargs)
    authenticated = require_token(key=_secret())

    @app.post("/login")
    async def login(
        body: Login,
        request: Request,
        tokens: TokenStore = Depends(get_token_store),  # noqa: B008 - FastAPI's idiom
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
        token, jti, expires = issue_token(body.username)
        await tokens.store(jti, body.username, expires)
        await audit.log_action(
            "login", "session", user_id=body.username, resource_id=jti, ip_address=client
        )
        return {"access_token": token, "token_type": "bearer", "expires_at": expires.isoformat()}

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
