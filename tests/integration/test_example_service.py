"""The example service end to end: on `local`, and on `production` (and `single-host`,
production on loopback) against real PostgreSQL, Redis and an OTLP receiver — the
same app, only the profile differs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from examples.service.__main__ import drive, run_scenario
from examples.service.app import create_app
from infrakit.database import upgrade
from infrakit.errors import ConfigError
from infrakit.settings import load_settings
from infrakit.testing.otlp import OtlpReceiver
from tests.integration.children import spawn, stop

pytestmark = pytest.mark.integration

EXPECTED = [401, 200, 200, 200, 401, 401, 200, 200, 200, 200, 200]
AUDIT = ["login:failure", "login:success", "logout:success", "login:success"]
JWT_SECRET = "example-test-jwt-secret-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


class TestScenario:
    """login, protected call, logout, rejected call, audit query, health."""

    async def test_on_local(self, tmp_path: Path) -> None:
        environ = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/local.db"}
        result = await run_scenario("local", echo=False, environ=environ)
        assert [s.status for s in result.steps] == EXPECTED
        assert result.audit_actions == AUDIT
        assert result.health["ok"] is True
        assert result.public_health == {"status": "up"}  # nothing else for anonymous callers

    @pytest.mark.parametrize("profile", ["production", "single-host"])
    async def test_on_production(self, fresh_pg_url: str, redis_prefix: str, profile: str) -> None:
        """`production` with every address given; `single-host` (the README's demo)
        with Redis at its loopback default."""
        with OtlpReceiver() as receiver:
            environ = {
                "DATABASE_URL": fresh_pg_url,
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
                "JWT_SECRET": JWT_SECRET,
            }
            if profile == "production":
                environ["REDIS_URL"] = "redis://127.0.0.1:6379/0"
            overrides = {"tokens.key_prefix": redis_prefix, "logging.level": "WARNING"}
            assert await upgrade(load_settings(profile, environ=environ)) is not None
            result = await run_scenario(profile, echo=False, environ=environ, overrides=overrides)
            spans = {s.name for s in receiver.wait_for_spans(10)}
        assert [s.status for s in result.steps] == EXPECTED
        assert result.audit_actions == AUDIT
        assert [c["backend"] for c in result.health["components"]] == [
            "otlp", "sqlalchemy", "redis", "sql",
        ]  # fmt: skip
        assert all(c["status"] == "up" for c in result.health["components"])
        assert {"POST /login", "GET /me", "POST /logout", "auth.issue_token"} <= spans
        assert "GET /health" not in spans  # excluded path


class TestTokensFromTheProfile:
    """The example signs nothing by hand: login issues through issue_token (signed
    with the profile's auth key, stored before it is returned), and /me, /logout
    verify with the profile through require_token()."""

    async def test_login_me_logout_revoked(self, tmp_path: Path) -> None:
        environ = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/local.db"}
        app = create_app("local", environ=environ, overrides={"auth.issuer": "example"})
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            login = await client.post("/login", json={"username": "ann", "password": "wonderland"})
            token = login.json()["access_token"]
            infra = app.state.infra
            claims = await infra.auth.verify(token)  # the profile's key and issuer
            stored = await infra.tokens.get(claims["jti"])
            assert (claims["sub"], claims["iss"]) == ("ann", "example")
            assert stored is not None
            assert stored.user_id == "ann"
            assert stored.expires_at.isoformat() == login.json()["expires_at"]
            auth = {"authorization": f"Bearer {token}"}
            me = await client.get("/me", headers=auth)
            assert me.json() == {"user": "ann", "session": claims["jti"]}
            assert (await client.post("/logout", headers=auth)).json() == {"revoked": True}
            again = await client.get("/me", headers=auth)
        assert (again.status_code, again.json()) == (401, {"detail": "token revoked or unknown"})


class TestBadStart:
    """A broken profile or a dead backend stops the start with one clear line."""

    def test_broken_profile_fails_at_app_creation(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text("tokens:\n  backnd: redis\n")
        with pytest.raises(ConfigError, match=r"bad\.yaml:2:3: tokens\.backnd: unknown key"):
            create_app(str(bad), environ={})

    async def test_dead_backend_is_named_with_a_masked_address(self) -> None:
        environ = {"REDIS_URL": "redis://:s3cret@127.0.0.1:9/0", "JWT_SECRET": JWT_SECRET}
        overrides = {
            "telemetry.exporter": "none",
            "database.url": "sqlite+aiosqlite:///:memory:",
            "database.auto_migrate": True,
            "logging.level": "CRITICAL",
        }
        with pytest.raises(RuntimeError) as caught:
            await run_scenario("single-host", echo=False, environ=environ, overrides=overrides)
        text = str(caught.value)
        assert "infrakit could not start" in text
        assert "redis://:***@127.0.0.1:9/0" in text
        assert "s3cret" not in text


@asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[str]:
    """The app under uvicorn on a free loopback port; yields its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, lifespan="off", backlog=2048
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("the server stopped during start-up")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


class TestUnderLoad:
    """400 concurrent clients on PostgreSQL and Redis: every request answered, and
    right (a revoked token is a 401, never a 200 or a 503), whichever on_backend_error."""

    CLIENTS = 400

    @pytest.mark.parametrize("on_error", ["fail_closed", "fail_open"])
    async def test_concurrent_requests(
        self, fresh_pg_url: str, redis_prefix: str, on_error: str
    ) -> None:
        environ = {
            "DATABASE_URL": fresh_pg_url,
            "REDIS_URL": "redis://127.0.0.1:6379/0",
            "JWT_SECRET": JWT_SECRET,
        }
        overrides = {
            "tokens.key_prefix": redis_prefix,
            "tokens.on_backend_error": on_error,
            "telemetry.exporter": "none",
            "logging.level": "WARNING",
        }
        assert await upgrade(load_settings("single-host", environ=environ)) is not None
        app = create_app("single-host", environ=environ, overrides=overrides)
        limits = httpx.Limits(max_connections=self.CLIENTS, max_keepalive_connections=0)
        async with (
            app.router.lifespan_context(app),
            _serving(app) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client,
        ):
            tokens = []
            for _ in range(3):
                login = await client.post(
                    "/login", json={"username": "ann", "password": "wonderland"}
                )
                tokens.append({"authorization": f"Bearer {login.json()['access_token']}"})
            live, revoked, everywhere = tokens
            assert (await client.post("/logout", headers=revoked)).status_code == 200
            bob = await client.post("/login", json={"username": "bob", "password": "builder"})
            bob_auth = {"authorization": f"Bearer {bob.json()['access_token']}"}
            assert (await client.post("/logout-all", headers=bob_auth)).status_code == 200
            del everywhere  # ann's third session stays valid
            plan = [(live, 200), (revoked, 401), (bob_auth, 401), (live, 200)]
            requests = [plan[n % len(plan)] for n in range(self.CLIENTS)]
            answers = await asyncio.gather(
                *(client.get("/me", headers=headers) for headers, _ in requests),
                return_exceptions=True,
            )
        errors = [a for a in answers if isinstance(a, BaseException)]
        assert errors == [], f"{len(errors)} requests failed, the first: {errors[0]!r}"
        statuses = [a.status_code for a in answers if isinstance(a, httpx.Response)]
        wrong = [(n, s) for n, s in enumerate(statuses) if s != requests[n][1]]
        assert wrong == [], f"{len(wrong)} wrong answers, e.g. {wrong[:5]}"


@dataclass
class Child:
    process: subprocess.Popen[bytes]
    log: Path
    base_url: str
    serving_line: str = ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_child(profile: str, environ: dict[str, str], log: Path) -> Child:
    """``python -m examples.service PROFILE --serve`` on a free loopback port,
    as a child process that dies with the test run."""
    port = _free_port()
    argv = [sys.executable, "-m", "examples.service", profile, "--serve", "--port", str(port)]
    process = spawn(argv, log=log, env={**os.environ, **environ}, cwd=REPO)
    return Child(process, log, f"http://127.0.0.1:{port}")


async def _until_serving(child: Child) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = child.log.read_text(errors="replace").splitlines()
        child.serving_line = next((x for x in lines if x.startswith("serving http://")), "")
        if child.serving_line:
            return
        assert child.process.poll() is None, f"the service exited:\n{child.log.read_text()}"
        await asyncio.sleep(0.1)
    raise AssertionError(f"the service did not start within 60 s:\n{child.log.read_text()}")


class TestServe:
    """`python -m examples.service PROFILE --serve`: uvicorn in a process of its own,
    on uvloop and httptools (the fastapi extra installs uvicorn[standard]), its
    lifespan run by uvicorn, stopped by SIGTERM to its PID."""

    async def test_local(self, tmp_path: Path) -> None:
        environ = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/local.db"}
        child = _start_child("local", environ, tmp_path / "serve.log")
        try:
            await _until_serving(child)
            async with httpx.AsyncClient(base_url=child.base_url, timeout=10) as client:
                live = await client.get("/health/live")
            result = await drive(child.base_url, echo=False)
        finally:
            stop(child.process, signal.SIGTERM)
        assert "(event loop uvloop, HTTP parser httptools)" in child.serving_line
        assert (live.status_code, live.json()) == (200, {"status": "up"})
        assert [s.status for s in result.steps] == EXPECTED
        assert result.audit_actions == AUDIT
        # a graceful stop: uvicorn ran the lifespan's shutdown (Infra closed),
        # then re-raised the SIGTERM it had caught
        assert child.process.returncode == -signal.SIGTERM
        assert "Application shutdown complete." in child.log.read_text()

    async def test_single_host(self, fresh_pg_url: str, redis_prefix: str, tmp_path: Path) -> None:
        """asyncpg, redis-py, the audit log's group commit and the OTLP exporter's
        threads, all on uvloop."""
        with OtlpReceiver() as receiver:
            environ = {
                "DATABASE_URL": fresh_pg_url,
                "REDIS_URL": "redis://127.0.0.1:6379/0",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
                "JWT_SECRET": JWT_SECRET,
                "INFRAKIT__TOKENS__KEY_PREFIX": redis_prefix,
            }
            assert await upgrade(load_settings("single-host", environ=environ)) is not None
            child = _start_child("single-host", environ, tmp_path / "serve.log")
            try:
                await _until_serving(child)
                result = await drive(child.base_url, echo=False)
            finally:
                stop(child.process, signal.SIGTERM)
            spans = {s.name for s in receiver.wait_for_spans(10)}
        assert "(event loop uvloop, HTTP parser httptools)" in child.serving_line
        assert [s.status for s in result.steps] == EXPECTED
        assert result.audit_actions == AUDIT
        assert all(c["status"] == "up" for c in result.health["components"])
        assert {"POST /login", "GET /me", "POST /logout", "auth.issue_token"} <= spans
        assert child.process.returncode == -signal.SIGTERM

    async def test_a_backend_down_stops_the_start(self, tmp_path: Path) -> None:
        """uvicorn's start-up failure exit code, and the kit's one line naming the backend."""
        environ = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}"}  # a directory
        child = _start_child("local", environ, tmp_path / "serve.log")
        try:
            code = await asyncio.to_thread(child.process.wait, 60)
        finally:
            stop(child.process)
        text = child.log.read_text()
        assert code == 3, text
        assert text.rstrip().splitlines()[-1] == (
            f"infrakit could not start: cannot reach the database at "
            f"sqlite+aiosqlite:///{tmp_path}: OperationalError: unable to open database file"
        )
