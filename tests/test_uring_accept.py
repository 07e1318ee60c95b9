"""Multishot accept on the io_uring backend (docs/design.md, "The io_uring backend",
*Accept*): a server on io_uring pollers accepts through one poller's ring with a
multishot ACCEPT instead of the loop's add_reader.

Covered: many concurrent connects served byte-exact; the ring path is the
default and NETPOLL_URING_ACCEPT=0 keeps the add_reader path; shutdown, the
listener closed by the application and a plain socket closed under the server
cancel the ACCEPT (a new connect is refused, no fd is left, the ring's requests
go back to zero); connections the kernel accepted just before the cancel (served
while the server runs; on shutdown answered if their request is in and then
closed, closed unserved only after the force phase; closed when the loop goes
away); the hand-over pause of run_workers; EMFILE backoff
and recovery (a subprocess with a low RLIMIT_NOFILE); configure(backend=...)
while a server runs; the fallback when the kernel refuses multishot accept.
Skipped, saying why, where io_uring cannot be set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import netpoll
from conftest import all_fd_count, fd_count, start, stop, wait_for
from netpoll import Connection, _core

pytestmark = pytest.mark.timeout(60)

WHY = _core._uring_probe()[1]
needs_uring = pytest.mark.skipif(bool(WHY), reason=f"io_uring unavailable here: {WHY}")


@pytest.fixture
def uring(uring: None, monkeypatch: Any) -> Iterator[None]:
    # conftest's, with the ring accept on (the default, whatever the environment says)
    monkeypatch.setenv("NETPOLL_URING_ACCEPT", "1")
    yield
    _core._uring_accept_debug(refuse=False, reset=True)


def plain_echo(ctx: Any, conn: Connection) -> None:
    buf = conn.input
    conn.write_buffer(buf.slice(len(buf)))
    conn.flush_nowait()


def acc() -> dict[str, Any]:
    return dict(_core._uring_accept_debug())


def ring_idle() -> bool:
    d = _core._uring_debug()
    return d["requests"] == 0 and d["parked_outputs"] == 0 and acc()["live"] == 0


async def echo_check(addr: Any, payload: bytes) -> None:
    r, w = await asyncio.open_connection(*addr[:2])
    try:
        w.write(payload)
        await w.drain()
        assert await asyncio.wait_for(r.readexactly(len(payload)), 10) == payload
    finally:
        w.close()


def refused(addr: Any) -> bool:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(addr[:2])
    except ConnectionRefusedError:
        return True
    finally:
        s.close()
    return False


async def warm_up() -> None:
    # make the loop's pollers (rings) before an fd count: they live as long as the loop
    el, ln, task = await start(plain_echo)
    await echo_check(ln.addr, b"warm")
    await stop(el, task)
    ln.close()
    await wait_for(ring_idle)


# -- served --------------------------------------------------------------------------

@needs_uring
def test_many_concurrent_connects_served_byte_exact(run: Any, uring: None) -> None:
    """200 clients connect at once; each sends its own payload and gets it back whole."""
    before = acc()

    async def main() -> None:
        el, ln, task = await start(plain_echo)
        assert acc()["live"] == 1 and acc()["armed"] == before["armed"] + 1
        payloads = [os.urandom(1 + (i * 997) % 20000) for i in range(200)]
        await asyncio.gather(*(echo_check(ln.addr, p) for p in payloads))
        assert acc()["accepted"] - before["accepted"] == 200
        await stop(el, task)
        ln.close()
        await wait_for(ring_idle)

    run(main(), timeout=60)


def ring_sq_tails() -> dict[int, int]:
    # SQEs submitted so far by each io_uring fd of this process (/proc/self/fdinfo)
    tails = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[io_uring]":
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    for line in f:
                        if line.startswith("SqTail:"):
                            tails[int(fd)] = int(line.split()[1])
    return tails


@needs_uring
def test_ring_accepted_connections_spread_over_pollers(run: Any, uring: None) -> None:
    """Two pollers: the ACCEPT lives on one ring, the connections it accepts go round
    robin over both (each arms its RECV on its own poller's ring)."""
    old = netpoll.get_config()["poller_num"]

    async def main() -> None:
        netpoll.configure(poller_num=2)
        el, ln, task = await start(plain_echo)
        assert len(_core._uring_ring_flags(asyncio.get_running_loop())) == 2
        before = ring_sq_tails()
        await asyncio.gather(*(echo_check(ln.addr, b"s%d" % i) for i in range(40)))
        after = ring_sq_tails()
        grown = sorted(after[fd] - before.get(fd, 0) for fd in after)
        assert len(grown) >= 2 and grown[-2] >= 15, grown     # both rings took connections
        await stop(el, task)
        ln.close()
        await wait_for(ring_idle)

    try:
        run(main(), timeout=30)
    finally:
        netpoll.configure(poller_num=old)


@needs_uring
@pytest.mark.parametrize("knob", ["1", "0", None])
def test_knob_selects_the_accept_path(run: Any, uring: None, monkeypatch: Any,
                                      knob: str | None) -> None:
    """Unset (the default) or NETPOLL_URING_ACCEPT=1 accepts through the ring; 0 keeps
    the loop's add_reader; both serve the same."""
    if knob is None:
        monkeypatch.delenv("NETPOLL_URING_ACCEPT", raising=False)
    else:
        monkeypatch.setenv("NETPOLL_URING_ACCEPT", knob)
    before = acc()

    async def main() -> None:
        el, ln, task = await start(plain_echo)
        await asyncio.gather(*(echo_check(ln.addr, b"%d" % i * 100) for i in range(50)))
        after = acc()
        if knob == "0":
            assert after["armed"] == before["armed"]
            assert after["accepted"] == before["accepted"]
        else:
            assert after["armed"] == before["armed"] + 1
            assert after["accepted"] - before["accepted"] == 50
        await stop(el, task)
        ln.close()
        await wait_for(ring_idle)

    run(main(), timeout=30)


@needs_uring
def test_on_prepare_and_on_connect_run_outside_the_walk(run: Any, uring: None) -> None:
    """User callbacks of a ring-accepted connection run after the walk: on_prepare may
    close another connection, on_connect may write, and nothing breaks."""
    seen: list[str] = []
    prepared: list[Connection] = []

    def on_prepare(conn: Connection) -> Any:
        if prepared:
            prepared.pop().close()     # another connection, from user code
        prepared.append(conn)
        seen.append("prepare")
        return None

    async def on_connect(ctx: Any, conn: Connection) -> Any:
        seen.append("connect")
        conn.write_binary(b"hi")
        await conn.flush()
        return ctx

    async def main() -> None:
        el, ln, task = await start(plain_echo, on_prepare=on_prepare, on_connect=on_connect)
        r1, w1 = await asyncio.open_connection(*ln.addr)
        assert await asyncio.wait_for(r1.readexactly(2), 5) == b"hi"
        r2, w2 = await asyncio.open_connection(*ln.addr)
        assert await asyncio.wait_for(r2.readexactly(2), 5) == b"hi"
        assert await asyncio.wait_for(r1.read(10), 5) == b""     # closed by on_prepare
        w2.write(b"ping")
        assert await asyncio.wait_for(r2.readexactly(4), 5) == b"ping"
        w1.close()
        w2.close()
        await stop(el, task)
        ln.close()
        await wait_for(ring_idle)

    run(main(), timeout=30)
    assert seen.count("prepare") == 2 and seen.count("connect") == 2


# -- stop, close, shutdown -----------------------------------------------------------

@needs_uring
@pytest.mark.parametrize("how", ["shutdown", "listener_close", "socket_close"])
def test_stopping_cancels_the_accept(run: Any, uring: None, how: str) -> None:
    """After shutdown, Listener.close() or close() of a plain socket the server was given,
    a new connect is refused (the ring no longer holds the listening file), no fd is
    left and the ring's request table is empty again."""

    async def main() -> None:
        await warm_up()
        socks, fds = fd_count(), all_fd_count()
        if how == "socket_close":
            raw = socket.socket()
            raw.bind(("127.0.0.1", 0))
            raw.listen(128)
            addr = raw.getsockname()
            el = netpoll.EventLoop(plain_echo)
            task = asyncio.ensure_future(el.serve(raw))
            await asyncio.sleep(0)
        else:
            el, ln, task = await start(plain_echo)
            addr = ln.addr
        assert acc()["live"] == 1
        await echo_check(addr, b"before")
        r, w = await asyncio.open_connection(*addr[:2])      # stays open across the stop
        if how == "shutdown":
            shut = asyncio.ensure_future(el.shutdown(2))
            await wait_for(lambda: acc()["live"] == 0)
            w.close()
            await shut
            await asyncio.wait_for(task, 5)
        else:
            if how == "listener_close":
                ln.close()
            else:
                raw.close()               # noticed within 0.5 s (no close hook)
            await asyncio.wait_for(task, 5)     # serve() returns
            # the connection accepted before is still served
            w.write(b"after")
            assert await asyncio.wait_for(r.readexactly(5), 5) == b"after"
            w.close()
            await stop(el, asyncio.ensure_future(asyncio.sleep(0)))
        await wait_for(ring_idle)
        assert refused(addr)
        await wait_for(lambda: fd_count() == socks and all_fd_count() == fds)

    run(main(), timeout=30)


@needs_uring
def test_accepted_before_the_cancel_are_served_while_running(run: Any, uring: None) -> None:
    """A connection the kernel accepts (its CQE still unread) just as the application
    closes the listener is served: the server is still running. (With DEFER_TASKRUN
    the ring accepts only inside our next io_uring_enter: the connection is still in
    the backlog when the listener closes and is reset, as on the add_reader path.)"""

    async def main() -> None:
        await warm_up()
        deferred = deferred_rings()
        socks = fd_count()
        el, ln, task = await start(plain_echo)
        before = acc()["accepted"]
        # one step, no await: the connect completes in the kernel (the ring accepts
        # it), then the ACCEPT is cancelled before any pass has read the CQE
        c = socket.create_connection(ln.addr, timeout=5)
        ln.close()
        c.setblocking(False)
        loop = asyncio.get_running_loop()
        if deferred:
            with pytest.raises(ConnectionResetError):
                await loop.sock_sendall(c, b"late")
                await asyncio.wait_for(loop.sock_recv(c, 4), 5)
            assert acc()["accepted"] == before
        else:
            await loop.sock_sendall(c, b"late")
            got = b""
            while len(got) < 4:
                part = await asyncio.wait_for(loop.sock_recv(c, 4 - len(got)), 5)
                assert part, "the late connection was closed instead of served"
                got += part
            assert got == b"late"
            assert acc()["accepted"] == before + 1
        c.close()
        await asyncio.wait_for(task, 5)
        await stop(el, asyncio.ensure_future(asyncio.sleep(0)))
        await wait_for(ring_idle)
        await wait_for(lambda: fd_count() == socks)

    run(main(), timeout=30)


SETUPS = ["none", "defer_taskrun,submit_all"]


async def read_to_eof(c: socket.socket) -> tuple[bytes, bool]:
    """Everything c receives until EOF: (bytes, reset?)."""
    loop = asyncio.get_running_loop()
    c.setblocking(False)
    got = b""
    try:
        while part := await asyncio.wait_for(loop.sock_recv(c, 65536), 5):
            got += part
    except ConnectionResetError:
        return got, True
    return got, False


@needs_uring
@pytest.mark.parametrize("spec", SETUPS)
def test_shutdown_answers_what_the_ring_accepted(run: Any, uring: None, monkeypatch: Any,
                                                 spec: str) -> None:
    """Clients connect and send their request while the loop does not run, then
    shutdown() comes: the connections the ring accepted before its ACCEPT was
    cancelled, and those still in the listen queue (a DEFER_TASKRUN ring accepts
    only inside our io_uring_enter; the kernel may have woken our cancelled ACCEPT
    for them), are set up, answered and then closed (EOF), never closed unanswered.
    Idle clients are closed, no fd is left and shutdown does not wait for its
    timeout."""
    monkeypatch.setenv("NETPOLL_URING_SETUP", spec)

    async def main() -> None:
        await warm_up()
        deferred = deferred_rings()
        socks = fd_count()
        el, ln, task = await start(plain_echo)
        await echo_check(ln.addr, b"armed")
        before = acc()["accepted"]
        clients = []
        for i in range(20):       # no await: no pass reads the ring meanwhile
            c = socket.create_connection(ln.addr, timeout=5)
            c.sendall(b"req%02d" % i)
            clients.append(c)
        idle = [socket.create_connection(ln.addr, timeout=5) for _ in range(3)]
        t0 = asyncio.get_running_loop().time()
        await asyncio.wait_for(el.shutdown(5), 10)
        assert asyncio.get_running_loop().time() - t0 < 2.5     # drained, not timed out
        await asyncio.wait_for(task, 5)
        for i, c in enumerate(clients):
            got, reset = await read_to_eof(c)
            assert got == b"req%02d" % i and not reset, f"client {i}: {got!r}, reset {reset}"
            c.close()
        if not deferred:
            assert acc()["accepted"] - before == 23    # all through the ring
        for c in idle:
            got, _ = await read_to_eof(c)
            assert got == b""
            c.close()
        await wait_for(ring_idle)
        assert refused(ln.addr)
        await wait_for(lambda: fd_count() == socks)

    run(main(), timeout=30)


@needs_uring
@pytest.mark.parametrize("spec", SETUPS)
def test_shutdown_force_phase_closes_late_connections(run: Any, uring: None, monkeypatch: Any,
                                                      spec: str) -> None:
    """shutdown(0) with late connections whose handler never finishes: TimeoutError,
    every connection closed, no fd left, the ring's table empty."""
    monkeypatch.setenv("NETPOLL_URING_SETUP", spec)

    async def stuck(ctx: Any, conn: Connection) -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        await warm_up()
        socks = fd_count()
        el, ln, task = await start(stuck)
        r, w = await asyncio.open_connection(*ln.addr)
        w.write(b"x")
        await wait_for(lambda: el.connections == 1)
        clients = []
        for _ in range(5):
            c = socket.create_connection(ln.addr, timeout=5)
            c.sendall(b"y")
            clients.append(c)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(el.shutdown(0), 10)
        await asyncio.wait_for(task, 5)
        assert el.connections == 0
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        for c in clients:
            got, _ = await read_to_eof(c)
            assert got == b""
            c.close()
        await wait_for(ring_idle)
        await wait_for(lambda: fd_count() == socks)

    run(main(), timeout=30)


@needs_uring
@pytest.mark.parametrize("spec", SETUPS)
def test_pause_does_not_strand_a_woken_connection(run: Any, uring: None, monkeypatch: Any,
                                                  spec: str) -> None:
    """Two servers on one listening socket (two fds, as run_workers' old and new
    worker): the kernel wakes one ACCEPT per connection (EPOLLEXCLUSIVE). If the
    woken one is cancelled by _pause_accepting() before it accepts, the other is
    never woken for that connection; the pausing server takes what is queued
    instead, so the client is answered."""
    monkeypatch.setenv("NETPOLL_URING_SETUP", spec)

    async def main() -> None:
        raw = socket.socket()
        raw.bind(("127.0.0.1", 0))
        raw.listen(128)
        raw2 = raw.dup()
        addr = raw.getsockname()
        first, second = netpoll.EventLoop(plain_echo), netpoll.EventLoop(plain_echo)
        t1 = asyncio.ensure_future(first.serve(raw))
        await asyncio.sleep(0)
        t2 = asyncio.ensure_future(second.serve(raw2))
        await asyncio.sleep(0)
        try:
            await echo_check(addr, b"warm")
            for i in range(5):
                c = socket.create_connection(addr, timeout=5)
                c.sendall(b"woken%d" % i)
                if i == 0:
                    first._pause_accepting()      # no await since the connect
                c.setblocking(False)
                loop = asyncio.get_running_loop()
                got = b""
                while len(got) < 6:
                    part = await asyncio.wait_for(loop.sock_recv(c, 16), 3)
                    assert part
                    got += part
                assert got == b"woken%d" % i
                c.close()
            await asyncio.wait_for(first.shutdown(2), 5)
            await asyncio.wait_for(second.shutdown(2), 5)
            await asyncio.wait_for(asyncio.gather(t1, t2), 5)
        finally:
            raw.close()
            raw2.close()
        await wait_for(ring_idle)

    run(main(), timeout=30)


@needs_uring
def test_pause_accepting_leaves_new_connections_in_the_queue(run: Any, uring: None) -> None:
    """run_workers' hand-over: _pause_accepting() cancels the ring's ACCEPT; what was
    accepted is still served, and a new connection stays in the listen queue (here
    taken by a plain accept(), as the successor sharing the socket would)."""

    async def main() -> None:
        raw = socket.socket()
        raw.bind(("127.0.0.1", 0))
        raw.listen(128)
        addr = raw.getsockname()
        el = netpoll.EventLoop(plain_echo)
        task = asyncio.ensure_future(el.serve(raw))
        await asyncio.sleep(0)
        try:
            r, w = await asyncio.open_connection(*addr)
            w.write(b"one")
            assert await asyncio.wait_for(r.readexactly(3), 5) == b"one"
            el._pause_accepting()
            assert acc()["live"] == 0 or deferred_rings()
            await wait_for(lambda: acc()["live"] == 0)
            accepted = acc()["accepted"]
            late = socket.create_connection(addr, timeout=5)
            late.sendall(b"queued")
            await asyncio.sleep(0.2)             # passes run: nobody accepts it
            assert acc()["accepted"] == accepted
            w.write(b"two")                      # the old connection is still served
            assert await asyncio.wait_for(r.readexactly(3), 5) == b"two"
            raw.setblocking(True)
            raw.settimeout(5)
            succ, _ = raw.accept()               # the successor's view of the queue
            assert succ.recv(16) == b"queued"
            succ.close()
            late.close()
            w.close()
            el._pause_accepting()                # twice: a no-op
            await asyncio.wait_for(el.shutdown(2), 5)
            await asyncio.wait_for(task, 5)
            el._pause_accepting()                # after shutdown: a no-op
        finally:
            raw.close()
        await wait_for(ring_idle)

    run(main(), timeout=30)


@needs_uring
def test_loop_closed_under_a_pending_accept_closes_its_fds(uring: None) -> None:
    """The loop goes away with an accepted connection's CQE still in the ring (no
    shutdown): ring teardown cancels synchronously and closes that fd (the peer sees
    the close) instead of leaking it."""
    loop = asyncio.new_event_loop()
    try:
        async def begin() -> tuple[Any, Any, Any]:
            await warm_up()
            return await start(plain_echo)

        el, ln, task = loop.run_until_complete(asyncio.wait_for(begin(), 10))
        deferred = loop.run_until_complete(asyncio.wait_for(_deferred(), 10))
        before = acc()["closed_unowned"]
        c = socket.create_connection(ln.addr, timeout=5)      # its CQE: never reaped
    finally:
        task.cancel()
        loop.close()              # no pass runs again on this loop
        asyncio.set_event_loop(None)
    try:
        socks = fd_count()                 # the listener, the client, the accepted fd
        _core._forget_closed_loops()       # closes the loop's pollers: ring teardown
        if deferred:
            # DEFER_TASKRUN: the accept never ran (only our io_uring_enter runs it); the
            # connection stays in the backlog, reset when the listener closes below
            assert acc()["closed_unowned"] == before
            assert fd_count() == socks
        else:
            assert acc()["closed_unowned"] == before + 1
            assert fd_count() == socks - 1      # the accepted fd is gone
        assert acc()["live"] == 0 and _core._uring_debug()["requests"] == 0
        ln.close()
        c.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert c.recv(10) == b""
    finally:
        c.close()
        ln.close()


# -- backoff, fallback, backend switch -----------------------------------------------

EMFILE_SERVER = textwrap.dedent(
    """
    import asyncio, json, logging, os, resource, sys, threading
    import netpoll
    from netpoll import _core

    limit = int(sys.argv[1])
    records = []

    class Keep(logging.Handler):
        def emit(self, rec):
            records.append(f"{rec.levelname}: {rec.getMessage()}")

    log = logging.getLogger("netpoll")
    log.addHandler(Keep())
    log.setLevel(logging.INFO)

    def echo(ctx, conn):
        buf = conn.input
        conn.write_buffer(buf.slice(len(buf)))
        conn.flush_nowait()

    async def main():
        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        el = netpoll.EventLoop(echo)
        # before serve(): the ring's ACCEPT keeps the limit in force when it is armed
        used = len(os.listdir("/proc/self/fd"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + limit, hard))
        serving = asyncio.ensure_future(el.serve(ln))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        cmds = asyncio.Queue()

        def stdin_reader():
            for line in sys.stdin:
                loop.call_soon_threadsafe(cmds.put_nowait, line.strip())
            loop.call_soon_threadsafe(cmds.put_nowait, "quit")

        threading.Thread(target=stdin_reader, daemon=True).start()
        print(json.dumps({"port": ln.addr[1]}), flush=True)
        while (cmd := await cmds.get()) != "quit":
            print(json.dumps({"connections": el.connections, "logs": records,
                              "acc": _core._uring_accept_debug(),
                              "backend": netpoll.get_config()["backend"]}), flush=True)
        await el.shutdown(2)
        await serving
        ln.close()

    asyncio.run(main())
    """
)


@needs_uring
def test_emfile_backoff_then_recovery() -> None:
    """Out of fds: the ACCEPT ends with EMFILE, the server backs off (one warning) and
    re-arms; once clients go, the connections left in the backlog are served."""
    limit = 20
    env = dict(os.environ, NETPOLL_BACKEND="io_uring")
    env["NETPOLL_URING_ACCEPT"] = "1"
    proc = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER, str(limit)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    socks: list[socket.socket] = []

    def ask() -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        return dict(json.loads(proc.stdout.readline()))

    def ping(s: socket.socket, msg: bytes, timeout: float) -> bool:
        s.settimeout(timeout)
        got = b""
        try:
            while len(got) < len(msg):
                part = s.recv(len(msg) - len(got))
                assert part, "closed without an answer"
                got += part
        except TimeoutError:
            return False
        assert got == msg
        return True

    try:
        port = json.loads(proc.stdout.readline())["port"]
        addr = ("127.0.0.1", port)
        served, waiting = [], []
        for i in range(limit + 30):
            s = socket.create_connection(addr, timeout=5)
            socks.append(s)
            msg = b"ping %d" % i
            s.sendall(msg)
            if not waiting and ping(s, msg, 1.0):
                served.append(s)
            else:
                waiting.append((s, msg))
        st = ask()
        assert st["backend"] == "io_uring" and st["acc"]["armed"] >= 1
        assert waiting, "the limit was never reached"
        assert any("Too many open files" in r for r in st["logs"]), st["logs"]
        armed = st["acc"]["armed"]
        # make room: the backed-off ACCEPT is re-armed and takes the backlog
        for s in served:
            s.close()
        for s, msg in waiting[:10]:
            assert ping(s, msg, 10.0), "a backlog connection was never served"
        st = ask()
        assert st["acc"]["armed"] > armed                 # re-armed after the backoff
        assert sum("Too many open files" in r for r in st["logs"]) == 1   # once a minute
        assert not [r for r in st["logs"] if r.startswith("ERROR")], st["logs"]
    finally:
        for s in socks:
            s.close()
        with contextlib.suppress(Exception):
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == 0


@needs_uring
def test_kernel_refusing_multishot_accept_falls_back(run: Any, uring: None) -> None:
    """EINVAL on the first CQE (simulated with an unknown accept flag): the server goes
    on with the loop's add_reader, and later servers start there."""
    _core._uring_accept_debug(refuse=True)

    async def main() -> None:
        before = acc()
        el, ln, task = await start(plain_echo)
        await wait_for(lambda: acc()["refused"])
        await asyncio.gather(*(echo_check(ln.addr, b"x%d" % i) for i in range(20)))
        assert acc()["accepted"] == before["accepted"]
        assert acc()["armed"] == before["armed"] + 1
        await stop(el, task)
        ln.close()
        # a later server does not try again
        el, ln, task = await start(plain_echo)
        await echo_check(ln.addr, b"again")
        assert acc()["armed"] == before["armed"] + 1
        await stop(el, task)
        ln.close()
        await wait_for(ring_idle)

    run(main(), timeout=30)


@needs_uring
def test_backend_switch_moves_the_accept(run: Any, uring: None) -> None:
    """configure(backend="epoll") while a server accepts through a ring: the ACCEPT is
    cancelled and the server goes on with the loop's add_reader; a connect racing the
    switch (its CQE not yet read) is served, not dropped; the old ring keeps serving
    its connections and closes once they and its ACCEPT are gone. Switching back to
    io_uring leaves a server on add_reader there (until its next arm: a backoff);
    a new server accepts through the new ring."""

    async def main() -> None:
        _core._forget_closed_loops()
        others = ring_fds()          # not ours (uvloop's libuv has a ring of its own)
        await warm_up()
        el, ln, task = await start(plain_echo)
        r, w = await asyncio.open_connection(*ln.addr)     # stays on the old ring
        w.write(b"one")
        assert await r.readexactly(3) == b"one"
        before = acc()
        assert before["live"] == 1
        c = socket.create_connection(ln.addr, timeout=5)   # accepted by the ring, unread
        netpoll.configure(backend="epoll")
        loop = asyncio.get_running_loop()
        c.setblocking(False)
        await loop.sock_sendall(c, b"race")
        assert await asyncio.wait_for(loop.sock_recv(c, 4), 5) == b"race"
        c.close()
        await wait_for(lambda: acc()["live"] == 0)         # its final CQE: the next pass
        await asyncio.gather(*(echo_check(ln.addr, b"e%d" % i) for i in range(20)))
        assert acc()["accepted"] - before["accepted"] <= 1      # the racing one at most
        w.write(b"two")                                         # the old ring still serves
        assert await r.readexactly(3) == b"two"
        w.close()
        await wait_for(lambda: ring_fds() == others)    # retired rings closed once empty
        netpoll.configure(backend="io_uring")
        armed = acc()["armed"]
        await asyncio.gather(*(echo_check(ln.addr, b"u%d" % i) for i in range(20)))
        assert acc()["armed"] == armed                     # still on add_reader
        el2, ln2, task2 = await start(plain_echo)
        assert acc()["armed"] == armed + 1 and acc()["live"] == 1
        await echo_check(ln2.addr, b"new ring")
        await stop(el, task)
        await stop(el2, task2)
        ln.close()
        ln2.close()
        await wait_for(ring_idle)

    run(main(), timeout=30)


def deferred_rings() -> bool:
    return any("defer_taskrun" in f for f in _core._uring_ring_flags(asyncio.get_running_loop()))


async def _deferred() -> bool:
    return deferred_rings()


def ring_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[io_uring]"
    return n


@needs_uring
@pytest.mark.parametrize("spec", ["none", "coop_taskrun,taskrun_flag", "defer_taskrun,submit_all"])
def test_listener_close_refuses_at_once(run: Any, uring: None, monkeypatch: Any,
                                        spec: str) -> None:
    """Listener.close() releases the listening socket before it returns, on every ring
    setup: a connect made before the loop runs again is refused. (On a DEFER_TASKRUN
    ring the cancelled ACCEPT held the socket's file until the loop's next pass.)"""
    monkeypatch.setenv("NETPOLL_URING_SETUP", spec)

    async def main() -> None:
        el, ln, task = await start(plain_echo)
        addr = ln.addr
        await echo_check(addr, b"before")
        ln.close()
        assert refused(addr)          # no await in between: the loop has not run
        await asyncio.wait_for(task, 5)
        await stop(el, asyncio.ensure_future(asyncio.sleep(0)))
        await wait_for(ring_idle)

    run(main(), timeout=30)
