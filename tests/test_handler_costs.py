"""What the cheaper async-handler path (issue 11, item 3) must keep.

On CPython 3.11 a handler step inside a poller's pass replaces the value of
asyncio's current-task entry instead of inserting and deleting it, and the
pass deletes the entry before it returns to the loop (reactor/handler.pyx).
These tests pin what users can observe: ``asyncio.current_task()`` is the
handler inside every step (also after a suspension), None in the user code
that runs between steps (close callbacks, on_disconnect, plain handlers),
and nothing is left behind for asyncio's own Tasks to trip over.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

import netpoll
from conftest import wait_for
from netpoll import Connection

pytestmark = pytest.mark.timeout(60)

N = 24


def _tasks_dict() -> dict[Any, Any] | None:
    try:
        from _asyncio import _current_tasks  # type: ignore[attr-defined]  # CPython 3.11
    except ImportError:
        return None
    return _current_tasks  # type: ignore[no-any-return]


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    s.settimeout(5)
    out = b""
    while len(out) < n:
        got = s.recv(n - len(out))
        if not got:
            break
        out += got
    return out


def test_current_task_across_a_pass(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        steps: list[tuple[int, Any, bool]] = []
        outside: list[Any] = []

        async def on_request(ctx: Any, conn: Connection) -> None:
            t = asyncio.current_task()
            data = bytes(await conn.next(1))        # buffered: completes without suspending
            same = asyncio.current_task() is t
            if data == b"s":
                await asyncio.sleep(0)              # resumed later from a loop callback
                same = same and asyncio.current_task() is t
            steps.append((conn.fileno(), t, same))
            conn.write_binary(data)
            await conn.flush()

        def on_disconnect(ctx: Any, conn: Connection) -> None:
            outside.append(("disconnect", asyncio.current_task()))

        def on_prepare(conn: Connection) -> None:
            conn.add_close_callback(lambda c: outside.append(("close", asyncio.current_task())))

        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request, on_prepare=on_prepare, on_disconnect=on_disconnect)
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        socks = [socket.create_connection(ln.addr) for _ in range(N)]
        try:
            await asyncio.sleep(0.05)
            for rnd in (b"x", b"s", b"y"):
                # all at once, so several handlers run in one pass
                for s in socks:
                    s.sendall(rnd)
                for s in socks:
                    assert await loop.run_in_executor(None, _recv_exactly, s, 1) == rnd
        finally:
            for s in socks:
                s.close()
        await wait_for(lambda: len([o for o in outside if o[0] == "close"]) == N)
        assert len(steps) == 3 * N
        assert all(t is not None and same for _fd, t, same in steps), steps
        per_conn: dict[int, set[int]] = {}
        for fd, t, _same in steps:
            per_conn.setdefault(fd, set()).add(id(t))
        assert all(len(ids) == 1 for ids in per_conn.values())     # one driver per connection
        assert len({id(t) for _fd, t, _s in steps}) == N
        assert [t for _kind, t in outside] == [None] * len(outside)

        # nothing left in asyncio's table: seen from a loop callback, and a Task runs
        seen: list[Any] = []
        loop.call_soon(lambda: seen.append(asyncio.current_task(loop)))
        await asyncio.sleep(0.01)
        assert seen == [None]
        tasks = _tasks_dict()
        if tasks is not None:
            assert tasks.get(loop) is asyncio.current_task()     # only the test's own Task
        assert await asyncio.create_task(asyncio.sleep(0, "ok")) == "ok"
        await el.shutdown(2)
        await asyncio.wait_for(task, 2)

    run(main())


def test_plain_handler_after_async_steps_in_one_pass(run: Any) -> None:
    """A plain handler running in the same pass after async ones sees no task."""

    async def main() -> None:
        seen: list[Any] = []

        async def async_handler(ctx: Any, conn: Connection) -> None:
            conn.write_binary(bytes(await conn.next(len(conn))))
            await conn.flush()

        def plain_handler(ctx: Any, conn: Connection) -> None:
            seen.append(asyncio.current_task())
            buf = conn.input
            conn.write_binary(buf.next(len(buf)))
            conn.flush_nowait()

        def on_request(ctx: Any, conn: Connection) -> Any:
            if conn.fileno() % 2:
                return plain_handler(ctx, conn)
            return async_handler(ctx, conn)

        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request)
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        socks = [socket.create_connection(ln.addr) for _ in range(N)]
        try:
            await asyncio.sleep(0.05)
            for s in socks:
                s.sendall(b"abc")
            for s in socks:
                assert await loop.run_in_executor(None, _recv_exactly, s, 3) == b"abc"
        finally:
            for s in socks:
                s.close()
        assert seen and all(t is None for t in seen)
        await el.shutdown(2)
        await asyncio.wait_for(task, 2)

    run(main())


def test_buffered_read_awaitables_are_reused_only_when_free(run: Any) -> None:
    """Buffered reads hand out one recycled awaitable; one still held is never reused."""

    async def main() -> None:
        out: list[Any] = []

        async def on_request(ctx: Any, conn: Connection) -> None:
            if len(conn) < 8:
                return
            a = conn.peek(1)
            b = conn.peek(2)                      # a is still held: b is another object
            out.append(a is not b)
            out.append(bytes(await b))
            out.append(bytes(await a))
            try:
                await a
            except RuntimeError:
                out.append("awaited once")
            conn.peek(3)                          # made and dropped, never awaited
            out.append(bytes(await conn.next(4)))
            out.append(bytes(await conn.read_binary(4)))
            conn.write_binary(b"done")
            await conn.flush()

        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request)
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        s = socket.create_connection(ln.addr)
        try:
            s.sendall(b"abcdefgh")
            assert await loop.run_in_executor(None, _recv_exactly, s, 4) == b"done"
        finally:
            s.close()
        assert out == [True, b"ab", b"a", "awaited once", b"abcd", b"efgh"]
        await el.shutdown(2)
        await asyncio.wait_for(task, 2)

    run(main())


def test_no_task_in_user_code_between_steps(run: Any) -> None:
    """Between the async steps of one pass, other user code sees no current task:
    a plain on_connect, an on_request that is a callable object, the error log."""

    async def main() -> None:
        seen: dict[str, list[Any]] = {"connect": [], "call": [], "log": [], "method": []}

        class Record(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen["log"].append(asyncio.current_task())

        class Server:
            async def handle(self, ctx: Any, conn: Connection) -> None:
                seen["method"].append(asyncio.current_task())
                data = bytes(await conn.next(len(conn)))
                if data == b"boom":
                    raise RuntimeError("boom")
                conn.write_binary(data)
                await conn.flush()

        srv = Server()

        class Call:
            def __call__(self, ctx: Any, conn: Connection) -> Any:
                seen["call"].append(asyncio.current_task())
                return srv.handle(ctx, conn)             # a coroutine of a bound method

        def on_connect(ctx: Any, conn: Connection) -> None:
            seen["connect"].append(asyncio.current_task())

        log = logging.getLogger("netpoll")
        rec = Record(level=logging.ERROR)
        log.addHandler(rec)
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(Call(), on_connect=on_connect)
        task = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        socks = [socket.create_connection(ln.addr) for _ in range(N)]
        try:
            await asyncio.sleep(0.05)
            for i, s in enumerate(socks):
                s.sendall(b"boom" if i % 3 == 0 else b"abcd")
            for i, s in enumerate(socks):
                got = await loop.run_in_executor(None, _recv_exactly, s, 4)
                assert got == (b"" if i % 3 == 0 else b"abcd")
        finally:
            log.removeHandler(rec)
            for s in socks:
                s.close()
        assert len(seen["connect"]) == N and all(t is None for t in seen["connect"])
        assert len(seen["call"]) == N and all(t is None for t in seen["call"])
        assert len(seen["log"]) == N // 3 and all(t is None for t in seen["log"])
        assert len(seen["method"]) == N and all(t is not None for t in seen["method"])
        await el.shutdown(2)
        await asyncio.wait_for(task, 2)

    run(main())
