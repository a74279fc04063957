"""A throw-away PostgreSQL cluster on a loopback port, owned by one test.

Started with the machine's own PostgreSQL binaries (``initdb``, then
``postgres`` in the foreground as a child that dies with the test run), as
the ``postgres`` user when the tests run as root, and stopped by PID, so a
test can restart "the database" without touching the shared server on 5432.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from tests.integration.children import spawn
from tests.integration.children import stop as stop_child


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _session_opens(port: int) -> bool:
    """Whether a session as ``postgres`` opens (trust auth): the startup message
    is answered up to ReadyForQuery, not with an error such as "starting up"."""
    params = b"user\0postgres\0database\0postgres\0\0"
    startup = struct.pack("!ii", 8 + len(params), 196608) + params
    try:
        with socket.create_connection(("127.0.0.1", port), 2) as sock:
            sock.settimeout(5)
            sock.sendall(startup)
            while True:
                header = _read_exactly(sock, 5)
                if header is None:
                    return False
                kind, length = header[:1], struct.unpack("!i", header[1:])[0]
                if _read_exactly(sock, length - 4) is None:
                    return False
                if kind == b"E":
                    return False  # e.g. 57P03, the database system is starting up
                if kind == b"Z":
                    sock.sendall(b"X\0\0\0\4")  # Terminate: a clean goodbye
                    return True
    except OSError:
        return False


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class PgCluster:
    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, postgres) not found")
        self.bin = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="infrakit-pg-"))
        self.data = self.root / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user:
            shutil.chown(self.root, self._user, self._user)
        cmd = [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        subprocess.run([*cmd, "--no-sync"], check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PgCluster:
        self.process = spawn(
            [
                str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            ],
            user=self._user,
            log=self.root / "log",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.root / "log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the test PostgreSQL exited at start:\n{log}")
            # Accepting TCP is not enough: while it starts up, PostgreSQL
            # answers "the database system is starting up" to every session.
            if _session_opens(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the test PostgreSQL did not accept sessions within 120 s")

    def stop(self) -> None:
        """A fast shutdown (SIGINT), waited for."""
        stop_child(self.process, signal.SIGINT)
        self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
