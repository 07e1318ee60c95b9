"""Listeners, addresses, dialing and configure().

Ports net_listener_test.go, the address checks of net_dialer_test.go and the poller
manager tests (poll_manager_test.go: several pollers, load balancing) of Go Netpoll
(NETPOLL.md §3), on stock asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
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
    """The pollers' fds: epoll fds, or io_uring fds on that backend."""
    kind = "io_uring" if netpoll.get_config()["backend"] == "io_uring" else "eventpoll"
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == f"anon_inode:[{kind}]":
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


# -- errors that name the address (issue 12) -------------------------------------------


def test_listen_unresolvable_host_names_it(monkeypatch):
    """A resolve failure stays a socket.gaierror, names the host, and chains the original."""

    def fake_getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(socket.gaierror) as info:
        netpoll.create_listener("tcp", "nosuchhost:80")
    assert info.value.errno == socket.EAI_NONAME
    assert info.value.strerror == "listen tcp nosuchhost:80: name or service not known"
    assert isinstance(info.value.__cause__, socket.gaierror)


def test_listen_unresolvable_host_real_resolver():
    with pytest.raises(socket.gaierror, match=r"listen tcp nosuchhost\.invalid:80: "):
        netpoll.create_listener("tcp", "nosuchhost.invalid:80")


def test_listen_port_in_use_names_the_address():
    ln = netpoll.create_listener("tcp", "127.0.0.1:0")
    try:
        host, port = ln.addr
        with pytest.raises(OSError) as info:
            netpoll.create_listener("tcp", f"{host}:{port}")
        assert info.value.errno == errno.EADDRINUSE
        assert type(info.value) is OSError
        assert info.value.strerror == f"listen tcp 127.0.0.1:{port}: address already in use"
        assert isinstance(info.value.__cause__, OSError)
    finally:
        ln.close()


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")
def test_listen_port_in_use_ipv6_brackets():
    ln = netpoll.create_listener("tcp6", "[::1]:0")
    try:
        with pytest.raises(OSError, match=rf"listen tcp6 \[::1\]:{ln.addr[1]}: address already"):
            netpoll.create_listener("tcp6", ("::1", ln.addr[1]))
    finally:
        ln.close()


def test_listen_permission_keeps_its_class(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root may bind anywhere")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match=f"listen unix {ro}/x.sock"):
        netpoll.create_listener("unix", str(ro / "x.sock"))


# -- unix socket files ------------------------------------------------------------------


def test_unix_listener_refuses_a_live_path(tmp_path):
    """Go returns EADDRINUSE for a path a live listener uses; so does netpoll."""
    path = str(tmp_path / "live.sock")
    first = netpoll.create_listener("unix", path)
    try:
        with pytest.raises(OSError) as info:
            netpoll.create_listener("unix", path)
        assert info.value.errno == errno.EADDRINUSE
        assert path in str(info.value)
        # the first listener still works and still owns its file
        assert os.path.exists(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
    finally:
        first.close()
    assert not os.path.exists(path)


def test_unix_listener_refuses_a_live_foreign_listener(tmp_path):
    path = str(tmp_path / "foreign.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(path)
        other.listen(1)
        with pytest.raises(OSError, match="address already in use"):
            netpoll.create_listener("unix", path)
        assert os.path.exists(path)


def test_unix_listener_replaces_a_stale_socket_file(tmp_path):
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)                       # bound, never listening: nobody accepts
    assert os.path.exists(path)
    ln = netpoll.create_listener("unix", path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
    finally:
        ln.close()
    assert not os.path.exists(path)


def test_unix_listener_never_removes_a_regular_file(tmp_path):
    path = tmp_path / "regular"
    path.write_text("keep me")
    with pytest.raises(OSError) as info:
        netpoll.create_listener("unix", str(path))
    assert info.value.errno == errno.EADDRINUSE
    assert str(path) in str(info.value)
    assert path.read_text() == "keep me"


def test_unix_listener_close_unlinks_only_its_own_file(tmp_path):
    """A listener whose file was replaced leaves the new file alone when it closes."""
    path = str(tmp_path / "mine.sock")
    first = netpoll.create_listener("unix", path)
    os.unlink(path)                            # someone removed it ...
    second = netpoll.create_listener("unix", path)   # ... and a new listener took the path
    try:
        first.close()
        assert os.path.exists(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
    finally:
        second.close()
    assert not os.path.exists(path)


def test_convert_listener_never_unlinks(tmp_path):
    path = str(tmp_path / "theirs.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    ln = netpoll.convert_listener(sock)
    assert isinstance(ln, netpoll.UnixListener)
    ln.close()
    assert sock.fileno() == -1
    assert os.path.exists(path)


# -- abstract unix addresses and SO_REUSEPORT ---------------------------------------------


def test_abstract_unix_listen_and_dial(run):
    async def main():
        name = f"@netpoll-test-{os.getpid()}-{id(main)}"
        ln = netpoll.create_listener("unix", name)
        assert ln.addr == name
        assert isinstance(ln, netpoll.UnixListener)
        try:
            with pytest.raises(OSError) as info:
                netpoll.create_listener("unix", name)
            assert info.value.errno == errno.EADDRINUSE
            assert name in str(info.value)
            async with serving(ln):
                conn = await netpoll.dial_connection("unix", name, timeout=5)
                try:
                    await roundtrip(conn, b"abstract")
                finally:
                    conn.close()
        finally:
            ln.close()
        # the name is free again once closed
        netpoll.create_listener("unix", name).close()
        with pytest.raises(ConnectionRefusedError, match=f"dial unix {name}"):
            await netpoll.dial_connection("unix", name, timeout=2)

    run(main())


def test_reuse_port_two_listeners_share_a_port(run):
    async def main():
        a = netpoll.create_listener("tcp", "127.0.0.1:0", reuse_port=True)
        b = netpoll.create_listener("tcp", ("127.0.0.1", a.addr[1]), reuse_port=True)
        assert a.addr == b.addr
        hits = {"a": 0, "b": 0}

        def counting(name: str) -> Any:
            async def on_request(ctx: Any, conn: Connection) -> None:
                hits[name] += 1
                await echo(ctx, conn)
            return on_request

        async with serving(a, counting("a")), serving(b, counting("b")):
            for i in range(40):
                conn = await netpoll.dial_connection("tcp", a.addr, timeout=5)
                try:
                    await roundtrip(conn, b"r%d" % i)
                finally:
                    conn.close()
        assert hits["a"] + hits["b"] == 40
        assert hits["a"] and hits["b"], hits     # the kernel spread them (p of failing ~1e-12)

    run(main())


def test_without_reuse_port_the_second_bind_fails():
    a = netpoll.create_listener("tcp", "127.0.0.1:0", reuse_port=True)
    try:
        with pytest.raises(OSError) as info:
            netpoll.create_listener("tcp", ("127.0.0.1", a.addr[1]))
        assert info.value.errno == errno.EADDRINUSE
    finally:
        a.close()


def test_listener_types():
    ln = netpoll.create_listener("tcp", "127.0.0.1:0")
    try:
        assert isinstance(ln, netpoll.TCPListener) and isinstance(ln, netpoll.Listener)
        host, port = ln.addr
        assert (host, port) == ln.addr
        assert "TCPListener" in repr(ln)
    finally:
        ln.close()


# -- the command line ------------------------------------------------------------------


def test_cli_address_in_use_prints_one_line(tmp_path):
    import subprocess
    import sys

    ln = netpoll.create_listener("tcp", "127.0.0.1:0")
    try:
        port = ln.addr[1]
        proc = subprocess.run(
            [sys.executable, "-m", "netpoll", "echo", "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=30)
    finally:
        ln.close()
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "address already in use" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_unix_path_in_use(tmp_path):
    import subprocess
    import sys

    path = str(tmp_path / "cli.sock")
    ln = netpoll.create_listener("unix", path)
    try:
        proc = subprocess.run([sys.executable, "-m", "netpoll", "echo", "--unix", path],
                              capture_output=True, text=True, timeout=30)
    finally:
        ln.close()
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and path in proc.stderr, proc.stderr


@pytest.mark.timeout(300)
def test_listener_addresses_type_check(tmp_path):
    """`host, port = ln.addr` passes mypy --strict for TCP; a Unix addr is a str."""
    pytest.importorskip("mypy")
    import subprocess
    import sys
    from pathlib import Path

    snippet = tmp_path / "typed_addr.py"
    snippet.write_text(
        "import netpoll\n"
        "\n"
        "def tcp() -> tuple[str, int]:\n"
        "    ln = netpoll.create_listener('tcp', '127.0.0.1:0')\n"
        "    host, port = ln.addr\n"
        "    ln.close()\n"
        "    return host, port + 1\n"
        "\n"
        "def unix(path: str) -> str:\n"
        "    ln = netpoll.create_listener('unix', path)\n"
        "    return ln.addr.upper()\n"
        "\n"
        "def either(network: str) -> netpoll.Listener:\n"
        "    return netpoll.create_listener(network, '127.0.0.1:0')\n")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(snippet)],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
