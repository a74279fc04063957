"""The helper that starts the suite's servers: a child outlives the thread
that asked for it (PR_SET_PDEATHSIG fires when the forking *thread* exits)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.children import spawn, stop

pytestmark = pytest.mark.integration


def _killed(pid: int) -> bool:
    """The child is dead, or has a SIGKILL pending (sent, not yet acted on)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return fields["State"].strip().startswith("Z") or bool(pending & 1 << (signal.SIGKILL - 1))


def test_a_child_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    log = tmp_path / "log"
    started: dict[str, Any] = {}

    def start() -> None:
        started["child"] = spawn(["sh", "-c", "echo ready; exec sleep 600"], log=log)
        while "ready" not in log.read_text():  # setpriv has set the death signal
            time.sleep(0.01)
        started["thread"] = threading.get_native_id()

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    # join returns before the OS thread is gone; the kernel sends the death
    # signal as the thread exits, so wait for the thread to be gone entirely
    while Path(f"/proc/self/task/{started['thread']}").exists():
        time.sleep(0.01)
    child = started["child"]
    try:
        assert not _killed(child.pid)
        assert child.poll() is None
    finally:
        stop(child)
