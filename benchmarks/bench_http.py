"""The example service under uvicorn: asyncio + h11 against uvloop + httptools.

Target: with uvicorn's standard extra (uvloop, httptools) the running service
answers at least as many requests per second as with asyncio and h11
(ratio >= 1.0 on each endpoint, the medians of alternated rounds); the p99
latency is reported. Measured with wrk, 50 connections, over loopback
against ``python -m examples.service local --serve`` (one uvicorn worker;
in-memory tokens, the audit log in a SQLite file, telemetry off, console
logs with uvicorn's access line: the ``local`` profile as it is).

Endpoints: ``GET /health/live`` (no backend), ``GET /me`` (bearer token
verified and checked in the token store) and ``POST /login`` (password
check, token signed and stored, one hash-chained audit entry written to
SQLite).

Two phases, each 50 connections:

- saturated (judged): every connection sends its next request as soon as
  the last one is answered, so the server runs flat out. Requests per second
  is its capacity; the p99 there is mostly queueing, and each side queues
  at its own rate.
- paced (reported): every connection waits ``PACE_MS`` between requests
  (about 1,000 requests per second offered, below every side's capacity),
  so both sides get the same load and their p99 compare directly.

Both servers run side by side for the whole benchmark; each wrk run hits one
of them while the other idles, alternating (A B, then B A in the next round,
so neither side always goes first). ``--mixed`` adds asyncio + httptools and
uvloop + h11 (reported, not judged). On this 2-core machine the server and
wrk share the cores with each other and with whatever else runs: by default
the scheduler places them; ``--pin`` puts the server on CPU 0 and wrk on
CPU 1.

Needs wrk: ``apt-get install wrk``.

    python bench_http.py [--rounds 3] [--duration 10] [--mixed] [--no-paced]
                         [--no-access-log] [--pin]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from _util import PY, verdict_at_least

REPO = Path(__file__).resolve().parent.parent
CONNECTIONS = 50
PACE_MS = 50
LOGIN = {"username": "ann", "password": "wonderland"}
#: name -> (uvicorn --loop, uvicorn --http); the baseline, then the standard extra's pair
SERVERS = {"asyncio+h11": ("asyncio", "h11"), "uvloop+httptools": ("uvloop", "httptools")}
#: with --mixed, reported only: which of the two parts the gain comes from
MIXED = {"asyncio+httptools": ("asyncio", "httptools"), "uvloop+h11": ("uvloop", "h11")}
ENDPOINTS = ("GET /health/live", "GET /me", "POST /login")
PHASES = ("saturated", "paced")


@dataclass
class Server:
    name: str
    base_url: str
    process: subprocess.Popen[bytes]


@dataclass
class WrkResult:
    rps: float
    p99_ms: float
    errors: int  # non-2xx/3xx answers plus socket errors


@dataclass
class Samples:
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextmanager
def serving(
    name: str, loop: str, http: str, workdir: Path, *, cpu: int | None, access_log: bool
) -> Iterator[Server]:
    """The example service under uvicorn on ``loop`` and ``http``, stopped by PID at the end."""
    port = _free_port()
    argv = [PY, "-m", "examples.service", "local", "--serve", "--port", str(port)]
    argv += ["--loop", loop, "--http", http]
    if not access_log:
        argv.append("--no-access-log")
    env = dict(os.environ, DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/{name}.db")
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            _pinned(cpu, argv), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        line = _wait_for_serving_line(log, process)
        expected = f"(event loop {loop}, HTTP parser {http})"
        if expected not in line:
            raise RuntimeError(f"{name}: asked for {expected}, the server says: {line}")
        yield Server(name, f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(30)


def _wait_for_serving_line(log: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("serving http://"):
                return line
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"the server did not start within 60 s:\n{log.read_text()}")


def _login(base_url: str) -> str:
    request = urllib.request.Request(
        f"{base_url}/login",
        data=json.dumps(LOGIN).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token: str = json.load(response)["access_token"]
    return token


def write_script(workdir: Path, endpoint: str, phase: str) -> Path | None:
    """wrk's Lua script for ``endpoint`` in ``phase``: the login body, the pace."""
    lines = []
    if endpoint.startswith("POST "):
        lines += [
            'wrk.method = "POST"',
            f"wrk.body = '{json.dumps(LOGIN)}'",
            'wrk.headers["Content-Type"] = "application/json"',
        ]
    if phase == "paced":
        lines.append(f"function delay() return {PACE_MS} end")
    if not lines:
        return None
    path = workdir / f"{endpoint.split(' ', maxsplit=1)[0]}-{phase}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(output: str) -> WrkResult:
    """Requests/sec, the 99% line of ``--latency`` and the error counts of wrk's report."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    if rps is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        errors += sum(int(n) for n in sockets.groups())
    return WrkResult(float(rps.group(1)), float(p99.group(1)) * _UNITS_MS[p99.group(2)], errors)


def wrk(
    server: Server, endpoint: str, *, duration_s: int, cpu: int | None, script: Path | None
) -> WrkResult:
    """One wrk run of ``duration_s`` seconds, 50 connections on 2 threads."""
    path = endpoint.split(" ")[1]
    argv = ["wrk", "-c", str(CONNECTIONS), "-t", "2", "-d", f"{duration_s}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    if path == "/me":
        argv += ["-H", f"Authorization: Bearer {_login(server.base_url)}"]
    argv.append(server.base_url + path)
    done = subprocess.run(_pinned(cpu, argv), capture_output=True, text=True, check=True)
    return parse_wrk(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--mixed", action="store_true", help="also asyncio+httptools, uvloop+h11")
    parser.add_argument("--no-paced", action="store_true", help="the saturated phase only")
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, wrk on CPU 1")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk")
        return 2
    if args.pin and shutil.which("taskset") is None:
        print("taskset (util-linux) is not installed: drop --pin or apt-get install util-linux")
        return 2
    candidates = {**SERVERS, **MIXED} if args.mixed else SERVERS
    phases = PHASES[:1] if args.no_paced else PHASES
    server_cpu, wrk_cpu = (0, 1) if args.pin else (None, None)
    access_log = not args.no_access_log
    print(
        f"load average {_load()}; {args.rounds} rounds of {args.duration} s, {CONNECTIONS} "
        f"connections; access log {'on' if access_log else 'off'}; "
        f"{'server on CPU 0, wrk on CPU 1' if args.pin else 'not pinned'}"
    )
    samples = {(p, n, e): Samples() for p in phases for n in candidates for e in ENDPOINTS}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp, ExitStack() as stack:
        scripts = {(p, e): write_script(Path(tmp), e, p) for p in phases for e in ENDPOINTS}
        servers = [
            stack.enter_context(serving(n, *pair, Path(tmp), cpu=server_cpu, access_log=access_log))
            for n, pair in candidates.items()
        ]
        for server in servers:  # warm up: imports, caches, the SQLite file
            for endpoint in ENDPOINTS:
                script = scripts["saturated", endpoint]
                wrk(server, endpoint, duration_s=2, cpu=wrk_cpu, script=script)
        for round_no in range(args.rounds):
            order = servers if round_no % 2 == 0 else servers[::-1]
            for phase in phases:
                for endpoint in ENDPOINTS:
                    for server in order:
                        result = wrk(
                            server,
                            endpoint,
                            duration_s=args.duration,
                            cpu=wrk_cpu,
                            script=scripts[phase, endpoint],
                        )
                        if result.errors:
                            print(f"{server.name} {endpoint}: {result.errors} errors: invalid run")
                            return 1
                        samples[phase, server.name, endpoint].rps.append(result.rps)
                        samples[phase, server.name, endpoint].p99_ms.append(result.p99_ms)
                        print(
                            f"  round {round_no + 1} {phase:<9} {endpoint:<17} {server.name:<17}"
                            f" {result.rps:8.0f} req/s  p99 {result.p99_ms:6.2f} ms",
                            flush=True,
                        )
    print(f"load average after: {_load()}")
    for phase in phases[1:]:
        report(samples, phase, list(candidates), args.rounds)
    return 0 if report(samples, "saturated", list(candidates), args.rounds) else 1


def report(
    samples: dict[tuple[str, str, str], Samples], phase: str, names: list[str], rounds: int
) -> bool:
    """Medians per server and endpoint in ``phase``; the verdict when saturated."""
    baseline, candidate = SERVERS
    ok = True
    for endpoint in ENDPOINTS:
        print(f"{phase} {endpoint}, medians of {rounds} rounds:")
        for name in names:
            s = samples[phase, name, endpoint]
            print(
                f"  {name:<17} {statistics.median(s.rps):8.0f} req/s "
                f"(range {min(s.rps):.0f}-{max(s.rps):.0f}), "
                f"p99 {statistics.median(s.p99_ms):6.2f} ms "
                f"(range {min(s.p99_ms):.2f}-{max(s.p99_ms):.2f})"
            )
        ours, theirs = samples[phase, candidate, endpoint], samples[phase, baseline, endpoint]
        p99_ratio = statistics.median(ours.p99_ms) / statistics.median(theirs.p99_ms)
        print(f"  p99 {candidate} / {baseline}: {p99_ratio:.2f}x (lower is better)")
        ratio = statistics.median(ours.rps) / statistics.median(theirs.rps)
        if phase == "saturated":
            ok &= verdict_at_least(f"{endpoint} req/s, {candidate} / {baseline}", ratio, 1.0)
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
