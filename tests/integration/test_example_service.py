"""The example service end to end: on `local`, and on `production` against real
PostgreSQL, Redis and an OTLP receiver — the same app, only the profile differs."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.service.__main__ import run_scenario
from examples.service.app import create_app
from infrakit.database import upgrade
from infrakit.errors import ConfigError
from infrakit.settings import load_settings
from infrakit.testing.otlp import OtlpReceiver

pytestmark = pytest.mark.integration

EXPECTED = [401, 200, 200, 200, 401, 401, 200, 200, 200, 200, 200]
AUDIT = ["login:failure", "login:success", "logout:success", "login:success"]


class TestScenario:
    """login, protected call, logout, rejected call, audit query, health."""

    async def test_on_local(self, tmp_path: Path) -> None:
        environ = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/local.db"}
        result = await run_scenario("local", echo=False, environ=environ)
        assert [s.status for s in result.steps] == EXPECTED
        assert result.audit_actions == AUDIT
        assert result.health["ok"] is True
        assert result.public_health == {"status": "up"}  # nothing else for anonymous callers

    async def test_on_production(self, fresh_pg_url: str, redis_prefix: str) -> None:
        with OtlpReceiver() as receiver:
            environ = {
                "DATABASE_URL": fresh_pg_url,
                "REDIS_URL": "redis://127.0.0.1:6379/0",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
            }
            overrides = {"tokens.key_prefix": redis_prefix, "logging.level": "WARNING"}
            assert await upgrade(load_settings("production", environ=environ)) is not None
            result = await run_scenario(
                "production", echo=False, environ=environ, overrides=overrides
            )
            spans = {s.name for s in receiver.wait_for_spans(10)}
        assert [s.status for s in result.steps] == EXPECTED
        assert result.audit_actions == AUDIT
        assert [c["backend"] for c in result.health["components"]] == [
            "otlp", "sqlalchemy", "redis", "sql",
        ]  # fmt: skip
        assert all(c["status"] == "up" for c in result.health["components"])
        assert {"POST /login", "GET /me", "POST /logout", "auth.issue_token"} <= spans
        assert "GET /health" not in spans  # excluded path


class TestBadStart:
    """A broken profile or a dead backend stops the start with one clear line."""

    def test_broken_profile_fails_at_app_creation(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.yaml"
        bad.write_text("tokens:\n  backnd: redis\n")
        with pytest.raises(ConfigError, match=r"bad\.yaml:2:3: tokens\.backnd: unknown key"):
            create_app(str(bad), environ={})

    async def test_dead_backend_is_named_with_a_masked_address(self) -> None:
        environ = {"REDIS_URL": "redis://:s3cret@127.0.0.1:9/0"}
        overrides = {
            "telemetry.exporter": "none",
            "database.url": "sqlite+aiosqlite:///:memory:",
            "database.auto_migrate": True,
            "logging.level": "CRITICAL",
        }
        with pytest.raises(RuntimeError) as caught:
            await run_scenario("production", echo=False, environ=environ, overrides=overrides)
        text = str(caught.value)
        assert "infrakit could not start" in text
        assert "redis://:***@127.0.0.1:9/0" in text
        assert "s3cret" not in text
