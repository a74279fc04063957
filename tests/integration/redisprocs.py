"""Redis servers owned by one test or test session, on free loopback ports.

Started with the machine's ``redis-server`` (no persistence), stopped by
PID: a plain server, a 3-master cluster, and a Sentinel watching a server.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.integration.children import spawn
from tests.integration.children import stop as stop_child


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, cluster: bool = False) -> int:
    """A free loopback port; for a cluster node also port + 10000 (its bus),
    which must stay below 65536."""
    if not cluster:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        port = random.randint(20_000, 45_000)
        if _bindable(port) and _bindable(port + 10_000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} did not start")


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed")
    return found


class RedisProcess:
    """One ``redis-server`` in the foreground of a child process."""

    def __init__(
        self, *args: str, port: int | None = None, config: str | None = None, cluster: bool = False
    ) -> None:
        self.port = port or free_port(cluster=cluster)
        self.dir = Path(tempfile.mkdtemp(prefix="infrakit-redis-"))
        self.args = list(args)
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        cmd = [redis_server_binary()]
        if self.config is not None:
            conf = self.dir / "redis.conf"
            conf.write_text(self.config)
            cmd.append(str(conf))
        plain_port = "0" if "--tls-port" in self.args else str(self.port)
        cmd += [
            "--port", plain_port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.dir), *self.args,
        ]  # fmt: skip
        self.process = spawn(cmd)
        try:
            _wait(self.port)
        except RuntimeError:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        stop_child(self.process)
        self.process = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class RedisCluster:
    """Three masters, no replicas, joined with ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        self.nodes = [
            RedisProcess("--cluster-enabled", "yes", "--cluster-node-timeout", "2000", cluster=True)
            for _ in range(3)
        ]

    def start(self) -> RedisCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisCluster:
        for node in self.nodes:
            node.args += ["--cluster-config-file", str(node.dir / "nodes.conf")]
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self._wait_ok(cli)
        return self

    def _wait_ok(self, cli: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = subprocess.run(
                [cli, "-p", str(self.nodes[0].port), "cluster", "info"],
                capture_output=True, text=True, check=False,
            ).stdout  # fmt: skip
            if "cluster_state:ok" in out:
                return
            time.sleep(0.1)
        raise RuntimeError("the test cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"


class RedisSentinel:
    """A master and one Sentinel that watches it under the name ``infrakit``."""

    def __init__(self) -> None:
        self.master = RedisProcess()
        self.sentinel: RedisProcess | None = None

    def start(self) -> RedisSentinel:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisSentinel:
        self.master.start()
        config = (
            f"sentinel monitor infrakit 127.0.0.1 {self.master.port} 1\n"
            "sentinel down-after-milliseconds infrakit 2000\n"
        )
        self.sentinel = RedisProcess("--sentinel", config=config).start()
        return self

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.stop()
        self.master.stop()

    @property
    def url(self) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/infrakit/0"


class RedisTLS:
    """A TLS-only ``redis-server`` with a throw-away CA made by ``openssl``."""

    def __init__(self) -> None:
        self.server: RedisProcess | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="infrakit-redis-tls-"))

    def _openssl(self, *args: str) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("openssl is not installed")
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=self.dir, timeout=60)

    def start(self) -> RedisTLS:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisTLS:
        self._openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=infrakit-test-ca",
        )
        self._openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        )
        (self.dir / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        self._openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-CAcreateserial", "-out", "srv.crt", "-days", "2",
                      "-extfile", "ext.cnf")  # fmt: skip
        port = free_port()
        server = RedisProcess(
            "--tls-port", str(port),
            "--tls-cert-file", str(self.dir / "srv.crt"),
            "--tls-key-file", str(self.dir / "srv.key"),
            "--tls-ca-cert-file", str(self.dir / "ca.crt"),
            "--tls-auth-clients", "no",
            port=0,
        )  # fmt: skip
        server.port = port  # plain port 0 (off); wait on the TLS port
        self.server = server.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"rediss://127.0.0.1:{self.server.port}/0?ssl_ca_certs={self.dir / 'ca.crt'}"
