"""Transports sharing the reactor with the rest of the core.

1. A transport's first write on a fresh connection, when the socket does not take it all.

Connections that have sent nothing share one empty output buffer (idle connections
carry no LinkBuffers). A transport that queues the unsent rest of its very first
write must give its connection a buffer of its own first; written into the shared
one, the rest would show up as every other fresh connection's output (and be sent
on their sockets). This checks it over real sockets: the second connection's
write buffer must be empty and its peer must receive only its own bytes.

2. Protocol callbacks see no current task (as in asyncio, where they run from
loop callbacks), also when a netpoll async handler ran just before them in the
same poller pass (on 3.11 a handler step leaves itself as the current task
until other user code runs: reactor/handler.pyx).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import netpoll
from conftest import uvloop

pytestmark = pytest.mark.timeout(60)

BIG = bytes(range(256)) * 16384      # 4 MiB: more than the socket buffers hold


class Keep(asyncio.Protocol):
    def __init__(self, made: list[asyncio.Transport]) -> None:
        self.made = made

    def connection_made(self, transport: Any) -> None:
        self.made.append(transport)


@pytest.mark.parametrize("base", ["asyncio", "uvloop"])
def test_first_partial_write_does_not_leak_into_other_connections(base: str) -> None:
    if base == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")
    factory = netpoll.loop_factory(uvloop.new_event_loop if base == "uvloop" else None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: list[asyncio.Transport] = []
        server = await netpoll.transports.create_server(lambda: Keep(made), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        peers = []
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            await loop.sock_connect(s, ("127.0.0.1", port))
            peers.append(s)
        for _ in range(200):
            if len(made) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(made) == 2
        first, second = made
        first.write(BIG)                          # its first write: mostly queued
        assert first.get_write_buffer_size() > 0
        assert second.get_write_buffer_size() == 0
        second.write(b"hello")
        assert second.get_write_buffer_size() == 0
        got = b""
        while len(got) < 5:
            chunk = await asyncio.wait_for(loop.sock_recv(peers[1], 65536), 5)
            assert chunk
            got += chunk
        assert got == b"hello"                    # nothing of the first connection's output
        # the first connection still delivers all of its bytes, in order
        received = bytearray()
        while len(received) < len(BIG):
            chunk = await asyncio.wait_for(loop.sock_recv(peers[0], 1 << 20), 5)
            assert chunk
            received += chunk
        assert bytes(received) == BIG
        await asyncio.sleep(0.05)
        assert second.get_write_buffer_size() == 0
        for t in made:
            t.close()
        for s in peers:
            s.close()
        server.close()
        await server.wait_closed()

    loop = factory()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()


class TaskProbe(asyncio.Protocol):
    def __init__(self, seen: list[object]) -> None:
        self.seen = seen

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.seen.append(asyncio.current_task())
        self.transport.write(data)


@pytest.mark.parametrize("base", ["asyncio", "uvloop"])
def test_protocol_callbacks_see_no_task_after_a_handler_in_the_same_pass(base: str) -> None:
    if base == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")
    factory = netpoll.loop_factory(uvloop.new_event_loop if base == "uvloop" else None)

    async def on_request(ctx: Any, conn: Any) -> None:
        conn.write_buffer(await conn.slice(conn.len()))
        await conn.flush()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[object] = []
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request)
        serving = asyncio.ensure_future(el.serve(ln))
        server = await netpoll.transports.create_server(lambda: TaskProbe(seen), "127.0.0.1", 0)
        a = socket.create_connection(ln.addr)
        b = socket.create_connection(server.sockets[0].getsockname()[:2])
        for s in (a, b):
            s.setblocking(False)
        await asyncio.sleep(0.05)
        for _ in range(50):
            a.send(b"x")                   # both ready in one pass: the handler first
            b.send(b"y")
            assert await asyncio.wait_for(loop.sock_recv(a, 1), 5) == b"x"
            assert await asyncio.wait_for(loop.sock_recv(b, 1), 5) == b"y"
        assert len(seen) >= 1
        assert all(t is None for t in seen), {type(t).__name__ for t in seen}
        a.close()
        b.close()
        server.close()
        await server.wait_closed()
        await el.shutdown(2)
        await serving

    loop = factory()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()
