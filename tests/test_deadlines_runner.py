"""Deadlines (Go v0.7.2 SetDeadline/SetReadDeadline/SetWriteDeadline) and runner=
(Go's Config.Runner), on asyncio and uvloop, over socketpairs and loopback TCP.

Ports the deadline checks of Go's connection_test.go (NETPOLL.md §3): a deadline
in the past fails the next wait at once; one in the future fires within a few
tens of milliseconds of it; clearing restores the timeout.
"""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

import pytest

import netpoll
from conftest import wait_for
from netpoll import Connection, ReadTimeoutError, WriteTimeoutError

pytestmark = pytest.mark.timeout(60)


def pair() -> tuple[Connection, socket.socket]:
    a, b = socket.socketpair()
    return netpoll.new_fd_connection(a.detach()), b


def test_read_deadline_fires_and_clears(run: Any) -> None:
    async def main() -> None:
        conn, peer = pair()
        loop = asyncio.get_running_loop()
        conn.set_read_deadline(loop.time() + 0.05)
        t0 = loop.time()
        with pytest.raises(ReadTimeoutError, match="deadline"):
            await conn.next(1)
        assert 0.03 <= loop.time() - t0 < 0.5
        t0 = loop.time()
        with pytest.raises(ReadTimeoutError):      # already past: at once
            await conn.read(1)
        assert loop.time() - t0 < 0.02
        conn.set_read_deadline(None)               # cleared: the timeout applies again
        conn.set_read_timeout(0.05)
        with pytest.raises(ReadTimeoutError, match="timed out after"):
            await conn.next(1)
        conn.set_read_timeout(None)
        peer.sendall(b"ab")
        assert bytes(await conn.next(2)) == b"ab"  # the connection stays usable
        conn.close()
        peer.close()

    run(main())


def test_deadline_moved_while_a_read_waits(run: Any) -> None:
    async def main() -> None:
        conn, peer = pair()
        loop = asyncio.get_running_loop()
        conn.set_read_deadline(loop.time() + 30)
        waiting = asyncio.ensure_future(conn.next(4))
        await asyncio.sleep(0.01)
        conn.set_deadline(loop.time() - 1)          # now in the past: the wait fails now
        with pytest.raises(ReadTimeoutError):
            await asyncio.wait_for(waiting, 1)
        conn.set_deadline(None)
        waiting = asyncio.ensure_future(conn.next(4))
        await asyncio.sleep(0.05)
        assert not waiting.done()                   # no deadline, no timeout: waits
        peer.sendall(b"data")
        assert bytes(await asyncio.wait_for(waiting, 1)) == b"data"
        conn.close()
        peer.close()

    run(main())


def test_write_deadline(run: Any) -> None:
    async def main() -> None:
        conn, peer = pair()
        loop = asyncio.get_running_loop()
        conn.set_write_deadline(loop.time() + 0.05)
        conn.write_binary(b"x" * (16 << 20))         # more than the socket takes
        t0 = loop.time()
        with pytest.raises(WriteTimeoutError, match="deadline"):
            await conn.flush()
        assert loop.time() - t0 < 0.5
        assert conn.is_active()                      # unsent data stays queued
        conn.close()
        peer.close()

    run(main())


def test_deadline_arguments(run: Any) -> None:
    async def main() -> None:
        conn, peer = pair()
        for setter in (conn.set_deadline, conn.set_read_deadline, conn.set_write_deadline):
            with pytest.raises(ValueError):
                setter(math.nan)
            with pytest.raises(TypeError):
                setter("soon")  # type: ignore[arg-type]
            setter(1e308)
            setter(None)
        conn.close()
        peer.close()

    run(main())


async def echo_once(conn: Connection) -> None:
    data = await conn.read_binary(conn.len())
    conn.write_binary(data)
    await conn.flush()


@pytest.mark.parametrize("style", ["task", "callable-async", "callable-plain"])
def test_runner(run: Any, style: str) -> None:
    seen: list[Any] = []
    calls: list[str] = []

    async def async_handler(ctx: Any, conn: Connection) -> None:
        seen.append(asyncio.current_task())
        await echo_once(conn)

    def plain_handler(ctx: Any, conn: Connection) -> None:
        buf = conn.input
        conn.write_binary(buf.read_binary(len(buf)))
        conn.flush_nowait()

    def tracing_runner(work: Any, conn: Connection) -> None:
        calls.append(type(work).__name__)
        if asyncio.iscoroutine(work):
            asyncio.get_running_loop().create_task(work)
        else:
            asyncio.get_running_loop().call_soon(work)   # later: still serial

    async def main() -> None:
        if style == "task":
            el = netpoll.EventLoop(async_handler, runner="task")
        elif style == "callable-async":
            el = netpoll.EventLoop(async_handler, runner=tracing_runner)
        else:
            el = netpoll.EventLoop(plain_handler, runner=tracing_runner)
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        r, w = await asyncio.open_connection(*ln.addr)
        for i in range(20):
            w.write(b"msg%02d" % i)
            assert await asyncio.wait_for(r.readexactly(5), 5) == b"msg%02d" % i
        w.close()
        await w.wait_closed()
        await el.shutdown(2)
        await serving

    run(main())
    if style == "task":
        assert seen and all(isinstance(t, asyncio.Task) for t in seen)
    else:
        assert len(calls) >= 20


def test_runner_keeps_calls_serial(run: Any) -> None:
    active: list[int] = []
    overlaps: list[int] = []

    async def slow(ctx: Any, conn: Connection) -> None:
        active.append(1)
        if len(active) > 1:
            overlaps.append(1)
        await asyncio.sleep(0.01)
        await conn.skip(conn.len())
        active.pop()

    async def main() -> None:
        el = netpoll.EventLoop(slow, runner="task")
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        s = socket.create_connection(ln.addr)
        for _ in range(10):
            s.send(b"x")
            await asyncio.sleep(0.003)
        await asyncio.sleep(0.1)
        s.close()
        await wait_for(lambda: el.connections == 0)
        await el.shutdown(1)
        await serving

    run(main())
    assert not overlaps


def test_runner_validation() -> None:
    with pytest.raises(TypeError, match="runner"):
        netpoll.EventLoop(lambda ctx, c: None, runner="thread")  # type: ignore[arg-type]


def test_set_on_connect_from_on_prepare(run: Any) -> None:
    order: list[str] = []

    def on_prepare(conn: Connection) -> str:
        conn.set_on_connect(lambda ctx, c: order.append(f"connect:{ctx}") or "ctx2")
        conn.set_on_disconnect(lambda ctx, c: order.append(f"disconnect:{ctx}"))
        return "ctx1"

    def on_request(ctx: Any, conn: Connection) -> None:
        order.append(f"request:{ctx}")
        conn.input.skip(len(conn.input))

    async def main() -> None:
        el = netpoll.EventLoop(on_request, on_prepare=on_prepare)
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        s = socket.create_connection(ln.addr)
        s.sendall(b"hi")
        await wait_for(lambda: "request:ctx2" in order)
        s.close()
        await wait_for(lambda: el.connections == 0)
        await el.shutdown(1)
        await serving

    run(main())
    assert order == ["connect:ctx1", "request:ctx2", "disconnect:ctx2"]


def test_set_on_connect_on_dialed_connection(run: Any) -> None:
    async def main() -> None:
        conn, peer = pair()
        got: list[Any] = []
        conn.set_on_connect(lambda ctx, c: got.append("connected") or "ctx")
        conn.set_on_request(lambda ctx, c: got.append(("request", ctx, c.input.read_binary(2))))
        peer.sendall(b"yo")
        await wait_for(lambda: len(got) == 2)
        assert got == ["connected", ("request", "ctx", b"yo")]
        conn.close()
        peer.close()

    run(main())


def test_get_config_and_backend() -> None:
    cfg = netpoll.get_config()
    before = cfg["backend"]
    assert before in ("epoll", "io_uring")     # NETPOLL_BACKEND may pick io_uring
    assert {"poller_num", "buffer_size", "load_balance", "logger", "link_buffer_cap"} <= set(cfg)
    try:
        netpoll.configure(backend="epoll")
        assert netpoll.get_config()["backend"] == "epoll"
        netpoll.configure(backend="auto")      # tests/test_uring.py covers what it picks
        assert netpoll.get_config()["backend"] in ("epoll", "io_uring")
    finally:
        netpoll.configure(backend=before)
    with pytest.raises(ValueError):
        netpoll.configure(backend="kqueue")  # type: ignore[arg-type]


def test_link_buffer_cap() -> None:
    before = netpoll.get_config()["link_buffer_cap"]
    try:
        netpoll.configure(link_buffer_cap=128)
        assert netpoll.get_config()["link_buffer_cap"] == 128
        buf = netpoll.LinkBuffer(0)
        buf.write_binary(b"x" * 10)
        buf.flush()
        assert buf.bytes() == b"x" * 10
        with pytest.raises(ValueError):
            netpoll.configure(link_buffer_cap=0)
    finally:
        netpoll.configure(link_buffer_cap=before)
