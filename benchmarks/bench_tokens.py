"""Token store costs, as ratios measured in one run.

Targets:
- ``RedisTokenStore.is_revoked`` sequential on loopback within 1.15x of a raw
  ``redis.asyncio`` ``HGET`` of the same key (needs Redis on 127.0.0.1:6379).
- ``is_revoked_many`` of 1,000 jtis (one Lua script on a standalone server)
  at least 20x faster than 1,000 sequential ``is_revoked`` calls, the two
  alternated in one run, medians; a raw redis-py pipeline of the same
  ``HGET``s (what the store sent before) is reported beside them.
- ``InMemoryTokenStore.is_revoked`` within 3x of an ``async def`` doing a
  bare dict lookup.
- ``InMemoryTokenStore.store`` of 1,000,000 tokens with ``max_entries=100000``
  stays O(1): time per call flat across 10^4..10^6 (reported).
- 1,000 concurrent ``is_valid`` (half revoked) through the store's pool of 50:
  wall time within 1.5x of the raw client on a ``BlockingConnectionPool`` of
  50 (redis-py's own waiting pool) doing the same ``HMGET``s, 0 errors and
  0 wrong answers (redis-py's default pool, which the store used before,
  fails beyond 100 in flight);
  ``is_valid(jti, user_id=...)`` (cutoff read in the same round trip) and a
  pool of 2 (everything waits) are reported.

``python bench_tokens.py [PART ...] [--no-hiredis]``: the parts named (all by
default: redis, many, concurrent, memory, scaling); ``--no-hiredis`` hides
hiredis (redis-py's optional C reply parser) from redis-py, so one
virtualenv measures both parsers. The kit does not install it: with the
script, hiredis makes no difference to ``is_revoked_many`` (see README).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

NO_HIREDIS = "--no-hiredis"
if NO_HIREDIS in sys.argv:  # before redis-py looks for it
    sys.modules["hiredis"] = None  # type: ignore[assignment]

import redis.asyncio as redis  # noqa: E402
from _util import verdict, verdict_at_least  # noqa: E402
from redis.utils import HIREDIS_AVAILABLE  # noqa: E402

from infrakit.tokens import InMemoryTokenStore, RedisTokenStore  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"


async def per_call(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


async def bench_redis(n: int = 5_000, rounds: int = 5) -> bool:
    prefix = f"infrakit:bench:{uuid.uuid4().hex[:8]}:"
    store = RedisTokenStore(REDIS_URL, key_prefix=prefix)
    raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    expires = datetime.now(UTC) + timedelta(hours=1)
    await store.store("bench-jti", "bench-user", expires)
    key = store.token_key("bench-jti")
    try:
        for _ in range(500):  # warm both connections
            await raw.hget(key, "r")
            await store.is_revoked("bench-jti")
        raw_t, kit_t = [], []
        for _ in range(rounds):  # alternate, keep the best of each
            raw_t.append(await per_call(lambda: raw.hget(key, "r"), n))
            kit_t.append(await per_call(lambda: store.is_revoked("bench-jti"), n))
        r, k = min(raw_t), min(kit_t)
        print(f"raw redis.asyncio HGET:          {r * 1e6:7.1f} us/call")
        print(f"RedisTokenStore.is_revoked:      {k * 1e6:7.1f} us/call")
        return verdict("redis is_revoked vs raw HGET", k / r, 1.15)
    finally:
        await _clean_up(raw, prefix, store)


async def _clean_up(raw: redis.Redis, prefix: str, *stores: RedisTokenStore) -> None:
    """Delete the benchmark's keys and close its clients."""
    keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
    if keys:
        await raw.delete(*keys)
    await raw.aclose()
    for store in stores:
        await store.aclose()


async def _took(call: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def bench_many(rounds: int = 9) -> bool:
    """``is_revoked_many`` of 1,000 jtis (half stored, a sixth revoked) against
    1,000 sequential ``is_revoked``, alternated; medians. A raw redis-py pipeline
    of the same 1,000 ``HGET``s (what the store sent before it sent a script) is
    reported alongside."""
    prefix = f"infrakit:bench:{uuid.uuid4().hex[:8]}:"
    store = RedisTokenStore(REDIS_URL, key_prefix=prefix)
    raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    expires = datetime.now(UTC) + timedelta(hours=1)
    jtis = [f"m{i}" for i in range(1000)]
    keys = [store.token_key(jti) for jti in jtis]

    async def sequential() -> None:
        for jti in jtis:
            await store.is_revoked(jti)

    async def pipeline() -> None:
        async with raw.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "r")
            await pipe.execute()

    sides: dict[str, Callable[[], Awaitable[object]]] = {
        "sequential": sequential,
        "many": lambda: store.is_revoked_many(jtis),
        "pipeline": pipeline,
    }
    try:
        for jti in jtis[:500]:
            await store.store(jti, "bench-user", expires)
        for jti in jtis[:500:3]:
            await store.revoke(jti)
        expected = [await store.is_revoked(jti) for jti in jtis]
        assert sum(expected) == 167
        assert await store.is_revoked_many(jtis) == expected
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(rounds + 1):  # alternate; the first round warms every side
            for name, call in sides.items():
                times[name].append(await _took(call))
    finally:
        await _clean_up(raw, prefix, store)
    seq, many, pipe = (statistics.median(times[name][1:]) for name in sides)
    print(f"redis-py's reply parser: {'hiredis' if HIREDIS_AVAILABLE else 'pure Python'}")
    print(
        f"1,000 jtis: sequential is_revoked {seq * 1000:.1f} ms, is_revoked_many "
        f"{many * 1000:.2f} ms (raw redis-py pipeline of the HGETs: {pipe * 1000:.1f} ms, "
        f"{seq / pipe:.1f}x); medians of {rounds} alternated rounds"
    )
    return verdict_at_least("is_revoked_many speed-up over sequential is_revoked", seq / many, 20)


async def _burst(calls: list[Any]) -> tuple[float, list[Any]]:
    start = time.perf_counter()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    return time.perf_counter() - start, answers


async def bench_concurrent(n: int = 1_000, rounds: int = 7) -> bool:
    prefix = f"infrakit:bench:{uuid.uuid4().hex[:8]}:"
    store = RedisTokenStore(REDIS_URL, key_prefix=prefix)
    tiny = RedisTokenStore(REDIS_URL, key_prefix=prefix, pool_size=2, pool_timeout_s=60)
    pool = redis.BlockingConnectionPool.from_url(
        REDIS_URL, max_connections=50, decode_responses=True
    )
    raw = redis.Redis.from_pool(pool)
    expires = datetime.now(UTC) + timedelta(hours=1)
    jtis = [f"c{i}" for i in range(100)]
    for jti in jtis:
        await store.store(jti, "bench-user", expires)
    for jti in jtis[::2]:
        await store.revoke(jti)
    expected = [jtis[i % 100] in jtis[1::2] for i in range(n)]

    async def raw_valid(jti: str) -> bool:
        revoked, until = await raw.hmget(store.token_key(jti), ("r", "e"))
        return bool(revoked == "0" and int(str(until)) > time.time() * 1_000_000)

    sides: dict[str, Callable[[str], Awaitable[bool]]] = {
        "raw": raw_valid,
        "store": store.is_valid,
        "store+user": lambda jti: store.is_valid(jti, user_id="bench-user"),
        "pool of 2": tiny.is_valid,
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    bad = 0
    try:
        for _ in range(rounds):  # alternate the sides; the first round warms them
            for name, check in sides.items():
                took, answers = await _burst([check(jtis[i % 100]) for i in range(n)])
                bad += sum(a != e for a, e in zip(answers, expected, strict=True))
                times[name].append(took)
        best = {name: min(values[1:]) for name, values in times.items()}
        for name, took in best.items():
            print(
                f"{n:,} concurrent is_valid, {name:<10}: {took * 1000:7.1f} ms "
                f"({n / took:,.0f} checks/s)"
            )
        print(f"errors or wrong answers over {rounds} rounds x 4 sides: {bad}")
        ok = verdict(
            "1,000 concurrent is_valid, store vs raw pooled HMGET",
            best["store"] / best["raw"],
            1.5,
        )
        print(
            f"  with user_id (cutoff in the same round trip): "
            f"{best['store+user'] / best['raw']:.2f}x raw; pool of 2: "
            f"{best['pool of 2'] / best['raw']:.2f}x raw, mean wait "
            f"{best['pool of 2'] / 2 * 1000:.1f} ms per call"
        )
    finally:
        await _clean_up(raw, prefix, store, tiny)
    return ok and bad == 0


async def bench_memory(n: int = 200_000) -> bool:
    store = InMemoryTokenStore(max_entries=1000)
    expires = datetime.now(UTC) + timedelta(hours=1)
    await store.store("j", "u", expires)
    table = {"j": object()}

    async def bare(jti: str) -> bool:
        return table.get(jti) is None

    base_t, kit_t = [], []
    for _ in range(5):
        base_t.append(await per_call(lambda: bare("j"), n))
        kit_t.append(await per_call(lambda: store.is_revoked("j"), n))
    b, k = min(base_t), min(kit_t)
    print(f"async def + dict lookup:          {b * 1e9:7.0f} ns/call")
    print(f"InMemoryTokenStore.is_revoked:    {k * 1e9:7.0f} ns/call")
    return verdict("memory is_revoked vs bare dict lookup", k / b, 3.0)


async def bench_store_scaling() -> bool:
    store = InMemoryTokenStore(max_entries=100_000)
    expires = datetime.now(UTC) + timedelta(hours=1)
    checkpoints = {10_000, 100_000, 1_000_000}
    window = 10_000
    marks: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(1, 1_000_001):
        await store.store(f"jti-{i}", f"user-{i % 5000}", expires)
        if i % window == 0:
            now = time.perf_counter()
            if i in checkpoints:
                marks[i] = (now - start) / window
            start = now
    for count, seconds in sorted(marks.items()):
        print(
            f"store(): {seconds * 1e6:6.2f} us/call "
            f"over the {window:,} calls up to {count:,} stored"
        )
    assert await store.count() == 100_000
    spread = max(marks.values()) / min(marks.values())
    ok = spread <= 1.5
    print(
        f"per-call time 10^4 -> 10^6: x{spread:.2f} (flat if <= 1.5) -> {'PASS' if ok else 'FAIL'}"
    )
    return ok


PARTS: dict[str, Callable[[], Awaitable[bool]]] = {
    "redis": bench_redis,
    "many": bench_many,
    "concurrent": bench_concurrent,
    "memory": bench_memory,
    "scaling": bench_store_scaling,
}


async def main(parts: list[str]) -> bool:
    return all([await PARTS[name]() for name in parts or PARTS])


if __name__ == "__main__":
    chosen = [arg for arg in sys.argv[1:] if arg != NO_HIREDIS]
    if unknown := [name for name in chosen if name not in PARTS]:
        sys.exit(f"unknown part(s) {unknown}; choose from {list(PARTS)} (or none: all)")
    sys.exit(0 if asyncio.run(main(chosen)) else 1)
