"""EventLoop conformance: server callbacks, ordering, handler rules, asyncio citizenship,
shutdown, idle timeout, read backpressure, 1,000 connections.

Ports the applicable scenarios of Go Netpoll's netpoll_unix_test.go and the server
parts of connection_test.go (NETPOLL.md §3), over loopback TCP and Unix sockets,
on stock asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import wait_for
from netpoll import Connection, EndOfStreamError, ReadTimeoutError

pytestmark = pytest.mark.timeout(60)

NETWORKS = ["tcp", "unix"]
Handler = Callable[[Any, Connection], Awaitable[None]]


@pytest.fixture(params=NETWORKS)
def network(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@contextlib.asynccontextmanager
async def serving(
    on_request: Handler | None,
    network: str = "tcp",
    tmp_path: Path | None = None,
    **kw: Any,
) -> AsyncIterator[tuple[netpoll.EventLoop, netpoll.Listener]]:
    if network == "unix":
        assert tmp_path is not None
        ln = netpoll.create_listener("unix", str(tmp_path / "srv.sock"))
    else:
        ln = netpoll.create_listener(network, "127.0.0.1:0")
    el = netpoll.EventLoop(on_request, **kw)
    task = asyncio.ensure_future(el.serve(ln))
    await asyncio.sleep(0)
    try:
        yield el, ln
    finally:
        if not task.done():
            with contextlib.suppress(TimeoutError):
                await el.shutdown(2)
        assert await asyncio.wait_for(task, 5) is None
        ln.close()


async def open_client(ln: netpoll.Listener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if ln.network == "unix":
        assert isinstance(ln.addr, str)
        return await asyncio.open_unix_connection(ln.addr)
    assert isinstance(ln.addr, tuple)
    return await asyncio.open_connection(ln.addr[0], ln.addr[1])


def raw_client(ln: netpoll.Listener, timeout: float = 5.0) -> socket.socket:
    if ln.network == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(ln.addr)
        return s
    return socket.create_connection(ln.addr, timeout=timeout)


async def close_client(w: asyncio.StreamWriter) -> None:
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()


async def echo(ctx: Any, conn: Connection) -> None:
    data = await conn.reader.next(conn.reader.len())
    conn.writer.write_binary(data)
    await conn.writer.flush()


# -- echo, many connections ----------------------------------------------------------


def test_echo(run, network, tmp_path):
    async def main():
        async with serving(echo, network, tmp_path) as (_el, ln):
            r, w = await open_client(ln)
            try:
                for i in range(20):
                    msg = payload(1 + i * 997, i)
                    w.write(msg)
                    await w.drain()
                    assert await asyncio.wait_for(r.readexactly(len(msg)), 5) == msg
                big = payload(4 * 1024 * 1024, 99)
                w.write(big)
                assert await asyncio.wait_for(r.readexactly(len(big)), 10) == big
            finally:
                await close_client(w)

    run(main())


def test_1000_concurrent_connections(run):
    async def main():
        async with serving(echo) as (_el, ln):

            async def client(i: int) -> None:
                r, w = await open_client(ln)
                try:
                    for k in range(3):
                        msg = b"%d:%d:" % (i, k) + payload(100 + i % 50, i * 3 + k)
                        w.write(msg)
                        await w.drain()
                        assert await r.readexactly(len(msg)) == msg
                finally:
                    await close_client(w)

            await asyncio.gather(*(client(i) for i in range(1000)))

    run(main(), timeout=30)


def test_parallel_short_connections(run, network, tmp_path):
    """TestParallelShortConnection / TestClientWriteAndClose: clients send and close at
    once; the server receives every byte."""

    async def main():
        received: list[int] = []

        def on_prepare(conn: Connection) -> list[int]:
            acc = [0]
            conn.add_close_callback(lambda c: received.append(acc[0]))
            return acc

        async def on_request(acc: list[int], conn: Connection) -> None:
            n = conn.reader.len()
            await conn.reader.skip(n)
            acc[0] += n

        async with serving(on_request, network, tmp_path, on_prepare=on_prepare) as (_el, ln):

            async def client(size: int) -> None:
                r, w = await open_client(ln)
                w.write(b"x" * size)
                await close_client(w)

            await asyncio.gather(*(client(1024) for _ in range(100)))
            await wait_for(lambda: len(received) == 100)
            assert received == [1024] * 100
            received.clear()
            # 10 clients x 1 MiB, each closing right after sending
            socks = []

            def blast() -> None:
                s = raw_client(ln)
                socks.append(s)
                s.sendall(b"y" * (1 << 20))
                s.close()

            await asyncio.gather(*(asyncio.to_thread(blast) for _ in range(10)))
            await wait_for(lambda: len(received) == 10)
            assert received == [1 << 20] * 10

    run(main(), timeout=20)


# -- handler rules --------------------------------------------------------------------


def test_on_request_never_overlaps_and_is_called_while_data_remains(run):
    async def main():
        active = 0
        max_active = 0
        calls = 0
        got = bytearray()

        async def on_request(ctx: Any, conn: Connection) -> None:
            nonlocal active, max_active, calls
            calls += 1
            active += 1
            max_active = max(max_active, active)
            try:
                await asyncio.sleep(0.002)
                got.append(await conn.reader.read_byte())   # one byte per call
            finally:
                active -= 1

        async with serving(on_request) as (_el, ln):
            r, w = await open_client(ln)
            try:
                w.write(b"0123456789")
                await w.drain()
                await wait_for(lambda: len(got) == 10)
                for i in range(10):
                    w.write(b"%d" % i)
                    await asyncio.sleep(0.001)
                await wait_for(lambda: len(got) == 20)
                assert bytes(got) == b"0123456789" * 2
                assert max_active == 1
                assert calls == 20
            finally:
                await close_client(w)

    run(main())


def test_no_busy_loop_when_handler_consumes_nothing(run):
    async def main():
        calls = 0
        take = False

        async def on_request(ctx: Any, conn: Connection) -> None:
            nonlocal calls
            calls += 1
            if take:
                await conn.reader.skip(conn.reader.len())
                conn.writer.write_binary(b"ok")
                await conn.writer.flush()

        async with serving(on_request) as (_el, ln):
            r, w = await open_client(ln)
            try:
                w.write(b"a")
                await w.drain()
                await wait_for(lambda: calls >= 1)
                await asyncio.sleep(0.2)
                assert calls == 1, "called again without new data"
                w.write(b"b")
                await w.drain()
                await wait_for(lambda: calls >= 2)
                await asyncio.sleep(0.1)
                assert calls == 2
                take = True
                w.write(b"c")
                await w.drain()
                assert await asyncio.wait_for(r.readexactly(2), 5) == b"ok"
                await asyncio.sleep(0.05)
                assert calls == 3
            finally:
                await close_client(w)

    run(main())


def test_handler_exception_logged_and_closes_only_that_connection(run, caplog):
    async def main():
        async def on_request(ctx: Any, conn: Connection) -> None:
            data = await conn.reader.read_binary(conn.reader.len())
            if data == b"boom":
                del conn     # the logged traceback must not keep the connection alive
                raise RuntimeError("handler exploded")
            conn.writer.write_binary(data)
            await conn.writer.flush()

        async with serving(on_request) as (_el, ln):
            r1, w1 = await open_client(ln)
            r2, w2 = await open_client(ln)
            try:
                w2.write(b"hi")
                assert await asyncio.wait_for(r2.readexactly(2), 5) == b"hi"
                w1.write(b"boom")
                assert await asyncio.wait_for(r1.read(), 5) == b""   # closed by the server
                w2.write(b"still")
                assert await asyncio.wait_for(r2.readexactly(5), 5) == b"still"
                r3, w3 = await open_client(ln)
                try:
                    w3.write(b"new")
                    assert await asyncio.wait_for(r3.readexactly(3), 5) == b"new"
                finally:
                    await close_client(w3)
            finally:
                await close_client(w1)
                await close_client(w2)

    with caplog.at_level(logging.ERROR, logger="netpoll"):
        run(main())
    recs = [r for r in caplog.records if r.name == "netpoll" and r.levelno >= logging.ERROR]
    assert recs, "the handler exception must be logged on the netpoll logger"
    assert any(r.exc_info and "handler exploded" in str(r.exc_info[1]) for r in recs)


def test_on_connect_exception_logged_and_closes(run, caplog):
    async def main():
        async def on_connect(ctx: Any, conn: Connection) -> Any:
            del conn     # the logged traceback must not keep the connection alive
            raise ValueError("connect exploded")

        async with serving(echo, on_connect=on_connect) as (_el, ln):
            r, w = await open_client(ln)
            try:
                assert await asyncio.wait_for(r.read(), 5) == b""
            finally:
                await close_client(w)

    with caplog.at_level(logging.ERROR, logger="netpoll"):
        run(main())
    assert any(r.exc_info and "connect exploded" in str(r.exc_info[1])
               for r in caplog.records if r.name == "netpoll")


def test_handler_writes_without_reading_all(run):
    """A handler may answer in pieces; partial consumption calls it again."""

    async def main():
        async def on_request(ctx: Any, conn: Connection) -> None:
            line = await conn.reader.until(b"\n")
            conn.writer.write_binary(bytes(line).upper())
            await conn.writer.flush()

        async with serving(on_request) as (_el, ln):
            r, w = await open_client(ln)
            try:
                w.write(b"one\ntwo\nthree\n")
                assert await asyncio.wait_for(r.readexactly(14), 5) == b"ONE\nTWO\nTHREE\n"
            finally:
                await close_client(w)

    run(main())


# -- asyncio citizenship --------------------------------------------------------------

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_asyncio_citizenship_in_on_request(run):
    async def main():
        seen: dict[str, Any] = {}

        async def on_request(ctx: Any, conn: Connection) -> None:
            cmd = bytes(await conn.reader.until(b"\n")).strip()
            task = asyncio.current_task()
            assert task is not None
            if cmd == b"task":
                await asyncio.sleep(0)
                seen["same_task"] = asyncio.current_task() is task
                t2 = asyncio.create_task(asyncio.sleep(0.001, "sub"))
                seen["gather"] = await asyncio.gather(t2, asyncio.sleep(0, "g"))
                seen["wait_for"] = await asyncio.wait_for(asyncio.sleep(0, "wf"), 1)
                answer = b"task ok"
            elif cmd == b"timeout":
                try:
                    async with asyncio.timeout(0.02):
                        await asyncio.sleep(5)
                    answer = b"no timeout"
                except TimeoutError:
                    answer = b"timed out"
                seen["cancelling_after_timeout"] = task.cancelling()
            elif cmd == b"cancel":
                seen["task"] = task
                try:
                    await asyncio.sleep(5)
                    answer = b"not cancelled"
                except asyncio.CancelledError:
                    answer = b"cancelled"
            elif cmd.startswith(b"set "):
                VAR.set(cmd[4:].decode())
                await asyncio.sleep(0.001)
                fut = asyncio.get_running_loop().create_future()
                asyncio.get_running_loop().call_soon(lambda: fut.set_result(VAR.get()))
                answer = ("set " + VAR.get() + " " + await fut).encode()
            elif cmd == b"get":
                answer = VAR.get().encode()
            else:
                answer = b"?"
            conn.writer.write_binary(answer + b"\n")
            await conn.writer.flush()

        async with serving(on_request) as (_el, ln):
            r, w = await open_client(ln)
            r2, w2 = await open_client(ln)
            try:
                async def ask(w: asyncio.StreamWriter, r: asyncio.StreamReader,
                              q: bytes) -> bytes:
                    w.write(q + b"\n")
                    return (await asyncio.wait_for(r.readline(), 5)).strip()

                assert await ask(w, r, b"task") == b"task ok"
                assert seen["same_task"] is True
                assert seen["gather"] == ["sub", "g"] and seen["wait_for"] == "wf"
                assert await ask(w, r, b"timeout") == b"timed out"
                assert seen["cancelling_after_timeout"] == 0
                w.write(b"cancel\n")
                await wait_for(lambda: "task" in seen)
                await asyncio.sleep(0.01)
                seen["task"].cancel()
                assert (await asyncio.wait_for(r.readline(), 5)).strip() == b"cancelled"
                # contextvars: per connection, kept across calls of that connection
                assert await ask(w, r, b"set alpha") == b"set alpha alpha"
                assert await ask(w2, r2, b"get") == b"unset"
                assert await ask(w, r, b"get") == b"alpha"
                assert VAR.get() == "unset"
                # the connection is still fine
                assert await ask(w, r, b"task") == b"task ok"
            finally:
                await close_client(w)
                await close_client(w2)

    run(main())


def test_cancelled_next_in_handler_consumes_nothing(run):
    async def main():
        async def on_request(ctx: Any, conn: Connection) -> None:
            have = conn.reader.len()
            try:
                async with asyncio.timeout(0.05):
                    await conn.reader.next(have + 100)
                answer = b"unexpected"
            except TimeoutError:
                assert conn.reader.len() >= have
                assert conn.is_active()
                data = await conn.reader.next(10)       # still usable
                answer = b"after timeout: " + bytes(data)
            conn.writer.write_binary(answer)
            await conn.writer.flush()

        async with serving(on_request) as (_el, ln):
            r, w = await open_client(ln)
            try:
                w.write(b"0123456789")
                want = b"after timeout: 0123456789"
                assert await asyncio.wait_for(r.readexactly(len(want)), 5) == want
            finally:
                await close_client(w)

    run(main())


def test_handler_cancelled_without_catching_closes_quietly(run, caplog):
    async def main():
        tasks: list[Any] = []

        async def on_request(ctx: Any, conn: Connection) -> None:
            tasks.append(asyncio.current_task())
            await asyncio.sleep(5)

        async with serving(on_request) as (_el, ln):
            r, w = await open_client(ln)
            r2, w2 = await open_client(ln)
            try:
                w.write(b"x")
                w2.write(b"y")
                await wait_for(lambda: len(tasks) == 2)
                tasks[0].cancel()
                assert await asyncio.wait_for(r.read(), 5) == b""
                tasks[1].cancel()
                assert await asyncio.wait_for(r2.read(), 5) == b""
            finally:
                await close_client(w)
                await close_client(w2)

    with caplog.at_level(logging.ERROR, logger="netpoll"):
        run(main())


def test_read_timeout_in_handler(run):
    async def main():
        async def on_request(ctx: Any, conn: Connection) -> None:
            try:
                await conn.reader.next(100)
                answer = b"full"
            except ReadTimeoutError:
                answer = b"timeout %d" % conn.reader.len()
            conn.writer.write_binary(answer)
            await conn.writer.flush()
            await conn.reader.skip(conn.reader.len())

        async with serving(on_request, read_timeout=0.05) as (_el, ln):
            r, w = await open_client(ln)
            try:
                w.write(b"abc")
                assert await asyncio.wait_for(r.readexactly(9), 5) == b"timeout 3"
                w.write(b"x" * 100)
                assert await asyncio.wait_for(r.readexactly(4), 5) == b"full"
            finally:
                await close_client(w)

    run(main())


# -- callbacks and ordering -----------------------------------------------------------


def test_callback_order_and_ctx(run, network, tmp_path):
    """TestConnectionServerClose (server side): on_prepare -> on_connect -> on_request;
    ctx flows from on_prepare to on_connect to on_request; on_disconnect once when the
    peer closes, after on_connect; close callbacks once."""

    async def main():
        events: list[Any] = []

        def on_prepare(conn: Connection) -> str:
            events.append("prepare")
            conn.add_close_callback(lambda c: events.append("closed"))
            return "from-prepare"

        async def on_connect(ctx: Any, conn: Connection) -> str:
            events.append(("connect", ctx))
            await asyncio.sleep(0.01)
            return "from-connect"

        async def on_request(ctx: Any, conn: Connection) -> None:
            events.append(("request", ctx))
            await conn.write(await conn.reader.read_binary(conn.reader.len()))

        def on_disconnect(ctx: Any, conn: Connection) -> None:
            events.append(("disconnect", ctx))

        async with serving(on_request, network, tmp_path, on_prepare=on_prepare,
                           on_connect=on_connect, on_disconnect=on_disconnect) as (_el, ln):
            r, w = await open_client(ln)
            w.write(b"ping")
            assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
            await close_client(w)
            await wait_for(lambda: "closed" in events)
            await asyncio.sleep(0.05)
        assert events == [
            "prepare",
            ("connect", "from-prepare"),
            ("request", "from-connect"),
            ("disconnect", "from-connect"),
            "closed",
        ]

    run(main())


def test_async_on_disconnect(run):
    async def main():
        done = asyncio.Event()
        seen: list[Any] = []

        async def on_disconnect(ctx: Any, conn: Connection) -> None:
            await asyncio.sleep(0)
            seen.append(ctx)
            done.set()

        async with serving(echo, on_connect=lambda ctx, conn: "c",
                           on_disconnect=on_disconnect) as (_el, ln):
            r, w = await open_client(ln)
            await close_client(w)
            await asyncio.wait_for(done.wait(), 5)
            assert seen == ["c"]

    run(main())


def test_on_disconnect_when_peer_closes_during_on_connect(run):
    """TestOnDisconnectWhenOnConnect: the client closes while on_connect sleeps;
    on_disconnect runs once, after on_connect, and sees on_connect's ctx."""

    async def main():
        events: list[Any] = []

        async def on_connect(ctx: Any, conn: Connection) -> str:
            events.append("connect start")
            await asyncio.sleep(0.1)
            events.append("connect end")
            return "ctx-1"

        def on_disconnect(ctx: Any, conn: Connection) -> None:
            events.append(("disconnect", ctx))

        async with serving(echo, on_connect=on_connect, on_disconnect=on_disconnect) as (_, ln):
            for _ in range(3):
                events.clear()
                r, w = await open_client(ln)
                await wait_for(lambda: "connect start" in events)
                await close_client(w)
                await wait_for(lambda: len(events) == 3)
                await asyncio.sleep(0.05)
                assert events == ["connect start", "connect end", ("disconnect", "ctx-1")]

    run(main())


def test_on_disconnect_many_clients(run):
    """TestOnDisconnect: 100 clients write and close: on_disconnect and close callbacks
    100 times; on_request sees what the client wrote."""

    async def main():
        disconnects = 0
        closes = 0
        requests = 0

        def on_connect(ctx: Any, conn: Connection) -> dict[str, bool]:
            def cb(c: Connection) -> None:
                nonlocal closes
                closes += 1
            conn.add_close_callback(cb)
            return {"alive": True}

        async def on_request(ctx: dict[str, bool], conn: Connection) -> None:
            nonlocal requests
            requests += 1
            await conn.reader.skip(conn.reader.len())

        def on_disconnect(ctx: dict[str, bool], conn: Connection) -> None:
            nonlocal disconnects
            ctx["alive"] = False
            disconnects += 1

        async with serving(on_request, on_connect=on_connect,
                           on_disconnect=on_disconnect) as (_el, ln):

            async def client() -> None:
                r, w = await open_client(ln)
                w.write(b"hello")
                await w.drain()
                await close_client(w)

            await asyncio.gather(*(client() for _ in range(100)))
            await wait_for(lambda: closes == 100)
            await asyncio.sleep(0.05)
            assert disconnects == 100 and closes == 100
            assert 1 <= requests <= 100 * 5

    run(main())


def test_no_on_disconnect_on_server_close(run):
    """on_disconnect runs when the peer closes, not when the server closes."""

    async def main():
        disconnects = 0
        closed = 0

        async def on_request(ctx: Any, conn: Connection) -> None:
            nonlocal closed
            await conn.write(await conn.reader.read_binary(conn.reader.len()))
            conn.close()
            closed += 1

        def on_disconnect(ctx: Any, conn: Connection) -> None:
            nonlocal disconnects
            disconnects += 1

        async with serving(on_request, on_disconnect=on_disconnect) as (_el, ln):
            r, w = await open_client(ln)
            w.write(b"bye")
            assert await asyncio.wait_for(r.read(), 5) == b"bye"
            await close_client(w)
            await asyncio.sleep(0.05)
            assert closed == 1 and disconnects == 0

    run(main())


def test_set_on_request_inside_on_connect(run):
    """Go Netpoll #421 is not carried over: the new handler serves the first request."""

    async def main():
        async def second(ctx: Any, conn: Connection) -> None:
            await conn.write(b"second:" + await conn.reader.read_binary(conn.reader.len()))

        async def first(ctx: Any, conn: Connection) -> None:
            await conn.write(b"first:" + await conn.reader.read_binary(conn.reader.len()))

        async def on_connect(ctx: Any, conn: Connection) -> None:
            conn.set_on_request(second)
            await asyncio.sleep(0.02)

        async with serving(first, on_connect=on_connect) as (_el, ln):
            s = raw_client(ln)
            with s:
                s.sendall(b"req")      # the request is there before on_connect returns
                got = await asyncio.to_thread(s.recv, 100)
                assert got == b"second:req"

    run(main())


def test_set_on_request_plain_on_connect(run):
    async def main():
        async def second(ctx: Any, conn: Connection) -> None:
            await conn.write(b"second:" + await conn.reader.read_binary(conn.reader.len()))

        def on_connect(ctx: Any, conn: Connection) -> None:
            conn.set_on_request(second)

        async with serving(echo, on_connect=on_connect) as (_el, ln):
            r, w = await open_client(ln)
            try:
                w.write(b"req")
                assert await asyncio.wait_for(r.readexactly(10), 5) == b"second:req"
            finally:
                await close_client(w)

    run(main())


def test_on_connect_writes_first(run):
    """TestOnConnectWrite: on_connect writes "hello" before any request."""

    async def main():
        async def on_connect(ctx: Any, conn: Connection) -> None:
            conn.writer.write_string("hello")
            await conn.writer.flush()

        async with serving(echo, on_connect=on_connect) as (_el, ln):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            try:
                assert await asyncio.wait_for(conn.reader.read_string(5), 5) == "hello"
                await conn.write(b"echo")
                assert bytes(await asyncio.wait_for(conn.reader.next(4), 5)) == b"echo"
            finally:
                conn.close()

    run(main())


def test_on_connect_ping_pong_loop(run):
    """TestOnConnect: on_connect itself loops next/write for 1,024 rounds and ends on
    EndOfStreamError once the client closes; on_request never runs meanwhile."""

    async def main():
        ended: list[str] = []
        requests = 0

        async def on_connect(ctx: Any, conn: Connection) -> None:
            try:
                while True:
                    msg = await conn.reader.next(8)
                    await conn.write(msg)
            except EndOfStreamError:
                ended.append("eof")

        async def on_request(ctx: Any, conn: Connection) -> None:
            nonlocal requests
            requests += 1
            await conn.reader.skip(conn.reader.len())

        async with serving(on_request, on_connect=on_connect) as (_el, ln):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            try:
                for i in range(1024):
                    await conn.write(b"%08d" % i)
                    assert bytes(await asyncio.wait_for(conn.reader.next(8), 5)) == b"%08d" % i
            finally:
                conn.close()
            await wait_for(lambda: ended == ["eof"])
            assert requests == 0

    run(main())


def test_close_in_on_connect(run):
    """TestCloseConnWhenOnConnect: the client's next(1) gets EndOfStreamError."""

    async def main():
        requests = 0

        async def on_connect(ctx: Any, conn: Connection) -> None:
            conn.close()

        async def on_request(ctx: Any, conn: Connection) -> None:
            nonlocal requests
            requests += 1

        async with serving(on_request, on_connect=on_connect) as (_el, ln):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            try:
                with pytest.raises(EndOfStreamError):
                    await asyncio.wait_for(conn.reader.next(1), 5)
                assert not conn.is_active()
            finally:
                conn.close()
            assert requests == 0

    run(main())


def test_close_in_on_prepare(run):
    """on_prepare may close the connection: it is never registered, no callback runs."""

    async def main():
        calls: list[str] = []

        def on_prepare(conn: Connection) -> None:
            conn.close()

        async def on_connect(ctx: Any, conn: Connection) -> None:
            calls.append("connect")

        async def on_request(ctx: Any, conn: Connection) -> None:
            calls.append("request")

        async with serving(on_request, on_prepare=on_prepare, on_connect=on_connect) as (_, ln):
            r, w = await open_client(ln)
            try:
                w.write(b"x")
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(r.read(), 5) == b""
            finally:
                await close_client(w)
            await asyncio.sleep(0.02)
            assert calls == []

    run(main())


def test_close_callbacks_added_in_handlers(run):
    """TestCloseCallbackWhenOnRequest / WhenOnConnect: the callbacks fire on client close,
    newest first, once."""

    async def main():
        order: list[str] = []

        def on_connect(ctx: Any, conn: Connection) -> None:
            conn.add_close_callback(lambda c: order.append("connect"))

        async def on_request(ctx: Any, conn: Connection) -> None:
            await conn.reader.skip(conn.reader.len())
            conn.add_close_callback(lambda c: order.append("request"))

        async with serving(on_request, on_connect=on_connect) as (_el, ln):
            r, w = await open_client(ln)
            w.write(b"x")
            await w.drain()
            await asyncio.sleep(0.05)
            await close_client(w)
            await wait_for(lambda: len(order) == 2)
            await asyncio.sleep(0.05)
            assert order == ["request", "connect"]

    run(main())


def test_close_inside_on_request_fires_callbacks(run):
    """TestListenerDialer / TestServerReadAndClose: a close inside on_request fires the
    callback; the dialing client goes inactive and its writes raise."""

    async def main():
        server_closed = asyncio.Event()

        async def on_request(ctx: Any, conn: Connection) -> None:
            conn.add_close_callback(lambda c: server_closed.set())
            await conn.reader.skip(conn.reader.len())
            conn.close()

        async with serving(on_request) as (_el, ln):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            client_closed: list[Connection] = []
            conn.add_close_callback(client_closed.append)
            try:
                await conn.write(b"hi")
                await asyncio.wait_for(server_closed.wait(), 5)
                await wait_for(lambda: not conn.is_active())
                with pytest.raises(netpoll.ConnectionClosedError):
                    conn.writer.write_binary(b"x")
                await wait_for(lambda: client_closed == [conn])
            finally:
                conn.close()

    run(main())


def test_server_exception_client_goes_inactive(run):
    """TestServerPanicAndClose."""

    async def main():
        async def on_request(ctx: Any, conn: Connection) -> None:
            raise RuntimeError("panic")

        async with serving(on_request) as (_el, ln):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            try:
                await conn.write(b"x")
                await wait_for(lambda: not conn.is_active())
            finally:
                conn.close()

    logging.getLogger("netpoll").disabled = True
    try:
        run(main())
    finally:
        logging.getLogger("netpoll").disabled = False


# -- shutdown -------------------------------------------------------------------------


def test_shutdown_closes_idle_connections(run, network, tmp_path):
    """TestGracefulExit (idle): shutdown returns None, idle clients see EOF, serve()
    returns None."""

    async def main():
        if network == "unix":
            ln = netpoll.create_listener("unix", str(tmp_path / "s.sock"))
        else:
            ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(echo)
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        clients = [await open_client(ln) for _ in range(10)]
        try:
            for r, w in clients:
                w.write(b"ping")
                assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
            t0 = asyncio.get_running_loop().time()
            assert await el.shutdown(5) is None
            assert asyncio.get_running_loop().time() - t0 < 2
            assert await asyncio.wait_for(task, 5) is None
            for r, _ in clients:
                assert await asyncio.wait_for(r.read(), 5) == b""
            assert await el.shutdown(1) is None     # a second shutdown is harmless
        finally:
            for _, w in clients:
                await close_client(w)
            ln.close()

    run(main())


def test_shutdown_lets_running_handler_answer(run):
    """TestGracefulExit (busy): a running handler finishes and its answer arrives."""

    async def main():
        started = asyncio.Event()
        calls: list[bytes] = []

        async def on_request(ctx: Any, conn: Connection) -> None:
            data = await conn.reader.read_binary(conn.reader.len())
            calls.append(data)
            started.set()
            await asyncio.sleep(0.2)
            conn.writer.write_binary(b"answer:" + data + b"x" * 1_000_000)
            await conn.writer.flush()

        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request)
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        r, w = await open_client(ln)
        ri, wi = await open_client(ln)           # an idle one too
        try:
            w.write(b"q")
            await asyncio.wait_for(started.wait(), 5)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            shut = asyncio.ensure_future(el.shutdown(5))
            assert await asyncio.wait_for(ri.read(), 5) == b""        # idle: closed at once
            # a connection attempt during shutdown: refused, or closed without callbacks
            try:
                rn, wn = await open_client(ln)
            except ConnectionRefusedError:
                pass
            else:
                try:
                    wn.write(b"late")
                    with contextlib.suppress(ConnectionError):
                        assert await asyncio.wait_for(rn.read(), 5) == b""
                finally:
                    await close_client(wn)
            assert calls == [b"q"]
            got = await asyncio.wait_for(r.read(), 5)                 # answer, then EOF
            got += await asyncio.wait_for(r.read(), 5)
            while True:
                more = await asyncio.wait_for(r.read(), 5)
                if not more:
                    break
                got += more
            assert got == b"answer:q" + b"x" * 1_000_000
            assert await asyncio.wait_for(shut, 5) is None
            assert 0.1 < loop.time() - t0 < 3
            assert await asyncio.wait_for(task, 5) is None
        finally:
            await close_client(w)
            await close_client(wi)
            ln.close()

    run(main())


def test_shutdown_timeout(run):
    """TestGracefulExit (busy past the deadline): TimeoutError; the busy connection is
    closed by force; serve() still returns None."""

    async def main():
        started = asyncio.Event()

        async def on_request(ctx: Any, conn: Connection) -> None:
            await conn.reader.skip(conn.reader.len())
            started.set()
            await asyncio.sleep(30)

        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request)
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        r, w = await open_client(ln)
        try:
            w.write(b"q")
            await asyncio.wait_for(started.wait(), 5)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(TimeoutError):
                await el.shutdown(0.1)
            assert 0.08 < loop.time() - t0 < 2
            assert await asyncio.wait_for(task, 5) is None
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r.read(), 5) == b""
        finally:
            await close_client(w)
            ln.close()

    run(main())


def test_shutdown_answers_request_received_before(run):
    """A request fully received before shutdown gets its answer."""

    async def main():
        connected = asyncio.Event()

        async def on_request(ctx: Any, conn: Connection) -> None:
            data = await conn.reader.until(b"\n")
            await conn.write(b"re:" + bytes(data))

        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request, on_connect=lambda ctx, c: connected.set())
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        s = raw_client(ln)
        try:
            await asyncio.wait_for(connected.wait(), 5)
            s.sendall(b"request\n")          # no await between this and shutdown
            assert await el.shutdown(5) is None
            assert await asyncio.wait_for(task, 5) is None

            def read_all() -> bytes:
                out = b""
                while chunk := s.recv(100):
                    out += chunk
                return out

            assert await asyncio.to_thread(read_all) == b"re:request\n"
        finally:
            s.close()
            ln.close()

    run(main())


def test_no_callbacks_after_shutdown(run):
    """A connection attempt during or after shutdown is refused or closed without any
    callback running."""

    async def main():
        calls: list[str] = []
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        addr = ln.addr
        el = netpoll.EventLoop(echo, on_prepare=lambda c: calls.append("prepare"),
                               on_connect=lambda ctx, c: calls.append("connect"))
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        assert await el.shutdown(1) is None
        assert await asyncio.wait_for(task, 5) is None
        try:
            r, w = await asyncio.open_connection(addr[0], addr[1])
        except ConnectionRefusedError:
            pass
        else:
            try:
                w.write(b"x")
                with contextlib.suppress(ConnectionError):
                    assert await asyncio.wait_for(r.read(), 5) == b""
            finally:
                await close_client(w)
        await asyncio.sleep(0.02)
        assert calls == []
        ln.close()

    run(main())


def test_serve_cancelled(run):
    async def main():
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(echo)
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        r, w = await open_client(ln)
        try:
            w.write(b"x")
            assert await asyncio.wait_for(r.readexactly(1), 5) == b"x"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.wait_for(r.read(), 5) == b""
        finally:
            await close_client(w)
            ln.close()

    run(main())


# -- idle timeout ---------------------------------------------------------------------


def test_idle_timeout_closes_idle_connections(run):
    async def main():
        keepalive: list[int] = []

        def on_connect(ctx: Any, conn: Connection) -> None:
            with socket.socket(fileno=conn.fileno()) as s:
                try:
                    keepalive.append(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
                finally:
                    s.detach()

        async with serving(echo, idle_timeout=0.3, on_connect=on_connect) as (_el, ln):
            ri, wi = await open_client(ln)
            rb, wb = await open_client(ln)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            try:
                idle_closed = asyncio.ensure_future(ri.read())
                # the busy one talks every 50 ms for 0.8 s
                while loop.time() - t0 < 0.8:
                    wb.write(b"k")
                    assert await asyncio.wait_for(rb.readexactly(1), 5) == b"k"
                    await asyncio.sleep(0.05)
                assert idle_closed.done(), "the idle connection must be closed"
                assert idle_closed.result() == b""
                # now the busy one goes idle and gets closed too
                assert await asyncio.wait_for(rb.read(), 5) == b""
                assert loop.time() - t0 < 3
                assert keepalive and all(keepalive)
            finally:
                await close_client(wi)
                await close_client(wb)

    run(main())


def test_idle_timeout_on_dialed_connection(run):
    async def main():
        async with serving(echo) as (_el, ln):
            d = netpoll.Dialer(idle_timeout=0.1)
            conn = await d.dial_connection("tcp", ln.addr, timeout=5)
            try:
                closed: list[Connection] = []
                conn.add_close_callback(closed.append)
                await conn.write(b"x")
                assert bytes(await conn.reader.next(1)) == b"x"
                await wait_for(lambda: not conn.is_active(), timeout=3)
                await wait_for(lambda: closed == [conn])
            finally:
                conn.close()

    run(main())


# -- read backpressure ----------------------------------------------------------------

LIMIT = 64 * 1024
TOTAL = 32 * 1024 * 1024


def test_read_buffer_limit_backpressure(run):
    """Unread input stays near the limit while the handler does not consume; reading
    resumes only once it consumed below half; all data arrives in the end."""

    async def main():
        holder: dict[str, Any] = {}
        gates = [asyncio.Event() for _ in range(3)]
        done = asyncio.get_running_loop().create_future()

        async def on_request(ctx: Any, conn: Connection) -> None:
            if "conn" in holder:
                return
            holder["conn"] = conn
            await gates[0].wait()
            # consume down to just above half: no resume
            n = conn.reader.len() - (LIMIT // 2 + 100)
            await conn.reader.skip(n)
            consumed = n
            await gates[1].wait()
            await conn.reader.skip(200)     # now below half: resumes
            consumed += 200
            await gates[2].wait()
            while consumed < TOTAL:         # drain the rest
                n = conn.reader.len() or 1
                await conn.reader.skip(n)
                consumed += n
            done.set_result(consumed)

        sent = [0]

        async with serving(on_request, read_buffer_limit=LIMIT) as (_el, ln):
            s = raw_client(ln, timeout=20)

            def blast() -> None:
                chunk = b"z" * 65536
                try:
                    while sent[0] < TOTAL:
                        s.sendall(chunk)
                        sent[0] += len(chunk)
                except OSError:
                    pass

            th = threading.Thread(target=blast, daemon=True)
            th.start()
            try:
                await wait_for(lambda: "conn" in holder)
                conn: Connection = holder["conn"]
                await wait_for(lambda: conn.reader.len() >= LIMIT)
                await asyncio.sleep(0.2)
                # the kernel's socket buffers may still take a chunk or two after the
                # poller stopped (loopback window updates): wait, bounded, until the
                # sender makes no progress for 0.2 s, while the input stays put
                l1, s1 = conn.reader.len(), sent[0]
                deadline = asyncio.get_running_loop().time() + 5
                while True:
                    await asyncio.sleep(0.2)
                    l2, s2 = conn.reader.len(), sent[0]
                    assert l1 == l2, "the poller must stop reading at the limit"
                    if s1 == s2:
                        break
                    assert asyncio.get_running_loop().time() < deadline, \
                        "the sender must be stalled"
                    s1 = s2
                assert LIMIT <= l2 <= 2 * LIMIT + 65536, l2
                assert s2 < TOTAL, "the sender must be stalled"
                gates[0].set()
                await wait_for(lambda: conn.reader.len() == LIMIT // 2 + 100)
                await asyncio.sleep(0.2)
                assert conn.reader.len() == LIMIT // 2 + 100, "resumed above half"
                gates[1].set()
                await wait_for(lambda: conn.reader.len() >= LIMIT)
                await asyncio.sleep(0.1)
                assert conn.reader.len() <= 2 * LIMIT + 65536
                gates[2].set()
                await asyncio.wait_for(done, 20)
                # the sender counts a chunk only after sendall returns, which can be
                # after the server has already consumed it: join before comparing
                await asyncio.to_thread(th.join, 20)
                assert sent[0] == TOTAL
            finally:
                s.close()
                await asyncio.to_thread(th.join, 20)

    run(main(), timeout=40)


def test_read_buffer_limit_wait_for_more_than_limit(run):
    """A pending wait for more than the limit may read up to what it waits for."""

    async def main():
        want = 4 * LIMIT

        async def on_request(ctx: Any, conn: Connection) -> None:
            data = await conn.reader.next(want)
            await conn.write(b"got %d" % len(data))

        async with serving(on_request, read_buffer_limit=LIMIT) as (_el, ln):
            r, w = await open_client(ln)
            try:
                w.write(b"a" * want)
                msg = b"got %d" % want
                assert await asyncio.wait_for(r.readexactly(len(msg)), 5) == msg
            finally:
                await close_client(w)

    run(main())


def test_read_buffer_limit_validation():
    with pytest.raises((ValueError, TypeError)):
        netpoll.EventLoop(echo, read_buffer_limit=-1)
    with pytest.raises((ValueError, TypeError)):
        netpoll.EventLoop(echo, read_timeout=-1)
    with pytest.raises(TypeError):
        netpoll.EventLoop("not callable")  # type: ignore[arg-type]


def test_write_timeout_in_handler(run):
    """EventLoop(write_timeout): a handler's flush to a client that does not read raises
    WriteTimeoutError and the connection stays open."""

    async def main():
        results: list[str] = []

        async def on_request(ctx: Any, conn: Connection) -> None:
            await conn.reader.skip(conn.reader.len())
            conn.writer.write_binary(b"x" * (16 * 1024 * 1024))
            try:
                await conn.writer.flush()
                results.append("flushed")
            except netpoll.WriteTimeoutError:
                results.append("timeout" if conn.is_active() else "timeout, closed")

        async with serving(on_request, write_timeout=0.1) as (_el, ln):
            s = raw_client(ln)
            with s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(b"go")
                await wait_for(lambda: bool(results))
                assert results == ["timeout"]

    run(main())
