"""The transport core (reactor/transport.pyx) against asyncio's own transports.

Every scenario runs three times: on stock asyncio's ``_SelectorSocketTransport``
(the reference: it shows the test states asyncio's behaviour) and on netpoll
transports over stock asyncio and over uvloop. The peer is a plain socket
driven with the loop's ``sock_*`` methods, so the test controls exactly what
the transport sees: a FIN, a reset, a peer that does not read.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import socket
import struct
import sys
import termios
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import netpoll
from conftest import uvloop
from netpoll.transports import NetpollTransport

IMPLS = ["asyncio", "netpoll-asyncio", "netpoll-uvloop"]
BIG = bytes(range(256)) * 16384  # 4 MiB: more than the socket buffers hold


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(impl: str) -> Callable[..., Any]:
    """run(fn): fn(loop) on the implementation's loop, under a deadline."""
    if impl == "netpoll-uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")

    def _run(fn: Callable[[Any], Coroutine[Any, Any, Any]], timeout: float = 10.0) -> Any:
        if impl == "asyncio":
            loop = asyncio.new_event_loop()
        elif impl == "netpoll-asyncio":
            loop = netpoll.loop_factory()()
        else:
            loop = netpoll.loop_factory(uvloop.new_event_loop)()
        try:
            return loop.run_until_complete(asyncio.wait_for(fn(loop), timeout))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return _run


class Recorder(asyncio.Protocol):
    """Records the callbacks in order (consecutive data_received count once)."""

    def __init__(self, keep_open: bool = False) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.lost: asyncio.Future[BaseException | None] = \
            asyncio.get_running_loop().create_future()
        self.transport: Any = None
        self.lost_bufsize = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        if self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost_bufsize = self.transport.get_write_buffer_size()
        self.lost.set_result(exc)


async def _pair(loop: Any, proto: asyncio.BaseProtocol) -> tuple[Any, socket.socket, socket.socket]:
    """(transport, peer socket, listening socket): the transport is the client side."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.setblocking(False)
    connecting = asyncio.ensure_future(
        loop.create_connection(lambda: proto, *lsock.getsockname()))
    peer, _ = await loop.sock_accept(lsock)
    peer.setblocking(False)
    tr, _ = await connecting
    if not isinstance(loop, asyncio.SelectorEventLoop) or netpoll.transports.is_netpoll_loop(loop):
        assert isinstance(tr, NetpollTransport)
    else:
        assert not isinstance(tr, NetpollTransport)
    await asyncio.sleep(0)  # the reader starts after connection_made
    return tr, peer, lsock


async def _read_all(loop: Any, peer: socket.socket) -> bytes:
    got = bytearray()
    while chunk := await loop.sock_recv(peer, 1 << 16):
        got += chunk
    return bytes(got)


async def _fill(tr: Any) -> int:
    """Write until the kernel holds no more: the transport's buffer is then > 0."""
    while tr.get_write_buffer_size() == 0:
        tr.write(BIG)
    return int(tr.get_write_buffer_size())


def _unread(tr: Any) -> int:
    """Bytes the kernel holds for the transport's socket, not yet read."""
    buf = fcntl.ioctl(tr.get_extra_info("socket").fileno(), termios.FIONREAD, b"\0" * 4)
    return int(struct.unpack("i", buf)[0])


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- peer EOF -------------------------------------------------------------------------


def test_eof_half_close_keeps_writing(run: Callable[..., Any]) -> None:
    """eof_received() True: no more reading, writing goes on until close()."""

    class HalfClose(Recorder):
        def eof_received(self) -> bool:
            super().eof_received()
            self.transport.write(b"answer")
            return True

    async def main(loop: Any) -> None:
        rec = HalfClose()
        tr, peer, lsock = await _pair(loop, rec)
        await loop.sock_sendall(peer, b"req")
        peer.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.05)
        assert rec.events == ["made", "data", "eof"]
        assert bytes(rec.data) == b"req"
        assert not tr.is_closing() and tr.is_reading()  # asyncio: the reader is just removed
        tr.write(b" later")
        await asyncio.sleep(0.01)
        tr.close()
        assert await _read_all(loop, peer) == b"answer later"
        assert await rec.lost is None
        assert rec.events == ["made", "data", "eof", "lost"]
        peer.close()
        lsock.close()

    run(main)


def test_eof_received_false_closes(run: Callable[..., Any]) -> None:
    async def main(loop: Any) -> None:
        rec = Recorder(keep_open=False)
        tr, peer, lsock = await _pair(loop, rec)
        await loop.sock_sendall(peer, b"bye")
        peer.shutdown(socket.SHUT_WR)
        assert await rec.lost is None
        assert rec.events == ["made", "data", "eof", "lost"]
        assert await _read_all(loop, peer) == b""  # the transport closed its side
        assert tr.is_closing()
        peer.close()
        lsock.close()

    run(main)


# -- flow control ---------------------------------------------------------------------


def test_write_buffer_water_marks_are_exact(run: Callable[..., Any]) -> None:
    """pause_writing() once the buffer is above high, inside write(); resume at <= low."""

    class Flow(Recorder):
        def resume_writing(self) -> None:
            super().resume_writing()
            self.resume_size = self.transport.get_write_buffer_size()

    async def main(loop: Any) -> None:
        rec = Flow()
        tr, peer, lsock = await _pair(loop, rec)
        tr.set_write_buffer_limits(high=1 << 30)
        s0 = await _fill(tr)  # the kernel is full: every byte from now on is buffered
        rec.events.clear()
        tr.set_write_buffer_limits(high=s0 + 1000, low=1000)
        assert tr.get_write_buffer_limits() == (1000, s0 + 1000)
        tr.write(b"x" * 1000)
        assert tr.get_write_buffer_size() == s0 + 1000
        assert rec.events == []  # at the high-water mark, not above it
        tr.write(bytearray(b"y"))
        assert tr.get_write_buffer_size() == s0 + 1001
        assert rec.events == ["pause"]  # at once, from write()
        tr.write(memoryview(b"z" * 10))
        assert rec.events == ["pause"]  # once
        got = await _read_all_until(loop, peer, len(BIG) * (s0 // len(BIG) + 1) + 1011)
        assert got.endswith(b"x" * 1000 + b"y" + b"z" * 10)
        await asyncio.sleep(0.05)
        assert rec.events == ["pause", "resume"]
        assert rec.resume_size <= 1000
        assert tr.get_write_buffer_size() == 0
        # lowering high below the current size pauses at once (set_write_buffer_limits)
        tr.close()
        await rec.lost
        peer.close()
        lsock.close()

    run(main)


async def _read_all_until(loop: Any, peer: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await loop.sock_recv(peer, 1 << 16)
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def test_set_write_buffer_limits_below_the_size_pauses(run: Callable[..., Any]) -> None:
    async def main(loop: Any) -> None:
        rec = Recorder()
        tr, peer, lsock = await _pair(loop, rec)
        tr.set_write_buffer_limits(high=1 << 30)
        s0 = await _fill(tr)
        assert rec.events == ["made"]
        tr.set_write_buffer_limits(high=s0 - 1)
        assert rec.events == ["made", "pause"]
        assert tr.get_write_buffer_limits() == ((s0 - 1) // 4, s0 - 1)
        tr.abort()
        assert await rec.lost is None
        assert rec.lost_bufsize == 0  # abort dropped the output
        peer.close()
        lsock.close()

    run(main)


def test_pause_writing_error_goes_to_the_exception_handler(run: Callable[..., Any]) -> None:
    class BadPause(Recorder):
        def pause_writing(self) -> None:
            raise ValueError("bad pause")

    async def main(loop: Any) -> None:
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        rec = BadPause()
        tr, peer, lsock = await _pair(loop, rec)
        await _fill(tr)
        tr.write(b"x" * 70000)  # above the default high-water mark (64 KiB)
        assert [e["message"] for e in errors] == ["protocol.pause_writing() failed"]
        assert not tr.is_closing()  # only reported
        tr.abort()
        await rec.lost
        peer.close()
        lsock.close()

    run(main)


# -- errors and close reasons ---------------------------------------------------------


def test_write_error_on_queued_output_gives_connection_lost_exc(run: Callable[..., Any]) -> None:
    """A send that fails on EPOLLOUT: connection_lost gets its OSError (the reader is off)."""

    async def main(loop: Any) -> None:
        rec = Recorder()
        tr, peer, lsock = await _pair(loop, rec)
        tr.pause_reading()
        await _fill(tr)
        _rst(peer)
        exc = await rec.lost
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc
        assert exc.errno in (errno.ECONNRESET, errno.EPIPE)
        assert rec.lost_bufsize == 0
        assert tr.is_closing()
        assert [e for e in rec.events if e != "pause"] == ["made", "lost"]
        lsock.close()

    run(main)


def test_write_error_in_write_gives_connection_lost_exc(run: Callable[..., Any]) -> None:
    """A send that fails inside write() (nothing queued): the same, from write()."""

    async def main(loop: Any) -> None:
        rec = Recorder()
        tr, peer, lsock = await _pair(loop, rec)
        tr.pause_reading()
        _rst(peer)
        await asyncio.sleep(0.05)
        tr.write(b"x")
        assert tr.is_closing()  # the fatal error happened inside write()
        exc = await rec.lost
        assert isinstance(exc, ConnectionResetError), exc
        assert rec.events == ["made", "lost"]
        lsock.close()

    run(main)


def test_read_reset_after_write_eof_is_connection_reset(run: Callable[..., Any]) -> None:
    async def main(loop: Any) -> None:
        rec = Recorder()
        tr, peer, lsock = await _pair(loop, rec)
        tr.write_eof()
        assert await loop.sock_recv(peer, 10) == b""
        _rst(peer)
        exc = await rec.lost
        assert isinstance(exc, ConnectionResetError), exc
        assert "eof" not in rec.events
        lsock.close()

    run(main)


def test_data_before_a_reset_is_delivered_first(run: Callable[..., Any]) -> None:
    async def main(loop: Any) -> None:
        rec = Recorder()
        tr, peer, lsock = await _pair(loop, rec)
        tr.pause_reading()
        await loop.sock_sendall(peer, b"last words")
        await asyncio.sleep(0.02)
        _rst(peer)
        await asyncio.sleep(0.02)
        tr.resume_reading()
        exc = await rec.lost
        assert isinstance(exc, ConnectionResetError), exc
        assert bytes(rec.data) == b"last words"
        assert rec.events == ["made", "data", "lost"]
        lsock.close()

    run(main)


# -- reading --------------------------------------------------------------------------


def test_pause_reading_takes_effect_at_once(run: Callable[..., Any]) -> None:
    class PauseFirst(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if len(self.data) == 1:
                self.transport.pause_reading()

    async def main(loop: Any) -> None:
        rec = PauseFirst()
        tr, peer, lsock = await _pair(loop, rec)
        await loop.sock_sendall(peer, b"a")
        await asyncio.sleep(0.02)
        for part in (b"b", b"c", b"d"):
            await loop.sock_sendall(peer, part)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert bytes(rec.data) == b"a"
        assert not tr.is_reading()
        tr.resume_reading()
        await asyncio.sleep(0.05)
        assert bytes(rec.data) == b"abcd"
        # paused from outside any callback: the next bytes wait too
        tr.pause_reading()
        await loop.sock_sendall(peer, b"e")
        await asyncio.sleep(0.05)
        assert bytes(rec.data) == b"abcd"
        assert _unread(tr) == 1  # not even read from the socket (EPOLLIN is off)
        peer.shutdown(socket.SHUT_WR)  # the EOF waits as well
        await asyncio.sleep(0.05)
        assert "eof" not in rec.events
        tr.resume_reading()
        assert await rec.lost is None
        assert bytes(rec.data) == b"abcde"
        assert rec.events == ["made", "data", "eof", "lost"]
        peer.close()
        lsock.close()

    run(main)


def test_buffered_protocol_pause_inside_buffer_updated(run: Callable[..., Any]) -> None:
    class Small(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(10)
            self.got = bytearray()
            self.updates = 0
            self.lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.updates += 1
            self.got += self.buf[:nbytes]
            self.transport.pause_reading()

        def eof_received(self) -> bool:
            return False

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.set_result(exc)

    async def main(loop: Any) -> None:
        proto = Small()
        tr, peer, lsock = await _pair(loop, proto)
        await loop.sock_sendall(peer, bytes(range(100)))
        await asyncio.sleep(0.05)
        assert proto.updates == 1 and bytes(proto.got) == bytes(range(10))
        while len(proto.got) < 100:
            tr.resume_reading()
            await asyncio.sleep(0.01)
        assert bytes(proto.got) == bytes(range(100))
        assert proto.updates == 10
        tr.close()
        await proto.lost
        peer.close()
        lsock.close()

    run(main)


# -- closing --------------------------------------------------------------------------


def test_close_sends_queued_output_then_connection_lost(run: Callable[..., Any]) -> None:
    async def main(loop: Any) -> None:
        rec = Recorder()
        tr, peer, lsock = await _pair(loop, rec)
        size = await _fill(tr)
        total = size + 0
        tr.close()
        tr.write(b"tail")  # asyncio: a write after close() while output is queued still goes
        assert tr.is_closing() and not tr.is_reading()
        await asyncio.sleep(0.02)
        assert not rec.lost.done()  # the output is still queued
        got = await _read_all(loop, peer)
        assert got.endswith(b"tail") and len(got) > total
        assert await rec.lost is None
        assert rec.lost_bufsize == 0
        peer.close()
        lsock.close()

    run(main)


def test_connection_lost_is_a_loop_callback(run: Callable[..., Any]) -> None:
    async def main(loop: Any) -> None:
        for how in ("close", "abort"):
            rec = Recorder()
            tr, peer, lsock = await _pair(loop, rec)
            getattr(tr, how)()
            assert rec.events == ["made"]  # not from inside close()/abort()
            assert tr.is_closing()
            await asyncio.sleep(0)
            assert rec.events == ["made", "lost"]
            assert await rec.lost is None
            assert await _read_all(loop, peer) == b""
            peer.close()
            lsock.close()

    run(main)


def test_write_after_abort_is_ignored_with_asyncio_warning(
        run: Callable[..., Any], impl: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main(loop: Any) -> None:
        rec = Recorder()
        tr, peer, lsock = await _pair(loop, rec)
        await _fill(tr)
        tr.abort()
        assert tr.get_write_buffer_size() == 0
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(8):
                tr.write(b"late")
        await rec.lost
        warnings = [r for r in caplog.records if r.message == "socket.send() raised exception."]
        assert len(warnings) == 4  # abort counts as the first lost write; warnings from the 5th
        if impl != "asyncio" or sys.version_info < (3, 12):
            # ignored too (3.12+ asyncio's writelines fails here: its transport has no loop)
            tr.writelines([b"late", b"r"])
            assert tr.get_write_buffer_size() == 0
        with pytest.raises(TypeError):
            tr.write("text")
        peer.close()
        lsock.close()

    run(main)


def test_write_eof_after_queued_output(run: Callable[..., Any]) -> None:
    async def main(loop: Any) -> None:
        rec = Recorder()
        tr, peer, lsock = await _pair(loop, rec)
        size = await _fill(tr)
        assert tr.can_write_eof()
        tr.write_eof()
        with pytest.raises(RuntimeError, match="after write_eof"):
            tr.write(b"more")
        got = await _read_all(loop, peer)  # everything, then the FIN
        assert len(got) >= size and got.endswith(BIG[-1000:])
        await loop.sock_sendall(peer, b"still reading")
        await asyncio.sleep(0.05)
        assert bytes(rec.data) == b"still reading"
        peer.shutdown(socket.SHUT_WR)
        assert await rec.lost is None
        assert [e for e in rec.events if e not in ("pause", "resume")] == \
            ["made", "data", "eof", "lost"]
        peer.close()
        lsock.close()

    run(main)


def test_callbacks_close_other_transports_and_the_server(run: Callable[..., Any]) -> None:
    """A callback aborts, closes and writes to other transports and closes the server."""
    conns: list[Any] = []
    after_kill: list[int] = []
    killed = False

    class Member(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.index = len(conns)
            conns.append(self)

        def data_received(self, data: bytes) -> None:
            nonlocal killed
            if killed:
                after_kill.append(self.index)
            super().data_received(data)
            if data == b"kill":
                killed = True
                conns[1].transport.abort()
                conns[1].transport.write(b"ignored")
                conns[2].transport.close()
                server.close()
            self.transport.write(data)

    async def main(loop: Any) -> None:
        nonlocal server
        server = await loop.create_server(Member, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            clients.append(s)
            while len(conns) < len(clients):
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.01)
        # the others' data arrives together with the kill (often in one pass)
        clients[1].send(b"one")
        clients[0].send(b"kill")
        clients[2].send(b"two")
        assert await conns[1].lost is None
        assert await conns[2].lost is None
        assert conns[1].events.count("lost") == conns[2].events.count("lost") == 1
        assert 1 not in after_kill and 2 not in after_kill
        assert await _read_all_until(loop, clients[0], 4) == b"kill"
        await loop.sock_sendall(clients[0], b"on")
        assert await _read_all_until(loop, clients[0], 2) == b"on"  # the survivor works
        for s in clients[1:]:
            try:  # closed; nothing after the abort (a close with unread input is a reset)
                assert b"ignored" not in await _read_all(loop, s)
            except ConnectionResetError:
                pass
        assert not server.is_serving()
        conns[0].transport.close()
        await conns[0].lost
        for s in clients:
            s.close()

    server: Any = None
    run(main)


def test_exception_in_callback_closes_only_its_transport(run: Callable[..., Any]) -> None:
    class Bad(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            raise ValueError("bad")

    async def main(loop: Any) -> None:
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        bad, good = Bad(), Recorder()
        tr1, p1, l1 = await _pair(loop, bad)
        tr2, p2, l2 = await _pair(loop, good)
        await loop.sock_sendall(p1, b"x")
        await loop.sock_sendall(p2, b"y")
        exc = await bad.lost
        assert isinstance(exc, ValueError)
        assert [e["message"] for e in errors] == \
            ["Fatal error: protocol.data_received() call failed."]
        assert errors[0]["transport"] is tr1 and errors[0]["protocol"] is bad
        await asyncio.sleep(0.02)
        assert not tr2.is_closing() and bytes(good.data) == b"y"
        tr2.close()
        await good.lost
        for s in (p1, p2, l1, l2):
            s.close()

    run(main)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_connection_close_error_names_the_failure(kind: str) -> None:
    """conn.close_error (every connection, not only transports): the reset's OSError."""
    from conftest import new_loop

    async def main() -> None:
        lsock = socket.create_server(("127.0.0.1", 0))
        cli = socket.create_connection(lsock.getsockname())
        peer, _ = lsock.accept()
        conn = netpoll.new_fd_connection(cli.detach())
        assert conn.close_error is None
        _rst(peer)
        deadline = asyncio.get_running_loop().time() + 5
        while conn.is_active():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.005)
        assert isinstance(conn.close_error, ConnectionResetError), conn.close_error
        assert conn.close_error.errno == errno.ECONNRESET
        conn.close()
        assert isinstance(conn.close_error, ConnectionResetError)  # a local close keeps it
        lsock.close()

    loop = new_loop(kind)
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        loop.close()
