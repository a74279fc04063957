"""Run the example service on a profile and drive it through one scenario.

    python -m examples.service [PROFILE]      (default: $INFRAKIT_PROFILE, else local)

Starts the app under uvicorn on a free loopback port, then: log in, call a
protected route, log out, see the same token rejected, read the audit log,
ask for health — printing what happened — and stops the server.
"""

from __future__ import annotations

import asyncio
import socket
import sys
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
    async with app.router.lifespan_context(app):
        return await _drive(app, port, echo)


async def _drive(app: Any, port: int, echo: bool) -> ScenarioResult:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError("the server stopped during start-up")
        await asyncio.sleep(0.02)
    result = ScenarioResult()

    def record(what: str, response: httpx.Response, note: str = "") -> None:
        result.steps.append(Step(what, response.status_code, note))
        if echo:
            print(f"  {len(result.steps)}. {what:<38} -> {response.status_code} {note}")

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
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
            states = ", ".join(
                f"{c['component']} {c['status']}" for c in result.health["components"]
            )
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
    finally:
        server.should_exit = True
        await serving
    if echo:
        print("  audit trail: " + " -> ".join(result.audit_actions))
    return result


def main(argv: list[str]) -> int:
    profile = argv[0] if argv else None
    print(f"infrakit example service, profile {profile or '$INFRAKIT_PROFILE or local'}:")
    result = asyncio.run(run_scenario(profile))
    expected = [401, 200, 200, 200, 401, 401, 200, 200, 200, 200, 200]
    ok = [s.status for s in result.steps] == expected
    print("scenario " + ("completed as expected" if ok else "did NOT go as expected"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
