"""Canaries: generated secrets placed in every channel, every output captured.

Each test plants secrets (made by hypothesis, with ``@``, ``:``, ``/``, ``%``
and non-ASCII characters) where applications and libraries actually put them
— frame locals, messages, ``%s`` arguments, exception messages, URLs in text,
query strings, header lists, span attributes and events, SQL parameters,
profile values — and reads what a user would see: log lines in JSON and
console format (from structlog, stdlib logging and uvicorn), spans as the OTLP
receiver decoded them, every CLI command's stdout and stderr, and the health
JSON. No secret, and no sizeable piece of one, may appear in any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import jwt
import pydantic
import pytest
import sqlalchemy as sa
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace

from infrakit import Infra, load_settings
from infrakit.cli import main as cli
from infrakit.database import DatabaseSession
from infrakit.errors import ConfigError
from infrakit.logging import configure_logging, reset_logging
from infrakit.settings.models import InstrumentSettings, ServiceSettings
from infrakit.telemetry import TelemetryProvider, TracingMiddleware, set_telemetry, traced
from infrakit.telemetry.exporters.otlp import OtlpTelemetrySettings
from infrakit.testing.otlp import OtlpReceiver

pytestmark = pytest.mark.integration

# --- the canaries ------------------------------------------------------------------

# Characters a secret may hold in a URL, a query value or free text: the
# punctuation that breaks naive parsers ('@' ':' '/' '%') and non-ASCII. (What
# no rule can read is documented: whitespace ends an unquoted value in free
# text, '&' and '#' end one in a URL query.)
_URL_SAFE = st.sampled_from(
    [*"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789", *"@:/%-_.~", "é", "Ж", "✓"]
)
_TOKEN68 = st.sampled_from([*"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789-._~+/"])


def _canary(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # a fixed head keeps a degenerate draw ('::::::::') from matching output by chance
    return st.text(alphabet, min_size=10, max_size=24).map(lambda body: "Kq9" + body)


url_secrets = _canary(_URL_SAFE)
token_secrets = _canary(_TOKEN68)
any_secrets = st.text(min_size=10, max_size=24).map(lambda body: "Kq9" + body)

SLOW = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def pieces(secret: str) -> list[str]:
    """The secret and each sizeable piece of it between URL punctuation: a parser
    that splits a password at '@' or ':' leaks a piece, not the whole."""
    found = {secret}
    for sep in "@:/%":
        # a piece made of lowercase letters only could be an ordinary word of the
        # output ('protob' of 'http/protobuf'): only distinctive pieces count
        found.update(
            p
            for p in secret.split(sep)
            if len(p) >= 6 and any(c.isdigit() or c.isupper() or not c.isascii() for c in p)
        )
    return sorted(found, key=len, reverse=True)


def _decoded(output: str) -> str:
    """The strings of ``output``'s JSON lines as a reader sees them: a JSON
    encoder escapes non-ASCII, quotes and backslashes, so a secret holding any
    would not be found in the raw text."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                found.append(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for line in output.splitlines():
        with contextlib.suppress(ValueError):
            walk(json.loads(line))
    return "\n".join(found)


def assert_clean(output: str, *secrets: str, where: str = "") -> None:
    output = f"{output}\n{_decoded(output)}"
    for secret in secrets:
        for piece in pieces(secret):
            if piece in output:
                at = output.index(piece)
                context = output[max(0, at - 120) : at + len(piece) + 40]
                pytest.fail(f"{where}: {piece!r} (of {secret!r}) leaked in: ...{context}...")


# --- logs --------------------------------------------------------------------------


@dataclasses.dataclass
class ConnectionParameters:  # the shape of asyncpg's, whose repr holds the password
    user: str
    password: str
    database: str


class LoginBody(pydantic.BaseModel):
    username: str
    password: str


def _connect(password: str, dsn: str, params: ConnectionParameters, body: LoginBody) -> None:
    auth_args = ("default", password)  # redis-py's name for it  # noqa: F841
    raise ConnectionError(f"could not connect to {dsn}")


def _emit_everything(secret: str, token: str, url_secret: str) -> None:
    log = structlog.get_logger("app")
    stdlib = logging.getLogger("lib.driver")
    dsn = f"postgresql+asyncpg://app:{url_secret}@db.internal:5432/app"
    signed = jwt.encode({"sub": "ann", "pw": secret}, "k" * 32, algorithm="HS256")
    # keys and structures
    log.info(
        "login attempt",
        password=secret,
        PGPASSWORD=secret,
        userPassword=secret,
        aws_secret_access_key=secret,
        data={b"secret": secret, b"k": 1, "nested": [{"authtoken": secret}]},
        headers=[(b"authorization", f"Bearer {token}".encode()), (b"accept", b"*/*")],
        body=LoginBody(username="ann", password=secret),
        params=ConnectionParameters("app", secret, "app"),
    )
    # free text: messages, %s arguments, exception values, URLs, query strings
    log.warning(f"cannot reach {dsn}, retrying")
    log.info(f"GET /callback?code=abc&access_token={url_secret}&state=1 HTTP/1.1")
    log.info("proxy said", detail=f"Authorization: Bearer {token}")
    log.info("issued", note=f"session {signed} handed out")
    log.error("failed", error=ValueError(f"password={url_secret} was refused"))
    stdlib.warning("connecting to %s as %s", dsn, f"redis://:{url_secret}@cache:6379/0")
    stdlib.info("query string %s", f"?password={url_secret}&db=1")
    # exceptions: messages, tracebacks, frame locals
    params = ConnectionParameters("app", secret, "app")
    body = LoginBody(username="ann", password=secret)
    try:
        _connect(secret, dsn, params, body)
    except ConnectionError:
        log.exception("database unavailable")
        stdlib.exception("driver failed for %s", dsn)
    try:
        raise RuntimeError(f"token {signed} rejected by redis://u:{url_secret}@r/0")
    except RuntimeError as error:
        log.exception("wrapped", cause=error)


class TestLogs:
    """Every log channel, in both formats, structlog and stdlib alike."""

    @FAST
    @given(secret=any_secrets, token=token_secrets, url_secret=url_secrets)
    @pytest.mark.parametrize("log_format", ["json", "console"])
    @pytest.mark.parametrize("traceback_locals", [False, True], ids=["", "locals"])
    @pytest.mark.usefixtures("json_encoder")  # JSON by orjson, and by the stdlib encoder
    def test_no_secret_in_any_line(
        self, log_format: str, traceback_locals: bool, secret: str, token: str, url_secret: str
    ) -> None:
        out = io.StringIO()
        configure_logging("DEBUG", log_format, stream=out, traceback_locals=traceback_locals)
        try:
            _emit_everything(secret, token, url_secret)
        finally:
            reset_logging()
        text = out.getvalue()
        assert "database unavailable" in text
        # three logged exceptions, each with its traceback, in the format's shape
        if log_format == "json":
            events = [json.loads(line) for line in text.splitlines()]
            assert sum(isinstance(event.get("exception"), list) for event in events) >= 3
        else:
            assert text.count("Traceback (most recent call last)") >= 3
        signed = jwt.encode({"sub": "ann", "pw": secret}, "k" * 32, algorithm="HS256")
        assert_clean(text, secret, token, url_secret, signed, where=f"{log_format} log")

    def test_a_log_call_never_raises(self) -> None:
        out = io.StringIO()
        configure_logging("INFO", "json", stream=out)
        try:

            class Broken:
                def __repr__(self) -> str:
                    raise RuntimeError("no repr")

            structlog.get_logger().info("odd", data={b"k": 1, (1, 2): "tuple key"}, obj=Broken())
            loop: dict[str, Any] = {}
            loop["me"] = loop
            structlog.get_logger().info("circular", data=loop)
        finally:
            reset_logging()
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [line["event"] for line in lines] == ["odd", "circular"]


class TestUvicornErrorLog:
    """uvicorn's "Exception in ASGI application" goes through the same pipeline."""

    @SLOW
    @given(secret=url_secrets, token=token_secrets)
    def test_unhandled_exception_in_a_handler(self, secret: str, token: str) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        async def handler(request: Any) -> Any:
            password = secret  # noqa: F841 - a local the traceback must not show
            raise ValueError(f"bad credentials for redis://:{secret}@cache:6379/0")

        async def run() -> str:
            out = io.StringIO()
            configure_logging("INFO", "json", stream=out)
            app = Starlette(routes=[Route("/login", handler, methods=["POST"])])
            server = uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
            )
            serving = asyncio.create_task(server.serve())
            try:
                while not server.started:
                    if serving.done():
                        serving.result()  # the server failed to start: say why
                    await asyncio.sleep(0.01)
                port = server.servers[0].sockets[0].getsockname()[1]
                async with httpx.AsyncClient() as client:
                    response = await client.post(
                        f"http://127.0.0.1:{port}/login?password={secret}",
                        json={"username": "ann", "password": secret},
                        headers={"authorization": f"Basic {token}"},
                    )
                assert response.status_code == 500
            finally:
                server.should_exit = True
                await serving
                reset_logging()
            return out.getvalue()

        text = asyncio.run(run())
        assert "Exception in ASGI application" in text
        assert_clean(text, secret, token, where="uvicorn error log")


# --- spans at the receiver --------------------------------------------------------------


def _span_text(spans: list[Any]) -> str:
    return "\n".join(
        repr((s.name, s.attributes, s.events, s.event_attributes, s.status_message)) for s in spans
    )


class TestSpans:
    """What the collector receives: attributes, events, status, SQL statements."""

    @SLOW
    @given(secret=url_secrets, token=token_secrets)
    def test_no_secret_reaches_the_collector(self, secret: str, token: str) -> None:
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        with OtlpReceiver(grpc=False) as receiver:
            provider = TelemetryProvider(
                OtlpTelemetrySettings(
                    endpoint=receiver.http_endpoint,
                    instrument=InstrumentSettings(sqlalchemy=True),
                ),
                ServiceSettings(name="canary"),
            )
            provider.initialize()
            previous = set_telemetry(provider)  # @traced uses the default provider

            @traced("auth.check")
            def check(password: str) -> None:
                raise PermissionError(f"refused password={password} for redis://:{password}@r/0")

            async def handler(request: Any) -> PlainTextResponse:
                span = trace.get_current_span()
                span.set_attribute("db.password", secret)
                span.set_attribute("app.note", f"connected to redis://u:{secret}@r:6379/0")
                span.set_attribute("app.header", f"Bearer {token}")
                span.add_event("login", {"body": f"password={secret}"})
                if request.query_params.get("fail"):
                    raise ValueError(f"invalid login: password={secret!r}")
                with (
                    contextlib.suppress(PermissionError),
                    provider.tracer.start_as_current_span("inner"),
                ):
                    check(secret)
                return PlainTextResponse("ok")

            app = TracingMiddleware(
                Starlette(routes=[Route("/login", handler)]), provider, excluded_paths=()
            )

            async def run() -> None:
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    await c.get(f"/login?token={token}&password={secret}&page=2")
                    await c.get(f"/login?fail=1&access_token={secret}")
                engine = sa.create_engine("sqlite://")
                with engine.connect() as conn:
                    conn.exec_driver_sql(f"SELECT '{secret}' AS note")
                engine.dispose()

            try:
                asyncio.run(run())
                provider.force_flush(10)
            finally:
                set_telemetry(previous)
                provider.shutdown()
            spans = receiver.wait_for_spans(5)
        text = _span_text(spans)
        assert {"GET /login", "auth.check", "inner"} <= {s.name for s in spans}
        assert any("db.statement" in s.attributes for s in spans)
        assert "REDACTED" in text  # url.query keeps its names, masks the values
        assert_clean(text, secret, token, where="spans at the receiver")


# --- SQL parameters ----------------------------------------------------------------


class TestSqlParameters:
    """database.echo shows statements, never the values bound to them."""

    @SLOW
    @given(secret=any_secrets)
    def test_echo_and_errors_hide_parameters(self, secret: str) -> None:
        async def run() -> str:
            out = io.StringIO()
            configure_logging("INFO", "json", stream=out)
            db = DatabaseSession("sqlite+aiosqlite:///:memory:", echo=True)
            try:
                async with db.session() as s:
                    await s.execute(sa.text("CREATE TABLE t (v TEXT UNIQUE)"))
                    await s.execute(sa.text("INSERT INTO t VALUES (:v)"), {"v": secret})
                with contextlib.suppress(sa.exc.IntegrityError):
                    async with db.session() as s:
                        await s.execute(sa.text("INSERT INTO t VALUES (:v)"), {"v": secret})
                try:
                    async with db.session() as s:
                        await s.execute(sa.text("INSERT INTO t VALUES (:v)"), {"v": secret})
                except sa.exc.IntegrityError:
                    structlog.get_logger().exception("insert failed")
            finally:
                await db.aclose()
                reset_logging()
            return out.getvalue()

        text = asyncio.run(run())
        assert "INSERT INTO t" in text
        assert_clean(text, secret, where="echoed SQL")


# --- profile values: every CLI command, the health JSON ---------------------------------


def _run_cli(*argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli(list(argv))
        finally:
            reset_logging()
    return out.getvalue() + err.getvalue()


def _profile(tmp_path: Path, database_url: str, redis_url: str) -> Path:
    path = tmp_path / "canary.yaml"
    path.write_text(
        "extends: production\n"
        f"database: {{url: {json.dumps(database_url)}, auto_migrate: true}}\n"
        f"tokens: {{url: {json.dumps(redis_url)}, socket_timeout_s: 0.5, connect_timeout_s: 1}}\n"
        "telemetry: {exporter: none}\n",
        encoding="utf-8",
    )
    return path


class TestProfileValues:
    """Secrets in profile values never reach CLI output or the health report."""

    @SLOW
    @given(
        password=url_secrets,
        query_secret=url_secrets,
        redis_secret=url_secrets,
        jwt_secret=url_secrets,
    )
    def test_every_cli_command(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        fresh_pg_url: str,
        redis_available: None,
        password: str,
        query_secret: str,
        redis_secret: str,
        jwt_secret: str,
    ) -> None:
        tmp_path = tmp_path_factory.mktemp("canary")
        # PostgreSQL here trusts loopback: it ignores the password, so the
        # commands that connect really run with the canary in their URL.
        database = fresh_pg_url.replace("postgres@", f"postgres:{password}@", 1)
        database += f"?password={query_secret}"
        redis = f"redis://:{redis_secret}@127.0.0.1:6379/0?password={redis_secret}"
        profile = str(_profile(tmp_path, database, redis))
        # the production profile's auth.secret (HS256: at least 32 bytes)
        environ = {"JWT_SECRET": jwt_secret * 3}
        with mock.patch.dict(os.environ, environ):
            outputs = self._outputs(profile)
        assert "is at revision" in outputs["db upgrade"]
        for command, text in outputs.items():
            assert_clean(text, password, query_secret, redis_secret, jwt_secret, where=command)

    @staticmethod
    def _outputs(profile: str) -> dict[str, str]:
        return {
            "config validate": _run_cli("config", "validate", profile),
            "config show": _run_cli("config", "show", profile),
            "config show json": _run_cli("config", "show", profile, "--format", "json"),
            "config show sources": _run_cli("config", "show", profile, "--sources"),
            "config diff": _run_cli("config", "diff", profile, "single-host"),
            "db upgrade": _run_cli("db", "upgrade", profile),
            "check": _run_cli("check", profile, "--timeout", "5"),
            "check json": _run_cli("check", profile, "--json", "--timeout", "5"),
            "describe": _run_cli("describe", profile),
            "audit verify": _run_cli("audit", "verify", profile),
        }

    @SLOW
    @given(password=url_secrets)
    def test_config_errors(self, tmp_path_factory: pytest.TempPathFactory, password: str) -> None:
        tmp_path = tmp_path_factory.mktemp("errors")
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            f"database: {{url: [{json.dumps(f'postgresql+asyncpg://u:{password}@h/db')}]}}\n"
            f"tokens: {{url: {json.dumps(f'http://:{password}@h:x/0')}, backend: redis}}\n",
            encoding="utf-8",
        )
        text = _run_cli("config", "validate", str(bad))
        text += _run_cli(
            "config", "validate", "test", "--set", f'tokens.url=["redis://:{password}@h"]'
        )
        with pytest.raises(ConfigError) as caught:
            load_settings(str(bad))
        text += str(caught.value)
        assert "database.url" in text
        assert_clean(text, password, where="config errors")

    @SLOW
    @given(password=url_secrets)
    def test_health_json(self, password: str) -> None:
        settings = load_settings(
            "test",
            overrides={
                "database.url": f"postgresql+asyncpg://u:{password}@127.0.0.1:9/db"
                f"?password={password}",
                "database.connect_timeout_s": 1,
                "tokens.backend": "redis",
                "tokens.url": f"redis://:{password}@127.0.0.1:9/0?password={password}",
            },
        )
        report = asyncio.run(Infra(settings).probe(timeout_s=5))
        text = json.dumps(report.to_dict())
        assert "down" in text
        assert_clean(text, password, where="health JSON")
