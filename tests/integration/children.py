"""Child processes of the test run that cannot outlive it.

Every server a test starts runs in the foreground as a direct child under
util-linux's ``setpriv --pdeathsig KILL``: if the test process dies, even by
SIGKILL or pytest-timeout's hard exit, the kernel kills the server too
instead of leaving it on its port. (``setpriv`` sets the signal after any
change of user, which would otherwise clear it, and needs no ``preexec_fn``,
which is unsafe in a process with threads.)

The kernel sends that signal when the *thread* that forked the child exits,
not the process: a server started from ``asyncio.to_thread`` or any
short-lived thread would be killed as soon as that thread ended. So every
child is forked by one thread kept for the whole run (``_spawner``), whatever
thread asks for it; that thread ends only with the process.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: The one thread that forks every child: never shut down, so it lives as long
#: as the process (its idle worker waits for work and never exits on its own).
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="children-spawner")


def spawn(
    cmd: Sequence[str],
    *,
    user: str | None = None,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (as ``user`` if given; in ``env`` and ``cwd`` if given,
    else this process's) as a child that dies with this process, from
    whichever thread this is called."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("setpriv (util-linux) is not installed")
    prefix = [setpriv, "--pdeathsig", "KILL"]
    if user is not None:
        prefix += ["--reuid", user, "--regid", user, "--init-groups"]
    return _spawner.submit(_popen, [*prefix, "--", *cmd], log, env, cwd).result()


def _popen(
    argv: list[str], log: Path | None, env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.Popen[bytes]:
    with open(log or "/dev/null", "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    """Stop a child by PID and reap it."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(60)
