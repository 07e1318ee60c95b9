"""Listeners, addresses, dialing and configure().

Ports net_listener_test.go, the address checks of net_dialer_test.go and the poller
manager tests (poll_manager_test.go: several pollers, load balancing) of Go Netpoll
(NETPOLL.md §3), on stock asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import netpoll
from conftest import wait_for
from netpoll import Connection

pytestmark = pytest.mark.timeout(60)

HAS_IPV6 = socket.has_ipv6
try:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as _s:
        _s.bind(("::1", 0))
except OSError:
    HAS_IPV6 = False


async def echo(ctx: Any, conn: Connection) -> None:
    data = await conn.reader.next(conn.reader.len())
    conn.writer.write_binary(data)
    await conn.writer.flush()


@contextlib.asynccontextmanager
async def serving(ln: netpoll.Listener, on_request: Any = echo,
                  **kw: Any) -> AsyncIterator[netpoll.EventLoop]:
    el = netpoll.EventLoop(on_request, **kw)
    task = asyncio.ensure_future(el.serve(ln))
    await asyncio.sleep(0)
    try:
        yield el
    finally:
        with contextlib.suppress(TimeoutError):
            await el.shutdown(2)
        assert await asyncio.wait_for(task, 5) is None
        ln.close()


async def roundtrip(conn: Connection, msg: bytes) -> None:
    await conn.write(msg)
    assert bytes(await asyncio.wait_for(conn.reader.next(len(msg)), 5)) == msg


def _configure(**kw: Any) -> None:
    for key, value in kw.items():
        netpoll.configure(**{key: value})


@contextlib.contextmanager
def configured(**kw: Any) -> Iterator[None]:
    """configure(**kw) for the duration of a test, then restore the defaults."""
    get = getattr(netpoll._core, "get_config", None)
    before = get() if get is not None else {
        "poller_num": 1, "buffer_size": 8192, "load_balance": "round_robin",
        "logger": logging.getLogger("netpoll")}
    _configure(**kw)
    try:
        yield
    finally:
        _configure(**{k: before[k] for k in kw})


# -- listeners ------------------------------------------------------------------------


def test_tcp_listener(run):
    async def main():
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        assert ln.network == "tcp"
        host, port = ln.addr
        assert host == "127.0.0.1" and port > 0
        assert ln.fileno() >= 0
        with socket.socket(fileno=os.dup(ln.fileno())) as s:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        async with serving(ln):
            for addr in (f"127.0.0.1:{port}", ("127.0.0.1", port)):
                conn = await netpoll.dial_connection("tcp", addr, timeout=5)
                try:
                    await roundtrip(conn, b"tcp")
                    assert conn.remote_addr == ("127.0.0.1", port)
                    assert conn.local_addr[0] == "127.0.0.1"
                finally:
                    conn.close()
        ln.close()          # idempotent

    run(main())


def test_tcp4_listener_tuple_address(run):
    async def main():
        ln = netpoll.create_listener("tcp4", ("127.0.0.1", 0))
        assert ln.network == "tcp4"
        assert ln.addr[0] == "127.0.0.1"
        async with serving(ln):
            conn = await netpoll.dial_connection("tcp4", ln.addr, timeout=5)
            try:
                await roundtrip(conn, b"tcp4")
            finally:
                conn.close()

    run(main())


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")
def test_tcp6_listener(run):
    async def main():
        ln = netpoll.create_listener("tcp6", "[::1]:0")
        assert ln.network == "tcp6"
        host, port = ln.addr
        assert host == "::1" and port > 0
        seen: list[Any] = []

        async def on_request(ctx: Any, conn: Connection) -> None:
            seen.append((conn.local_addr, conn.remote_addr))
            await echo(ctx, conn)

        async with serving(ln, on_request):
            for network, addr in (("tcp6", f"[::1]:{port}"), ("tcp", f"[::1]:{port}"),
                                  ("tcp6", ("::1", port))):
                conn = await netpoll.dial_connection(network, addr, timeout=5)
                try:
                    await roundtrip(conn, b"v6")
                    assert conn.remote_addr[:2] == ("::1", port)
                finally:
                    conn.close()
        assert seen and seen[0][0][:2] == ("::1", port)
        assert seen[0][1][0] == "::1"

    run(main())


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")
def test_tcp6_listener_refuses_ipv4(run):
    async def main():
        ln = netpoll.create_listener("tcp6", "[::1]:0")
        try:
            with pytest.raises(OSError):
                await netpoll.dial_connection("tcp4", ("127.0.0.1", ln.addr[1]), timeout=2)
        finally:
            ln.close()

    run(main())


def test_unix_listener(run, tmp_path):
    async def main():
        path = str(tmp_path / "l.sock")
        ln = netpoll.create_listener("unix", path)
        assert ln.network == "unix"
        assert ln.addr == path
        seen: list[Any] = []

        async def on_request(ctx: Any, conn: Connection) -> None:
            seen.append(conn.local_addr)
            await echo(ctx, conn)

        async with serving(ln, on_request):
            conn = await netpoll.dial_connection("unix", path, timeout=5)
            try:
                await roundtrip(conn, b"unix")
                assert conn.remote_addr == path
            finally:
                conn.close()
        assert seen == [path]

    run(main())


def test_accepted_connection_addresses(run):
    async def main():
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        seen: list[Any] = []

        async def on_request(ctx: Any, conn: Connection) -> None:
            seen.append((conn.local_addr, conn.remote_addr))
            await echo(ctx, conn)

        async with serving(ln, on_request):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            try:
                await roundtrip(conn, b"x")
                assert seen == [(ln.addr, conn.local_addr)]
                assert conn.remote_addr == ln.addr
            finally:
                conn.close()

    run(main())


def test_convert_listener_tcp(run):
    async def main():
        sock = socket.create_server(("127.0.0.1", 0))
        ln = netpoll.convert_listener(sock)
        assert ln.addr == sock.getsockname()
        assert ln.network in ("tcp", "tcp4")
        async with serving(ln):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            try:
                await roundtrip(conn, b"converted")
            finally:
                conn.close()
        sock.close()

    run(main())


def test_convert_listener_unix(run, tmp_path):
    """TestConvertListener: a Unix listener converts, serves and closes."""

    async def main():
        path = str(tmp_path / "conv.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen()
        ln = netpoll.convert_listener(sock)
        assert ln.network == "unix"
        assert ln.addr == path
        async with serving(ln):
            conn = await netpoll.dial_connection("unix", path, timeout=5)
            try:
                await roundtrip(conn, b"converted unix")
            finally:
                conn.close()
        sock.close()

    run(main())


def test_convert_listener_rejects_non_listening():
    with socket.socket() as s:
        with pytest.raises((ValueError, OSError)):
            netpoll.convert_listener(s)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        with pytest.raises((ValueError, OSError)):
            netpoll.convert_listener(s)
    with pytest.raises(TypeError):
        netpoll.convert_listener(3)  # type: ignore[arg-type]


def test_listener_bad_arguments(tmp_path):
    for network in ("udp", "ip", "", "TCP"):
        with pytest.raises((ValueError, OSError)):
            netpoll.create_listener(network, "127.0.0.1:0")
    for addr in ("127.0.0.1", "127.0.0.1:port-x", "::1:80", "127.0.0.1:70000"):
        with pytest.raises((ValueError, OSError)):
            netpoll.create_listener("tcp", addr)
    ln = netpoll.create_listener("tcp", "127.0.0.1:0")
    try:
        with pytest.raises(OSError):          # the port is taken
            netpoll.create_listener("tcp", ln.addr)
    finally:
        ln.close()


def test_listener_close_ends_nothing_else(run):
    """Closing a listener (shutdown) does not close connections dialed elsewhere."""

    async def main():
        ln1 = netpoll.create_listener("tcp", "127.0.0.1:0")
        ln2 = netpoll.create_listener("tcp", "127.0.0.1:0")
        async with serving(ln1):
            async with serving(ln2):
                c2 = await netpoll.dial_connection("tcp", ln2.addr, timeout=5)
                try:
                    await roundtrip(c2, b"two")
                finally:
                    c2.close()
                c1 = await netpoll.dial_connection("tcp", ln1.addr, timeout=5)
            try:
                await roundtrip(c1, b"one after the other server stopped")
            finally:
                c1.close()

    run(main())


# -- dialing --------------------------------------------------------------------------


def test_dial_refused(run, tmp_path):
    """TestDialerTCP / TestDialerUnix: a dial without a listener fails."""

    async def main():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await netpoll.dial_connection("tcp", f"127.0.0.1:{port}", timeout=2)
        with pytest.raises(ConnectionRefusedError):
            await netpoll.dial_connection("tcp", ("127.0.0.1", port))
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            await netpoll.dial_connection("unix", str(tmp_path / "nobody.sock"), timeout=2)

    run(main())


def test_dial_timeout(run):
    """A dial past its timeout raises DialTimeoutError (the listener's backlog is full,
    so the SYN is dropped)."""

    async def main():
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(0)
        fillers = []
        try:
            for _ in range(3):
                s = socket.socket()
                fillers.append(s)
                s.setblocking(False)
                s.connect_ex(ls.getsockname())
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(netpoll.DialTimeoutError) as ei:
                conn = await netpoll.dial_connection("tcp", ls.getsockname(), timeout=0.2)
                conn.close()
            assert isinstance(ei.value, TimeoutError)
            assert 0.15 < loop.time() - t0 < 2
        finally:
            for s in fillers:
                s.close()
            ls.close()

    run(main())


def test_dial_bad_arguments(run):
    async def main():
        with pytest.raises((ValueError, OSError)):
            await netpoll.dial_connection("udp", "127.0.0.1:80")
        with pytest.raises((ValueError, OSError)):
            await netpoll.dial_connection("tcp", "127.0.0.1")
        with pytest.raises((ValueError, TypeError)):
            netpoll.Dialer(read_timeout=-1)

    run(main())


def test_dialer_timeouts_apply(run):
    async def main():
        async def silent(ctx: Any, conn: Connection) -> None:
            await conn.reader.skip(conn.reader.len())

        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        async with serving(ln, silent):
            d = netpoll.Dialer(read_timeout=0.05, write_timeout=0.05)
            conn = await d.dial_connection("tcp", ln.addr, timeout=5)
            try:
                with pytest.raises(netpoll.ReadTimeoutError):
                    await conn.reader.next(1)
                assert conn.is_active()
                await conn.write(b"ok")      # a write the kernel takes does not time out
            finally:
                conn.close()

    run(main())


def test_dial_many_and_close(run):
    """TestDialerFdAlloc / TestDialerThenClose (scaled): many dials to a server that
    closes in on_request; fd reuse never mixes data between connections."""

    async def main():
        async def tagger(ctx: Any, conn: Connection) -> None:
            data = await conn.reader.until(b"\n")
            await conn.write(b"echo:" + bytes(data))
            conn.close()

        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        async with serving(ln, tagger):

            async def one(i: int) -> None:
                conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
                try:
                    msg = b"%d\n" % i
                    await conn.write(msg)
                    # the server answers and closes: the answer stays readable
                    # (a read waiting across the close is test_connection's business)
                    await wait_for(lambda: not conn.is_active())
                    got = await asyncio.wait_for(conn.reader.next(5 + len(msg)), 5)
                    assert bytes(got) == b"echo:" + msg
                finally:
                    conn.close()

            for batch in range(5):
                await asyncio.gather(*(one(batch * 100 + i) for i in range(100)))

    run(main(), timeout=20)


# -- configure -------------------------------------------------------------------------


def test_configure_validation():
    for bad in (0, -1):
        with pytest.raises(ValueError):
            netpoll.configure(poller_num=bad)
    for bad_type in ("2", 1.5, True):
        with pytest.raises((ValueError, TypeError)):
            netpoll.configure(poller_num=bad_type)
    for bad in (0, -8):
        with pytest.raises(ValueError):
            netpoll.configure(buffer_size=bad)
    with pytest.raises((ValueError, TypeError)):
        netpoll.configure(buffer_size="big")
    for lb in ("weighted", "", "RoundRobin"):
        with pytest.raises(ValueError):
            netpoll.configure(load_balance=lb)
    with pytest.raises((ValueError, TypeError)):
        netpoll.configure(logger="netpoll")
    netpoll.configure()      # None leaves everything as it is
    with configured(load_balance="random"):
        netpoll.configure(load_balance="round_robin")


def _epoll_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventpoll]":
                n += 1
    return n


@pytest.mark.parametrize("lb", ["round_robin", "random"])
def test_several_pollers(run, lb):
    """poller_num > 1: connections are spread over several pollers and all served."""

    async def main():
        gc.collect()
        before = _epoll_fds()
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        async with serving(ln):

            async def client(i: int) -> None:
                conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
                try:
                    for k in range(5):
                        await roundtrip(conn, b"%d-%d" % (i, k) * 50)
                finally:
                    conn.close()

            await asyncio.gather(*(client(i) for i in range(40)))
            assert _epoll_fds() - before == 4

    with configured(poller_num=4, load_balance=lb):
        run(main())


def test_poller_num_change_while_serving(run):
    """Growing and shrinking poller_num while connections are open keeps them served."""

    async def main():
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        async with serving(ln):
            conns = [await netpoll.dial_connection("tcp", ln.addr, timeout=5) for _ in range(4)]
            try:
                _configure(poller_num=3)
                conns += [await netpoll.dial_connection("tcp", ln.addr, timeout=5)
                          for _ in range(6)]
                _configure(poller_num=1)
                conns += [await netpoll.dial_connection("tcp", ln.addr, timeout=5)
                          for _ in range(2)]
                for i, c in enumerate(conns):
                    await roundtrip(c, b"conn %d" % i)
            finally:
                for c in conns:
                    c.close()

    with configured(poller_num=1):
        run(main())


def test_buffer_size_tiny_keeps_data_intact(run):
    async def main():
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        async with serving(ln):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            try:
                data = bytes(range(256)) * 400
                await conn.write(data)
                got = await asyncio.wait_for(conn.reader.next(len(data)), 5)
                assert bytes(got) == data
            finally:
                conn.close()

    with configured(buffer_size=1):
        run(main())


def test_configure_logger(run):
    """Messages go to the configured logger."""

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    custom = logging.getLogger("netpoll-test-custom")
    custom.propagate = False
    h = Collect()
    custom.addHandler(h)

    async def main():
        async def bad(ctx: Any, conn: Connection) -> None:
            raise RuntimeError("for the custom logger")

        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        async with serving(ln, bad):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            try:
                await conn.write(b"x")
                await wait_for(lambda: not conn.is_active())
            finally:
                conn.close()

    try:
        with configured(logger=custom):
            run(main())
    finally:
        custom.removeHandler(h)
    assert any(r.exc_info and "for the custom logger" in str(r.exc_info[1]) for r in records)
    for r in records:           # the traceback's frames would keep the connection alive
        r.exc_info = None


async def _use_a_connection() -> None:
    a, b = socket.socketpair()
    conn = netpoll.new_fd_connection(a.detach())
    try:
        await conn.write(b"x")
        assert b.recv(1) == b"x"
    finally:
        conn.close()
        b.close()


def test_configure_after_a_loop_closed():
    """configure() must work after a loop that used netpoll was closed."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_use_a_connection())
    finally:
        loop.close()
    try:
        netpoll.configure(poller_num=2)
    finally:
        _configure(poller_num=1)


def test_closed_loops_release_their_pollers():
    """Closed loops do not keep their pollers' epoll fds open (the pollers of the most
    recently closed loop may be released lazily, when another loop starts using netpoll)."""
    gc.collect()
    before = _epoll_fds()
    for _ in range(5):
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_use_a_connection())
        finally:
            loop.close()
        del loop
    gc.collect()
    assert _epoll_fds() <= before + 1


def test_dial_tiny_timeout_and_close(run):
    """TestConnectionDailTimeoutAndClose: dials with a 1 ms timeout either succeed or raise
    DialTimeoutError; nothing leaks or crashes."""

    async def main():
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        async with serving(ln):
            ok = timeouts = 0
            for _ in range(100):
                try:
                    conn = await netpoll.dial_connection("tcp", ln.addr, timeout=0.001)
                except netpoll.DialTimeoutError:
                    timeouts += 1
                else:
                    ok += 1
                    conn.close()
            assert ok + timeouts == 100
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            try:
                await roundtrip(conn, b"after")
            finally:
                conn.close()

    run(main())
