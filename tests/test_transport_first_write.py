"""A transport's first write on a fresh connection, when the socket does not take it all.

Connections that have sent nothing share one empty output buffer (idle connections
carry no LinkBuffers). A transport that queues the unsent rest of its very first
write must give its connection a buffer of its own first; written into the shared
one, the rest would show up as every other fresh connection's output (and be sent
on their sockets). This checks it over real sockets: the second connection's
write buffer must be empty and its peer must receive only its own bytes.
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
