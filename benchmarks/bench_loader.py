"""Loader bounds: how long and how much memory the loader takes to answer hostile input.

Each case is a profile, an environment or a profile name built to make an
unbounded loader do unbounded work. Every one must be answered with a
``ConfigError`` (a bound is a refusal, not a slower success), and the time and
peak memory it takes are reported. These are bounds, not ratios: the figures
only have to stay small next to the "before" column in benchmarks/README.md.

Each case runs in its own interpreter under a 4 GiB address-space limit and a
timeout, so a loader without bounds fails the case instead of the machine:

    ../.venv/bin/python bench_loader.py                       # this checkout
    ../.venv/bin/python bench_loader.py --source /some/checkout   # another one (a "before")
    ../.venv/bin/python bench_loader.py expand_500mb int_5000_digits  # some cases only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _util import PY

ADDRESS_SPACE = 4 << 30
KB = 1000


@dataclass
class Case:
    """What one case hands to ``load_settings``."""

    profile: str
    environ: dict[str, str] = field(default_factory=dict)
    text: str | None = None  # written to <tmp>/<profile>.yaml when given


def _ref_bomb(refs: int) -> Case:
    return Case("bomb", {"A": "x" * 50 * KB}, "service:\n  name: '" + "${A}" * refs + "'\n")


def _alias_bomb(levels: int = 10) -> str:
    """Anchors whose every level repeats the one below nine times: 9**10 leaves."""
    lists = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lists += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "[" + ", ".join(lists) + "]"


def _merge_bomb(levels: int = 10) -> str:
    """Merge keys (``<<``) whose every level merges the one below nine times."""
    keys = ", ".join(f"k{i}: 1" for i in range(9))
    lines = [f"x0: &m0 {{{keys}}}"]
    lines += [f"x{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


CASES: dict[str, Callable[[], Case]] = {
    # a 40 KB profile, 10,000 references to a 50 KB variable: a 500 MB value
    "expand_500mb": lambda: _ref_bomb(10_000),
    # 200,000 references (800 KB): 10 GB if expanded
    "refs_200k": lambda: _ref_bomb(200_000),
    # a 50 MB profile (a valid one, padded with comments)
    "file_50mb": lambda: Case(
        "big", text="service:\n  name: big\n" + ("#" + "x" * 99 + "\n") * (500 * KB)
    ),
    "int_5000_digits": lambda: Case("digits", text="database:\n  pool_size: " + "7" * 5000),
    "json_100k_deep": lambda: Case(
        "test", {"INFRAKIT__SERVICE__NAME": "[" * 100_000 + "]" * 100_000}
    ),
    "profile_name_5000": lambda: Case("p" * 5000),
    "env_5000_segments": lambda: Case(
        "test", {"INFRAKIT__SERVICE__" + "__".join(["a"] * 5000): "x"}
    ),
    # YAML's own bombs: aliases ("billion laughs"), nesting, a huge key, many keys
    "yaml_alias_bomb": lambda: Case("aliases", text="service:\n  name: " + _alias_bomb()),
    "yaml_alias_key_bomb": lambda: Case(
        "aliaskey", text="service:\n  ? " + _alias_bomb() + "\n  : 1\n"
    ),
    "yaml_merge_bomb": lambda: Case("merges", text=_merge_bomb()),
    "yaml_100k_deep": lambda: Case("deep", text="service: " + "[" * 100_000 + "]" * 100_000),
    # the worst a file under the size limit can do: 1 MB of nesting, of values
    "yaml_1mb_deep": lambda: Case("deep1mb", text="service: " + "[" * 1_000_000),
    "yaml_1mb_of_values": lambda: Case("values1mb", text="service: [" + "1," * 500_000 + "]"),
    "yaml_900kb_key": lambda: Case("key", text="service:\n  " + "k" * 900 * KB + ": 1\n"),
    "yaml_60k_keys": lambda: Case(
        "keys", text="service:\n" + "".join(f"  k{i}: {i}\n" for i in range(60_000))
    ),
}


def child(directory: str) -> None:
    """Run the case written in ``directory`` in this process; print what happened as JSON."""
    from infrakit import load_settings  # imported here: --source decides which one

    case = json.loads(Path(directory, "case.json").read_text(encoding="utf-8"))
    # every backend's module imported before measuring (single-host needs its JWT secret)
    load_settings("test", environ={})
    load_settings("single-host", environ={"JWT_SECRET": "x" * 32})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        load_settings(case["profile"], profiles_dir=directory, environ=case["environ"])
        outcome = "loaded"
    except BaseException as exc:  # the point is to see which
        first = str(exc).splitlines()[0] if str(exc) else ""
        outcome = f"{type(exc).__name__}: {first[:150]}"
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    grew = (after - before) / 1024
    print(json.dumps({"outcome": outcome, "s": seconds, "rss_mb": after / 1024, "grew_mb": grew}))


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run(name: str, source: str | None, timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="infrakit-bench-loader-") as tmp:
        case = CASES[name]()
        if case.text is not None:
            Path(tmp, f"{case.profile}.yaml").write_text(case.text, encoding="utf-8")
        case_file = Path(tmp, "case.json")
        case_file.write_text(json.dumps({"profile": case.profile, "environ": case.environ}))
        env = dict(os.environ)
        if source is not None:
            env["PYTHONPATH"] = source
        argv = [PY, __file__, "--child", tmp]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                argv,
                check=False,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=_limit,
            )
        except subprocess.TimeoutExpired:
            return f"| `{name}` | no answer after {timeout:.0f} s (killed) | — | — |"
        if done.returncode != 0 or not done.stdout.strip():
            last = (done.stderr.strip().splitlines() or ["?"])[-1][:150]
            wall = time.perf_counter() - start
            return f"| `{name}` | process died after {wall:.1f} s: {last} | — | — |"
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return (
            f"| `{name}` | {result['outcome']} | {result['s'] * 1000:,.1f} ms "
            f"| {result['rss_mb']:,.0f} MB (+{result['grew_mb']:,.1f}) |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"any of {', '.join(CASES)} (default: all)")
    parser.add_argument("--source", help="a checkout whose infrakit package to measure")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    print("| case | answer | time | peak RSS (+ during the load) |")
    print("|---|---|---|---|")
    ok = True
    for name in args.cases or CASES:
        line = run(name, args.source, args.timeout)
        ok = ok and "ConfigError" in line
        print(line, flush=True)
    print("loader bounds: every case answered with ConfigError -> " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
