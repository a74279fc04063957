"""Start-up cost: building Infra on the `test` profile vs importing its core libraries.

Target: ``from infrakit import Infra; Infra.from_profile('test')`` costs at most
1.3x ``import structlog, pydantic_settings, dependency_injector, sqlalchemy``,
and imports none of asyncpg, redis, grpc or an OTLP exporter.

Both sides run with bytecode caching on (see ``bytecode_env``), as an
installed package does.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

from _util import PY, bytecode_env, interleaved, time_command, verdict

BASELINE = "import structlog, pydantic_settings, dependency_injector, sqlalchemy"
INFRAKIT = "from infrakit import Infra; Infra.from_profile('test')"
HEAVY = ("asyncpg", "redis", "grpc", "opentelemetry.exporter")


def main(runs: int = 21) -> bool:
    with tempfile.TemporaryDirectory(prefix="infrakit-bench-pyc-") as cache:
        env = bytecode_env(cache)
        for code in ("pass", BASELINE, INFRAKIT):  # warm the file and bytecode caches
            time_command([PY, "-c", code], env)
        result = interleaved(
            runs,
            python=lambda: time_command([PY, "-c", "pass"], env),
            baseline=lambda: time_command([PY, "-c", BASELINE], env),
            infrakit=lambda: time_command([PY, "-c", INFRAKIT], env),
        )
    print(f"python -c pass:          {result['python'] * 1000:7.1f} ms (median of {runs})")
    print(f"baseline imports:        {result['baseline'] * 1000:7.1f} ms")
    print(f"Infra.from_profile(test): {result['infrakit'] * 1000:7.1f} ms")
    probe = (
        INFRAKIT
        + "; import sys; print(','.join(m for m in sys.modules if m.startswith("
        + repr(HEAVY)
        + ")))"
    )
    heavy = subprocess.run([PY, "-c", probe], check=True, capture_output=True, text=True)
    loaded = heavy.stdout.strip()
    print(f"heavy backends imported: {loaded or 'none'}")
    ok = verdict("startup", result["infrakit"] / result["baseline"], 1.3)
    return ok and not loaded


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
