"""Connection conformance: reads, until, timeouts, flush backpressure, close/detach, errors.

Ports the applicable scenarios of Go Netpoll's connection_test.go and
net_dialer_test.go (NETPOLL.md §3) over socketpairs (new_fd_connection),
loopback TCP and Unix sockets, on stock asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import netpoll
from conftest import wait_for
from netpoll import (
    ConcurrentAccessError,
    ConnectionClosedError,
    EndOfStreamError,
    LinkBuffer,
    ReadTimeoutError,
    WriteTimeoutError,
)

pytestmark = pytest.mark.timeout(60)

TRANSPORTS = ["socketpair", "tcp", "unix"]


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def conn_pair(
    kind: str, tmp_path: Path | None = None, sndbuf: int | None = None
) -> AsyncIterator[tuple[netpoll.Connection, socket.socket]]:
    """A netpoll Connection and the plain (non-blocking) socket at its other end."""
    peer: socket.socket | None = None
    conn: netpoll.Connection | None = None
    try:
        if kind == "socketpair":
            a, peer = socket.socketpair()
            if sndbuf:
                a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
            conn = netpoll.new_fd_connection(a.detach())
        else:
            if kind == "tcp":
                lsock = socket.create_server(("127.0.0.1", 0))
                addr: object = f"127.0.0.1:{lsock.getsockname()[1]}"
            else:
                assert tmp_path is not None
                path = str(tmp_path / "c.sock")
                lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                lsock.bind(path)
                lsock.listen()
                addr = path
            with lsock:
                if sndbuf:
                    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
                conn = await netpoll.dial_connection(kind, addr, timeout=5)  # type: ignore[arg-type]
                peer, _ = lsock.accept()
            if sndbuf:
                with socket.socket(fileno=os.dup(conn.fileno())) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        peer.setblocking(False)
        yield conn, peer
    finally:
        if conn is not None:
            conn.close()
        if peer is not None:
            peer.close()


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, min(n - len(out), 1 << 20))
        if not chunk:
            raise EOFError(f"peer closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


async def recv_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while True:
        chunk = await loop.sock_recv(sock, 1 << 20)
        if not chunk:
            return bytes(out)
        out += chunk


async def send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


# -- basic I/O ------------------------------------------------------------------------


def test_new_fd_connection_pair_exchange(run):
    """TestNewFDConnection: two new_fd_connections over a socketpair exchange "hello"."""

    async def main():
        a, b = socket.socketpair()
        ca = netpoll.new_fd_connection(a.detach())
        cb = netpoll.new_fd_connection(b.detach())
        try:
            assert ca.is_active() and cb.is_active()
            ca.writer.write_string("hello")
            await ca.writer.flush()
            assert bytes(await cb.reader.next(5)) == b"hello"
            assert await cb.write(b"world") == 5
            assert await ca.reader.read_string(5) == "world"
        finally:
            ca.close()
            cb.close()
        assert not ca.is_active() and not cb.is_active()

    run(main())


def test_reader_methods(run, transport, tmp_path):
    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            r = conn.reader
            await send(peer, b"abcdefghij" + b"line\n" + b"xy\r\nz" + "héllo".encode() + b"\x07")
            await wait_for(lambda: r.len() == 27)
            assert len(conn) == 27
            assert bytes(await r.peek(3)) == b"abc"
            assert bytes(await r.next(3)) == b"abc"
            await r.skip(2)
            b = await r.read_binary(2)
            assert b == b"fg" and isinstance(b, bytes)
            sl = await r.slice(3)
            assert isinstance(sl, LinkBuffer) and sl.bytes() == b"hij"
            sl.close()
            assert bytes(await r.until(b"\n")) == b"line\n"
            assert bytes(await r.until(b"\r\n")) == b"xy\r\n"
            assert bytes(await r.until(ord("z"))) == b"z"
            assert await r.read_string(6) == "héllo"
            assert await r.read_byte() == 7
            assert r.len() == 0
            # size 0 is an empty result and never waits
            assert bytes(await r.next(0)) == b""
            assert bytes(await r.peek(0)) == b""
            assert await r.read_binary(0) == b""
            assert await r.read_string(0) == ""
            r.release()

    run(main())


def test_reader_waits_for_data(run, transport, tmp_path):
    """Each awaitable waits until enough data has arrived (sent in pieces)."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            r = conn.reader

            async def feed(data: bytes) -> None:
                for i in range(0, len(data), 3):
                    await asyncio.sleep(0.002)
                    await send(peer, data[i:i + 3])

            for op, data, expect in [
                (lambda: r.next(10), b"0123456789", b"0123456789"),
                (lambda: r.peek(4), b"abcd", b"abcd"),
                (lambda: r.read_binary(8), b"ABCDEFGH", b"abcdABCD"),
                (lambda: r.until(b"--"), b"xyz-123--", b"EFGHxyz-123--"),
                (lambda: r.read_string(5), b"\xc3\xa9t\xc3\xa9", "été"),
            ]:
                t = asyncio.ensure_future(op())
                await asyncio.sleep(0.01)
                await feed(data)
                got = await asyncio.wait_for(t, 5)
                assert (got if isinstance(got, str) else bytes(got)) == expect
            t = asyncio.ensure_future(r.read_byte())
            await asyncio.sleep(0.01)
            await send(peer, b"\xff")
            assert await asyncio.wait_for(t, 5) == 255
            t = asyncio.ensure_future(r.skip(5))
            await feed(b"12345")
            assert await asyncio.wait_for(t, 5) is None
            t = asyncio.ensure_future(r.slice(4))
            await feed(b"wxyz")
            sl = await asyncio.wait_for(t, 5)
            assert sl.bytes() == b"wxyz"
            sl.close()
            assert r.len() == 0

    run(main())


def test_buffered_read_completes_without_suspending(run):
    """A reader awaitable with enough data buffered completes at its first step."""

    async def main():
        async with conn_pair("socketpair") as (conn, peer):
            await send(peer, b"0123456789")
            await wait_for(lambda: conn.reader.len() == 10)
            it = conn.reader.next(4).__await__()
            with pytest.raises(StopIteration) as si:
                it.send(None)
            assert bytes(si.value.value) == b"0123"
            it = conn.reader.read_byte().__await__()
            with pytest.raises(StopIteration) as si:
                it.send(None)
            assert si.value.value == ord("4")
            assert conn.reader.len() == 5
            # a flush the kernel takes at once also completes without suspending
            conn.writer.write_binary(b"x")
            it = conn.writer.flush().__await__()
            with pytest.raises(StopIteration):
                it.send(None)
            assert await recv_exactly(peer, 1) == b"x"

    run(main())


def test_half_packet_wakes_large_next(run, transport, tmp_path):
    """TestConnectionWaitReadHalfPacket: half a packet, then the rest, wakes next(16 KiB)."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            data = payload(16 * 1024)
            t = asyncio.ensure_future(conn.reader.next(len(data)))
            await send(peer, data[:8192])
            await wait_for(lambda: conn.reader.len() == 8192)
            await asyncio.sleep(0.02)
            assert not t.done()
            await send(peer, data[8192:])
            assert bytes(await asyncio.wait_for(t, 5)) == data
            assert conn.reader.len() == 0

    run(main())


def test_read_many_chunks(run, transport, tmp_path):
    """TestConnectionRead / TestConnectionWrite: 1,000 x 256 B both ways."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            msgs = [payload(256, i) for i in range(1000)]

            async def writer() -> None:
                for i in range(0, 1000, 50):
                    await send(peer, b"".join(msgs[i:i + 50]))

            t = asyncio.ensure_future(writer())
            for m in msgs:
                assert bytes(await conn.reader.next(256)) == m
                conn.reader.release()
            await t
            # and the other way: 1,000 writes each flushed
            got = asyncio.ensure_future(recv_exactly(peer, 256 * 1000))
            for m in msgs:
                conn.writer.write_binary(m)
                await conn.writer.flush()
            assert await asyncio.wait_for(got, 5) == b"".join(msgs)

    run(main())


def test_large_messages_decreasing_sizes(run, transport, tmp_path):
    """TestBookSizeLargerThanMaxSize (scaled): 8 MiB, 4 MiB ... 1 B read intact."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            sizes = [1 << k for k in range(23, -1, -1)]
            data = payload(sum(sizes), 7)
            t = asyncio.ensure_future(send(peer, data))
            off = 0
            for n in sizes:
                got = await conn.reader.next(n)
                assert got == data[off:off + n], n
                off += n
                conn.reader.release()
            await t

    run(main(), timeout=20)


# -- peer close ---------------------------------------------------------------------


def test_read_after_peer_close_succeeds(run, transport, tmp_path):
    """TestConnectionReadAfterClosed: a blocked next(256) succeeds when the peer writes
    256 B and closes."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            data = payload(256)
            t = asyncio.ensure_future(conn.reader.next(256))
            await asyncio.sleep(0.01)
            await send(peer, data)
            peer.close()
            assert bytes(await asyncio.wait_for(t, 5)) == data

    run(main())


def test_peer_close_with_too_little_data(run, transport, tmp_path):
    """EndOfStreamError when the peer closes first; the bytes that arrived stay readable."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            t = asyncio.ensure_future(conn.reader.next(10))
            await asyncio.sleep(0.01)
            await send(peer, b"abcd")
            peer.close()
            with pytest.raises(EndOfStreamError) as ei:
                await asyncio.wait_for(t, 5)
            assert isinstance(ei.value, ConnectionClosedError)
            assert isinstance(ei.value, EOFError)
            assert isinstance(ei.value, ConnectionError)
            assert conn.reader.len() == 4
            assert not conn.is_active()
            with pytest.raises(EndOfStreamError):
                await conn.reader.next(5)
            assert conn.reader.len() == 4
            assert bytes(await conn.reader.next(4)) == b"abcd"
            with pytest.raises(EndOfStreamError):
                await conn.reader.read_byte()

    run(main())


def test_peer_close_seen_without_reading(run, transport, tmp_path):
    """is_active() turns False when the peer closes, even with nobody reading (§2.13)."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            closed = []
            conn.add_close_callback(closed.append)
            await send(peer, b"left over")
            peer.close()
            await wait_for(lambda: not conn.is_active())
            await wait_for(lambda: closed == [conn])
            assert conn.reader.len() == 9
            assert await conn.reader.read_binary(9) == b"left over"

    run(main())


def test_send_then_close_nobody_reading(run, transport, tmp_path):
    """A peer that sends a lot and closes at once while nobody reads: every byte stays
    readable after the connection went inactive."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            data = payload(3 * 1024 * 1024 + 17)
            peer.setblocking(True)

            def blast() -> None:
                peer.sendall(data)
                peer.close()

            await asyncio.to_thread(blast)
            await wait_for(lambda: not conn.is_active())
            assert conn.reader.len() == len(data)
            assert bytes(await conn.reader.next(len(data))) == data

    run(main())


def test_send_then_close_delivers_every_byte(run, transport, tmp_path):
    """A peer that sends a lot and closes at once: every byte is readable."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            data = payload(3 * 1024 * 1024 + 17)
            peer.setblocking(True)

            def blast() -> None:
                peer.sendall(data)
                peer.shutdown(socket.SHUT_WR)

            th = threading.Thread(target=blast)
            th.start()
            try:
                got = bytearray()
                while True:
                    chunk = await conn.read(1 << 16)
                    if not chunk:
                        break
                    got += chunk
            finally:
                await asyncio.to_thread(th.join)
            assert bytes(got) == data
            assert not conn.is_active()

    run(main())


def test_until_lines_then_eof(run, transport, tmp_path):
    """TestConnectionUntil (scaled): 2,000 lines of 501 B, then 100 trailing bytes and a
    close: until raises EndOfStreamError and the 100 bytes stay readable."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            line = b"a" * 500 + b"\n"
            tail = b"b" * 100
            t = asyncio.ensure_future(send(peer, line * 2000 + tail))
            for _ in range(2000):
                assert bytes(await conn.reader.until(b"\n")) == line
            await t
            peer.close()
            with pytest.raises(EndOfStreamError):
                await conn.reader.until(b"\n")
            assert conn.reader.len() == 100
            assert bytes(await conn.reader.next(100)) == tail

    run(main())


def test_until_delimiter_straddles_reads(run):
    async def main():
        async with conn_pair("socketpair") as (conn, peer):
            t = asyncio.ensure_future(conn.reader.until(b"\r\n\r\n"))
            for piece in [b"GET / HTTP/1.1\r", b"\nHost: x\r\n", b"\r", b"\n", b"body"]:
                await send(peer, piece)
                await asyncio.sleep(0.005)
            got = await asyncio.wait_for(t, 5)
            assert bytes(got) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            assert conn.reader.len() == 4

    run(main())


# -- timeouts -----------------------------------------------------------------------


def test_read_timeout(run, transport, tmp_path):
    """TestConnectionTimeout/ReadTimeout: ReadTimeoutError, nothing consumed, still open."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            conn.set_read_timeout(0.05)
            await send(peer, b"abc")
            await wait_for(lambda: conn.reader.len() == 3)
            loop = asyncio.get_running_loop()
            for op in (lambda: conn.reader.next(10), lambda: conn.reader.until(b"\n"),
                       lambda: conn.reader.read_binary(4), lambda: conn.reader.skip(4)):
                t0 = loop.time()
                with pytest.raises(ReadTimeoutError) as ei:
                    await op()
                elapsed = loop.time() - t0
                assert 0.03 <= elapsed < 1.0, elapsed
                assert isinstance(ei.value, TimeoutError)
                assert conn.reader.len() == 3
                assert conn.is_active()
            # the connection stays usable: more data completes the read
            t = asyncio.ensure_future(conn.reader.next(10))
            await send(peer, b"defghij")
            assert bytes(await asyncio.wait_for(t, 5)) == b"abcdefghij"
            # the timeout applies per wait and 0 / None turn it off
            conn.set_read_timeout(None)
            t = asyncio.ensure_future(conn.reader.next(1))
            await asyncio.sleep(0.15)
            assert not t.done()
            await send(peer, b"!")
            assert bytes(await asyncio.wait_for(t, 5)) == b"!"
            conn.set_read_timeout(0)
            t = asyncio.ensure_future(conn.reader.read_byte())
            await asyncio.sleep(0.1)
            assert not t.done()
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            assert conn.is_active()

    run(main())


def test_read_timeout_read_method(run):
    async def main():
        async with conn_pair("socketpair") as (conn, peer):
            conn.set_read_timeout(0.05)
            with pytest.raises(ReadTimeoutError):
                await conn.read(10)
            await send(peer, b"hi")
            assert await conn.read(10) == b"hi"

    run(main())


def test_timeout_validation(run):
    async def main():
        async with conn_pair("socketpair") as (conn, _peer):
            for setter in (conn.set_read_timeout, conn.set_write_timeout, conn.set_idle_timeout):
                with pytest.raises(ValueError):
                    setter(-1)
                with pytest.raises(TypeError):
                    setter("1")  # type: ignore[arg-type]
                setter(0)
                setter(None)
                setter(1.5)

    run(main())


def test_write_timeout_keeps_data_and_connection(run, transport, tmp_path):
    """TestConnectionTimeout/WriteTimeout: WriteTimeoutError; the unsent data stays queued,
    the connection stays open, and the next flush resumes it."""

    async def main():
        async with conn_pair(transport, tmp_path, sndbuf=4096) as (conn, peer):
            conn.set_write_timeout(0.05)
            conn.writer.write_binary(b"x" * 1024)
            await conn.writer.flush()          # small: fits, no error
            data = payload(4 * 1024 * 1024)
            conn.writer.write_binary(data)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(WriteTimeoutError) as ei:
                await conn.writer.flush()
            assert 0.03 <= loop.time() - t0 < 1.0
            assert isinstance(ei.value, TimeoutError)
            assert conn.is_active()
            # a second flush resumes; now the peer reads everything
            conn.set_write_timeout(None)
            got = asyncio.ensure_future(recv_exactly(peer, 1024 + len(data)))
            await asyncio.wait_for(conn.writer.flush(), 10)
            assert await asyncio.wait_for(got, 10) == b"x" * 1024 + data
            # still usable both ways
            await conn.write(b"ok")
            assert await recv_exactly(peer, 2) == b"ok"

    run(main(), timeout=20)


def test_slow_reader_flush_waits_then_completes(run, transport, tmp_path):
    """TestLargeBufferWrite: flush blocks on a full socket buffer and completes once the
    slow reader drains it; every byte arrives in order."""

    async def main():
        async with conn_pair(transport, tmp_path, sndbuf=8192) as (conn, peer):
            data = payload(2 * 1024 * 1024, 3)
            conn.writer.write_binary(data)
            f = asyncio.ensure_future(conn.writer.flush())
            await asyncio.sleep(0.05)
            assert not f.done(), "flush must wait while the reader does not read"
            loop = asyncio.get_running_loop()
            got = bytearray()
            # read slowly at first
            for _ in range(5):
                got += await loop.sock_recv(peer, 4096)
                await asyncio.sleep(0.01)
                assert not f.done()
            got += await recv_exactly(peer, len(data) - len(got))
            await asyncio.wait_for(f, 10)
            assert bytes(got) == data
            assert conn.is_active()

    run(main(), timeout=20)


def test_close_unblocks_waiting_flush(run, transport, tmp_path):
    """TestLargeBufferWrite: Close succeeds while a flush waits, which then raises."""

    async def main():
        async with conn_pair(transport, tmp_path, sndbuf=4096) as (conn, _peer):
            conn.writer.write_binary(payload(4 * 1024 * 1024))
            f = asyncio.ensure_future(conn.writer.flush())
            await asyncio.sleep(0.02)
            assert not f.done()
            conn.close()
            with pytest.raises(ConnectionClosedError):
                await asyncio.wait_for(f, 5)
            assert not conn.is_active()

    run(main())


def test_close_wakes_waiting_reader(run, transport, tmp_path):
    async def main():
        async with conn_pair(transport, tmp_path) as (conn, _peer):
            t = asyncio.ensure_future(conn.reader.next(10))
            await asyncio.sleep(0.01)
            conn.close()
            with pytest.raises(ConnectionClosedError) as ei:
                await asyncio.wait_for(t, 5)
            assert not isinstance(ei.value, EndOfStreamError)
            with pytest.raises(ConnectionClosedError):
                await conn.reader.next(1)

    run(main())


def test_peer_close_fails_flush(run, transport, tmp_path):
    """Writing to a peer that is gone ends in ConnectionClosedError, not a hang."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            peer.close()
            with pytest.raises(ConnectionClosedError):
                for _ in range(100):
                    conn.writer.write_binary(b"x" * 65536)
                    await asyncio.wait_for(conn.writer.flush(), 5)
                    await asyncio.sleep(0.005)
            assert not conn.is_active()

    run(main())


# -- cancellation -------------------------------------------------------------------


def test_cancelled_read_consumes_nothing(run, transport, tmp_path):
    """A waiting read cancelled from outside consumes nothing and leaves the connection
    usable."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            await send(peer, b"abc")
            await wait_for(lambda: conn.reader.len() == 3)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.03):
                    await conn.reader.next(10)
            assert conn.reader.len() == 3
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.reader.until(b"\n"), 0.03)
            assert conn.reader.len() == 3
            t = asyncio.ensure_future(conn.reader.read_binary(5))
            await asyncio.sleep(0.01)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            assert conn.reader.len() == 3 and conn.is_active()
            # usable: a new wait completes normally
            t = asyncio.ensure_future(conn.reader.next(10))
            await asyncio.sleep(0.01)
            await send(peer, b"defghij")
            assert bytes(await asyncio.wait_for(t, 5)) == b"abcdefghij"
            await conn.write(b"still here")
            assert await recv_exactly(peer, 10) == b"still here"

    run(main())


def test_concurrent_reads_and_flushes(run):
    """Two concurrent reads (or flushes) on one connection: ConcurrentAccessError."""

    async def main():
        async with conn_pair("socketpair", sndbuf=4096) as (conn, peer):
            t = asyncio.ensure_future(conn.reader.next(5))
            await asyncio.sleep(0.01)
            with pytest.raises(ConcurrentAccessError) as ei:
                await conn.reader.next(5)
            assert isinstance(ei.value, RuntimeError)
            await send(peer, b"12345")
            assert bytes(await asyncio.wait_for(t, 5)) == b"12345"
            conn.writer.write_binary(payload(4 * 1024 * 1024))
            f = asyncio.ensure_future(conn.writer.flush())
            await asyncio.sleep(0.01)
            assert not f.done()
            with pytest.raises(ConcurrentAccessError):
                await conn.writer.flush()
            conn.close()
            with pytest.raises(ConnectionClosedError):
                await f

    run(main())


# -- writer -------------------------------------------------------------------------


def test_writer_methods(run, transport, tmp_path):
    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            w = conn.writer
            m = w.malloc(4)
            m[:] = b"head"
            assert w.write_binary(b"-bin-") == 5
            assert w.write_string("str-") == 4
            w.write_byte(ord("!"))
            lb = LinkBuffer()
            lb.write_binary(b"<lb>")
            lb.flush()
            w.write_buffer(lb)
            lb2 = LinkBuffer()
            lb2.write_binary(b"<app>")
            lb2.flush()
            w.append(lb2)
            big = payload(64 * 1024)
            w.write_binary(big)
            assert w.malloc_len() == 4 + 5 + 4 + 1 + 4 + 5 + len(big)
            m = w.malloc(10)
            m[:3] = b"end"
            w.malloc_ack(w.malloc_len() - 7)
            await w.flush()
            want = b"head-bin-str-!<lb><app>" + big + b"end"
            assert await recv_exactly(peer, len(want)) == want

    run(main())


def test_write_direct(run):
    async def main():
        async with conn_pair("socketpair") as (conn, peer):
            w = conn.writer
            m = w.malloc(8)
            m[:] = b"AAAABBBB"
            w.write_direct(b"--", 4)
            await w.flush()
            assert await recv_exactly(peer, 10) == b"AAAA--BBBB"

    run(main())


def test_writer_after_close_raises(run, transport, tmp_path):
    """TestWriterAfterClose: every writer method raises ConnectionClosedError."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, _peer):
            conn.writer.write_binary(b"pending")
            conn.close()
            conn.close()           # idempotent
            w = conn.writer
            lb = LinkBuffer()
            lb.write_binary(b"x")
            lb.flush()
            calls = [
                lambda: w.malloc(1),
                lambda: w.malloc_ack(0),
                lambda: w.write_binary(b"x"),
                lambda: w.write_string("x"),
                lambda: w.write_byte(1),
                lambda: w.write_direct(b"x", 0),
                lambda: w.write_buffer(lb),
                lambda: w.append(lb),
            ]
            for call in calls:
                with pytest.raises(ConnectionClosedError):
                    call()
            lb.close()
            with pytest.raises(ConnectionClosedError):
                await w.flush()
            with pytest.raises(ConnectionClosedError):
                await conn.write(b"x")
            assert not conn.is_active()

    run(main())


def test_writer_after_peer_close_raises(run, transport, tmp_path):
    """TestServerReadAndClose: after the peer closes, the connection goes inactive and
    writer methods raise ConnectionClosedError."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            peer.close()
            await wait_for(lambda: not conn.is_active())
            with pytest.raises(ConnectionClosedError):
                conn.writer.write_binary(b"x")
            with pytest.raises(ConnectionClosedError):
                await conn.writer.flush()

    run(main())


def test_read_write_net_conn_style(run, transport, tmp_path):
    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            assert await conn.write(b"hello") == 5
            assert await conn.write(bytearray(b"-ba")) == 3
            assert await conn.write(memoryview(b"-mv")) == 3
            assert await recv_exactly(peer, 11) == b"hello-ba-mv"
            # read waits for at least 1 byte and returns up to n (a copy)
            t = asyncio.ensure_future(conn.read(100))
            await asyncio.sleep(0.01)
            assert not t.done()
            await send(peer, b"abcdef")
            got = await asyncio.wait_for(t, 5)
            assert isinstance(got, bytes) and b"abcdef".startswith(got) and got
            rest = b"abcdef"[len(got):]
            while rest:
                more = await conn.read(100)
                assert rest.startswith(more) and more
                rest = rest[len(more):]
            await send(peer, b"0123456789")
            await wait_for(lambda: conn.reader.len() == 10)
            assert await conn.read(4) == b"0123"
            assert await conn.read(0) == b""
            assert await conn.read() == b"456789"
            # b"" once the peer closed and nothing is left; buffered data first
            await send(peer, b"tail")
            peer.close()
            await wait_for(lambda: not conn.is_active())
            assert await conn.read(100) == b"tail"
            assert await conn.read(100) == b""
            assert await conn.read(100) == b""

    run(main())


def test_read_copy_independent_of_peek(run):
    """TestConnectionIOReader: peek then read: read copies, the peeked view stays valid."""

    async def main():
        async with conn_pair("socketpair") as (conn, peer):
            data = payload(64)
            await send(peer, data)
            await wait_for(lambda: conn.reader.len() == 64)
            pv = await conn.reader.peek(16)
            assert await conn.read(64) == data
            conn.reader.release()
            assert bytes(pv) == data[:16]

    run(main())


def test_views_survive_close(run, transport, tmp_path):
    """Memoryviews handed out stay valid after release() and after the connection closes."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            data = payload(50000, 5)
            await send(peer, data)
            await wait_for(lambda: conn.reader.len() == len(data))
            v1 = await conn.reader.next(100)
            v2 = await conn.reader.peek(30000)
            conn.reader.release()
            conn.close()
            gc.collect()
            # make the pool hand out memory again
            async with conn_pair("socketpair") as (c2, p2):
                await send(p2, b"\0" * 60000)
                await wait_for(lambda: c2.reader.len() == 60000)
                await c2.reader.skip(60000)
                c2.reader.release()
            assert bytes(v1) == data[:100]
            assert bytes(v2) == data[100:30100]

    run(main())


def test_read_string_decode_error_consumes_nothing(run):
    async def main():
        async with conn_pair("socketpair") as (conn, peer):
            await send(peer, b"\xff\xfeok")
            await wait_for(lambda: conn.reader.len() == 4)
            with pytest.raises(UnicodeDecodeError):
                await conn.reader.read_string(4)
            assert conn.reader.len() == 4
            assert await conn.reader.read_string(4, errors="replace") == "\ufffd\ufffdok"

    run(main())


def test_argument_errors(run):
    async def main():
        async with conn_pair("socketpair") as (conn, _peer):
            with pytest.raises(ValueError):
                await conn.reader.next(-1)
            with pytest.raises(ValueError):
                await conn.reader.until(b"")
            with pytest.raises(ValueError):
                conn.writer.malloc(-1)
            assert conn.is_active()

    run(main())


# -- close callbacks, detach ----------------------------------------------------------


def test_close_callbacks_lifo_once(run, transport, tmp_path):
    async def main():
        async with conn_pair(transport, tmp_path) as (conn, _peer):
            order: list[int] = []
            for i in range(3):
                conn.add_close_callback(lambda c, i=i: order.append(i))
            conn.close()
            conn.close()
            await asyncio.sleep(0.01)
            assert order == [2, 1, 0]
            # added to a closed connection: runs at once or promptly, once
            late: list[object] = []
            conn.add_close_callback(late.append)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert late == [conn]
            await asyncio.sleep(0.02)
            assert order == [2, 1, 0] and late == [conn]

    run(main())


def test_close_callbacks_on_peer_close(run, transport, tmp_path):
    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            order: list[str] = []
            conn.add_close_callback(lambda c: order.append("first"))
            conn.add_close_callback(lambda c: order.append("second"))
            peer.close()
            await wait_for(lambda: len(order) == 2)
            conn.close()
            await asyncio.sleep(0.02)
            assert order == ["second", "first"]

    run(main())


def test_close_callback_exception_logged(run, caplog):
    async def main():
        async with conn_pair("socketpair") as (conn, _peer):
            ran: list[int] = []

            def bad(c: object) -> None:
                del c        # the logged traceback must not keep the connection alive
                raise RuntimeError("boom in close callback")

            conn.add_close_callback(lambda c: ran.append(1))
            conn.add_close_callback(bad)
            conn.close()
            await asyncio.sleep(0.01)
            assert ran == [1]

    with caplog.at_level("ERROR", logger="netpoll"):
        run(main())
    assert any("boom in close callback" in repr(r.exc_info) or "close callback" in r.getMessage()
               for r in caplog.records)
    for r in caplog.records:    # the traceback's frames would keep the connection alive
        r.exc_info = None


def test_detach_keeps_socket_usable(run, transport, tmp_path):
    """TestConnDetach: after detach() the fd is open and usable; the connection is closed."""

    async def main():
        async with conn_pair(transport, tmp_path) as (conn, peer):
            closed: list[object] = []
            conn.add_close_callback(closed.append)
            fd0 = conn.fileno()
            fd = conn.detach()
            assert fd == fd0
            assert not conn.is_active()
            await asyncio.sleep(0.01)
            assert closed == [conn]
            with socket.socket(fileno=fd) as s:
                s.setblocking(True)
                s.settimeout(5)
                s.sendall(b"after detach")
                assert await recv_exactly(peer, 12) == b"after detach"
                await send(peer, b"back")
                assert s.recv(4) == b"back"
            conn.close()     # a later close is fine

    run(main())


def test_detach_then_new_fd_connection(run):
    async def main():
        async with conn_pair("socketpair") as (conn, peer):
            await conn.write(b"one")
            assert await recv_exactly(peer, 3) == b"one"
            fd = conn.detach()
            c2 = netpoll.new_fd_connection(fd)
            try:
                await send(peer, b"two")
                assert bytes(await c2.reader.next(3)) == b"two"
                await c2.write(b"three")
                assert await recv_exactly(peer, 5) == b"three"
            finally:
                c2.close()

    run(main())


def test_new_fd_connection_argument_errors(run):
    async def main():
        with pytest.raises((ValueError, OSError)):
            netpoll.new_fd_connection(-1)
        with pytest.raises(TypeError):
            netpoll.new_fd_connection("3")  # type: ignore[arg-type]

    run(main())


def test_connection_not_constructible():
    with pytest.raises(TypeError):
        netpoll.Connection()


# -- addresses, TCP options ---------------------------------------------------------


def test_tcp_addresses_and_nodelay(run):
    """TestDialerTCP / TestSetTCPNoDelay."""

    async def main():
        async with conn_pair("tcp") as (conn, peer):
            assert conn.remote_addr == peer.getsockname()
            assert conn.local_addr == peer.getpeername()
            host, port = conn.local_addr
            assert host == "127.0.0.1" and isinstance(port, int)
            with socket.socket(fileno=os.dup(conn.fileno())) as s:
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    run(main())


def test_unix_addresses(run, tmp_path):
    """TestDialerUnix: the remote address is the path."""

    async def main():
        async with conn_pair("unix", tmp_path) as (conn, _peer):
            assert conn.remote_addr == str(tmp_path / "c.sock")
            assert conn.local_addr in ("", None) or isinstance(conn.local_addr, str)

    run(main())


def test_dial_close_cycles(run):
    """TestRuntimePoll / TestFDClose: dial and close repeatedly; fd reuse is safe."""

    async def main():
        with socket.create_server(("127.0.0.1", 0)) as lsock:
            lsock.setblocking(False)
            addr = lsock.getsockname()
            for i in range(20):
                conn = await netpoll.dial_connection("tcp", addr, timeout=5)
                peer, _ = lsock.accept()
                with peer:
                    peer.setblocking(False)
                    if i % 2:
                        await conn.write(b"%d" % i)
                        assert await recv_exactly(peer, len(b"%d" % i)) == b"%d" % i
                    conn.close()
                    assert await recv_all(peer) == b""

    run(main())


def test_error_messages_name_the_operation_and_numbers(run):
    """Every message names what failed and the numbers involved."""

    async def main():
        async with conn_pair("socketpair") as (conn, peer):
            await send(peer, b"abcd")
            await wait_for(lambda: conn.reader.len() == 4)
            conn.set_read_timeout(0.02)
            with pytest.raises(ReadTimeoutError) as ei:
                await conn.reader.next(10)
            msg = str(ei.value)
            assert "next" in msg and "4" in msg and "10" in msg, msg
            conn.set_read_timeout(None)
            peer.close()
            await wait_for(lambda: not conn.is_active())
            with pytest.raises(EndOfStreamError) as ei2:
                await conn.reader.read_binary(7)
            msg = str(ei2.value)
            assert "read_binary" in msg and "4" in msg and "7" in msg, msg
            with pytest.raises(ValueError) as ei3:
                await conn.reader.next(-3)
            assert "-3" in str(ei3.value)

    run(main())


def test_closing_one_end_makes_both_inactive(run):
    """TestPollManager: a socketpair of two connections; closing one makes both inactive."""

    async def main():
        a, b = socket.socketpair()
        ca = netpoll.new_fd_connection(a.detach())
        cb = netpoll.new_fd_connection(b.detach())
        try:
            await ca.write(b"ping")
            assert bytes(await cb.reader.next(4)) == b"ping"
            ca.close()
            assert not ca.is_active()
            await wait_for(lambda: not cb.is_active())
        finally:
            ca.close()
            cb.close()

    run(main())
