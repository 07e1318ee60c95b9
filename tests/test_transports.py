"""netpoll.transports: asyncio Protocols, Streams and Servers on netpoll's reactor.

Each scenario runs on stock asyncio and on uvloop, twice: through the
module-level functions on a plain loop (``netpoll.transports.create_server``
...) and through a loop made by ``netpoll.loop_factory`` (``loop.create_server``,
``asyncio.start_server`` ...). The expected behaviour is asyncio's own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import netpoll
from conftest import LOOPS, uvloop
from netpoll import transports as nt
from netpoll.transports import NetpollTransport

ROUTES = ["module", "loop"]


@pytest.fixture(params=[(k, r) for k in LOOPS for r in ROUTES],
                ids=[f"{k}-{r}" for k in LOOPS for r in ROUTES])
def np_run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """np_run(coro_fn): runs coro_fn(api) where api has create_server/... for the route."""
    kind, route = request.param
    if kind == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")
    base = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop

    def _run(fn: Callable[[Any], Coroutine[Any, Any, Any]], timeout: float = 10.0) -> Any:
        if route == "loop":
            factory = netpoll.loop_factory(base)
        else:
            factory = base
        loop = factory()
        try:
            api: Any = nt if route == "module" else _LoopApi(loop)
            return loop.run_until_complete(asyncio.wait_for(fn(api), timeout))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return _run


class _LoopApi:
    """The loop's own methods and asyncio's stream functions, as the module exposes them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        assert nt.is_netpoll_loop(loop)
        self.loop = loop
        self.create_server = loop.create_server
        self.create_connection = loop.create_connection
        self.create_unix_server = loop.create_unix_server  # type: ignore[attr-defined]
        self.create_unix_connection = loop.create_unix_connection  # type: ignore[attr-defined]
        self.connect_accepted_socket = loop.connect_accepted_socket
        self.start_server = asyncio.start_server
        self.open_connection = asyncio.open_connection
        self.start_unix_server = asyncio.start_unix_server
        self.open_unix_connection = asyncio.open_unix_connection


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Recorder(asyncio.Protocol):
    """Records the callbacks in order."""

    def __init__(self, keep_open: bool = False) -> None:
        self.events: list[Any] = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.lost: asyncio.Future[BaseException | None] = \
            asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        if not self.events or self.events[-1] != "data":
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
        self.lost.set_result(exc)


async def _connect_to_raw_peer(
        api: Any, proto: asyncio.BaseProtocol) -> tuple[socket.socket, socket.socket, Any]:
    """A netpoll transport running ``proto``, connected to a plain socket.

    Returns (listening socket, the accepted peer socket, the transport)."""
    loop = asyncio.get_running_loop()
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.setblocking(False)
    connecting = asyncio.ensure_future(
        api.create_connection(lambda: proto, *lsock.getsockname()))
    peer, _ = await loop.sock_accept(lsock)
    tr, _ = await connecting
    return lsock, peer, tr


async def _serve(api: Any, factory: Callable[[], asyncio.BaseProtocol]) -> tuple[Any, int]:
    server = await api.create_server(factory, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_protocol_echo_and_extra_info(np_run: Callable[..., Any]) -> None:
    async def main(api: Any) -> None:
        server, port = await _serve(api, Echo)
        async with server:
            rec = Recorder()
            tr, _ = await api.create_connection(lambda: rec, "127.0.0.1", port)
            assert isinstance(tr, NetpollTransport)
            for i in range(20):
                tr.write(b"x" * 1000 + bytes([i]))
            while len(rec.data) < 20 * 1001:
                await asyncio.sleep(0.001)
            assert bytes(rec.data) == b"".join(b"x" * 1000 + bytes([i]) for i in range(20))
            assert tr.get_extra_info("peername") == ("127.0.0.1", port)
            assert tr.get_extra_info("sockname")[0] == "127.0.0.1"
            sock = tr.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert tr.get_extra_info("nope", 5) == 5
            assert tr.can_write_eof() and not tr.is_closing()
            tr.close()
            assert tr.is_closing()
            assert await rec.lost is None
            assert rec.events == ["made", "data", "lost"]

    np_run(main)


def test_streams_half_close(np_run: Callable[..., Any]) -> None:
    """eof_received() returning True keeps the transport open for the answer."""

    async def main(api: Any) -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            data = await r.read()  # until the client's EOF
            w.write(data[::-1] * 1000)  # answers after the peer's FIN
            await w.drain()
            w.close()
            await w.wait_closed()

        server = await api.start_server(handle, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await api.open_connection("127.0.0.1", port)
            w.write(b"abc")
            w.write_eof()
            assert await r.read() == b"cba" * 1000
            w.close()
            await w.wait_closed()

    np_run(main)


def test_buffered_protocol(np_run: Callable[..., Any]) -> None:
    class Buf(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(7)  # small: one read is spread over many get_buffer calls
            self.got = bytearray()
            self.done = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.got += self.buf[:nbytes]

        def eof_received(self) -> None:
            self.done.set_result(bytes(self.got))

    async def main(api: Any) -> None:
        proto: list[Buf] = []

        def factory() -> Buf:
            proto.append(Buf())
            return proto[0]

        server, port = await _serve(api, factory)
        async with server:
            payload = bytes(range(256)) * 40
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(payload)
            w.write_eof()
            while not proto:
                await asyncio.sleep(0.001)
            assert await proto[0].done == payload
            w.close()
            await w.wait_closed()

    np_run(main)


def test_flow_control_pause_resume_writing(np_run: Callable[..., Any]) -> None:
    async def main(api: Any) -> None:
        accepted: list[socket.socket] = []
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        port = lsock.getsockname()[1]
        loop = asyncio.get_running_loop()
        rec = Recorder()
        connecting = asyncio.ensure_future(
            api.create_connection(lambda: rec, "127.0.0.1", port))
        peer, _ = await loop.sock_accept(lsock)
        accepted.append(peer)
        tr, _ = await connecting
        try:
            tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            chunk = b"y" * 65536
            for _ in range(64):  # 4 MiB: more than the socket buffers hold
                tr.write(chunk)
                if "pause" in rec.events:
                    break
            assert "pause" in rec.events
            assert tr.get_write_buffer_size() > 64 * 1024
            peer.setblocking(False)
            while "resume" not in rec.events:
                try:
                    peer.recv(1 << 20)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            assert tr.get_write_buffer_size() <= 16 * 1024
        finally:
            tr.close()
            await rec.lost
            peer.close()
            lsock.close()

    np_run(main)


def test_pause_reading_holds_data(np_run: Callable[..., Any]) -> None:
    async def main(api: Any) -> None:
        loop = asyncio.get_running_loop()
        rec = Recorder()
        lsock, peer, tr = await _connect_to_raw_peer(api, rec)
        try:
            tr.pause_reading()
            assert not tr.is_reading()
            await loop.sock_sendall(peer, b"held")
            await asyncio.sleep(0.05)
            assert rec.data == b""
            tr.resume_reading()
            while rec.data != b"held":
                await asyncio.sleep(0.001)
            assert tr.is_reading()
        finally:
            tr.close()
            await rec.lost
            peer.close()
            lsock.close()

    np_run(main)


def test_reset_gives_connection_reset_error(np_run: Callable[..., Any]) -> None:
    async def main(api: Any) -> None:
        rec = Recorder()
        lsock, peer, tr = await _connect_to_raw_peer(api, rec)
        await asyncio.sleep(0.01)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST
        exc = await rec.lost
        assert isinstance(exc, ConnectionResetError)
        assert "eof" not in rec.events
        assert tr.is_closing()
        lsock.close()

    np_run(main)


def test_write_after_close_is_ignored_with_asyncio_warning(
        np_run: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    async def main(api: Any) -> None:
        server, port = await _serve(api, Echo)
        async with server:
            rec = Recorder()
            tr, _ = await api.create_connection(lambda: rec, "127.0.0.1", port)
            tr.close()
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                for _ in range(8):
                    tr.write(b"late")
            await rec.lost
            warnings = [r for r in caplog.records if r.message == "socket.send() raised exception."]
            # asyncio: close() counts as the first lost write and the warning starts at 5
            assert len(warnings) == 4

    np_run(main)


def test_callback_error_is_logged_and_closes_only_its_transport(
        np_run: Callable[..., Any]) -> None:
    class Bad(Echo):
        def data_received(self, data: bytes) -> None:
            if data == b"boom":
                raise ValueError("bad protocol")
            super().data_received(data)

    async def main(api: Any) -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        server, port = await _serve(api, Bad)
        async with server:
            r1, w1 = await asyncio.open_connection("127.0.0.1", port)
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w1.write(b"boom")
            assert await r1.read() == b""  # closed by the server
            w2.write(b"fine")
            assert await r2.readexactly(4) == b"fine"
            for w in (w1, w2):
                w.close()
                await w.wait_closed()
        assert len(errors) == 1
        assert errors[0]["message"] == "Fatal error: protocol.data_received() call failed."
        assert isinstance(errors[0]["exception"], ValueError)

    np_run(main)


def test_abort_drops_output(np_run: Callable[..., Any]) -> None:
    async def main(api: Any) -> None:
        server, port = await _serve(api, Echo)
        async with server:
            rec = Recorder()
            tr, _ = await api.create_connection(lambda: rec, "127.0.0.1", port)
            tr.abort()
            assert tr.is_closing()
            assert await rec.lost is None
            assert rec.events == ["made", "lost"]

    np_run(main)


def test_unix_server_and_connection(np_run: Callable[..., Any], tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")

    async def main(api: Any) -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            line = await r.readline()
            w.write(line.upper())
            await w.drain()
            w.close()
            await w.wait_closed()

        server = await api.start_unix_server(handle, path)
        async with server:
            r, w = await api.open_unix_connection(path)
            assert isinstance(w.transport, NetpollTransport)
            assert w.get_extra_info("peername") == path
            w.write(b"hello\n")
            assert await r.readline() == b"HELLO\n"
            assert await r.read() == b""
            w.close()
            await w.wait_closed()

    np_run(main)


def test_connect_accepted_socket(np_run: Callable[..., Any]) -> None:
    async def main(api: Any) -> None:
        a, b = socket.socketpair()
        b.setblocking(False)
        loop = asyncio.get_running_loop()
        rec = Recorder()
        tr, _ = await api.connect_accepted_socket(lambda: rec, a)
        await loop.sock_sendall(b, b"ping")
        while rec.data != b"ping":
            await asyncio.sleep(0.001)
        tr.write(b"pong")
        assert await loop.sock_recv(b, 4) == b"pong"
        b.close()
        assert await rec.lost is None
        assert rec.events == ["made", "data", "eof", "lost"]

    np_run(main)


def test_refused_connection_raises_asyncio_error(np_run: Callable[..., Any]) -> None:
    async def main(api: Any) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await api.create_connection(asyncio.Protocol, "127.0.0.1", port)

    np_run(main)


def test_server_close_and_serve_forever(np_run: Callable[..., Any]) -> None:
    async def main(api: Any) -> None:
        server = await api.create_server(Echo, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"x")
        assert await r.readexactly(1) == b"x"
        w.close()
        await w.wait_closed()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        await server.wait_closed()

    np_run(main)


@pytest.mark.parametrize("kind", LOOPS)
def test_netpoll_run_and_loop_factory(kind: str) -> None:
    if kind == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")
    base = uvloop.new_event_loop if kind == "uvloop" else None

    async def main() -> str:
        loop = asyncio.get_running_loop()
        assert nt.is_netpoll_loop(loop)
        if kind == "uvloop":
            assert isinstance(loop, uvloop.Loop)
        return type(loop).__name__

    assert netpoll.run(main(), base=base).startswith("Netpoll")
    with pytest.raises(TypeError):
        netpoll.loop_factory(base=42)  # type: ignore[arg-type]


def test_sendfile_fallback_and_writelines(np_run: Callable[..., Any], tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    payload = bytes(range(256)) * 1000
    path.write_bytes(payload)

    async def main(api: Any) -> None:
        loop = asyncio.get_running_loop()
        rec = Recorder()
        lsock, peer, tr = await _connect_to_raw_peer(api, rec)
        try:
            if type(loop).sendfile is asyncio.AbstractEventLoop.sendfile:
                tr.write(payload)  # a plain uvloop loop has no sendfile at all
            else:
                with open(path, "rb") as f:
                    sent = await loop.sendfile(tr, f)
                assert sent == len(payload)
            tr.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
            got = bytearray()
            while len(got) < len(payload) + 3:
                got += await loop.sock_recv(peer, 1 << 16)
            assert bytes(got) == payload + b"abc"
        finally:
            tr.close()
            await rec.lost
            peer.close()
            lsock.close()

    np_run(main)


def test_sendfile_is_native(
        np_run: Callable[..., Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # loop.sendfile() on a netpoll transport: os.sendfile over the socket (asyncio's
    # _sendfile_native) on a selector loop and on a netpoll loop over either base, after
    # the queued output has gone; writes are refused while it runs, and the connection
    # reads and writes after it. (A plain uvloop loop has no loop.sendfile at all.)
    import os

    path = tmp_path / "f.bin"
    payload = os.urandom(1 << 22)       # 4 MiB: more than a socket buffer takes at once
    path.write_bytes(payload)
    calls = [0]
    real_sendfile = os.sendfile

    def counting_sendfile(*args: Any) -> int:
        calls[0] += 1
        return real_sendfile(*args)

    monkeypatch.setattr(os, "sendfile", counting_sendfile)

    async def main(api: Any) -> None:
        loop = asyncio.get_running_loop()
        native = type(loop).sendfile is not asyncio.AbstractEventLoop.sendfile
        rec = Recorder()
        lsock, peer, tr = await _connect_to_raw_peer(api, rec)
        head = b"head" * 100_000          # queued output the sendfile must wait for
        want = head + payload + b"tail"
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(want):
                chunk = await loop.sock_recv(peer, 1 << 16)
                assert chunk, "the peer saw EOF early"
                got.extend(chunk)

        reading = asyncio.ensure_future(drain())
        try:
            tr.write(head)
            if type(loop).sendfile is asyncio.AbstractEventLoop.sendfile:
                tr.write(payload)  # a plain uvloop loop has no sendfile at all
            else:
                with open(path, "rb") as f:
                    sending = asyncio.ensure_future(loop.sendfile(tr, f))
                    await asyncio.sleep(0)
                    if native:
                        with pytest.raises(RuntimeError, match="sendfile is in progress"):
                            tr.write(b"x")
                        with pytest.raises(RuntimeError, match="sendfile is in progress"):
                            tr.writelines([b"x"])
                    assert await sending == len(payload)
            tr.write(b"tail")
            await asyncio.wait_for(reading, 10)
            assert bytes(got) == want
            assert (calls[0] > 0) == native
            tr.write(b"more")               # still a working transport
            assert await loop.sock_recv(peer, 16) == b"more"
        finally:
            reading.cancel()
            tr.close()
            await rec.lost
            peer.close()
            lsock.close()

    np_run(main)


def test_set_protocol_switches_callbacks(np_run: Callable[..., Any]) -> None:
    async def main(api: Any) -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        first = Recorder()
        connecting = asyncio.ensure_future(
            api.create_connection(lambda: first, *lsock.getsockname()))
        peer, _ = await loop.sock_accept(lsock)
        tr, _ = await connecting
        await loop.sock_sendall(peer, b"one")
        while first.data != b"one":
            await asyncio.sleep(0.001)
        second = Recorder()
        tr.set_protocol(second)
        assert tr.get_protocol() is second
        await loop.sock_sendall(peer, b"two")
        while second.data != b"two":
            await asyncio.sleep(0.001)
        assert first.data == b"one"
        peer.close()
        assert await second.lost is None
        assert second.events == ["data", "eof", "lost"]
        lsock.close()

    np_run(main)


def test_peer_fin_with_unsent_output_still_delivers_it(np_run: Callable[..., Any]) -> None:
    """The peer's FIN closes the core's side; queued output must still go out whole."""
    big = bytes(range(256)) * 16384  # 4 MiB: more than the socket buffers hold

    class Sender(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.transport.write(big)

    async def main(api: Any) -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setblocking(False)
        rec = Sender()
        connecting = asyncio.ensure_future(
            api.create_connection(lambda: rec, *lsock.getsockname()))
        peer, _ = await loop.sock_accept(lsock)
        tr, _ = await connecting
        assert tr.get_write_buffer_size() > 0
        peer.shutdown(socket.SHUT_WR)  # FIN while the transport still has output queued
        await asyncio.sleep(0.05)
        got = bytearray()
        while True:
            chunk = await loop.sock_recv(peer, 1 << 16)
            if not chunk:
                break
            got += chunk
        assert len(got) == len(big) and bytes(got) == big
        assert await rec.lost is None
        flow = [e for e in rec.events if e not in ("pause", "resume")]
        assert flow == ["made", "eof", "lost"], rec.events
        assert rec.events.count("pause") == rec.events.count("resume") == 1, rec.events
        peer.close()
        lsock.close()

    np_run(main)


def test_eof_received_error_is_fatal_for_that_transport(np_run: Callable[..., Any]) -> None:
    class BadEof(Recorder):
        def eof_received(self) -> bool:
            raise RuntimeError("bad eof")

    async def main(api: Any) -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        a, b = socket.socketpair()
        rec = BadEof()
        await api.connect_accepted_socket(lambda: rec, a)
        b.close()
        exc = await rec.lost
        assert isinstance(exc, RuntimeError)
        assert errors[0]["message"] == "Fatal error: protocol.eof_received() call failed."

    np_run(main)


def test_buffered_protocol_bad_buffer_closes_its_transport(np_run: Callable[..., Any]) -> None:
    class ReadOnly(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.lost: asyncio.Future[BaseException | None] = \
                asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint: int) -> bytes:
            return b"read-only"

        def buffer_updated(self, nbytes: int) -> None:
            raise AssertionError("never: the buffer cannot be filled")

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.set_result(exc)

    async def main(api: Any) -> None:
        a, b = socket.socketpair()
        proto = ReadOnly()
        await api.connect_accepted_socket(lambda: proto, a)
        b.send(b"data")
        assert isinstance(await proto.lost, TypeError)
        b.close()

    np_run(main)
