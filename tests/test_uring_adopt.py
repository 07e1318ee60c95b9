"""Provided buffers handed to the input LinkBuffer without a copy (io_uring, issue 16).

The recv model's provided buffers are LinkBuffer pool chunks: a completion of at
least NETPOLL_URING_ADOPT bytes becomes a sealed node of the connection's input
and the ring gets a fresh chunk; a smaller one is copied (docs/design.md, "The
io_uring backend", *Input*). These tests run real loopback sockets with the
hand-over always on (1), off (0) and at its threshold (4096), on a ring of two
buffers (it runs dry: ENOBUFS) and of the default size, and check: byte-exact
streams, views of input that never change after later completions, connections
closed mid-stream, rings torn down with chunks in flight, and that every chunk
a ring held is released with it. Skipped where io_uring cannot be set up.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import netpoll
from conftest import start, stop, wait_for
from netpoll import Connection, _core

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(bool(_core._uring_probe()[1]),
                                 reason=f"io_uring unavailable here: {_core._uring_probe()[1]}")]

ADOPT = ["0", "1", "4096"]


@pytest.fixture
def uring(uring: None) -> Iterator[None]:
    # conftest's, then the pollers of the test's closed loops are released
    yield
    _core._forget_closed_loops()


def plain_echo(ctx: Any, conn: Connection) -> None:
    buf = conn.input
    conn.write_buffer(buf.slice(len(buf)))
    conn.flush_nowait()


def counters_zero() -> bool:
    d = _core._uring_debug()
    return d["requests"] == 0 and d["parked_outputs"] == 0


def ring_chunks_released() -> None:
    """Once the test's loop is closed and its pollers released, no ring holds a chunk."""
    _core._forget_closed_loops()
    d = _core._uring_debug()
    assert d["ring_chunks"] == 0, d


async def read_all(r: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while chunk := await r.read(1 << 20):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("bufs", ["2", "512"])
@pytest.mark.parametrize("adopt", ADOPT)
def test_echo_streams_are_byte_exact(run: Any, uring: None, monkeypatch: Any,
                                     adopt: str, bufs: str) -> None:
    """Twenty connections each echo a stream of small (<1 KiB), medium (4-6 KiB) and
    large (64 KiB) writes; what comes back is the stream, byte for byte. With two
    buffers the ring runs dry (ENOBUFS) and is re-armed; large completions are
    handed over unless adopt is 0, small ones are copied unless adopt is 1."""
    monkeypatch.setenv("NETPOLL_URING_ADOPT", adopt)
    monkeypatch.setenv("NETPOLL_URING_BUFS", bufs)
    before = _core._uring_debug()

    async def one(addr: Any, seed: int) -> None:
        r, w = await asyncio.open_connection(*addr)
        rnd = random.Random(seed)
        sizes = [rnd.choice([1, 100, 900, 4095, 4096, 6000, 64 << 10]) for _ in range(24)]
        stream = os.urandom(sum(sizes))
        pos = 0
        got = bytearray()
        for n in sizes:
            w.write(stream[pos:pos + n])
            pos += n
            if rnd.random() < 0.5:
                await w.drain()
                got += await r.readexactly(pos - len(got))
        await w.drain()
        got += await r.readexactly(len(stream) - len(got))
        assert bytes(got) == stream
        w.close()
        await w.wait_closed()

    async def main() -> None:
        el, ln, task = await start(plain_echo)
        await asyncio.gather(*(one(ln.addr, i) for i in range(20)))
        await stop(el, task)
        await wait_for(counters_zero)

    run(main(), timeout=90)
    after = _core._uring_debug()
    if adopt == "0":
        assert after["adopted"] == before["adopted"]
    else:
        assert after["adopted"] > before["adopted"]
    if adopt == "1":
        assert after["copied"] == before["copied"]
    else:
        assert after["copied"] > before["copied"]
    if bufs == "2":
        assert after["enobufs"] > before["enobufs"]
    assert after["leaked_chunks"] == before["leaked_chunks"]
    ring_chunks_released()


@pytest.mark.parametrize("adopt", ADOPT)
def test_views_of_input_never_change(run: Any, uring: None, monkeypatch: Any,
                                     adopt: str) -> None:
    """A handler keeps every view it took of its input - next() views, and peek()
    views of bytes it then skips - long past the completions that follow (on a
    ring of two buffers, so a chunk given back would be refilled at once). At the
    end every view still holds the bytes it had when taken, and they are the
    stream, in order."""
    monkeypatch.setenv("NETPOLL_URING_ADOPT", adopt)
    monkeypatch.setenv("NETPOLL_URING_BUFS", "2")
    kept: list[tuple[memoryview, bytes]] = []
    total = 3 << 20

    def on_request(ctx: Any, conn: Connection) -> None:
        buf = conn.input
        n = len(buf)
        if len(kept) % 2:
            v = buf.peek(n)
            kept.append((v, bytes(v)))
            buf.skip(n)
        else:
            v = buf.next(n)
            kept.append((v, bytes(v)))
        if sum(len(k[1]) for k in kept) >= total:
            conn.write_binary(b"ok")
            conn.flush_nowait()

    async def main() -> None:
        el, ln, task = await start(on_request)
        r, w = await asyncio.open_connection(*ln.addr)
        stream = os.urandom(total)
        for i in range(0, total, 20_000):
            w.write(stream[i:i + 20_000])
            if i % 200_000 == 0:
                await w.drain()
        await w.drain()
        assert await r.readexactly(2) == b"ok"
        assert len(kept) > 10
        changed = [i for i, (v, b) in enumerate(kept) if bytes(v) != b]
        assert not changed, f"views changed after later completions: {changed[:10]}"
        assert b"".join(b for _, b in kept) == stream
        w.close()
        await stop(el, task)
        await wait_for(counters_zero)

    run(main(), timeout=90)
    for v, b in kept:
        assert bytes(v) == b           # the rings are gone; the views still hold
    kept.clear()
    ring_chunks_released()


@pytest.mark.parametrize("adopt", ["0", "1"])
def test_read_limited_connections(run: Any, uring: None, monkeypatch: Any, adopt: str) -> None:
    """With read_buffer_limit the recv is one-shot (a buffer per arm): a handler that
    takes input only now and then still gets the stream byte for byte."""
    monkeypatch.setenv("NETPOLL_URING_ADOPT", adopt)
    monkeypatch.setenv("NETPOLL_URING_BUFS", "2")

    total = 12_345 * 40
    seen = [0]

    def on_request(ctx: Any, conn: Connection) -> None:
        buf = conn.input
        if len(buf) >= 12_000 or seen[0] + len(buf) == total:
            seen[0] += len(buf)
            conn.write_buffer(buf.slice(len(buf)))
            conn.flush_nowait()

    async def main() -> None:
        el, ln, task = await start(on_request, read_buffer_limit=16 << 10)
        r, w = await asyncio.open_connection(*ln.addr)
        stream = os.urandom(total)
        w.write(stream)
        await w.drain()
        assert await r.readexactly(len(stream)) == stream
        w.close()
        await stop(el, task)
        await wait_for(counters_zero)

    run(main(), timeout=60)
    ring_chunks_released()


def _rst(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.close()


@pytest.mark.parametrize("adopt", ["0", "1"])
def test_connections_closed_mid_stream(run: Any, uring: None, monkeypatch: Any,
                                       adopt: str) -> None:
    """Peers that reset mid-stream, and a server that closes connections after
    some input while more is arriving: their CQEs in flight are dropped (their
    buffers still go back), other connections keep their streams exact, and every
    request ends."""
    monkeypatch.setenv("NETPOLL_URING_ADOPT", adopt)
    monkeypatch.setenv("NETPOLL_URING_BUFS", "2")
    held: list[memoryview] = []
    kind: dict[Connection, bytes] = {}       # by the first byte a connection sent

    def on_request(ctx: Any, conn: Connection) -> None:
        buf = conn.input
        if conn not in kind and len(buf):
            kind[conn] = bytes(buf.peek(1))
        if kind.get(conn) == b"X":
            if len(buf) >= 30_000:
                held.append(buf.next(len(buf)))    # a view of a closing connection's input
                conn.close()
            return
        plain_echo(ctx, conn)

    async def good(addr: Any) -> None:
        r, w = await asyncio.open_connection(*addr)
        data = b"G" + os.urandom(256 << 10)
        w.write(data)
        await w.drain()
        assert await r.readexactly(len(data)) == data
        w.close()

    async def reset(addr: Any) -> None:
        r, w = await asyncio.open_connection(*addr)
        w.write(b"Y" + os.urandom(100 << 10))
        await asyncio.sleep(0.01)
        _rst(w)

    async def closed_by_server(addr: Any) -> None:
        r, w = await asyncio.open_connection(*addr)
        w.write(b"X" * (1 << 20))
        with pytest.raises((ConnectionError, OSError)):
            await w.drain()
            await asyncio.wait_for(read_all(r), 5)
            w.write(b"X" * (1 << 20))     # the server is gone: this fails
            await w.drain()
            await asyncio.sleep(0.05)
            w.write(b"X")
            await w.drain()
        w.close()

    async def main() -> None:
        el, ln, task = await start(on_request)
        jobs = [good(ln.addr) for _ in range(6)]
        jobs += [reset(ln.addr) for _ in range(6)]
        jobs += [closed_by_server(ln.addr) for _ in range(4)]
        await asyncio.gather(*jobs)
        await stop(el, task)
        await wait_for(counters_zero)
        kind.clear()

    run(main(), timeout=60)
    assert held and all(bytes(v[:1]) == b"X" and set(bytes(v)) == {ord("X")} for v in held)
    held.clear()
    ring_chunks_released()


@pytest.mark.parametrize("adopt", ["0", "1"])
def test_ring_torn_down_with_chunks_in_flight(loop_kind: str, uring: None, monkeypatch: Any,
                                              adopt: str) -> None:
    """The loop is closed while peers are still sending (multishot recvs in flight,
    completions queued, chunks adopted and held by a view): the ring cancels
    synchronously, then gives its chunks back to the pool; the views taken before
    still hold their bytes; nothing is leaked."""
    from conftest import new_loop

    monkeypatch.setenv("NETPOLL_URING_ADOPT", adopt)
    monkeypatch.setenv("NETPOLL_URING_BUFS", "4")
    before = _core._uring_debug()
    kept: list[tuple[memoryview, bytes]] = []
    peers: list[socket.socket] = []

    def on_request(ctx: Any, conn: Connection) -> None:
        buf = conn.input
        v = buf.next(len(buf))
        if len(kept) < 50:
            kept.append((v, bytes(v)))

    async def main() -> None:
        el, ln, task = await start(on_request)
        for _ in range(8):
            s = socket.create_connection(ln.addr)
            s.setblocking(False)
            peers.append(s)
        junk = os.urandom(200 << 10)
        for s in peers:
            try:
                s.send(junk)
            except BlockingIOError:
                pass
        await wait_for(lambda: len(kept) >= 8)
        for s in peers:           # more arrives while the loop goes away
            try:
                s.send(junk)
            except BlockingIOError:
                pass
        # no shutdown: the loop is closed under the server and its connections
        del el, task

    loop = new_loop(loop_kind)
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
        assert _core._uring_debug()["ring_chunks"] > before["ring_chunks"]
    finally:
        for t in asyncio.all_tasks(loop):
            t.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        asyncio.set_event_loop(None)
        _core._forget_closed_loops()       # the rings of the closed loop are torn down here
        for s in peers:
            s.close()
    d = _core._uring_debug()
    assert d["ring_chunks"] == 0 and d["leaked_chunks"] == before["leaked_chunks"], d
    assert d["requests"] == 0, d
    for v, b in kept:
        assert bytes(v) == b
    kept.clear()


def test_bad_adopt_value(run: Any, uring: None, monkeypatch: Any) -> None:
    """A negative NETPOLL_URING_ADOPT is refused when a ring is made."""
    monkeypatch.setenv("NETPOLL_URING_ADOPT", "-1")

    async def main() -> None:
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            with pytest.raises(ValueError, match="NETPOLL_URING_ADOPT"):
                await netpoll.dial_connection("tcp", f"127.0.0.1:{srv.getsockname()[1]}",
                                              timeout=2)

    run(main())


def test_ring_closed_from_another_thread_leaks_its_chunks(uring: None,
                                                          monkeypatch: Any) -> None:
    """A single-issuer ring (DEFER_TASKRUN) can only be cancelled synchronously from
    its own thread; released from another one (the pollers of a closed loop, by the
    next loop that makes pollers), its chunks are leaked - never freed nor pooled,
    as the kernel may still write them - and the Chunk objects still go (the debug
    build's live count returns to zero)."""
    monkeypatch.setenv("NETPOLL_URING_SETUP", "defer_taskrun")
    monkeypatch.setenv("NETPOLL_URING_BUFS", "4")
    monkeypatch.setenv("NETPOLL_URING_ADOPT", "1")
    _core._forget_closed_loops()
    before = _core._uring_debug()
    out: list[Any] = []

    async def main() -> None:
        el, ln, task = await start(plain_echo)
        r, w = await asyncio.open_connection(*ln.addr)
        data = os.urandom(100 << 10)
        w.write(data)
        assert await asyncio.wait_for(r.readexactly(len(data)), 10) == data
        out.append(_core._uring_ring_flags(asyncio.get_running_loop()))
        w.close()
        await stop(el, task)

    def worker() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:      # reported below
            out.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join(30)
    assert not t.is_alive()
    assert out and isinstance(out[0], list), out
    if not all("defer_taskrun" in flags for flags in out[0]):
        pytest.skip(f"the kernel refused DEFER_TASKRUN: {out[0]}")
    _core._forget_closed_loops()          # from this thread: no synchronous cancel
    d = _core._uring_debug()
    leaked = d["leaked_chunks"] - before["leaked_chunks"]
    assert leaked == 4 * len(out[0]), d
    assert d["ring_chunks"] == 0, d


def test_a_trickle_does_not_pin_a_chunk_per_segment(run: Any, uring: None,
                                                    monkeypatch: Any) -> None:
    """A peer sends a frame in many tiny segments to a handler that waits for all of
    it: only a completion into an empty input (or of at least the threshold) is
    handed over - a sealed 8 KiB node per 1-byte segment would multiply the memory
    the input holds by 8192 - so the rest are copied into the tail's room."""
    monkeypatch.delenv("NETPOLL_URING_ADOPT", raising=False)
    total = 300
    before = _core._uring_debug()

    def on_request(ctx: Any, conn: Connection) -> None:
        buf = conn.input
        if len(buf) >= total:
            conn.write_buffer(buf.slice(len(buf)))
            conn.flush_nowait()

    async def main() -> None:
        el, ln, task = await start(on_request)
        r, w = await asyncio.open_connection(*ln.addr)
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = os.urandom(total)
        for i in range(total):
            w.write(data[i:i + 1])
            await w.drain()
            if i % 10 == 0:
                await asyncio.sleep(0.002)
        assert await r.readexactly(total) == data
        w.close()
        await stop(el, task)
        await wait_for(counters_zero)

    run(main(), timeout=60)
    d = _core._uring_debug()
    copied, adopted = d["copied"] - before["copied"], d["adopted"] - before["adopted"]
    # how many completions the 300 segments make depends on the ring: one per segment
    # with CLAMP only, a few bytes each with DEFER_TASKRUN (the recv runs when we enter)
    assert copied >= 10 and copied > 3 * adopted, d
    assert adopted <= 3, d
    ring_chunks_released()
