"""``await listener.accept()``: Go's accept loop, for users who do not use EventLoop.

Go Netpoll's ``Listener.Accept`` is the raw ``accept`` of a non-blocking fd
(NETPOLL.md §1.6); the Python form waits for the next connection and hands
it back driven by the pollers, as ``new_fd_connection`` does. Ports the
accept half of TestListenerDialer (net_listener_test.go) on both loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import wait_for

pytestmark = pytest.mark.timeout(30)


async def _echo_once(conn: netpoll.Connection) -> None:
    data = await conn.reader.next(1)
    await conn.write(bytes(data))


def test_accept_tcp_roundtrip(run: Any) -> None:
    """TestListenerDialer: dial, accept, exchange, close on both sides."""

    async def main() -> None:
        with netpoll.create_listener("tcp", "127.0.0.1:0") as ln:
            dial = asyncio.ensure_future(netpoll.dial_connection("tcp", ln.addr, timeout=5))
            server = await asyncio.wait_for(ln.accept(), 5)
            client = await dial
            try:
                assert server.is_active()
                assert server.fileno() >= 0
                await client.write(b"ping")
                assert bytes(await asyncio.wait_for(server.reader.next(4), 5)) == b"ping"
                await server.write(b"pong")
                assert bytes(await asyncio.wait_for(client.reader.next(4), 5)) == b"pong"
                closed: list[netpoll.Connection] = []
                client.add_close_callback(closed.append)
                server.close()
                assert await asyncio.wait_for(client.read(10), 5) == b""
                client.close()
                await wait_for(lambda: closed == [client])
            finally:
                client.close()
                server.close()

    run(main())


def test_accept_unix(run: Any, tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "acc.sock")
        with netpoll.create_listener("unix", path) as ln:
            dial = asyncio.ensure_future(netpoll.dial_connection("unix", path, timeout=5))
            server = await asyncio.wait_for(ln.accept(), 5)
            client = await dial
            try:
                await client.write(b"u")
                await _echo_once(server)
                assert bytes(await asyncio.wait_for(client.reader.next(1), 5)) == b"u"
            finally:
                client.close()
                server.close()

    run(main())


def test_accept_already_queued_returns_without_waiting(run: Any) -> None:
    """A connection queued in the backlog before accept() is returned at once."""

    async def main() -> None:
        with netpoll.create_listener("tcp", "127.0.0.1:0") as ln:
            with socket.create_connection(ln.addr, timeout=5) as peer:
                conn = await asyncio.wait_for(ln.accept(), 5)
                try:
                    peer.sendall(b"queued")
                    assert bytes(await asyncio.wait_for(conn.reader.next(6), 5)) == b"queued"
                finally:
                    conn.close()

    run(main())


def test_accept_loop_serves_many(run: Any) -> None:
    """A Go-style accept loop: one task per accepted connection."""

    async def main() -> None:
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        handlers: set[asyncio.Task[None]] = set()

        async def handle(conn: netpoll.Connection) -> None:
            try:
                line = await conn.reader.until(b"\n")
                await conn.write(bytes(line).upper())
            finally:
                conn.close()

        async def accept_loop() -> None:
            while True:
                try:
                    conn = await ln.accept()
                except netpoll.ConnectionClosedError:
                    return
                task = asyncio.ensure_future(handle(conn))
                handlers.add(task)
                task.add_done_callback(handlers.discard)

        loop_task = asyncio.ensure_future(accept_loop())

        async def client(i: int) -> bytes:
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            try:
                await conn.write(b"hello %d\n" % i)
                return bytes(await asyncio.wait_for(conn.reader.until(b"\n"), 5))
            finally:
                conn.close()

        got = await asyncio.gather(*(client(i) for i in range(20)))
        assert got == [b"HELLO %d\n" % i for i in range(20)]
        ln.close()
        await asyncio.wait_for(loop_task, 5)
        if handlers:
            await asyncio.wait(handlers, timeout=5)

    run(main())


def test_several_tasks_accept_at_once(run: Any) -> None:
    """Each connection goes to exactly one of the waiting accepts."""

    async def main() -> None:
        with netpoll.create_listener("tcp", "127.0.0.1:0") as ln:
            waiters = [asyncio.ensure_future(ln.accept()) for _ in range(3)]
            await asyncio.sleep(0.01)
            peers = [socket.create_connection(ln.addr, timeout=5) for _ in range(3)]
            try:
                done, pending = await asyncio.wait(waiters, timeout=5)
                assert not pending
                conns = [t.result() for t in done]
                assert len({c.fileno() for c in conns}) == 3
                for c in conns:
                    c.close()
            finally:
                for p in peers:
                    p.close()

    run(main())


def test_close_wakes_a_waiting_accept(run: Any) -> None:
    """Closing the listener while accept() waits: ConnectionClosedError naming the address."""

    async def main() -> None:
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        host, port = ln.addr
        waiter = asyncio.ensure_future(ln.accept())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        ln.close()
        with pytest.raises(netpoll.ConnectionClosedError, match=f"127.0.0.1:{port}"):
            await asyncio.wait_for(waiter, 2)
        assert ln.fileno() == -1
        # and later calls fail at once
        with pytest.raises(netpoll.ConnectionClosedError, match="listener closed"):
            await ln.accept()

    run(main())


def test_close_callbacks_run_before_the_fd_closes(run: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """_add_close_callback: the hook EventLoop.serve uses; runs before close(fd), newest first."""

    async def main() -> None:
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        seen: list[tuple[str, int]] = []
        removed: list[str] = []

        def first(listener: netpoll.Listener) -> None:
            seen.append(("first", listener.fileno()))

        def second(listener: netpoll.Listener) -> None:
            seen.append(("second", listener.fileno()))
            raise RuntimeError("logged, not raised")

        def gone(listener: netpoll.Listener) -> None:
            removed.append("ran")

        ln._add_close_callback(first)
        ln._add_close_callback(second)
        ln._add_close_callback(gone)
        ln._remove_close_callback(gone)
        ln._remove_close_callback(gone)        # absent: no error
        fd = ln.fileno()
        ln.close()
        assert seen == [("second", fd), ("first", fd)]
        assert removed == []
        assert "listener close callback raised" in caplog.text
        ln.close()                              # idempotent: nothing runs twice
        assert len(seen) == 2
        late: list[int] = []
        ln._add_close_callback(lambda listener: late.append(listener.fileno()))
        assert late == [-1]                     # on a closed listener: at once

    run(main())


def test_close_callback_can_remove_a_reader(run: Any) -> None:
    """What serve() needs: a reader on the listening fd removed from the callback."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        fd = ln.fileno()
        loop.add_reader(fd, lambda: None)
        removed: list[int] = []

        def stop_reading(listener: netpoll.Listener) -> None:
            loop.remove_reader(fd)              # raises on uvloop if fd were closed
            removed.append(listener.fileno())

        ln._add_close_callback(stop_reading)
        ln.close()
        assert removed == [fd]

    run(main())


def test_cancelled_accept_leaves_the_listener_usable(run: Any) -> None:
    async def main() -> None:
        with netpoll.create_listener("tcp", "127.0.0.1:0") as ln:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ln.accept(), 0.05)
            with socket.create_connection(ln.addr, timeout=5):
                conn = await asyncio.wait_for(ln.accept(), 5)
                conn.close()

    run(main())


def test_accept_other_os_error_names_the_listener(run: Any) -> None:
    """An OS error from accept4 keeps its class and names the listener's address."""

    async def main() -> None:
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        try:
            port = ln.addr[1]
            fd = ln.fileno()

            class Failing:
                def accept(self) -> Any:
                    raise OSError(24, "Too many open files")

                def fileno(self) -> int:
                    return fd

            real = ln._sock
            ln._sock = Failing()  # type: ignore[assignment]
            try:
                with pytest.raises(OSError, match=f"accept tcp 127.0.0.1:{port}: too many") as ei:
                    await ln.accept()
                assert ei.value.errno == 24
                assert isinstance(ei.value.__cause__, OSError)
            finally:
                ln._sock = real
        finally:
            ln.close()

    run(main())


def test_accepted_connection_outlives_the_listener(run: Any) -> None:
    async def main() -> None:
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        with socket.create_connection(ln.addr, timeout=5) as peer:
            conn = await asyncio.wait_for(ln.accept(), 5)
            ln.close()
            try:
                peer.sendall(b"still here")
                assert bytes(await asyncio.wait_for(conn.reader.next(10), 5)) == b"still here"
            finally:
                conn.close()

    run(main())


def test_accept_leaks_no_fd(run: Any) -> None:
    async def main() -> None:
        # warm up: the first connection on a loop opens its pollers' epoll fds
        with netpoll.create_listener("tcp", "127.0.0.1:0") as ln:
            with socket.create_connection(ln.addr, timeout=5):
                (await asyncio.wait_for(ln.accept(), 5)).close()
        await asyncio.sleep(0.01)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            with netpoll.create_listener("tcp", "127.0.0.1:0") as ln:
                with socket.create_connection(ln.addr, timeout=5):
                    conn = await asyncio.wait_for(ln.accept(), 5)
                    conn.close()
                waiter = asyncio.ensure_future(ln.accept())
                await asyncio.sleep(0)
            with contextlib.suppress(netpoll.ConnectionClosedError):
                await waiter
        await asyncio.sleep(0.01)
        assert len(os.listdir("/proc/self/fd")) <= before

    run(main())
