"""The kit's cost per request against hand wiring, as ratios measured in one run.

Targets:
- A FastAPI route that checks a token in the memory token store and writes
  one memory audit entry, telemetry ``none``: the app built with
  ``install(app, settings)`` and the integration's dependencies
  (``get_token_store``, ``get_audit_logger``) takes at most 1.05x the time of
  the same app wiring the same two objects by hand in its own lifespan (same
  classes, same hash chain, dependencies reading ``app.state``).
- The same two apps with telemetry on (the ``memory`` exporter, spans and
  metrics): the kit's ``TracingMiddleware`` against OTel contrib's
  ``OpenTelemetryMiddleware`` on the hand-wired app, on the same providers.
  The middleware's overhead (time minus the hand-wired app without
  middleware) is at most 0.35x of contrib's.

Both apps run in this process and are called as ASGI apps directly (no HTTP
client in the timing), in alternation, several rounds, medians. Time is this
process's CPU time: the requests do no I/O (memory backends, memory
exporter), so it is their cost, without the time a shared machine's other
processes take the core away.
"""

# No `from __future__ import annotations`: FastAPI evaluates the route's
# annotations, which name the dependencies local to add_route.
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from _util import ASGI_SCOPE, asgi_receive, verdict
from fastapi import Depends, FastAPI, HTTPException, Request

from infrakit.audit import InMemoryAuditLogger
from infrakit.audit.base import AuditLogger
from infrakit.audit.memory import MemoryAuditSettings
from infrakit.integrations.fastapi import get_audit_logger, get_token_store, install
from infrakit.settings.loader import load_settings
from infrakit.settings.models import InfraSettings
from infrakit.telemetry import TelemetryProvider
from infrakit.tokens import InMemoryTokenStore
from infrakit.tokens.base import TokenStore
from infrakit.tokens.memory import MemoryTokenSettings

JTI = "bench-jti"
USER = "bench-user"


def settings(exporter: str) -> InfraSettings:
    """The embedded ``test`` profile (memory token store and audit log) with
    the given telemetry exporter and logging at INFO (the route logs nothing)."""
    return load_settings(
        "test", overrides={"telemetry.exporter": exporter, "logging.level": "INFO"}
    )


def add_route(app: FastAPI, store_dep: Any, audit_dep: Any) -> None:
    """The route both apps serve: check the token, write one audit entry."""

    @app.get("/items/{item_id}")
    async def item(
        item_id: int,
        store: Annotated[TokenStore, Depends(store_dep)],
        audit: Annotated[AuditLogger, Depends(audit_dep)],
    ) -> dict[str, Any]:
        if not await store.is_valid(JTI, user_id=USER):
            raise HTTPException(status_code=401, detail="token revoked or unknown")
        await audit.log_action("read", "item", resource_id=str(item_id), user_id=USER)
        return {"item": item_id}


def kit_app(profile: InfraSettings) -> FastAPI:
    app = FastAPI()
    install(app, profile)
    add_route(app, get_token_store, get_audit_logger)
    return app


def hand_app(profile: InfraSettings, *, native_telemetry: bool = True) -> FastAPI:
    """What a team writes without the kit: the same classes, made from the same
    settings in the app's own lifespan, dependencies reading ``app.state``;
    FastAPI's defaults unless ``native_telemetry=False``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tokens, audit = profile.tokens, profile.audit
        assert isinstance(tokens, MemoryTokenSettings)
        assert isinstance(audit, MemoryAuditSettings)
        app.state.tokens = InMemoryTokenStore(
            tokens.max_entries, max_lifetime_s=tokens.max_lifetime_s
        )
        app.state.audit = InMemoryAuditLogger(audit.max_entries, hash_chain=audit.hash_chain)
        yield
        await app.state.tokens.aclose()
        await app.state.audit.aclose()

    async def tokens(request: Request) -> TokenStore:
        store: TokenStore = request.app.state.tokens
        return store

    async def audit(request: Request) -> AuditLogger:
        logger: AuditLogger = request.app.state.audit
        return logger

    app = FastAPI(lifespan=lifespan)
    if not native_telemetry:
        native_off(app)
    add_route(app, tokens, audit)
    return app


def native_off(app: FastAPI) -> None:
    """Turn off FastAPI's native telemetry (0.16x+), as ``install()`` does for
    the kit's app: with a global OTel provider set (telemetry on) it would trace
    each request a second time, and with ``logs`` on (FastAPI's default) it
    looks the OTel logger provider up on every request."""
    native = getattr(app, "_telemetry", None)
    if isinstance(native, dict):
        native.update(tracing=False, metrics=False, logs=False)


class _Recorder:
    """An ASGI ``send`` that keeps the last status (a benchmark of a 500 proves nothing)."""

    status = 0

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


async def per_request(app: Any, n: int) -> float:
    send = _Recorder()
    start = time.process_time()
    for _ in range(n):
        await app(dict(ASGI_SCOPE), asgi_receive, send)
    elapsed = (time.process_time() - start) / n
    if send.status != 200:
        raise RuntimeError(f"the benchmark route answered {send.status}, not 200")
    return elapsed


async def running(stack: AsyncExitStack, app: FastAPI) -> FastAPI:
    """Run the app's lifespan (as a server would) until ``stack`` closes; give
    its token store the benchmark's token."""
    await stack.enter_async_context(app.router.lifespan_context(app))
    state = app.state
    store = state.infra.tokens if hasattr(state, "infra") else state.tokens
    await store.store(JTI, USER, datetime.now(UTC) + timedelta(hours=1))
    return app


async def measure(
    apps: dict[str, Any], n: int, rounds: int, *, after_each: Callable[[], object] = lambda: None
) -> dict[str, float]:
    """Median time per request of each app, the apps taking turns; ``after_each``
    runs after each sample, untimed."""
    for app in apps.values():
        await per_request(app, 500)  # warm up
        after_each()
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            samples[name].append(await per_request(app, n))
            after_each()
    return {name: statistics.median(values) for name, values in samples.items()}


async def bench_wiring(n: int, rounds: int) -> bool:
    profile = settings("none")
    async with AsyncExitStack() as stack:
        apps = {
            "hand": await running(stack, hand_app(profile)),
            "kit": await running(stack, kit_app(profile)),
            "hand_lean": await running(stack, hand_app(profile, native_telemetry=False)),
        }
        t = await measure(apps, n, rounds)
    print(f"hand-wired FastAPI app (telemetry none): {t['hand'] * 1e6:7.1f} us/request")
    print(f"install(app) + integration dependencies: {t['kit'] * 1e6:7.1f} us/request")
    print(
        f"(hand-wired with FastAPI's native telemetry off: {t['hand_lean'] * 1e6:.1f} us, "
        f"kit {t['kit'] / t['hand_lean']:.3f}x of it; reported)"
    )
    return verdict("per request, kit vs hand wiring", t["kit"] / t["hand"], 1.05)


async def bench_telemetry_on(n: int, rounds: int) -> bool:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    profile = settings("memory")
    async with AsyncExitStack() as stack:
        kit = await running(stack, kit_app(profile))
        provider: TelemetryProvider = kit.state.infra.telemetry
        hand = await running(stack, hand_app(profile, native_telemetry=False))
        contrib = OpenTelemetryMiddleware(
            await running(stack, hand_app(profile, native_telemetry=False)),
            tracer_provider=provider.tracer_provider,
            meter_provider=provider._meter_provider,
        )
        apps = {"hand": hand, "kit": kit, "contrib": contrib}
        # the memory exporter keeps what it got: emptied between samples
        t = await measure(apps, n, rounds, after_each=provider.clear_spans)
    kit_overhead = t["kit"] - t["hand"]
    contrib_overhead = t["contrib"] - t["hand"]
    print(f"hand-wired app, no middleware:           {t['hand'] * 1e6:7.1f} us/request")
    print(
        f"hand-wired + contrib OpenTelemetryMiddleware: {t['contrib'] * 1e6:7.1f} us "
        f"(overhead {contrib_overhead * 1e6:.1f})"
    )
    print(
        f"install(app), telemetry memory:          {t['kit'] * 1e6:7.1f} us "
        f"(overhead {kit_overhead * 1e6:.1f})"
    )
    return verdict("middleware overhead vs contrib's", kit_overhead / contrib_overhead, 0.35)


async def main() -> int:
    ok = await bench_wiring(3_000, 11)
    # The memory exporter keeps every span until it is emptied (between
    # samples): 1,000 requests a sample keep at most as many spans alive as a
    # batch span processor's queue holds (2,048) for the kit's one span a
    # request (contrib's three: 3,000). With 3,000 requests a sample the
    # collector has more live spans to walk and the ratio reads ~0.03 higher.
    ok = await bench_telemetry_on(1_000, 15) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
