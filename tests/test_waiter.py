"""Reads and flushes that wait, awaited from asyncio Tasks (reactor/waiter.pyx).

A Connection's read that needs more bytes, or a flush that must wait for the
socket, waits on a Waiter: a future whose callbacks (the waiting Task's wakeup)
run at the end of the poller's pass that resolved it, not through call_soon.
These tests pin that down over real loopback sockets, and check that it keeps
asyncio's semantics: the current task, contextvars, cancellation, wait_for,
read/write timeouts, a close from user code in the same pass, handler steps and
Task wakeups mixed in one pass.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
from typing import Any

import pytest

import netpoll
from conftest import start, stop

pytestmark = pytest.mark.timeout(60)

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def echo(ctx: Any, conn: netpoll.Connection) -> None:
    conn.write_buffer(await conn.slice(conn.len()))
    await conn.flush()


async def dial(ln: Any) -> netpoll.Connection:
    return await netpoll.dial_connection("tcp", f"127.0.0.1:{ln.addr[1]}", timeout=5)


def test_response_wakes_the_task_without_call_soon() -> None:
    """The read's wakeup does not go through loop.call_soon (stock asyncio)."""
    soon: list[Any] = []

    class Loop(asyncio.SelectorEventLoop):
        def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
            soon.append(callback)
            return super().call_soon(callback, *args, context=context)

    async def main() -> None:
        el, ln, task = await start(echo)
        try:
            conn = await dial(ln)
            me = asyncio.current_task()
            for i in range(50):
                conn.writer.write_binary(b"%04d" % i)
                await conn.writer.flush()
                soon.clear()
                assert bytes(await conn.reader.next(4)) == b"%04d" % i
                # the Task's own wakeup was never handed to call_soon
                assert not [cb for cb in soon if getattr(cb, "__self__", None) is me]
            conn.close()
        finally:
            await stop(el, task)

    loop = Loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()


def test_task_semantics_across_a_wait(run: Any) -> None:
    """After a wait: the same current task, the Task's contextvars, correct data."""

    async def client(ln: Any, k: int) -> None:
        conn = await dial(ln)
        VAR.set(f"client-{k}")
        me = asyncio.current_task()
        for i in range(100):
            msg = b"%02d%06d" % (k, i)
            conn.writer.write_binary(msg)
            await conn.writer.flush()
            got = bytes(await conn.reader.next(len(msg)))
            assert got == msg
            assert asyncio.current_task() is me
            assert VAR.get() == f"client-{k}"
        conn.close()

    async def main() -> None:
        el, ln, task = await start(echo)
        try:
            # several clients and the server's async handlers share one loop, so
            # handler steps and Task wakeups mix in the same passes
            await asyncio.gather(*(client(ln, k) for k in range(6)))
        finally:
            await stop(el, task)

    run(main(), timeout=30)


def test_cancel_while_waiting_then_read_again(run: Any) -> None:
    async def main() -> None:
        el, ln, task = await start(echo)
        try:
            conn = await dial(ln)
            waiting = asyncio.ensure_future(conn.reader.next(4))
            await asyncio.sleep(0.02)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            # the wait is gone: a new read is allowed and gets the data
            conn.writer.write_binary(b"ping")
            await conn.writer.flush()
            assert bytes(await conn.reader.next(4)) == b"ping"
            conn.close()
        finally:
            await stop(el, task)

    run(main())


def test_wait_for_times_out_and_connection_stays_usable(run: Any) -> None:
    async def main() -> None:
        el, ln, task = await start(echo)
        try:
            conn = await dial(ln)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(conn.reader.next(4), 0.05)
            conn.writer.write_binary(b"pong")
            await conn.writer.flush()
            assert bytes(await asyncio.wait_for(conn.reader.next(4), 5)) == b"pong"
            conn.close()
        finally:
            await stop(el, task)

    run(main())


def test_read_timeout_raises(run: Any) -> None:
    async def main() -> None:
        el, ln, task = await start(echo)
        try:
            conn = await dial(ln)
            conn.set_read_timeout(0.05)
            with pytest.raises(netpoll.ReadTimeoutError):
                await conn.reader.next(4)
            conn.close()
        finally:
            await stop(el, task)

    run(main())


def test_close_from_user_code_in_the_pass_wakes_the_waiting_task(run: Any) -> None:
    """A close callback (user code run by the pass) closes another connection that
    a Task is reading: that Task wakes with ConnectionClosedError."""

    async def close_at_once(ctx: Any, conn: netpoll.Connection) -> None:
        conn.close()

    async def main() -> None:
        el, ln, task = await start(close_at_once)
        try:
            a = await dial(ln)
            b = await dial(ln)
            a.add_close_callback(lambda _c: b.close())
            reading = asyncio.ensure_future(b.reader.next(4))
            await asyncio.sleep(0.01)
            a.writer.write_binary(b"x")          # the server closes a; a's callback closes b
            await a.writer.flush()
            with pytest.raises(netpoll.ConnectionClosedError):
                await asyncio.wait_for(reading, 5)
        finally:
            await stop(el, task)

    run(main())


def test_flush_that_waits_completes_when_the_peer_reads(run: Any) -> None:
    """A flush larger than the socket buffers waits; it completes once the server
    drains it, and the wait was a Waiter like a read's."""
    got = bytearray()

    async def sink(ctx: Any, conn: netpoll.Connection) -> None:
        got.extend(bytes(await conn.next(conn.len())))

    async def main() -> None:
        el, ln, task = await start(sink)
        try:
            conn = await dial(ln)
            payload = bytes(range(256)) * (16 * 1024)         # 4 MiB
            conn.writer.write_binary(payload)
            await asyncio.wait_for(conn.writer.flush(), 20)
            deadline = asyncio.get_running_loop().time() + 10
            while len(got) < len(payload):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            assert bytes(got) == payload
            conn.close()
        finally:
            await stop(el, task)

    run(main(), timeout=30)


def test_close_during_a_flush_wait_raises(run: Any) -> None:
    """A peer that never reads: the flush waits; closing the connection ends the
    wait with ConnectionClosedError."""

    async def main() -> None:
        with socket.socket() as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            conn = await netpoll.dial_connection("tcp", lsock.getsockname(), timeout=5)
            peer, _ = lsock.accept()
            with peer:
                conn.writer.write_binary(b"\0" * (64 << 20))  # more than the socket buffers take
                flushing = asyncio.ensure_future(conn.writer.flush())
                await asyncio.sleep(0.05)
                assert not flushing.done()
                conn.close()
                with pytest.raises(netpoll.ConnectionClosedError):
                    await asyncio.wait_for(flushing, 5)

    run(main(), timeout=30)


def test_flush_awaited_later_still_completes(run: Any) -> None:
    """flush() whose awaiting starts only after the output drained (as with
    ensure_future/wait_for, which start it a loop iteration later): it must
    complete, not wait for a wakeup that already happened."""
    got = bytearray()

    async def sink(ctx: Any, conn: netpoll.Connection) -> None:
        got.extend(bytes(await conn.next(conn.len())))

    async def main() -> None:
        el, ln, task = await start(sink)
        try:
            conn = await dial(ln)
            payload = b"z" * (8 << 20)
            conn.writer.write_binary(payload)
            pending = conn.writer.flush()       # more than the socket takes: it must wait
            deadline = asyncio.get_running_loop().time() + 10
            while len(got) < len(payload):     # the server drains it meanwhile
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            await asyncio.wait_for(pending, 2)
            conn.close()
        finally:
            await stop(el, task)

    run(main(), timeout=30)
