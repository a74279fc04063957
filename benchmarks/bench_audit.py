"""The SQL audit log on PostgreSQL (127.0.0.1:5432), in a database of its own.

Targets:
- ``SqlAuditLogger.log_many`` of 10,000 entries (hash-chained) costs at most
  1.5x a raw SQLAlchemy Core ``insert()`` executemany of the same rows
  without hashing; single ``log_action`` latency is reported (p50/p99).
- ``query()`` over 1,000,000 rows with a ``user_id`` + time-range filter uses
  an index (the EXPLAIN is printed) and answers in under 20 ms p50.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import sqlalchemy as sa
from _util import verdict

from infrakit.audit import AuditEntry, AuditFilter, SqlAuditLogger
from infrakit.audit.sql import AUDIT_TABLE, _row, audit_log
from infrakit.database import DatabaseSession, upgrade

ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def entries(n: int, offset: int = 0) -> list[AuditEntry]:
    return [
        AuditEntry(
            id=str(uuid.uuid4()),
            timestamp=T0 + timedelta(seconds=offset + i),
            action="order.create" if i % 3 else "login",
            resource_type="order",
            result="success",
            resource_id=f"o-{i}",
            user_id=f"user-{i % 500}",
            details={"amount": i * 1.5, "currency": "EUR", "items": [i, i + 1]},
            ip_address="203.0.113.7",
            request_id=uuid.uuid4().hex,
        )
        for i in range(n)
    ]


async def truncate(db: DatabaseSession) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(sa.text(f"TRUNCATE {AUDIT_TABLE} RESTART IDENTITY"))


async def bench_batch(db: DatabaseSession, n: int = 10_000, rounds: int = 5) -> bool:
    logger = SqlAuditLogger(db)
    raw_times, kit_times = [], []
    for _ in range(rounds):  # alternate the two, fresh table each time
        batch = entries(n)
        rows = [_row(e) for e in batch]  # the raw baseline gets its rows for free
        await truncate(db)
        start = time.perf_counter()
        async with db.engine.begin() as conn:
            await conn.execute(sa.insert(audit_log), rows)
        raw_times.append(time.perf_counter() - start)

        await truncate(db)
        start = time.perf_counter()
        await logger.log_many(batch)
        kit_times.append(time.perf_counter() - start)
    assert (await logger.verify()).ok
    raw, kit = min(raw_times), min(kit_times)
    print(f"raw Core insert executemany, {n} rows:     {raw * 1000:8.1f} ms")
    print(f"SqlAuditLogger.log_many, {n} chained rows: {kit * 1000:8.1f} ms")
    ok = verdict("log_many vs raw insert", kit / raw, 1.5)

    await truncate(db)
    latencies = []
    for i in range(1000):
        start = time.perf_counter()
        await logger.log_action("login", "session", user_id=f"u{i % 10}")
        latencies.append((time.perf_counter() - start) * 1000)
    latencies.sort()
    print(
        f"log_action latency over 1000 calls: p50 {statistics.median(latencies):.2f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f} ms"
    )
    return ok


async def bench_query(db: DatabaseSession, rows: int = 1_000_000) -> bool:
    await truncate(db)
    start = time.perf_counter()
    async with db.engine.begin() as conn:
        # 1,000,000 rows over a year, 10,000 users; generated in the server.
        await conn.execute(
            sa.text(
                f"""
                INSERT INTO {AUDIT_TABLE}
                  (id, timestamp, action, resource_type, result, resource_id, user_id, details)
                SELECT md5(g::text), CAST(:t0 AS timestamptz) + (g * interval '31 seconds'),
                       CASE WHEN g % 3 = 0 THEN 'login' ELSE 'order.create' END,
                       'order', 'success', 'o-' || g, 'user-' || (g % 10000), '{{}}'
                FROM generate_series(1, :n) AS g
                """
            ),
            {"t0": T0, "n": rows},
        )
        await conn.execute(sa.text(f"ANALYZE {AUDIT_TABLE}"))
    print(f"loaded {rows} rows in {time.perf_counter() - start:.1f} s")

    logger = SqlAuditLogger(db)
    f = AuditFilter(
        user_id="user-4242", start_time=T0 + timedelta(days=30), end_time=T0 + timedelta(days=120)
    )
    async with db.engine.connect() as conn:
        compiled = (
            sa.select(audit_log)
            .where(audit_log.c.user_id == f.user_id)
            .where(audit_log.c.timestamp >= f.start_time, audit_log.c.timestamp < f.end_time)
            .order_by(audit_log.c.timestamp.desc(), audit_log.c.id.desc())
            .limit(f.limit)
        )
        plan = await conn.execute(
            sa.text(
                "EXPLAIN ANALYZE " + str(compiled.compile(compile_kwargs={"literal_binds": True}))
            )
        )
        plan_text = "\n".join(plan.scalars())
    print("EXPLAIN ANALYZE of the query():\n  " + plan_text.replace("\n", "\n  "))
    times = []
    found = 0
    for i in range(200):
        flt = AuditFilter(
            user_id=f"user-{(4242 + i * 37) % 10000}",
            start_time=f.start_time,
            end_time=f.end_time,
        )
        start = time.perf_counter()
        found += len(await logger.query(flt))
        times.append((time.perf_counter() - start) * 1000)
    p50 = statistics.median(times)
    print(
        f"query() user_id + 90-day range on {rows} rows: "
        f"p50 {p50:.2f} ms over 200 users ({found} rows)"
    )
    indexed = "ix_infrakit_audit_log_user_id_timestamp" in plan_text
    print(f"uses index ix_infrakit_audit_log_user_id_timestamp: {indexed}")
    ok = indexed and p50 < 20
    print(f"query p50 target < 20 ms -> {'PASS' if ok else 'FAIL'}")
    return ok


async def main() -> bool:
    name = f"infrakit_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(**ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db = DatabaseSession(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", pool_size=4)
    try:
        await upgrade(db)
        ok_batch = await bench_batch(db)
        ok_query = await bench_query(db)
    finally:
        await db.aclose()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    return ok_batch and ok_query


if __name__ == "__main__":
    sys.exit(0 if asyncio.run(main()) else 1)
