"""Plain-function handlers and synchronous buffer access (API.md, wave 2).

A plain ``on_request`` reads ``conn.input`` synchronously, writes with the
writer methods and sends with ``conn.flush_nowait()``; it runs inside the
poller's pass with no coroutine. Write backpressure (``write_buffer_limit``)
stops reading a connection whose peer does not read its replies.
"""

from __future__ import annotations

import asyncio
import codecs
import socket
import struct
from typing import Any

import pytest

import netpoll
from conftest import start, stop, wait_for
from netpoll import Connection, ConnectionClosedError, NotEnoughDataError

pytestmark = pytest.mark.timeout(60)


def plain_echo(ctx: Any, conn: Connection) -> None:
    buf = conn.input
    conn.write_binary(buf.next(len(buf)))
    conn.flush_nowait()


def test_plain_echo(run: Any) -> None:
    async def main() -> None:
        el, ln, task = await start(plain_echo)
        r, w = await asyncio.open_connection(*ln.addr)
        for size in (1, 100, 70_000):
            data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            w.write(data)
            assert await r.readexactly(len(data)) == data
        w.close()
        await w.wait_closed()
        await stop(el, task)

    run(main())


def test_plain_handler_runs_without_a_task(run: Any) -> None:
    seen: list[Any] = []

    def on_request(ctx: Any, conn: Connection) -> None:
        seen.append(asyncio.current_task())
        conn.input.skip(len(conn.input))

    async def main() -> None:
        el, ln, task = await start(on_request)
        s = socket.create_connection(ln.addr)
        s.sendall(b"abc")
        await wait_for(lambda: len(seen) == 1)
        s.close()
        await stop(el, task)

    run(main())
    assert seen == [None]


def test_plain_framed_rpc_called_again_until_consumed(run: Any) -> None:
    """Serial calls; re-called while data remains; partial frames wait for more."""
    calls = []

    def on_request(ctx: Any, conn: Connection) -> None:
        buf = conn.input
        calls.append(len(buf))
        if len(buf) < 4:
            return
        (n,) = struct.unpack(">I", buf.peek(4))
        if len(buf) < 4 + n:
            return
        buf.skip(4)
        body = buf.read_binary(n)      # one frame per call: the rest comes on a re-call
        conn.write_binary(struct.pack(">I", n) + body.upper())
        conn.flush_nowait()

    async def main() -> None:
        el, ln, task = await start(on_request)
        r, w = await asyncio.open_connection(*ln.addr)
        frames = b"".join(struct.pack(">I", len(p)) + p for p in (b"one", b"two", b"three"))
        w.write(frames + struct.pack(">I", 4) + b"fo")        # last frame incomplete
        out = await r.readexactly(3 * 4 + 11)
        assert out == b"".join(struct.pack(">I", len(p)) + p
                               for p in (b"ONE", b"TWO", b"THREE"))
        w.write(b"ur")
        assert await r.readexactly(8) == struct.pack(">I", 4) + b"FOUR"
        w.close()
        await w.wait_closed()
        await stop(el, task)

    run(main())


def test_input_is_read_only_and_never_waits(run: Any) -> None:
    errors: list[BaseException] = []

    def on_request(ctx: Any, conn: Connection) -> None:
        buf = conn.input
        for op in (lambda: buf.write_binary(b"x"), lambda: buf.malloc(1), buf.flush,
                   buf.close, lambda: netpoll.LinkBuffer().write_buffer(buf)):
            try:
                op()
            except ValueError as exc:
                errors.append(exc)
        try:
            buf.next(len(buf) + 1)
        except NotEnoughDataError as exc:
            errors.append(exc)
        conn.write_binary(buf.read_binary(len(buf)))
        conn.flush_nowait()

    async def main() -> None:
        el, ln, task = await start(on_request)
        r, w = await asyncio.open_connection(*ln.addr)
        w.write(b"hello")
        assert await r.readexactly(5) == b"hello"
        w.close()
        await w.wait_closed()
        await stop(el, task)

    run(main())
    assert len(errors) == 6
    assert all("written by the poller" in str(e) or "closed with the connection" in str(e)
               for e in errors[:5])


def test_plain_handler_exception_closes_connection(run: Any, caplog: Any) -> None:
    def on_request(ctx: Any, conn: Connection) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        el, ln, task = await start(on_request)
        r, w = await asyncio.open_connection(*ln.addr)
        w.write(b"x")
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        await w.wait_closed()
        await wait_for(lambda: el.connections == 0)
        await stop(el, task)

    run(main())
    assert "boom" in caplog.text


def test_flush_nowait_on_closed_connection(run: Any) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        conn = netpoll.new_fd_connection(a.detach())
        conn.write_binary(b"x")
        conn.flush_nowait()
        assert b.recv(1) == b"x"
        assert conn.output_len() == 0
        conn.close()
        with pytest.raises(ConnectionClosedError):
            conn.flush_nowait()
        assert conn.output_len() == 0
        b.close()

    run(main())


def test_write_backpressure_bounds_memory(run: Any) -> None:
    """A peer that sends requests and never reads: the server stops reading it."""
    limit = 256 * 1024

    def on_request(ctx: Any, conn: Connection) -> None:
        buf = conn.input
        n = len(buf)
        buf.skip(n)
        conn.write_binary(b"r" * (n * 4))       # replies 4x larger than requests
        conn.flush_nowait()

    state: dict[str, int] = {}

    async def main() -> None:
        conns: list[Connection] = []
        orig = on_request

        def tracking(ctx: Any, conn: Connection) -> None:
            if conn not in conns:
                conns.append(conn)
            orig(ctx, conn)

        el2, ln2, task2 = await start(tracking, write_buffer_limit=limit)
        s = socket.create_connection(ln2.addr)
        s.setblocking(False)
        chunk = b"q" * 16384
        sent = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3
        while loop.time() < deadline:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.01)
        await wait_for(lambda: bool(conns))
        state["output"] = conns[0].output_len()
        state["sent"] = sent
        # the server stopped reading: far less was accepted than 3 s of sending allows
        assert conns[0].output_len() <= limit + 4 * 8 * 1024 * 1024
        # now read everything: the connection resumes and answers the rest
        got = 0
        while got < sent * 4:
            d = await asyncio.wait_for(loop.sock_recv(s, 1 << 20), 5)
            if not d:
                break
            got += len(d)
        assert got == sent * 4
        s.close()
        await stop(el2, task2)

    run(main(), timeout=30)
    assert state["output"] < 16 * 1024 * 1024


def test_set_write_buffer_limit_validates(run: Any) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        conn = netpoll.new_fd_connection(a.detach())
        for bad in (0, -1, 1.5, True, "1"):
            with pytest.raises(ValueError):
                conn.set_write_buffer_limit(bad)
        conn.set_write_buffer_limit(1 << 20)
        conn.set_write_buffer_limit(None)
        conn.close()
        b.close()

    run(main())
    with pytest.raises(ValueError):
        netpoll.EventLoop(plain_echo, write_buffer_limit=0)
    with pytest.raises(ValueError):
        netpoll.Dialer(write_buffer_limit=-5)


def test_read_string_codec_reentrancy() -> None:
    """A codec error handler that closes or reads the buffer: no crash, nothing consumed."""
    buf = netpoll.LinkBuffer()

    def closing_handler(err: UnicodeError) -> tuple[str, int]:
        buf.close()
        return ("?", err.end)  # type: ignore[attr-defined]

    def skipping_handler(err: UnicodeError) -> tuple[str, int]:
        if len(buf) >= 1:
            buf.skip(1)
        return ("?", err.end)  # type: ignore[attr-defined]

    codecs.register_error("netpoll-test-close", closing_handler)
    codecs.register_error("netpoll-test-skip", skipping_handler)
    buf.write_binary(b"ab\xffcd")
    buf.flush()
    with pytest.raises(RuntimeError):
        buf.read_string(5, "utf-8", "netpoll-test-skip")
    assert len(buf) == 4           # only the handler's own skip happened
    with pytest.raises(ValueError):
        buf.read_string(4, "ascii", "netpoll-test-close")
    big = netpoll.LinkBuffer()
    big.write_binary(b"x" * 10 + b"\xff")
    big.flush()
    assert big.read_string(11, "utf-8", "replace") == "x" * 10 + "\ufffd"


@pytest.mark.parametrize("kind", ["echo", "rpc"])
def test_builtin_plain_servers(run: Any, kind: str) -> None:
    from netpoll.servers import PLAIN_HANDLERS

    async def main() -> None:
        el, ln, task = await start(PLAIN_HANDLERS[kind], write_buffer_limit=1 << 20)
        r, w = await asyncio.open_connection(*ln.addr)
        payloads = [b"a" * n for n in (0, 1, 64, 5000, 100_000)]
        if kind == "rpc":
            msg = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
        else:
            msg = b"".join(payloads)
        for i in range(0, len(msg), 7001):          # arrives in pieces
            w.write(msg[i:i + 7001])
            await w.drain()
        assert await r.readexactly(len(msg)) == msg
        w.close()
        await w.wait_closed()
        await stop(el, task)

    run(main())
