"""Child processes of the test run that cannot outlive it.

Every server a test starts runs in the foreground as a direct child under
util-linux's ``setpriv --pdeathsig KILL``: if the test process dies, even by
SIGKILL or pytest-timeout's hard exit, the kernel kills the server too
instead of leaving it on its port. (``setpriv`` sets the signal after any
change of user, which would otherwise clear it, and needs no ``preexec_fn``,
which is unsafe in a process with threads.)
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path


def spawn(
    cmd: Sequence[str], *, user: str | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (as ``user`` if given) as a child that dies with this process."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("setpriv (util-linux) is not installed")
    prefix = [setpriv, "--pdeathsig", "KILL"]
    if user is not None:
        prefix += ["--reuid", user, "--regid", user, "--init-groups"]
    with open(log or "/dev/null", "ab") as out:
        return subprocess.Popen([*prefix, "--", *cmd], stdout=out, stderr=subprocess.STDOUT)


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
