"""io_uring SEND_ZC (NETPOLL_URING_SEND_ZC=1; docs/design.md "Zero-copy send").

Large gathered outputs go out with SEND_ZC: their bytes must stay alive until the
notification CQE, not just the result CQE. Byte-exact echo of 16 KiB - 1 MiB
messages over many connections, close while SEND_ZCs are in flight, a peer reset
mid-send, the loop closed with notifications due, and the EOPNOTSUPP fallback
(AF_UNIX sockets have no zero-copy). Every test ends with no request, parked
output or pending notification left (and, in the debug build, no live object).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import threading
import time
from typing import Any

import pytest

from conftest import start, stop, wait_for
from netpoll import Connection, _core

pytestmark = pytest.mark.timeout(120)

WHY = _core._uring_probe()[1]
needs_uring = pytest.mark.skipif(bool(WHY), reason=f"io_uring unavailable here: {WHY}")


@pytest.fixture
def zc(monkeypatch: Any, uring: None) -> None:
    """SEND_ZC on for the rings made during the test (they read the environment)."""
    monkeypatch.setenv("NETPOLL_URING_SEND_ZC", "1")
    monkeypatch.delenv("NETPOLL_URING_SEND_ZC_MIN", raising=False)
    _core._uring_zc_debug(reset=True)


def settled() -> bool:
    d = _core._uring_debug()
    return (d["requests"] == 0 and d["parked_outputs"] == 0
            and _core._uring_zc_debug()["pending"] == 0)


def framed_echo(ctx: Any, conn: Connection) -> None:
    """4-byte length, then the message: echoed whole (one output of its size)."""
    buf = conn.input
    while len(buf) >= 4:
        n = int.from_bytes(buf.peek(4), "big")
        if len(buf) < 4 + n:
            return
        conn.write_buffer(buf.slice(4 + n))
        conn.flush_nowait()


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@needs_uring
def test_large_messages_echo_byte_exact(run: Any, zc: None) -> None:
    """40 connections, 16 KiB - 1 MiB messages, pipelined: every byte back in order."""
    before = _core._uring_zc_debug()
    rnd = random.Random(5)

    async def client(addr: Any, sizes: list[int]) -> None:
        r, w = await asyncio.open_connection(*addr, limit=1 << 21)
        msgs = [rnd.randbytes(n) for n in sizes]

        async def send() -> None:
            for m in msgs:
                w.write(frame(m))
                await w.drain()

        sender = asyncio.ensure_future(send())
        for m in msgs:
            hdr = await r.readexactly(4)
            assert int.from_bytes(hdr, "big") == len(m)
            assert await r.readexactly(len(m)) == m
        await sender
        w.close()

    async def main() -> None:
        el, ln, task = await start(framed_echo)
        sizes = [[rnd.choice((16 << 10, 20_000, 64 << 10, 200_000, 1 << 20))
                  for _ in range(4)] for _ in range(40)]
        await asyncio.gather(*(client(ln.addr, s) for s in sizes))
        await stop(el, task)
        await wait_for(settled)

    run(main(), timeout=90)
    after = _core._uring_zc_debug()
    assert after["sends"] > before["sends"]
    assert after["notifs"] > before["notifs"]
    assert not after["refused"]


@needs_uring
def test_small_outputs_stay_plain(run: Any, zc: None) -> None:
    """Below the threshold nothing goes with SEND_ZC."""
    before = _core._uring_zc_debug()["sends"]

    async def main() -> None:
        el, ln, task = await start(framed_echo)
        r, w = await asyncio.open_connection(*ln.addr)
        for i in range(20):
            m = os.urandom(100 + i * 500)
            w.write(frame(m))
            assert await r.readexactly(4 + len(m)) == frame(m)
        w.close()
        await stop(el, task)
        await wait_for(settled)

    run(main())
    assert _core._uring_zc_debug()["sends"] == before


@needs_uring
def test_close_while_zero_copy_sends_are_in_flight(run: Any, zc: None) -> None:
    """flush_nowait(); close() with a 256 KiB output: the peer gets every byte, then
    EOF. A handler that closes other connections with SEND_ZCs queued: their
    outputs stay alive until the notifications (counters return to zero)."""
    peers: dict[bytes, Connection] = {}
    big = bytes(range(256)) * 1024            # 256 KiB

    def on_request(ctx: Any, conn: Connection) -> None:
        data = bytes(conn.input.next(len(conn.input)))
        if data.startswith(b"hello"):
            peers[data] = conn
            return
        if data == b"bye":
            conn.write_binary(big)
            conn.flush_nowait()
            conn.close()
            return
        if data == b"kill":
            for other in peers.values():
                other.write_binary(big)
                other.flush_nowait()
                other.close()
            conn.write_binary(b"done")
            conn.flush_nowait()

    async def read_all(r: asyncio.StreamReader) -> bytes:
        out = b""
        while True:
            more = await r.read(1 << 20)
            if not more:
                return out
            out += more

    async def main() -> None:
        el, ln, task = await start(on_request)
        for _ in range(10):
            r, w = await asyncio.open_connection(*ln.addr)
            w.write(b"bye")
            assert await read_all(r) == big
            w.close()
        others = []
        for i in range(5):
            r, w = await asyncio.open_connection(*ln.addr)
            w.write(b"hello%d" % i)
            others.append((r, w))
        await wait_for(lambda: len(peers) == 5)
        r, w = await asyncio.open_connection(*ln.addr)
        w.write(b"kill")
        assert await r.readexactly(4) == b"done"
        for r2, w2 in others:
            got = await read_all(r2)
            assert big.startswith(got)            # whatever was sent, in order
            w2.close()
        w.close()
        await stop(el, task)
        await wait_for(settled)

    run(main(), timeout=60)
    assert _core._uring_zc_debug()["sends"] > 0


@needs_uring
def test_peer_reset_mid_send(run: Any, zc: None) -> None:
    """The server answers each byte with 1 MiB; the peer reads a little and resets
    (SO_LINGER 0): the SEND_ZCs in flight fail or complete, the connection closes,
    nothing leaks."""
    closed: list[Connection] = []
    blob = os.urandom(1 << 20)

    def on_request(ctx: Any, conn: Connection) -> None:
        n = len(conn.input)
        conn.input.skip(n)
        if not closed.count(conn):
            conn.add_close_callback(closed.append)
        for _ in range(n):
            conn.write_binary(blob)
            conn.flush_nowait()

    async def main() -> None:
        el, ln, task = await start(on_request)
        loop = asyncio.get_running_loop()
        socks = []
        for _ in range(8):
            s = socket.create_connection(ln.addr)
            s.setblocking(False)
            s.sendall(b"xxxx")
            socks.append(s)
        for s in socks:
            got = 0
            while got < 100_000:
                got += len(await loop.sock_recv(s, 1 << 16))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        await wait_for(lambda: len(closed) == 8, timeout=10)
        await stop(el, task)
        await wait_for(settled)

    run(main(), timeout=60)


@needs_uring
def test_loop_closed_with_notifications_due(zc: None) -> None:
    """The loop closes (ring teardown) right after large SEND_ZCs, while a
    reading peer thread still drains them: teardown waits for the
    notifications, nothing is freed under the kernel, nothing leaks."""
    blob = os.urandom(512 << 10)
    ready = threading.Event()
    got: list[int] = []

    def on_request(ctx: Any, conn: Connection) -> None:
        conn.input.skip(len(conn.input))
        for _ in range(4):
            conn.write_binary(blob)
            conn.flush_nowait()

    def reader(addr: Any) -> None:
        with socket.socket() as s:
            # a small window: most of the output waits in the server's send queue,
            # its pages pinned, until this thread reads (after the loop closed)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
            s.connect(addr)
            s.sendall(b"go")
            ready.set()
            time.sleep(0.05)
            n = 0
            s.settimeout(10)
            while True:
                try:
                    b = s.recv(1 << 20)
                except (TimeoutError, ConnectionResetError):
                    break
                if not b:
                    break
                n += len(b)
            got.append(n)

    async def main() -> None:
        el, ln, task = await start(on_request)
        t = threading.Thread(target=reader, args=(ln.addr,))
        t.start()
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 5)
        await wait_for(lambda: _core._uring_zc_debug()["sends"] > sends0)
        task.cancel()
        return t

    sends0 = _core._uring_zc_debug()["sends"]
    drained0 = _core._uring_zc_debug()["drained"]
    loop = asyncio.new_event_loop()
    try:
        t = loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()                      # pollers torn down now (ring teardown)
    _core._forget_closed_loops()
    t.join(20)
    assert not t.is_alive()
    assert got and got[0] > 0
    d = _core._uring_zc_debug()
    assert d["pending"] == 0 and d["leaked_chunks"] == 0
    assert d["drained"] > drained0        # the teardown did wait for notifications
    assert _core._uring_debug()["requests"] == 0


@needs_uring
def test_loop_closed_with_a_peer_that_never_reads(zc: None) -> None:
    """The notifications never come in time (the peer's window is shut): the
    teardown gives up after URING_ZC_DRAIN_MS and leaks those chunks instead of
    freeing memory the kernel may still read; the request table is clean."""
    blob = os.urandom(512 << 10)

    def on_request(ctx: Any, conn: Connection) -> None:
        conn.input.skip(len(conn.input))
        conn.write_binary(bytearray(blob) * 2)   # copied into a pool chunk (not external)
        conn.flush_nowait()

    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)

    async def main() -> None:
        el, ln, task = await start(on_request)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(peer, ln.addr)
        await loop.sock_sendall(peer, b"go")
        await wait_for(lambda: _core._uring_zc_debug()["sends"] > sends0)
        await asyncio.sleep(0.05)
        task.cancel()

    sends0 = _core._uring_zc_debug()["sends"]
    leaked0 = _core._uring_zc_debug()["leaked_chunks"]
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()
    _core._forget_closed_loops()
    peer.close()
    d = _core._uring_zc_debug()
    assert d["pending"] == 0
    assert d["leaked_chunks"] > leaked0
    assert _core._uring_debug()["requests"] == 0


@needs_uring
def test_eopnotsupp_falls_back_to_plain_send(run: Any, zc: None, tmp_path: Any) -> None:
    """AF_UNIX has no zero-copy: the first SEND_ZC fails with EOPNOTSUPP, the
    output goes again as a plain SEND and SEND_ZC stays off for the process."""
    import netpoll

    path = str(tmp_path / "s")

    async def main() -> None:
        ln = netpoll.create_listener("unix", path)
        el = netpoll.EventLoop(framed_echo)
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        r, w = await asyncio.open_unix_connection(path, limit=1 << 21)
        for size in (64 << 10, 300_000, 20_000):
            m = os.urandom(size)
            w.write(frame(m))
            assert await r.readexactly(4 + size) == frame(m)
        w.close()
        await stop(el, task)
        await wait_for(settled)

    try:
        run(main(), timeout=60)
        assert _core._uring_zc_debug()["refused"]
    finally:
        _core._uring_zc_debug(reset=True)
