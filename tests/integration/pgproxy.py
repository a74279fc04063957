"""A loopback TCP proxy in front of PostgreSQL that cuts a connection on cue.

The client (asyncpg) connects to the proxy, which relays the wire protocol
both ways and reads the client's messages as they pass. Armed with a
predicate on a message, it cuts that connection once, at one of two moments:

- ``"unsent"``: the message is not forwarded (for COMMIT: the server never
  commits; the client only sees its connection drop);
- ``"answer_lost"``: the message is forwarded, the server's whole answer
  (up to ReadyForQuery) is read and thrown away, then the connection is cut
  (for COMMIT: the transaction *is* committed, only the acknowledgement is
  lost).

The proxy answers an SSLRequest with "no" itself, so the relayed protocol is
always plain and readable. It serves on a free loopback port and stops its
own connections in :meth:`aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Literal

#: A predicate on one client message: its type byte and its body.
Trigger = Callable[[bytes, bytes], bool]
Moment = Literal["unsent", "answer_lost"]

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


def is_commit(kind: bytes, body: bytes) -> bool:
    """A simple-query COMMIT (how the audit writer commits on asyncpg)."""
    return kind == b"Q" and body.rstrip(b"\0").strip().upper() == b"COMMIT"


def parses(text: bytes) -> Trigger:
    """The extended-protocol Parse of a statement containing ``text``."""
    return lambda kind, body: kind == b"P" and text in body


class PgProxy:
    """See the module docstring."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._trigger: Trigger | None = None
        self._moment: Moment = "unsent"
        #: Set once the armed cut has happened (what it cut: the message type).
        self.cut = asyncio.Event()
        self.port = 0

    async def start(self) -> PgProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def arm(self, trigger: Trigger, moment: Moment) -> None:
        """Cut the first connection that sends a message matching ``trigger``."""
        self.cut.clear()
        self._trigger, self._moment = trigger, moment

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_w)
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.open_connection(*self._upstream)
            self._writers.add(server_w)
            swallow = asyncio.Event()  # set: the server's next answer is thrown away
            upward = asyncio.create_task(
                self._client_to_server(client_r, client_w, server_w, swallow)
            )
            downward = asyncio.create_task(self._server_to_client(server_r, client_w, swallow))
            await asyncio.wait([upward, downward], return_when=asyncio.FIRST_COMPLETED)
            for pump in (upward, downward):
                pump.cancel()
            await asyncio.gather(upward, downward, return_exceptions=True)
        except OSError:
            pass
        finally:
            for writer in (client_w, server_w):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
                    self._writers.discard(writer)
            self._tasks.discard(task)

    async def _client_to_server(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_w: asyncio.StreamWriter,
        swallow: asyncio.Event,
    ) -> None:
        # Startup phase: untyped messages (length, then body).
        while True:
            length = struct.unpack("!i", await client_r.readexactly(4))[0]
            body = await client_r.readexactly(length - 4)
            code = struct.unpack("!i", body[:4])[0]
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                client_w.write(b"N")  # plain protocol, always
                await client_w.drain()
                continue
            server_w.write(struct.pack("!i", length) + body)
            await server_w.drain()
            break
        # Then typed messages: type byte, length, body.
        while True:
            header = await client_r.readexactly(5)
            body = await client_r.readexactly(struct.unpack("!i", header[1:])[0] - 4)
            kind = header[:1]
            trigger = self._trigger
            if trigger is not None and trigger(kind, body):
                self._trigger = None
                if self._moment == "unsent":
                    self.cut.set()
                    return  # the connection is cut; the message never reaches the server
                swallow.set()
            server_w.write(header + body)
            await server_w.drain()

    async def _server_to_client(
        self,
        server_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        swallow: asyncio.Event,
    ) -> None:
        while True:
            data = await server_r.read(65536)
            if not data:
                return
            if not swallow.is_set():
                client_w.write(data)
                await client_w.drain()
                continue
            # The answer to the armed message: the client sent it after the
            # previous answer had come, so ``data`` starts at a message
            # boundary. Read (and drop) messages up to ReadyForQuery.
            buffer = data
            while True:
                while len(buffer) >= 5:
                    size = 1 + struct.unpack("!i", buffer[1:5])[0]
                    if len(buffer) < size:
                        break
                    kind, buffer = buffer[:1], buffer[size:]
                    if kind == b"Z":
                        self.cut.set()
                        return  # the answer is lost with the connection
                more = await server_r.read(65536)
                if not more:
                    self.cut.set()
                    return
                buffer += more
