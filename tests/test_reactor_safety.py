"""Regression tests for the reactor's safety rules (issue: one reactor you can see).

* No user code inside the epoll walk: close callbacks that close *other*
  connections and drop the last reference to them, in the middle of a batch of
  writable events during a graceful shutdown (the heap-use-after-free found under
  ASan in ``Poller._on_ready``). The debug build also asserts, for every event,
  that the poller still holds its connection.
* Close means closed at once, even while a handler waits on something else.
* A closed connection's memory goes by reference counting (no Handler cycle).
* ``Connection.__new__`` cannot crash the interpreter.
* A listener closed by the application ends ``serve()``.
* A randomized storm of callbacks closing random other connections at every hook.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import socket
import weakref
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import all_fd_count, fd_count, wait_for
from netpoll import Connection, ConnectionClosedError

pytestmark = pytest.mark.timeout(90)

NETWORKS = ["tcp", "unix"]


@pytest.fixture(params=NETWORKS)
def network(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def listen(network: str, tmp_path: Path) -> netpoll.Listener:
    if network == "unix":
        return netpoll.create_listener("unix", str(tmp_path / "s.sock"))
    return netpoll.create_listener("tcp", "127.0.0.1:0")


def client_socket(network: str, ln: netpoll.Listener) -> socket.socket:
    if network == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(ln.addr)
    else:
        s = socket.create_connection(ln.addr)
    s.setblocking(False)
    return s


@pytest.mark.timeout(200)
def test_close_callbacks_closing_others_during_writable_batch(
        run: Any, network: str, tmp_path: Path) -> None:
    """The ASan scenario: many connections turn writable in one batch during a
    graceful shutdown; each close callback closes another open connection, drops
    the last reference to it and runs the cyclic GC."""
    n_conns = 100
    reply = b"z" * (1 << 20)     # far more than the server's 4 KiB SO_SNDBUF and the
                                 # receive window of a client that does not read
    registry: dict[int, Connection] = {}
    closed: list[int] = []
    timed_out: list[int] = []

    def on_prepare(conn: Connection) -> None:
        s = socket.socket(fileno=conn.fileno())
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        finally:
            s.detach()
        key = conn.fileno()
        registry[key] = conn

        def on_close(c: Connection, key: int = key) -> None:
            closed.append(key)
            registry.pop(key, None)
            others = [k for k in registry if k != key]
            if others:
                other = registry.pop(random.choice(others))
                other.close()
                del other
            gc.collect()

        conn.add_close_callback(on_close)

    async def on_request(ctx: Any, conn: Connection) -> None:
        await conn.skip(conn.len())
        conn.write_binary(reply)
        try:
            await conn.flush()
        except netpoll.WriteTimeoutError:
            timed_out.append(conn.fileno())

    async def main() -> None:
        ln = listen(network, tmp_path)
        el = netpoll.EventLoop(on_request, on_prepare=on_prepare, write_timeout=0.2)
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        clients = [client_socket(network, ln) for _ in range(n_conns)]
        for s in clients:
            s.send(b"q")
        await wait_for(lambda: len(timed_out) == n_conns, timeout=40)
        stopping = asyncio.ensure_future(el.shutdown(60))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()

        async def drain(s: socket.socket) -> int:
            got = 0
            while True:
                try:
                    d = await loop.sock_recv(s, 1 << 20)
                except ConnectionResetError:
                    return got
                if not d:
                    return got
                got += len(d)

        received = await asyncio.wait_for(asyncio.gather(*(drain(s) for s in clients)), 60)
        await asyncio.wait_for(stopping, 60)
        await asyncio.wait_for(serving, 5)
        for s in clients:
            s.close()
        assert el.connections == 0
        assert sorted(closed) == sorted(set(closed)) and len(closed) == n_conns
        assert max(received) == len(reply)        # connections left alone got everything

    # every close callback runs a full collection: freeze what earlier tests left
    # on the heap so each collects only this test's objects (in a full suite run
    # the 100 collections otherwise cost 15-20 s)
    gc.freeze()
    try:
        run(main(), timeout=130)
    finally:
        gc.unfreeze()
        registry.clear()


def test_idle_timeout_closes_while_handler_awaits_foreign_event(run: Any) -> None:
    """50 handlers wait on an Event nobody sets: the idle timeout still closes
    every connection for the peer, runs the close callbacks, frees the fds."""
    n_conns = 50
    cancelled: list[int] = []
    callbacks: list[int] = []

    def on_prepare(conn: Connection) -> None:
        conn.add_close_callback(lambda c: callbacks.append(1))

    async def on_request(ctx: Any, conn: Connection) -> None:
        await conn.skip(conn.len())
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    async def main() -> None:
        before = fd_count()
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request, on_prepare=on_prepare, idle_timeout=0.5)
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        clients = []
        for _ in range(n_conns):
            s = socket.create_connection(ln.addr)
            s.setblocking(False)
            s.send(b"x")
            clients.append(s)
        await wait_for(lambda: el.connections == n_conns)
        t0 = loop.time()
        for s in clients:
            d = await asyncio.wait_for(loop.sock_recv(s, 10), 5)
            assert d == b""
        assert loop.time() - t0 < 3
        await wait_for(lambda: el.connections == 0 and len(callbacks) == n_conns)
        assert len(cancelled) == n_conns
        for s in clients:
            s.close()
        await el.shutdown(1)
        await serving
        await wait_for(lambda: fd_count() <= before)

    run(main(), timeout=30)


def test_user_close_while_handler_suspended_closes_for_peer_now(run: Any) -> None:
    """close() from elsewhere: the peer sees EOF at once; netpoll calls in the
    handler fail with ConnectionClosedError; close callbacks run when it returns."""
    gate: dict[str, Any] = {}
    events: list[str] = []

    async def on_request(ctx: Any, conn: Connection) -> None:
        await conn.skip(conn.len())
        gate["conn"] = conn
        await gate["event"].wait()
        try:
            conn.write_binary(b"late")
        except ConnectionClosedError:
            events.append("write refused")
        events.append("handler returned")

    async def main() -> None:
        gate["event"] = asyncio.Event()
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request)
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        s = socket.create_connection(ln.addr)
        s.setblocking(False)
        s.send(b"x")
        await wait_for(lambda: "conn" in gate)
        conn: Connection = gate["conn"]
        conn.add_close_callback(lambda c: events.append("closed"))
        conn.close()
        assert await asyncio.wait_for(loop.sock_recv(s, 10), 2) == b""
        assert events == []                      # the handler still runs
        gate["event"].set()
        await wait_for(lambda: "closed" in events)
        assert events == ["write refused", "handler returned", "closed"]
        s.close()
        await el.shutdown(1)
        await serving

    run(main())


def test_closed_connection_freed_without_cyclic_gc(run: Any) -> None:
    """Unsent output and the connection itself go by reference counting."""
    refs: list[weakref.ref[Connection]] = []

    async def on_request(ctx: Any, conn: Connection) -> None:
        await conn.skip(conn.len())
        refs.append(weakref.ref(conn))
        conn.write_binary(b"y" * (32 << 20))    # never flushed
        conn.close()

    async def main() -> None:
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request)
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        gc.disable()
        try:
            s = socket.create_connection(ln.addr)
            s.sendall(b"x")
            await wait_for(lambda: bool(refs) and el.connections == 0)
            await asyncio.sleep(0.05)
            assert refs[0]() is None, "the closed connection is kept alive by a cycle"
            s.close()
        finally:
            gc.enable()
        await el.shutdown(1)
        await serving

    run(main())


def test_unconstructed_connection_is_closed_not_a_crash() -> None:
    c = netpoll.Connection.__new__(netpoll.Connection)
    c.close()
    c.close()
    assert not c.is_active()
    assert c.fileno() == -1
    with pytest.raises(ConnectionClosedError):
        c.detach()
    with pytest.raises(ConnectionClosedError):
        c.write_binary(b"x")
    with pytest.raises(ConnectionClosedError):
        c.flush_nowait()
    assert c.output_len() == 0
    assert len(c) == 0
    c.set_read_timeout(1)
    c.set_idle_timeout(1)
    c.set_read_buffer_limit(10)
    c.set_write_buffer_limit(10)
    c.set_on_request(lambda ctx, conn: None)
    ran: list[int] = []
    c.add_close_callback(lambda conn: ran.append(1))
    assert ran == [1]
    assert c.local_addr is None and c.remote_addr is None
    aw = c.flush()
    with pytest.raises(ConnectionClosedError):
        aw.send(None)  # type: ignore[attr-defined]
    repr(c)


def test_unconstructed_connection_reads_raise(run: Any) -> None:
    async def main() -> None:
        c = netpoll.Connection.__new__(netpoll.Connection)
        for op in (lambda: c.next(1), lambda: c.read(), lambda: c.until(b"\n"),
                   lambda: c.read_byte()):
            with pytest.raises(ConnectionClosedError):
                await op()

    run(main())


@pytest.mark.parametrize("kind", ["listener", "socket"])
def test_listener_closed_by_application_ends_serve(run: Any, kind: str) -> None:
    async def main() -> None:
        if kind == "listener":
            ln: Any = netpoll.create_listener("tcp", "127.0.0.1:0")
            close = ln.close
        else:
            ln = socket.create_server(("127.0.0.1", 0))
            close = ln.close
        el = netpoll.EventLoop(lambda ctx, conn: None)
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0.01)
        close()
        await asyncio.wait_for(serving, 2)
        # the fd number is free again; a socket that reuses it works normally
        other = socket.create_server(("127.0.0.1", 0))
        other.setblocking(False)
        loop = asyncio.get_running_loop()
        c = socket.create_connection(other.getsockname())
        accepted, _ = await asyncio.wait_for(loop.sock_accept(other), 2)
        accepted.close()
        c.close()
        other.close()
        await el.shutdown(1)

    run(main())


def test_serve_after_shutdown_raises(run: Any) -> None:
    async def main() -> None:
        el = netpoll.EventLoop(lambda ctx, conn: None)
        await el.shutdown()
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        with pytest.raises(RuntimeError, match="shut down"):
            await el.serve(ln)
        ln.close()

    run(main())


def test_randomized_callbacks_close_random_connections(run: Any) -> None:
    """Callbacks at every hook close random other connections; every connection is
    closed exactly once, nothing crashes, the server drains."""
    rng = random.Random(1234)
    n_conns = 80
    live: dict[int, Connection] = {}
    close_counts: dict[int, int] = {}
    seq = iter(range(10**9))

    def maybe_close_other(self_id: int, p: float) -> None:
        if rng.random() < p:
            others = [k for k in live if k != self_id]
            if others:
                victim = live.pop(rng.choice(others))
                victim.close()
                del victim
                if rng.random() < 0.3:
                    gc.collect()

    def on_prepare(conn: Connection) -> int:
        key = next(seq)
        live[key] = conn
        close_counts[key] = 0

        def on_close(c: Connection) -> None:
            close_counts[key] += 1
            live.pop(key, None)
            maybe_close_other(key, 0.3)

        conn.add_close_callback(on_close)
        return key

    async def on_connect(ctx: int, conn: Connection) -> int:
        maybe_close_other(ctx, 0.05)
        return ctx

    def on_request(ctx: int, conn: Connection) -> None:
        buf = conn.input
        data = buf.read_binary(len(buf))
        maybe_close_other(ctx, 0.1)
        if conn.is_active():
            conn.write_binary(data)
            conn.flush_nowait()
        if rng.random() < 0.05:
            conn.close()

    def on_disconnect(ctx: int, conn: Connection) -> None:
        maybe_close_other(ctx, 0.2)

    async def main() -> None:
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(on_request, on_prepare=on_prepare, on_connect=on_connect,
                               on_disconnect=on_disconnect)
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        clients = []
        for _ in range(n_conns):
            s = socket.create_connection(ln.addr)
            s.setblocking(False)
            clients.append(s)
        for round_ in range(5):
            for s in clients:
                try:
                    s.send(b"ping%d" % round_)
                except OSError:
                    pass
            await asyncio.sleep(0.02)
            for s in rng.sample(clients, 5):
                s.close()                     # some peers go away mid-storm
        for s in clients:
            if s.fileno() >= 0 and rng.random() < 0.5:
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass                      # the server already closed it
        await asyncio.sleep(0.05)
        await asyncio.wait_for(el.shutdown(5), 10)
        await asyncio.wait_for(serving, 5)
        for s in clients:
            s.close()
        del loop

    run(main(), timeout=40)
    assert close_counts and all(v == 1 for v in close_counts.values()), close_counts
    assert not live


def test_configure_is_atomic_and_bounded(run: Any) -> None:
    before = netpoll._core.get_config()["poller_num"]
    with pytest.raises((ValueError, TypeError)):
        netpoll.configure(poller_num=2, load_balance=0)  # type: ignore[arg-type]
    assert netpoll._core.get_config()["poller_num"] == before
    with pytest.raises(ValueError, match="poller_num"):
        netpoll.configure(poller_num=2**63)
    with pytest.raises(ValueError, match="poller_num"):
        netpoll.configure(poller_num=10**6)
    assert netpoll._core.get_config()["poller_num"] == before

    async def main() -> None:
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(lambda ctx, conn: None)
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0)
        s = socket.create_connection(ln.addr)       # makes this loop's pollers
        await wait_for(lambda: el.connections == 1)
        start = all_fd_count()
        try:
            for _ in range(100):
                netpoll.configure(poller_num=2)
                netpoll.configure(poller_num=1)
            assert all_fd_count() <= start + 1
        finally:
            netpoll.configure(poller_num=before)
        s.close()
        await el.shutdown(1)
        await serving

    run(main())


def test_timeouts_reject_nan_and_clamp_huge_values(run: Any) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        conn = netpoll.new_fd_connection(a.detach())
        for setter in (conn.set_read_timeout, conn.set_write_timeout, conn.set_idle_timeout):
            with pytest.raises(ValueError):
                setter(math.nan)
            with pytest.raises(ValueError):
                setter(-1)
            setter(1e308)
            setter(math.inf)
            setter(10**400)
            setter(None)
        for limit_setter in (conn.set_read_buffer_limit, conn.set_write_buffer_limit):
            with pytest.raises((ValueError, TypeError)):
                limit_setter(1e308)
        for kw in ("read_timeout", "write_timeout", "idle_timeout"):
            with pytest.raises(ValueError):
                netpoll.EventLoop(lambda ctx, c: None, **{kw: math.nan})
            netpoll.EventLoop(lambda ctx, c: None, **{kw: 1e308})
        with pytest.raises(ValueError):
            await netpoll.dial_connection("tcp", "127.0.0.1:1", timeout=math.nan)
        conn.close()
        b.close()

    run(main())


def test_new_fd_connection_failure_leaves_fd_alone(run: Any, tmp_path: Path) -> None:
    async def main() -> None:
        f = open(tmp_path / "regular", "wb")  # noqa: SIM115
        try:
            with pytest.raises(OSError):
                netpoll.new_fd_connection(f.fileno())
            f.write(b"still open")
            f.flush()
        finally:
            f.close()
        a, b = socket.socketpair()
        conn = netpoll.new_fd_connection(a.fileno())
        with pytest.raises(ValueError, match="live netpoll connection"):
            netpoll.new_fd_connection(a.fileno())
        b.sendall(b"ok")
        assert await conn.read_binary(2) == b"ok"
        conn.detach()
        a.close()
        b.close()

    run(main())


def test_handler_signature_checked_at_construction() -> None:
    with pytest.raises(TypeError, match="on_request"):
        netpoll.EventLoop(lambda conn: None)  # type: ignore[arg-type,misc]

    async def agen(ctx: Any, conn: Any) -> Any:
        yield

    with pytest.raises(TypeError, match="generator"):
        netpoll.EventLoop(agen)
    with pytest.raises(TypeError, match="on_prepare"):
        netpoll.EventLoop(lambda ctx, conn: None, on_prepare=lambda: None)
