"""The FastAPI integration: lifespan, dependencies, require_token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text

from infrakit.component import HealthResult
from infrakit.errors import TokenStoreError
from infrakit.integrations.fastapi import get_db_session, get_infra, install, require_token
from infrakit.testing import override
from infrakit.tokens import InMemoryTokenStore

KEY = "k" * 32


class BrokenStore:
    async def is_valid(self, jti: str, *, user_id: str | None = None) -> bool:
        raise TokenStoreError("redis down")


def make_app() -> FastAPI:
    app = FastAPI()
    install(app, "test", environ={})
    auth = require_token(key=KEY)

    @app.get("/secure")
    async def secure(claims: dict[str, Any] = Depends(auth)) -> dict[str, Any]:  # noqa: B008
        return {"sub": claims["sub"]}

    @app.post("/write/{fail}")
    async def write(fail: bool, session: Any = Depends(get_db_session)) -> dict[str, str]:  # noqa: B008
        await session.execute(text("CREATE TABLE IF NOT EXISTS notes (body TEXT)"))
        await session.execute(text("INSERT INTO notes VALUES ('x')"))
        if fail:
            raise RuntimeError("handler failed")
        return {"ok": "yes"}

    @app.get("/count")
    async def count(session: Any = Depends(get_db_session)) -> dict[str, int]:  # noqa: B008
        return {"n": (await session.execute(text("SELECT count(*) FROM notes"))).scalar_one()}

    return app


def token(jti: str = "j1", **claims: Any) -> str:
    payload = {"sub": "ann", "jti": jti, "exp": datetime.now(UTC) + timedelta(minutes=5), **claims}
    return jwt.encode(payload, KEY, algorithm="HS256")


async def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, path, **kwargs)


@pytest.fixture
async def app() -> Any:
    application = make_app()
    async with application.router.lifespan_context(application):
        yield application


class TestRequireToken:
    """401 with a JSON body for every bad token; 503 when the store cannot answer."""

    async def test_valid(self, app: FastAPI) -> None:
        infra = app.state.infra
        await infra.tokens.store("j1", "ann", datetime.now(UTC) + timedelta(minutes=5))
        response = await call(app, "GET", "/secure", headers={"authorization": f"Bearer {token()}"})
        assert (response.status_code, response.json()) == (200, {"sub": "ann"})

    @pytest.mark.parametrize(
        ("header", "detail"),
        [
            (None, "missing or malformed"),
            ("Basic abc", "missing or malformed"),
            ("Bearer ", "missing or malformed"),
            ("Bearer not.a.jwt", "invalid token"),
            (
                f"Bearer {jwt.encode({'sub': 'a', 'jti': 'x', 'exp': 9999999999}, 'wrong' * 8)}",
                "invalid token",
            ),
            (f"Bearer {jwt.encode({'sub': 'a', 'exp': 9999999999}, KEY)}", "invalid token"),
            (f"Bearer {jwt.encode({'sub': 'a', 'jti': 'x', 'exp': 1}, KEY)}", "token expired"),
            ("Bearer TOKEN", "revoked or unknown"),
        ],
    )
    async def test_unauthorized(self, app: FastAPI, header: str | None, detail: str) -> None:
        headers = (
            {} if header is None else {"authorization": header.replace("TOKEN", token("nope"))}
        )
        response = await call(app, "GET", "/secure", headers=headers)
        assert response.status_code == 401
        assert detail in response.json()["detail"]
        assert response.headers["www-authenticate"].startswith("Bearer")

    @pytest.mark.parametrize(
        "forged",
        [
            "Bearer not.a.jwt",
            f"Bearer {jwt.encode({'sub': 'a', 'jti': 'x', 'exp': 9999999999}, 'wrong' * 8)}",
            f"Bearer {jwt.encode({'sub': 'a', 'exp': 9999999999}, KEY)}",
            f"Bearer {jwt.encode({'sub': 'a', 'jti': 'x', 'exp': 9999999999}, KEY * 2, 'HS512')}",
        ],
    )
    async def test_the_detail_is_the_kits_own_words(self, app: FastAPI, forged: str) -> None:
        """PyJWT's detail (which claim is missing, which check failed) is not echoed."""
        response = await call(app, "GET", "/secure", headers={"authorization": forged})
        assert (response.status_code, response.json()) == (401, {"detail": "invalid token"})

    async def test_two_authorization_headers_are_refused(self, app: FastAPI) -> None:
        infra = app.state.infra
        await infra.tokens.store("j1", "ann", datetime.now(UTC) + timedelta(minutes=5))
        good = f"Bearer {token()}"
        for pair in ([good, "Bearer forged"], ["Bearer forged", good], [good, good]):
            response = await call(
                app, "GET", "/secure", headers=[("authorization", v) for v in pair]
            )
            assert response.status_code == 401
            assert response.json() == {"detail": "more than one Authorization header"}

    async def test_store_down_is_503(self, app: FastAPI) -> None:
        with override(app.state.infra, tokens=BrokenStore()):
            response = await call(
                app, "GET", "/secure", headers={"authorization": f"Bearer {token()}"}
            )
        assert response.status_code == 503
        assert response.json() == {"detail": "token store unavailable"}


class TestSessions:
    """One session per request, rolled back when the handler fails."""

    async def test_commit_and_rollback(self, app: FastAPI) -> None:
        assert (await call(app, "POST", "/write/false")).status_code == 200
        assert (await call(app, "POST", "/write/true")).status_code == 500
        assert (await call(app, "GET", "/count")).json() == {"n": 1}

    async def test_get_infra_without_lifespan(self) -> None:
        from starlette.requests import Request

        request = Request({"type": "http", "app": FastAPI()})
        with pytest.raises(RuntimeError, match="no Infra on this app"):
            await get_infra(request)

    async def test_request_id_header(self, app: FastAPI) -> None:
        response = await call(app, "GET", "/count", headers={"x-request-id": "req-7"})
        assert response.headers["x-request-id"] == "req-7"


class TestNoDoubleSpans:
    """FastAPI's own native tracing is switched off by install(), so each request
    has exactly one server span: ours."""

    async def test_fastapi_native_tracing_is_off(self) -> None:
        from infrakit.settings.models import TelemetrySettings
        from infrakit.telemetry import TelemetryProvider

        theirs = TelemetryProvider(TelemetrySettings(exporter="memory"))
        theirs.initialize()
        try:
            application = FastAPI(telemetry={"tracer_provider": theirs.tracer_provider})
        except TypeError:
            pytest.skip("this FastAPI has no native telemetry to switch off")
        install(application, "test", environ={})

        @application.get("/ping")
        async def ping() -> dict[str, str]:
            return {"ok": "yes"}

        async with application.router.lifespan_context(application):
            response = await call(application, "GET", "/ping")
            ours = application.state.infra.telemetry.finished_spans()
        assert response.status_code == 200
        assert [s.name for s in ours] == ["GET /ping"]
        assert theirs.finished_spans() == ()
        theirs.shutdown()

    async def test_a_mounted_fastapi_app_adds_no_spans(self) -> None:
        """A FastAPI app mounted after install() would trace through the global
        provider the kit installs (a second server span, endpoint spans)."""
        from starlette.routing import Mount

        application = FastAPI()
        settings = install(application, "test", environ={})
        sub = FastAPI()

        @sub.get("/items/{item_id}")
        async def item(item_id: int) -> dict[str, int]:
            return {"item": item_id}

        application.router.routes.append(Mount("/tenants/{tenant}", app=sub))
        assert settings.telemetry.exporter == "memory"
        async with application.router.lifespan_context(application):
            response = await call(application, "GET", "/tenants/acme/items/3")
            spans = application.state.infra.telemetry.finished_spans()
        assert response.status_code == 200
        assert [s.name for s in spans] == ["GET /tenants/{tenant}/items/{item_id}"]


class DownStore(InMemoryTokenStore):
    """A real store whose backend says it is down."""

    async def health_check(self) -> HealthResult:
        return HealthResult(False, 0.0, "redis at redis://:***@cache:6379/0 refused")


class TestHealthProbes:
    """/health/live and /health/ready, as an orchestrator polls them."""

    async def test_live_and_ready(self, app: FastAPI) -> None:
        live = await call(app, "GET", "/health/live")
        ready = await call(app, "GET", "/health/ready")
        assert (live.status_code, live.json()) == (200, {"status": "up"})
        assert (ready.status_code, ready.json()) == (200, {"status": "up"})

    async def test_a_component_requests_need_is_down(self, app: FastAPI) -> None:
        with override(app.state.infra, tokens=DownStore()):
            ready = await call(app, "GET", "/health/ready")
            live = await call(app, "GET", "/health/live")
        # status only: no host, user or error for an anonymous caller
        assert (ready.status_code, ready.json()) == (503, {"status": "down"})
        assert live.status_code == 200  # liveness asks no backend

    async def test_not_started_is_not_ready(self) -> None:
        application = make_app()  # no lifespan run
        ready = await call(application, "GET", "/health/ready")
        assert (ready.status_code, ready.json()) == (503, {"status": "down"})

    async def test_a_prefix_with_a_parameter_and_other_paths(self) -> None:
        """The probes turn other paths away cheaply, and still answer under a
        prefix with a path parameter (its text is never in a request path)."""
        app = FastAPI()
        install(app, "test", environ={}, health="/{tenant}/health")

        @app.get("/{tenant}/health/other")
        async def other(tenant: str) -> dict[str, str]:
            return {"tenant": tenant}

        async with app.router.lifespan_context(app):
            live = await call(app, "GET", "/acme/health/live")
            ready = await call(app, "GET", "/acme/health/ready")
            mine = await call(app, "GET", "/acme/health/other")
            slash = await call(app, "GET", "/acme/health/live/")
        assert (live.status_code, live.json()) == (200, {"status": "up"})
        assert ready.status_code == 200
        assert (mine.status_code, mine.json()) == (200, {"tenant": "acme"})
        # Starlette redirects a trailing slash to the route (the probe must
        # not turn the slashed path away before the router tries that)
        assert (slash.status_code, slash.headers.get("location", "")[-17:]) == (
            307,
            "/acme/health/live",
        )

    async def test_another_prefix_or_none(self) -> None:
        moved, bare = FastAPI(), FastAPI()
        install(moved, "test", environ={}, health="/_probe")
        install(bare, "test", environ={}, health=None)
        async with moved.router.lifespan_context(moved), bare.router.lifespan_context(bare):
            assert (await call(moved, "GET", "/_probe/ready")).status_code == 200
            assert (await call(bare, "GET", "/health/ready")).status_code == 404
