"""Run the example service on a profile: drive it through one scenario, or serve it.

    python -m examples.service [PROFILE]      (default: $INFRAKIT_PROFILE, else local)
    python -m examples.service [PROFILE] --serve [--host H] [--port N] [--loop L] [--http P]

Without ``--serve``: starts the app under uvicorn on a free loopback port,
then: log in, call a protected route, log out, see the same token rejected,
read the audit log, ask for health — printing what happened — and stops the
server.

With ``--serve``: serves the app under uvicorn until SIGINT or SIGTERM, one
worker, the app's lifespan run by uvicorn. The event loop and HTTP parser
are uvicorn's ``auto`` choice: uvloop and httptools when installed (the
``fastapi`` extra installs ``uvicorn[standard]``, which brings them), else
asyncio and h11; the line printed once it listens names the ones in use.
The same thing through uvicorn's own command line::

    INFRAKIT_PROFILE=local uvicorn --factory examples.service.app:create_app --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from examples.service.app import create_app


@dataclass
class Step:
    what: str
    status: int
    note: str = ""


@dataclass
class ScenarioResult:
    steps: list[Step] = field(default_factory=list)
    audit_actions: list[str] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)
    public_health: dict[str, Any] = field(default_factory=dict)

    def status_of(self, what: str) -> int:
        return next(s.status for s in self.steps if s.what == what)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_scenario(
    profile: str | None = None, *, echo: bool = True, **load_settings_kwargs: Any
) -> ScenarioResult:
    app = create_app(profile, **load_settings_kwargs)
    port = _free_port()
    # The app's lifespan runs here rather than inside uvicorn, so a start-up
    # failure (a backend that is down) reaches the caller as one clear error.
    async with app.router.lifespan_context(app), _served(app, port):
        return await drive(f"http://127.0.0.1:{port}", echo=echo)


async def _until_started(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError("the server stopped during start-up")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def _served(app: Any, port: int) -> AsyncIterator[None]:
    """``app`` under uvicorn on loopback ``port`` (its lifespan run by the caller)."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    try:
        await _until_started(server, serving)
        yield
    finally:
        server.should_exit = True
        await serving


async def drive(base_url: str, *, echo: bool = True) -> ScenarioResult:
    """The scenario, over HTTP, against the service at ``base_url``."""
    result = ScenarioResult()

    def record(what: str, response: httpx.Response, note: str = "") -> None:
        result.steps.append(Step(what, response.status_code, note))
        if echo:
            print(f"  {len(result.steps)}. {what:<38} -> {response.status_code} {note}")

    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        bad = await client.post("/login", json={"username": "ann", "password": "guess"})
        record("log in with a wrong password", bad, "(refused, audited)")
        login = await client.post("/login", json={"username": "ann", "password": "wonderland"})
        token = login.json()["access_token"]
        record("log in as ann", login, f"(request id {login.headers['x-request-id'][:8]}...)")
        auth = {"authorization": f"Bearer {token}"}
        me = await client.get("/me", headers=auth)
        record("call the protected /me", me, f"(user {me.json().get('user')})")
        out = await client.post("/logout", headers=auth)
        record("log out", out, f"(revoked: {out.json().get('revoked')})")
        again = await client.get("/me", headers=auth)
        record("call /me with the revoked token", again, f"({again.json().get('detail')})")
        garbage = await client.get("/me", headers={"authorization": "Bearer not-a-jwt"})
        record("call /me with a malformed token", garbage, "(JSON error, never 500)")
        second = await client.post("/login", json={"username": "ann", "password": "wonderland"})
        auth2 = {"authorization": f"Bearer {second.json()['access_token']}"}
        record("log in again", second)
        audit = await client.get("/audit", headers=auth2)
        result.audit_actions = [
            f"{e['action']}:{e['result']}" for e in reversed(audit.json()["entries"])
        ]
        chain = "intact" if audit.json()["chain_ok"] else "BROKEN"
        record(
            "read ann's audit log",
            audit,
            f"({len(result.audit_actions)} entries, chain {chain})",
        )
        details = await client.get("/health/details", headers=auth2)
        result.health = details.json()
        states = ", ".join(f"{c['component']} {c['status']}" for c in result.health["components"])
        record("health details (signed in)", details, f"({states})")
        everywhere = await client.post("/logout-all", headers=auth2)
        record(
            "log out everywhere",
            everywhere,
            f"({everywhere.json()['revoked_sessions']} sessions)",
        )
        health = await client.get("/health")
        result.public_health = health.json()
        record("public health", health, f"({result.public_health})")
    if echo:
        print("  audit trail: " + " -> ".join(result.audit_actions))
    return result


def serve(
    profile: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    loop: str = "auto",
    http: str = "auto",
    access_log: bool = True,
    **load_settings_kwargs: Any,
) -> int:
    """Serve the service under uvicorn until SIGINT/SIGTERM; the exit code.

    One worker; uvicorn runs the app's lifespan, so a backend that is down
    stops the start with the kit's one line naming it and uvicorn's exit code
    for a failed start-up, 3.
    """
    app = create_app(profile, **load_settings_kwargs)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http=http,
        lifespan="on",
        log_config=None,  # the kit's logging pipeline takes uvicorn's loggers over
        access_log=access_log,
    )
    server = _Server(config)
    try:
        server.run()
    except SystemExit as stop:  # uvicorn's way out when the lifespan or the bind fails
        reason = getattr(app.state, "infrakit_start_error", None)
        if reason is not None and not server.started:
            print(reason, file=sys.stderr)  # the kit's one line, after uvicorn's traceback
        return stop.code if isinstance(stop.code, int) else 1
    return 0


class _Server(uvicorn.Server):
    """uvicorn's server, saying once it listens which event loop and HTTP
    parser it runs on (``auto`` picks them by what is installed)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            config = self.config
            print(
                f"serving http://{config.host}:{config.port} "
                f"(event loop {_loop_name()}, HTTP parser {_parser_name(config)}); "
                "SIGINT or SIGTERM stops it",
                flush=True,
            )


def _loop_name() -> str:
    """``uvloop`` or ``asyncio``: the package of the running loop's class."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def _parser_name(config: uvicorn.Config) -> str:
    """``httptools`` or ``h11``: the module of the protocol class uvicorn loaded."""
    module: str = config.http_protocol_class.__module__
    return module.rpartition(".")[2].removesuffix("_impl")


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.service", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("profile", nargs="?", help="default: $INFRAKIT_PROFILE, else local")
    parser.add_argument("--serve", action="store_true", help="serve until stopped")
    parser.add_argument("--host", default="127.0.0.1", help="with --serve (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="with --serve (default %(default)s)")
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="with --serve: uvicorn's event loop (default %(default)s: uvloop when installed)",
    )
    parser.add_argument(
        "--http",
        default="auto",
        choices=["auto", "h11", "httptools"],
        help="with --serve: uvicorn's HTTP parser (default %(default)s: httptools when installed)",
    )
    parser.add_argument(
        "--no-access-log", action="store_true", help="with --serve: no line per request"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    if args.serve:
        return serve(
            args.profile,
            host=args.host,
            port=args.port,
            loop=args.loop,
            http=args.http,
            access_log=not args.no_access_log,
        )
    profile = args.profile
    print(f"infrakit example service, profile {profile or '$INFRAKIT_PROFILE or local'}:")
    result = asyncio.run(run_scenario(profile))
    expected = [401, 200, 200, 200, 401, 401, 200, 200, 200, 200, 200]
    ok = [s.status for s in result.steps] == expected
    print("scenario " + ("completed as expected" if ok else "did NOT go as expected"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
