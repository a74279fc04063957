"""Helpers shared by the ratio benchmarks: interleaved runs, medians, a verdict."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def time_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def bytecode_env(cache: str) -> dict[str, str]:
    """The environment with bytecode caching on, into ``cache``: what an
    installed package gets (its wheel's ``.pyc`` files). Without it, on a
    machine with ``PYTHONDONTWRITEBYTECODE=1`` an editable install compiles
    every one of its modules from source on each start while the dependencies
    load their installed ``.pyc`` files."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def interleaved(runs: int, **candidates: Callable[[], float]) -> dict[str, float]:
    """Median of ``runs`` samples per candidate, taken in alternation.

    Alternating A, B, A, B... spreads machine noise over both sides, so the
    ratio is fair even on a shared, noisy machine.
    """
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(runs):
        for name, measure in candidates.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


def verdict(name: str, ratio: float, limit: float) -> bool:
    ok = ratio <= limit
    print(f"{name}: ratio {ratio:.2f}x (target <= {limit}x) -> {'PASS' if ok else 'FAIL'}")
    return ok


def verdict_at_least(name: str, ratio: float, floor: float) -> bool:
    """``verdict`` for a throughput ratio, where higher is better."""
    ok = ratio >= floor
    print(f"{name}: ratio {ratio:.2f}x (target >= {floor}x) -> {'PASS' if ok else 'FAIL'}")
    return ok


PY = sys.executable

#: One HTTP GET as an ASGI server hands it to an app (the middleware
#: benchmarks call apps directly, with a copy of it per request).
ASGI_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/items/42",
    "raw_path": b"/items/42",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"bench"), (b"user-agent", b"bench/1")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


async def asgi_receive() -> dict[str, Any]:
    """The request's (empty) body, for ``ASGI_SCOPE``."""
    return {"type": "http.request", "body": b"", "more_body": False}
