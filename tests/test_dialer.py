"""Dialing and client connections.

Covers the dialer contract (API.md "Listeners and dialing"; Go net_dialer.go,
NETPOLL.md §1.7, §2.12, §2.13): success and failure for every network,
DialTimeoutError and ConnectionRefusedError, the address forms, the Dialer's
read/write/idle timeouts, peer-close detection on an idle client connection,
and ports of Go's TestDialerTCP/Unix, TestDialerFdAlloc, TestFDClose and
TestDialerThenClose (no data crosses connections when fd numbers are reused).
Everything runs on loopback or Unix sockets, on stock asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import wait_for

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[Any, netpoll.Connection], Awaitable[None]]


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")

TCP_NETWORKS = [
    pytest.param("tcp", "127.0.0.1", id="tcp"),
    pytest.param("tcp4", "127.0.0.1", id="tcp4"),
    pytest.param("tcp6", "::1", id="tcp6", marks=needs_ipv6),
]


async def echo(ctx: Any, conn: netpoll.Connection) -> None:
    conn.write_buffer(await conn.reader.slice(len(conn.reader)))
    await conn.writer.flush()


def fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.asynccontextmanager
async def serving(network: str, address: Any, on_request: Handler = echo,
                  **options: Any) -> AsyncIterator[tuple[netpoll.Listener, netpoll.EventLoop]]:
    ln = netpoll.create_listener(network, address)
    server = netpoll.EventLoop(on_request, **options)
    task = asyncio.ensure_future(server.serve(ln))
    try:
        yield ln, server
    finally:
        try:
            await server.shutdown(2.0)
        finally:
            await task
            ln.close()


def closed_port(host: str) -> int:
    """A port nobody listens on (bound, then released)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.contextmanager
def full_backlog(host: str) -> Any:
    """A TCP listener whose accept queue is full: further SYNs are dropped, connects hang."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    fill: list[socket.socket] = []
    try:
        ls.bind((host, 0))
        ls.listen(0)
        port = ls.getsockname()[1]
        for _ in range(3):
            c = socket.socket(fam, socket.SOCK_STREAM)
            fill.append(c)
            c.setblocking(False)
            c.connect_ex((host, port))
        time.sleep(0.05)
        yield port
    finally:
        for c in fill:
            c.close()
        ls.close()


# -- success ------------------------------------------------------------------------


@pytest.mark.parametrize(("network", "host"), TCP_NETWORKS)
def test_dial_tcp(run: Any, network: str, host: str) -> None:
    """Go TestDialerTCP: local addr on the loopback, remote addr == the address; NODELAY set."""

    async def main() -> None:
        async with serving(network, fmt(host, 0)) as (ln, _):
            port = ln.addr[1]
            conn = await netpoll.dial_connection(network, fmt(host, port), timeout=2)
            try:
                assert conn.is_active()
                assert conn.remote_addr == (host, port)
                assert conn.local_addr[0] == host and conn.local_addr[1] > 0
                sock = socket.socket(fileno=conn.fileno())
                try:
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                finally:
                    sock.detach()
                conn.writer.write_binary(b"ping")
                await conn.writer.flush()
                assert bytes(await conn.reader.next(4)) == b"ping"
            finally:
                conn.close()
            assert not conn.is_active()

    run(main())


def test_dial_unix(run: Any, tmp_path: Path) -> None:
    """Go TestDialerUnix: the remote address is the path."""
    path = str(tmp_path / "s.sock")

    async def main() -> None:
        async with serving("unix", path):
            conn = await netpoll.dial_connection("unix", path, timeout=2)
            try:
                assert conn.remote_addr == path
                assert await conn.write(b"hello") == 5
                assert await conn.reader.read_binary(5) == b"hello"
            finally:
                conn.close()
            conn2 = await netpoll.Dialer().dial_connection("unix", path)   # no timeout
            conn2.close()

    run(main())


@pytest.mark.parametrize("address", ["127.0.0.1:{p}", "localhost:{p}", ("127.0.0.1", "{p}"),
                                     ("localhost", "{p}")])
def test_address_forms_ipv4(run: Any, address: Any) -> None:
    async def main() -> None:
        async with serving("tcp4", "127.0.0.1:0") as (ln, _):
            port = ln.addr[1]
            if isinstance(address, tuple):
                addr: Any = (address[0], port)
            else:
                addr = address.format(p=port)
            conn = await netpoll.dial_connection("tcp", addr, timeout=2)
            try:
                assert conn.remote_addr == ("127.0.0.1", port)
                assert await conn.write(b"x") == 1
                assert await conn.reader.read_binary(1) == b"x"
            finally:
                conn.close()

    run(main())


@needs_ipv6
@pytest.mark.parametrize("network", ["tcp", "tcp6"])
@pytest.mark.parametrize("form", ["string", "tuple"])
def test_address_forms_ipv6(run: Any, network: str, form: str) -> None:
    async def main() -> None:
        async with serving("tcp6", "[::1]:0") as (ln, _):
            port = ln.addr[1]
            addr: Any = f"[::1]:{port}" if form == "string" else ("::1", port)
            conn = await netpoll.dial_connection(network, addr, timeout=2)
            try:
                assert conn.remote_addr == ("::1", port)
            finally:
                conn.close()

    run(main())


def test_dial_empty_host_means_local_system(run: Any) -> None:
    async def main() -> None:
        async with serving("tcp4", "127.0.0.1:0") as (ln, _):
            conn = await netpoll.dial_connection("tcp", f":{ln.addr[1]}", timeout=2)
            conn.close()

    run(main())


@pytest.mark.parametrize(("network", "address", "text"), [
    ("udp", "127.0.0.1:80", "'udp'"),
    ("tcp5", "127.0.0.1:80", "'tcp5'"),
    ("", "127.0.0.1:80", "''"),
    ("tcp", "127.0.0.1", "'127.0.0.1'"),
    ("tcp", "::1:80", "'::1:80'"),
    ("tcp6", "[::1]80", "'[::1]80'"),
    ("tcp6", "[::1:80", "'[::1:80'"),
    ("tcp", "127.0.0.1:99999", "99999"),
    ("tcp", "127.0.0.1:-1", "-1"),
    ("tcp", "127.0.0.1:no-such-service", "'no-such-service'"),
    ("tcp", ("127.0.0.1",), "('127.0.0.1',)"),
    ("tcp", ("127.0.0.1", "80"), "('127.0.0.1', '80')"),
    ("tcp4", ("127.0.0.1", 70000), "70000"),
    ("unix", "", "''"),
])
def test_bad_network_or_address(run: Any, network: str, address: Any, text: str) -> None:
    async def main() -> None:
        with pytest.raises(ValueError) as info:
            await netpoll.dial_connection(network, address, timeout=1)
        assert text in str(info.value)

    run(main())


# -- failure ------------------------------------------------------------------------


@pytest.mark.parametrize(("network", "host"), TCP_NETWORKS)
def test_dial_refused(run: Any, network: str, host: str) -> None:
    async def main() -> None:
        before = open_fds()
        for addr in (fmt(host, closed_port(host)), (host, closed_port(host))):
            with pytest.raises(ConnectionRefusedError):
                await netpoll.dial_connection(network, addr, timeout=2)
            with pytest.raises(ConnectionRefusedError):
                await netpoll.Dialer(read_timeout=1).dial_connection(network, addr)
        assert open_fds() == before

    run(main())


def test_dial_unix_refused_and_missing(run: Any, tmp_path: Path) -> None:
    bound = str(tmp_path / "bound.sock")

    async def main() -> None:
        before = open_fds()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(bound)                     # a socket file nobody listens on
            with pytest.raises(ConnectionRefusedError):
                await netpoll.dial_connection("unix", bound, timeout=1)
        with pytest.raises(FileNotFoundError):
            await netpoll.dial_connection("unix", str(tmp_path / "missing.sock"), timeout=1)
        assert open_fds() == before

    run(main())


@pytest.mark.parametrize(("network", "host"), TCP_NETWORKS)
def test_dial_timeout(run: Any, network: str, host: str) -> None:
    """A connect that hangs (SYN dropped by a full accept queue) ends in DialTimeoutError."""

    async def main() -> None:
        before = open_fds()
        with full_backlog(host) as port:
            t0 = time.monotonic()
            with pytest.raises(netpoll.DialTimeoutError) as info:
                await netpoll.dial_connection(network, (host, port), timeout=0.2)
            elapsed = time.monotonic() - t0
            assert isinstance(info.value, TimeoutError)
            assert 0.15 <= elapsed < 1.0, elapsed
            assert "0.2" in str(info.value)
            with pytest.raises(netpoll.DialTimeoutError):
                await netpoll.Dialer(read_timeout=5).dial_connection(
                    network, fmt(host, port), timeout=0.05)
        assert open_fds() == before

    run(main())


def test_dial_timeout_covers_name_resolution(run: Any, loop_kind: str) -> None:
    """The timeout includes resolution: a resolver that never answers ends in DialTimeoutError."""
    if loop_kind != "asyncio":
        pytest.skip("the resolver is faked through the stock loop's getaddrinfo")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        calls: list[Any] = []

        async def slow_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            await asyncio.sleep(30)

        loop.getaddrinfo = slow_getaddrinfo  # type: ignore[method-assign]
        t0 = time.monotonic()
        with pytest.raises(netpoll.DialTimeoutError):
            await netpoll.dial_connection("tcp", "slow.example:80", timeout=0.1)
        assert time.monotonic() - t0 < 1.0
        assert calls and calls[0][0] == "slow.example"

    run(main())


def test_dial_cancelled_from_outside_leaks_nothing(run: Any) -> None:
    async def main() -> None:
        before = open_fds()
        with full_backlog("127.0.0.1") as port:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await netpoll.dial_connection("tcp", ("127.0.0.1", port))
        assert open_fds() == before

    run(main())


def test_dial_timeout_applies_to_unix(run: Any, tmp_path: Path) -> None:
    """The issue: 'the timeout applies to unix too'. A unix connect to a listener whose
    backlog is full waits (a blocking connect would); the dial must end in DialTimeoutError."""
    path = str(tmp_path / "full.sock")

    async def main() -> None:
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        fill: list[socket.socket] = []
        try:
            ls.bind(path)
            ls.listen(0)
            for _ in range(3):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                fill.append(c)
                c.setblocking(False)
                c.connect_ex(path)
            with pytest.raises(netpoll.DialTimeoutError):
                await netpoll.dial_connection("unix", path, timeout=0.2)
        finally:
            for c in fill:
                c.close()
            ls.close()

    run(main())


# -- the Dialer's timeouts ------------------------------------------------------------


def test_dialer_read_timeout(run: Any) -> None:
    async def main() -> None:
        async with serving("tcp", "127.0.0.1:0") as (ln, _):
            conn = await netpoll.Dialer(read_timeout=0.1).dial_connection("tcp", ln.addr)
            try:
                t0 = time.monotonic()
                with pytest.raises(netpoll.ReadTimeoutError):
                    await conn.reader.next(1)
                assert 0.05 <= time.monotonic() - t0 < 1.0
                assert conn.is_active()            # a read timeout leaves it open
                await conn.write(b"ok")
                assert bytes(await conn.reader.next(2)) == b"ok"
            finally:
                conn.close()

    run(main())


def test_dialer_write_timeout(run: Any) -> None:
    async def main() -> None:
        ls = socket.socket()                        # accepts in the kernel, never reads
        try:
            ls.bind(("127.0.0.1", 0))
            ls.listen(8)
            dialer = netpoll.Dialer(write_timeout=0.1)
            conn = await dialer.dial_connection("tcp", ls.getsockname(), timeout=2)
            try:
                conn.writer.write_binary(b"w" * (32 << 20))
                with pytest.raises(netpoll.WriteTimeoutError):
                    await conn.writer.flush()
                assert conn.is_active()            # the unsent data stays queued
            finally:
                conn.close()
        finally:
            ls.close()

    run(main())


def test_dialer_idle_timeout(run: Any) -> None:
    async def main() -> None:
        async with serving("tcp", "127.0.0.1:0") as (ln, _):
            conn = await netpoll.Dialer(idle_timeout=0.2).dial_connection("tcp", ln.addr)
            closed: list[Any] = []
            conn.add_close_callback(closed.append)
            try:
                await asyncio.sleep(0.1)
                await conn.write(b"keep")             # traffic resets the idle clock
                await conn.reader.next(4)
                await asyncio.sleep(0.12)
                assert conn.is_active()
                await wait_for(lambda: not conn.is_active(), timeout=2)
                await wait_for(lambda: closed == [conn], timeout=1)
                sock_alive = conn.fileno()
                assert sock_alive >= 0
            finally:
                conn.close()

    run(main())


# -- peer close on an idle client connection ---------------------------------------------


async def close_on_request(ctx: Any, conn: netpoll.Connection) -> None:
    await conn.reader.skip(len(conn.reader))
    conn.close()


async def say_bye_and_close(ctx: Any, conn: netpoll.Connection) -> Any:
    await conn.write(b"bye")
    conn.close()
    return ctx


@pytest.mark.parametrize("network", ["tcp", "unix"])
def test_idle_peer_close_is_noticed(run: Any, network: str, tmp_path: Path) -> None:
    """Nobody reads: the poller still sees the peer close, is_active() turns False and the
    close callbacks run once, newest first."""
    address = "127.0.0.1:0" if network == "tcp" else str(tmp_path / "s.sock")

    async def main() -> None:
        async with serving(network, address, close_on_request) as (ln, _):
            conn = await netpoll.dial_connection(network, ln.addr, timeout=2)
            order: list[str] = []
            conn.add_close_callback(lambda c: order.append("first"))
            conn.add_close_callback(lambda c: order.append("second"))
            await conn.write(b"close me")         # then nobody reads
            await wait_for(lambda: not conn.is_active(), timeout=3)
            await wait_for(lambda: len(order) == 2, timeout=1)
            assert order == ["second", "first"]
            conn.close()
            late: list[Any] = []
            conn.add_close_callback(late.append)      # on a closed connection: runs promptly
            await wait_for(lambda: late == [conn], timeout=1)
            await asyncio.sleep(0.01)
            assert order == ["second", "first"]

    run(main())


def test_data_before_peer_close_stays_readable(run: Any) -> None:
    async def main() -> None:
        async with serving("tcp", "127.0.0.1:0", echo, on_connect=say_bye_and_close) as (ln, _):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=2)
            try:
                await wait_for(lambda: not conn.is_active(), timeout=3)
                assert bytes(await conn.reader.next(3)) == b"bye"
                with pytest.raises(netpoll.EndOfStreamError):
                    await conn.reader.next(1)
            finally:
                conn.close()

    run(main())


def test_pool_drops_dead_connections(run: Any) -> None:
    """A pool of idle client connections learns of a server shutdown without polling."""

    async def main() -> None:
        async with serving("tcp", "127.0.0.1:0") as (ln, server):
            pool: set[netpoll.Connection] = set()
            for _ in range(20):
                conn = await netpoll.dial_connection("tcp", ln.addr, timeout=2)
                pool.add(conn)
                conn.add_close_callback(pool.discard)
            await wait_for(lambda: server.connections == 20, timeout=2)
            await server.shutdown(1.0)
            await wait_for(lambda: not pool, timeout=3)

    run(main())


def test_client_on_request_gets_server_pushes(run: Any) -> None:
    async def push(ctx: Any, conn: netpoll.Connection) -> Any:
        await conn.write(b"push-1;push-2;")
        return ctx

    async def main() -> None:
        async with serving("tcp", "127.0.0.1:0", echo, on_connect=push) as (ln, _):
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=2)
            got: list[bytes] = []

            async def on_push(ctx: Any, c: netpoll.Connection) -> None:
                got.append(bytes(await c.reader.until(b";")))

            try:
                conn.set_on_request(on_push)
                await wait_for(lambda: len(got) == 2, timeout=3)
                assert got == [b"push-1;", b"push-2;"]
            finally:
                conn.close()

    run(main())


def test_read_returns_empty_at_peer_close(run: Any) -> None:
    """API.md: `await read(n)` ... `b""` once the peer closed and nothing is left."""

    async def main() -> None:
        a, b = socket.socketpair()
        conn = netpoll.new_fd_connection(a.detach())
        try:
            asyncio.get_running_loop().call_later(0.05, b.close)
            assert await conn.read(10) == b""
        finally:
            conn.close()
            b.close()

    run(main())


# -- fd churn (Go TestDialerFdAlloc, TestFDClose, TestDialerThenClose) -------------------


async def warm_up(ln: netpoll.Listener, server: netpoll.EventLoop) -> None:
    """Start a poller with one connection the server has set up and closed again. (On
    io_uring the ring accepts in the kernel before the server sets the fd up, so
    `connections == 0` alone may still hold an fd the server is about to take.)"""
    warm = await netpoll.dial_connection("tcp", ln.addr, timeout=2)
    await warm.write(b"w")
    await wait_for(lambda: server.connections == 1 or not warm.is_active())
    warm.close()
    await wait_for(lambda: server.connections == 0)


def test_dialer_fd_alloc(run: Any) -> None:
    """100 dials to a server that closes in on_request; wait for !is_active; fds are reused."""

    async def main() -> None:
        async with serving("tcp", "127.0.0.1:0", close_on_request) as (ln, server):
            await warm_up(ln, server)
            before = open_fds()
            fds = set()
            for _ in range(100):
                conn = await netpoll.dial_connection("tcp", ln.addr, timeout=2)
                fds.add(conn.fileno())
                await conn.write(b"x")
                await wait_for(lambda c=conn: not c.is_active(), timeout=3)  # type: ignore[misc]
                conn.close()
            assert len(fds) < 10                 # the same numbers came back
            await wait_for(lambda: server.connections == 0)
            assert open_fds() == before

    run(main(), timeout=30)


def test_fd_close(run: Any) -> None:
    """Go TestFDClose: close right after the dial, and close after a while."""

    async def main() -> None:
        async with serving("tcp", "127.0.0.1:0") as (ln, server):
            await warm_up(ln, server)
            before = open_fds()
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=2)
            conn.close()
            conn.close()
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=2)
            await asyncio.sleep(0.2)
            conn.close()
            with pytest.raises(netpoll.ConnectionClosedError):
                conn.writer.write_binary(b"x")
            with pytest.raises(netpoll.ConnectionClosedError):
                await conn.reader.next(1)
            await wait_for(lambda: server.connections == 0)
            assert open_fds() == before

    run(main())


def test_dialer_then_close(run: Any, tmp_path: Path) -> None:
    """Go TestDialerThenClose: 20 tasks x 25 dials to two servers (tcp and unix) echo
    messages tagged with the client's fd; fd numbers are reused all the time and no byte
    ever reaches the wrong connection."""
    path = str(tmp_path / "echo.sock")

    async def main() -> None:
        async with serving("tcp", "127.0.0.1:0") as (ln_tcp, _), serving("unix", path):
            targets = [("tcp", ln_tcp.addr), ("unix", path)]
            seen_fds: list[int] = []

            async def client(task: int) -> None:
                for i in range(25):
                    network, addr = targets[(task + i) % 2]
                    conn = await netpoll.dial_connection(network, addr, timeout=5)
                    try:
                        fd = conn.fileno()
                        seen_fds.append(fd)
                        msg = f"{network}|task={task}|i={i}|fd={fd}|".encode() * (1 + i % 5)
                        if i % 4 == 3:
                            conn.writer.write_binary(msg)   # send and close without reading
                            await conn.writer.flush()
                            continue
                        await conn.write(msg)
                        got = await conn.reader.read_binary(len(msg))
                        assert got == msg, (got, msg)
                        assert len(conn.reader) == 0
                    finally:
                        conn.close()

            await asyncio.gather(*(client(t) for t in range(20)))
            assert len(seen_fds) == 500
            assert len(set(seen_fds)) < 100          # fds were reused

    run(main(), timeout=40)


def test_many_concurrent_dials(run: Any) -> None:
    async def main() -> None:
        async with serving("tcp", "127.0.0.1:0") as (ln, _):
            conns = await asyncio.gather(*(netpoll.dial_connection("tcp", ln.addr, timeout=5)
                                           for _ in range(200)))
            try:
                assert len({c.fileno() for c in conns}) == 200
                for i, c in enumerate(conns):
                    c.writer.write_binary(b"%04d" % i)
                await asyncio.gather(*(c.writer.flush() for c in conns))
                answers = await asyncio.gather(*(c.reader.read_binary(4) for c in conns))
                assert answers == [b"%04d" % i for i in range(200)]
            finally:
                for c in conns:
                    c.close()

    run(main(), timeout=30)


# -- errors that name the address (issue 12) -------------------------------------------


@pytest.mark.parametrize(("network", "host"), TCP_NETWORKS)
def test_dial_refused_names_the_address(run: Any, network: str, host: str) -> None:
    """Still a ConnectionRefusedError with its errno, chained, the address in the message."""

    async def main() -> None:
        port = closed_port(host)
        with pytest.raises(ConnectionRefusedError) as info:
            await netpoll.dial_connection(network, (host, port), timeout=2)
        assert info.value.errno == errno.ECONNREFUSED
        assert info.value.strerror == f"dial {network} {fmt(host, port)}: connection refused"
        assert isinstance(info.value.__cause__, ConnectionRefusedError)

    run(main())


def test_dial_unix_errors_name_the_path(run: Any, tmp_path: Path) -> None:
    async def main() -> None:
        missing = str(tmp_path / "missing.sock")
        with pytest.raises(FileNotFoundError) as info:
            await netpoll.dial_connection("unix", missing, timeout=1)
        assert info.value.errno == errno.ENOENT
        assert info.value.strerror == f"dial unix {missing}: no such file or directory"
        bound = str(tmp_path / "bound.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(bound)
            with pytest.raises(ConnectionRefusedError, match=f"dial unix {bound}: connection"):
                await netpoll.dial_connection("unix", bound)

    run(main())


def test_dial_unresolvable_host_names_it(run: Any) -> None:
    async def main() -> None:
        before = open_fds()
        with pytest.raises(socket.gaierror) as info:
            await netpoll.dial_connection("tcp", "nosuchhost.invalid:80", timeout=5)
        assert info.value.strerror.startswith("dial tcp nosuchhost.invalid:80: ")
        assert isinstance(info.value.__cause__, socket.gaierror)
        assert open_fds() == before

    run(main())


def test_dial_timeout_is_not_renamed(run: Any) -> None:
    """DialTimeoutError (a TimeoutError, hence an OSError) keeps its own message and class."""

    async def main() -> None:
        with full_backlog("127.0.0.1") as port:
            with pytest.raises(netpoll.DialTimeoutError) as info:
                await netpoll.dial_connection("tcp", ("127.0.0.1", port), timeout=0.05)
        assert type(info.value) is netpoll.DialTimeoutError
        assert "timed out" in str(info.value) and info.value.__cause__ is None

    run(main())


@pytest.mark.parametrize("bad", [float("nan"), -1, -0.5, float("-inf")])
def test_dial_bad_timeouts_raise_value_error(run: Any, bad: float) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="timeout"):
            await netpoll.dial_connection("tcp", "127.0.0.1:1", timeout=bad)

    run(main())
    for key in ("read_timeout", "write_timeout", "idle_timeout"):
        with pytest.raises(ValueError, match=key):
            netpoll.Dialer(**{key: bad})


def test_dial_huge_timeouts_mean_never(run: Any) -> None:
    """1e308 and inf are accepted everywhere a dialer takes seconds, and mean "never"."""

    async def main() -> None:
        async with serving("tcp", "127.0.0.1:0") as (ln, _):
            for huge in (1e308, float("inf"), 2.0**63):
                dialer = netpoll.Dialer(read_timeout=huge, write_timeout=huge, idle_timeout=huge)
                conn = await dialer.dial_connection("tcp", ln.addr, timeout=huge)
                try:
                    await conn.write(b"big")
                    assert bytes(await asyncio.wait_for(conn.reader.next(3), 5)) == b"big"
                finally:
                    conn.close()

    run(main())


# -- Connection.set_read_buffer_limit called directly (an untested extra of issue 12) ---


def test_set_read_buffer_limit_directly(run: Any) -> None:
    """A limit set on a live connection stops reading it; consuming resumes; None turns it off."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        b.setblocking(False)
        conn = netpoll.new_fd_connection(a.detach())
        try:
            limit = 64 * 1024
            conn.set_read_buffer_limit(limit)
            total = 4 << 20
            payload = os.urandom(total)
            sender = asyncio.ensure_future(loop.sock_sendall(b, payload))
            await asyncio.sleep(0.2)
            # paused: unread input is at the limit plus at most one read (<= 8 MiB book)
            assert limit <= len(conn) < total
            assert not sender.done()            # the kernel buffers filled up behind it
            buffered = len(conn)
            await asyncio.sleep(0.05)
            assert len(conn) == buffered       # nothing more read while paused
            got = bytearray(await conn.reader.read_binary(buffered))
            conn.set_read_buffer_limit(None)   # off: the rest flows
            while len(got) < total:
                got += await asyncio.wait_for(conn.read(1 << 20), 5)
            assert bytes(got) == payload
            await asyncio.wait_for(sender, 5)
            for bad in (-1, 1.5, "8"):
                with pytest.raises((TypeError, ValueError), match="set_read_buffer_limit"):
                    conn.set_read_buffer_limit(bad)  # type: ignore[arg-type]
            conn.set_read_buffer_limit(0)      # 0 = off as well
        finally:
            conn.close()
            b.close()

    run(main())


def test_dial_error_named_by_the_core_is_not_renamed(run: Any, monkeypatch: Any) -> None:
    """If the core already names the address (maybe the resolved one), net.py keeps it."""

    async def fake_dial(*args: Any) -> Any:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "dial tcp 127.0.0.1:1: connection refused")

    monkeypatch.setattr(netpoll._core, "dial", fake_dial)

    async def main() -> None:
        with pytest.raises(ConnectionRefusedError) as info:
            await netpoll.dial_connection("tcp", "localhost:1", timeout=1)
        assert info.value.strerror == "dial tcp 127.0.0.1:1: connection refused"

    run(main())
