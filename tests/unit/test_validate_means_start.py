"""`infrakit config validate` ok means start-up can only fail on reaching a service.

Each problem that used to pass validation and then fail at start (with a bare
ValueError and no file:line) is a validation problem now; and, for generated
profiles, a profile that validates starts with nothing worse than a
connection error.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infrakit import ConfigError, Infra, InfrastructureError, load_settings, registry
from infrakit.cli import main as cli
from infrakit.registry import Backend
from infrakit.settings import TelemetrySettings
from infrakit.telemetry.exporters import ExportContext, Exporters, exporter_backend
from infrakit.testing import capture_logs, span_attributes

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def validate(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    code = cli(["config", "validate", str(path)])
    out, err = capsys.readouterr()
    return code, out + err


class TestCaughtByValidation:
    """What start-up rejected for configuration reasons, `config validate` names."""

    @pytest.mark.parametrize(
        ("profile", "expected"),
        [
            (
                "database: {url: 'postgresql://u@h/db'}\n",
                "p.yaml:1:12: database.url: database_url 'postgresql://u@h/db' uses a synchronous "
                "driver; use postgresql+asyncpg:// instead",
            ),
            (
                "database: {url: 'mysql+aiomysql://u@h/db'}\n",
                "database.url: driver 'mysql+aiomysql' needs the 'aiomysql' package, which is not "
                "installed: pip install aiomysql",
            ),
            (
                "tokens: {backend: redis, url: 'http://cache:6379/0'}\n",
                "tokens.url: unsupported Redis URL scheme 'http' in 'http://cache:6379/0'; "
                "use redis://, rediss:// or redis+sentinel://",
            ),
            (
                "tokens: {backend: redis, url: 'redis://cache:port/0'}\n",
                "tokens.url: 'redis://cache:port/0': port 'port' is not a number",
            ),
            (
                "tokens: {backend: redis, key_prefix: 'app:{x}:'}\n",
                "tokens.key_prefix: key_prefix 'app:{x}:' must not contain braces",
            ),
            (
                "tokens: {backend: redis, socket_timeout_s: 90}\n",
                "tokens.socket_timeout_s: Input should be less than 60",
            ),
            (
                "tokens: {backend: memory, url: 'redis://cache:6379/0'}\n",
                "tokens.url: not a key of the tokens backend 'memory': it belongs to 'redis'",
            ),
            (
                "telemetry: {exporter: memory, endpoint: 'http://collector:4318'}\n",
                "telemetry.endpoint: not a key of the telemetry backend 'memory': it belongs to "
                "'otlp'",
            ),
            (
                "telemetry: {excluded_paths: ['health']}\n",
                "telemetry.excluded_paths: excluded path patterns must start with '/'",
            ),
        ],
    )
    def test_named_with_file_line_and_fix(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: str, expected: str
    ) -> None:
        code, text = validate(tmp_path, profile, capsys)
        assert code == 1
        assert expected in text.replace("\n", " ").replace("  ", " ")
        assert "p.yaml:1:" in text

    def test_a_missing_extra_is_a_problem_with_the_pip_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a: None if n == "redis" else real(n, *a)
        )
        code, text = validate(tmp_path, "tokens:\n  backend: redis\n", capsys)
        assert code == 1
        assert "p.yaml:2:3: tokens.backend:" in text
        assert 'pip install "infrakit-compose[redis]"' in text


class TestTheContainerDeclaresTheWiring:
    """One slot per component, whose choices are every registered backend."""

    def test_every_registered_backend_is_a_choice(self) -> None:
        infra = Infra(load_settings("test", environ={}))
        choices = infra.container.tokens.providers
        assert {"memory", "redis"} <= set(choices)
        assert {"none", "console", "memory", "otlp"} <= set(infra.container.telemetry.providers)

    async def test_an_exporter_is_one_module(self) -> None:
        """A new exporter: its settings model with an ``exporters()`` method, one line."""
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from pydantic import create_model

        def exporters(self: Any, context: ExportContext) -> Exporters:
            spans = InMemorySpanExporter()
            processor = SimpleSpanProcessor(context.scrubbed(spans))
            return Exporters(spans, processor, InMemoryMetricReader())

        model = create_model(
            "ListTelemetrySettings",
            __base__=TelemetrySettings,
            exporter=(Any, "list"),
            prefix=(str, "svc"),
        )
        setattr(model, "exporters", exporters)  # noqa: B010 - a method added to a made model
        backend: Backend = exporter_backend("list", model)
        registry.register_backend("telemetry", "list", backend)
        try:
            settings = load_settings(
                "test",
                environ={},
                overrides={"telemetry.exporter": "list", "telemetry.prefix": "orders"},
            )
            async with Infra(settings) as infra:
                with infra.telemetry.tracer.start_as_current_span(
                    "checkout", attributes={"password": "x"}
                ):
                    pass
                (span,) = infra.telemetry.finished_spans()
                assert span.name == "checkout"
                assert (
                    span_attributes(span)["password"] == "[REDACTED]"
                )  # scrubbed like every exporter
        finally:
            registry.unregister_backend("telemetry", "list")


class TestAuditVerifyTouchesOnlyTheDatabase:
    """0 intact, 1 tampering found, 3 could not check; Redis and the collector unused."""

    def profile(self, tmp_path: Path, database: str) -> str:
        path = tmp_path / "verify.yaml"
        path.write_text(
            f"database: {{url: '{database}'}}\n"
            "tokens: {backend: redis, url: 'redis://127.0.0.1:9/0'}\n"  # nobody listens on 9
            "audit: {backend: sql}\n"
            "telemetry: {exporter: otlp, endpoint: 'http://127.0.0.1:9'}\n",
            encoding="utf-8",
        )
        return str(path)

    def run(self, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        code = cli(list(argv))
        out, err = capsys.readouterr()
        return code, out + err

    def test_exit_codes(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        import sqlite3

        database = tmp_path / "audit.db"
        profile = self.profile(tmp_path, f"sqlite+aiosqlite:///{database}")
        # no table yet: could not check
        code, text = self.run("audit", "verify", profile, capsys=capsys)
        assert code == 3, text
        assert "could not check the audit chain" in text
        assert self.run("db", "upgrade", profile, capsys=capsys)[0] == 0

        async def write() -> None:
            from infrakit.audit.sql import SqlAuditLogger
            from infrakit.database import DatabaseSession

            db = DatabaseSession(f"sqlite+aiosqlite:///{database}")
            audit = SqlAuditLogger(db)
            for n in range(3):
                await audit.log_action("login", "session", user_id=f"u{n}")
            await db.aclose()

        asyncio.run(write())
        code, text = self.run("audit", "verify", profile, capsys=capsys)
        assert code == 0, text
        assert "3 audit entries verified" in text
        with contextlib.closing(sqlite3.connect(database)) as conn:
            conn.execute("UPDATE infrakit_audit_log SET user_id = 'mallory' WHERE seq = 2")
            conn.commit()
        code, text = self.run("audit", "verify", profile, capsys=capsys)
        assert code == 1
        assert "BROKEN" in text

    def test_unreachable_database_is_3(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        profile = self.profile(tmp_path, "postgresql+asyncpg://u:pw@127.0.0.1:9/db")
        code, text = self.run("audit", "verify", profile, "--timeout", "20", capsys=capsys)
        assert code == 3
        assert "could not check the audit chain" in text
        assert "pw@" not in text


class TestCheckAndDescribeAgree:
    """Both report the same state for every component."""

    def test_same_states(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = tmp_path / "p.yaml"
        path.write_text(
            "tokens: {backend: redis, url: 'redis://127.0.0.1:9/0', connect_timeout_s: 1}\n",
            encoding="utf-8",
        )
        cli(["check", str(path), "--timeout", "5"])
        check = capsys.readouterr().out
        cli(["describe", str(path), "--timeout", "5"])
        describe = capsys.readouterr().out

        def states(text: str) -> dict[str, str]:
            rows = [line.split() for line in text.splitlines() if line.startswith("  ")]
            return {
                row[0]: row[2] for row in rows if len(row) >= 3 and row[0] in registry.COMPONENTS
            }

        assert states(check) == states(describe)
        assert states(check)["tokens"] == "down"
        assert states(check)["database"] == "up"


# --- the invariant, for generated profiles --------------------------------------------

# Values that validate (and may still not connect), and values that must not.
VALID: dict[str, list[Any]] = {
    "database.url": ["sqlite+aiosqlite:///:memory:", "postgresql+asyncpg://u:pw@127.0.0.1:9/db"],
    "database.pool_size": [1, 5],
    "database.connect_timeout_s": [0.5, 1],
    "tokens.backend": ["memory", "redis"],
    "tokens.url": [
        "redis://127.0.0.1:9/0",
        "rediss://127.0.0.1:9/0",
        "redis+sentinel://127.0.0.1:9/mymaster",
        "unix:///tmp/nothing.sock",
    ],
    "tokens.key_prefix": ["app:"],
    "tokens.socket_timeout_s": [0.2, 1],
    "tokens.cluster": [False, True],
    "audit.backend": ["memory", "sql"],
    "telemetry.exporter": ["none", "memory", "console", "otlp"],
    "telemetry.endpoint": ["http://127.0.0.1:9"],
    "telemetry.sample_ratio": [0.5],
    "logging.level": ["INFO"],
}
INVALID: dict[str, list[Any]] = {
    "database.url": [
        "postgresql://u@127.0.0.1/db",
        "mysql+aiomysql://u@127.0.0.1/db",
        "nosuch+driver://u@h/db",
        "not a url",
        "",
    ],
    "database.pool_size": [0, -1, "x", True],
    "database.connect_timeout_s": [0, -1, "nan"],
    "tokens.backend": ["rediss", "dynamo"],
    "tokens.url": [
        "redis+sentinel://127.0.0.1:9",
        "http://127.0.0.1:9/0",
        "redis://h:port/0",
        "redis://127.0.0.1:9/db",
    ],
    "tokens.key_prefix": ["{x}", ""],
    "tokens.socket_timeout_s": [90, -1],
    "tokens.connect_timeout_s": [0, 400],
    "tokens.max_entries": [0],
    "audit.backend": ["blob"],
    "telemetry.exporter": ["zipkin"],
    "telemetry.sample_ratio": [2],
    "logging.level": ["LOUD"],
}


def _choose(pool: dict[str, list[Any]], max_size: int) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.lists(st.sampled_from(sorted(pool)), unique=True, max_size=max_size)
    return keys.flatmap(lambda ks: st.fixed_dictionaries({k: st.sampled_from(pool[k]) for k in ks}))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(valid=_choose(VALID, 8), broken=_choose(INVALID, 1))
def test_validated_profiles_start_or_fail_only_to_connect(
    valid: dict[str, Any], broken: dict[str, Any]
) -> None:
    """For generated profiles: load ok implies start raises nothing but a connection error."""
    overrides = {"database.connect_timeout_s": 1, "logging.level": "CRITICAL", **valid, **broken}
    if overrides.get("tokens.backend") == "redis":
        overrides.setdefault("tokens.connect_timeout_s", 1)
    try:
        loaded = load_settings("test", environ={}, overrides=overrides)
    except ConfigError:
        # nothing wrong was planted, but keys of a backend not selected may clash
        clashing = {"tokens.url", "tokens.cluster", "tokens.key_prefix", "tokens.socket_timeout_s"}
        assert broken or set(valid) & {*clashing, "telemetry.endpoint"}
        return  # refused with its problems named: fine
    assert not broken, f"{broken} passed validation"

    async def start() -> None:
        infra = Infra(loaded)
        try:
            async with asyncio.timeout(60):
                await infra.start()
        except InfrastructureError:
            pass  # could not reach a service: the one thing validation cannot know
        finally:
            with capture_logs():
                await infra.aclose()

    asyncio.run(start())
