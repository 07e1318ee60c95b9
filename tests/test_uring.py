"""The io_uring backend (API.md "Backends"; docs/design.md "The io_uring backend").

configure(backend=...) and its fallback, the ring really being the poller, the
behaviours most sensitive to the completion model (backpressure, close and
detach while a poll is armed, many connections, large transfers), and the
reactor test files run whole in a subprocess with NETPOLL_BACKEND=io_uring.
Skipped, saying why, where io_uring cannot be set up (seccomp, old kernel).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import start, stop, wait_for
from netpoll import Connection, _core

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
WHY = _core._uring_probe()[1]
needs_uring = pytest.mark.skipif(bool(WHY), reason=f"io_uring unavailable here: {WHY}")



def ring_fds() -> int:
    # the pollers of an earlier test's closed loop are released when a loop next makes
    # pollers; release them now, so that does not happen between two counts
    _core._forget_closed_loops()
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[io_uring]"
    return n


def plain_echo(ctx: Any, conn: Connection) -> None:
    buf = conn.input
    conn.write_buffer(buf.slice(len(buf)))
    conn.flush_nowait()


# -- configure -----------------------------------------------------------------------

def test_auto_falls_back_to_epoll_when_io_uring_is_blocked(caplog: Any) -> None:
    before = netpoll.get_config()["backend"]
    _core._uring_probe((errno.EPERM, "io_uring_setup: Operation not permitted (test)"))
    try:
        with caplog.at_level("DEBUG", logger="netpoll"):
            netpoll.configure(backend="auto")
        assert netpoll.get_config()["backend"] == "epoll"
        assert "picks epoll" in caplog.text and "not permitted" in caplog.text
        with pytest.raises(OSError, match="io_uring cannot be set up here") as ei:
            netpoll.configure(backend="io_uring")
        assert ei.value.errno == errno.EPERM
        assert netpoll.get_config()["backend"] == "epoll"      # a failed call changes nothing
    finally:
        _core._uring_probe(())
        netpoll.configure(backend=before)


@needs_uring
def test_auto_picks_io_uring_here(caplog: Any) -> None:
    before = netpoll.get_config()["backend"]
    try:
        with caplog.at_level("DEBUG", logger="netpoll"):
            netpoll.configure(backend="auto")
        assert netpoll.get_config()["backend"] == "io_uring"
        assert "picks io_uring" in caplog.text
    finally:
        netpoll.configure(backend=before)


@needs_uring
def test_the_ring_is_the_poller(run: Any, uring: None) -> None:
    async def main() -> None:
        # rings of loops closed earlier (other tests) are released lazily, when a
        # new loop makes its pollers: release them now, or the count is off by one
        _core._forget_closed_loops()
        before = ring_fds()
        el, ln, task = await start(plain_echo)
        r, w = await asyncio.open_connection(*ln.addr)
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        assert ring_fds() == before + 1
        w.close()
        await stop(el, task)

    run(main())


@needs_uring
def test_switching_backends_keeps_old_connections(run: Any) -> None:
    async def main() -> None:
        before = netpoll.get_config()["backend"]
        netpoll.configure(backend="epoll")
        try:
            el, ln, task = await start(plain_echo)
            r1, w1 = await asyncio.open_connection(*ln.addr)
            w1.write(b"a")
            assert await r1.readexactly(1) == b"a"
            netpoll.configure(backend="io_uring")    # the epoll poller is retired
            r2, w2 = await asyncio.open_connection(*ln.addr)
            for r, w in ((r1, w1), (r2, w2), (r1, w1)):
                w.write(b"xyz")
                assert await r.readexactly(3) == b"xyz"
            w1.close()
            w2.close()
            await stop(el, task)
        finally:
            netpoll.configure(backend=before)

    run(main())


# -- the completion model ------------------------------------------------------------

@needs_uring
def test_many_connections_and_large_messages(run: Any, uring: None) -> None:
    async def main() -> None:
        el, ln, task = await start(plain_echo)
        conns = [await asyncio.open_connection(*ln.addr) for _ in range(60)]
        payload = os.urandom(300_000)
        for _r, w in conns[:5]:
            w.write(payload)
        for r, _w in conns[:5]:
            assert await r.readexactly(len(payload)) == payload
        for i, (_r, w) in enumerate(conns):
            w.write(b"%d;" % i)
        for i, (r, _w) in enumerate(conns):
            assert await r.readexactly(len(b"%d;" % i)) == b"%d;" % i
        for _, w in conns:
            w.close()
        await stop(el, task)

    run(main(), timeout=60)


@needs_uring
def test_write_backpressure_pauses_and_resumes(run: Any, uring: None) -> None:
    """A peer that stops reading: reading stops (interest change through the ring),
    resumes when it reads again; no byte lost or reordered."""
    async def main() -> None:
        el, ln, task = await start(plain_echo, write_buffer_limit=64 << 10)
        s = socket.create_connection(ln.addr)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        s.setblocking(False)
        loop = asyncio.get_running_loop()
        data = os.urandom(4 << 20)
        got = bytearray()
        sent = 0
        while sent < len(data) or len(got) < len(data):
            if sent < len(data):
                with contextlib.suppress(BlockingIOError):
                    sent += s.send(data[sent:sent + 65536])
            if sent > 2 << 20 and len(got) < 256 << 10:
                await asyncio.sleep(0.05)     # a while of not reading, halfway
            with contextlib.suppress(BlockingIOError):
                got += s.recv(1 << 20)
            await asyncio.sleep(0)
            assert loop.time() < 1e12
        assert bytes(got) == data
        s.close()
        await stop(el, task)

    run(main(), timeout=60)


@needs_uring
def test_close_and_detach_while_a_poll_is_armed(run: Any, uring: None) -> None:
    async def main() -> None:
        detached: list[int] = []

        def on_request(ctx: Any, conn: Connection) -> None:
            data = conn.input.next(len(conn.input))
            if data == b"close":
                conn.close()
            elif data == b"detach":
                detached.append(conn.detach())
            else:
                conn.write_binary(data)
                conn.flush_nowait()

        el, ln, task = await start(on_request)
        for _ in range(20):
            r, w = await asyncio.open_connection(*ln.addr)
            w.write(b"close")
            assert await r.read() == b""          # the peer sees the close at once
            w.close()
        r, w = await asyncio.open_connection(*ln.addr)
        w.write(b"detach")
        await wait_for(lambda: bool(detached))
        fd = detached[0]
        w.write(b"after")                          # now only ours to read
        await asyncio.sleep(0.05)
        s = socket.socket(fileno=fd)
        s.setblocking(True)
        s.settimeout(2)
        assert s.recv(100) == b"after"
        s.close()
        assert await r.read() == b""
        w.close()
        await stop(el, task)

    run(main())


@needs_uring
def test_dial_and_async_handlers(run: Any, uring: None) -> None:
    async def on_request(ctx: Any, conn: Connection) -> None:
        conn.write_buffer(await conn.slice(conn.len()))
        await conn.flush()

    async def main() -> None:
        el, ln, task = await start(on_request)
        c = await netpoll.dial_connection("tcp", f"127.0.0.1:{ln.addr[1]}", timeout=2)
        for n in (1, 5000, 200_000):
            c.write_binary(b"q" * n)
            await c.flush()
            assert await c.read_binary(n) == b"q" * n
        c.close()
        await stop(el, task)

    run(main())


# -- gathered sends, provided buffers, bursts ------------------------------------------

def counters_zero() -> bool:
    d = _core._uring_debug()
    return d["requests"] == 0 and d["parked_outputs"] == 0


@needs_uring
def test_gathered_sends_stay_in_order_through_partial_sends(run: Any, uring: None) -> None:
    """Every request answers with several flush_nowait()s of numbered 11 KiB blocks
    (below URING_GATHER_MAX, so they are gathered SENDs); the
    peer reads slowly, so SENDs come back short or with EAGAIN and the rest goes
    by EPOLLOUT: the stream must arrive whole and in order."""
    def on_request(ctx: Any, conn: Connection) -> None:
        buf = conn.input
        while len(buf) >= 4:
            n = int.from_bytes(buf.next(4), "big")
            for part in range(8):
                conn.write_binary(b"%08d:%d|" % (n, part) * 1024)
                conn.flush_nowait()

    async def main() -> None:
        el, ln, task = await start(on_request)
        r, w = await asyncio.open_connection(*ln.addr, limit=1 << 16)
        w.write(b"".join(n.to_bytes(4, "big") for n in range(40)))
        await asyncio.sleep(0.2)          # not reading: the socket fills, SENDs come back short
        for n in range(40):
            for part in range(8):
                block = b"%08d:%d|" % (n, part) * 1024
                assert await r.readexactly(len(block)) == block
        w.close()
        await stop(el, task)
        await wait_for(counters_zero)

    run(main(), timeout=60)


@needs_uring
def test_provided_buffer_ring_runs_dry_and_recovers(run: Any, uring: None,
                                                    monkeypatch: Any) -> None:
    """Two 8 KiB provided buffers for 30 connections sending 64 KiB each: the
    multishot RECVs end with ENOBUFS and are re-armed once buffers are back."""
    monkeypatch.setenv("NETPOLL_URING_BUFS", "2")
    before = _core._uring_debug()["enobufs"]

    async def main() -> None:
        el, ln, task = await start(plain_echo)
        conns = [await asyncio.open_connection(*ln.addr) for _ in range(30)]
        payloads = [os.urandom(64 << 10) for _ in conns]
        for (_r, w), p in zip(conns, payloads, strict=True):
            w.write(p)
        for (r, _w), p in zip(conns, payloads, strict=True):
            assert await r.readexactly(len(p)) == p
        assert _core._uring_debug()["enobufs"] > before
        for _, w in conns:
            w.close()
        await stop(el, task)
        await wait_for(counters_zero)

    run(main(), timeout=60)


@needs_uring
def test_close_right_after_a_gathered_send(run: Any, uring: None) -> None:
    """flush_nowait() then close() in the same handler call: the SEND is still in
    the submission queue; the close submits it first, the peer gets every byte,
    then EOF. A handler that closes *another* connection whose SEND is queued in
    the same pass: that output is kept alive until its CQE (counters return to 0)."""
    peers: dict[bytes, Connection] = {}

    def on_request(ctx: Any, conn: Connection) -> None:
        data = bytes(conn.input.next(len(conn.input)))
        if data.startswith(b"hello"):
            peers[data] = conn
            return
        if data == b"bye":
            conn.write_binary(b"x" * 12_000)      # below URING_GATHER_MAX: a SEND
            conn.flush_nowait()
            conn.close()
            return
        if data == b"kill":                   # answer the others, then close them
            for other in peers.values():
                other.write_binary(b"y" * 12_000)
                other.flush_nowait()
                other.close()
            conn.write_binary(b"done")
            conn.flush_nowait()

    async def main() -> None:
        el, ln, task = await start(on_request)
        for _ in range(10):
            r, w = await asyncio.open_connection(*ln.addr)
            w.write(b"bye")
            data = await r.read()
            while True:
                more = await r.read(1 << 20)
                if not more:
                    break
                data += more
            assert data == b"x" * 12_000
            w.close()
        others = []
        for i in range(5):
            r, w = await asyncio.open_connection(*ln.addr)
            w.write(b"hello%d" % i)
            others.append((r, w))
        await wait_for(lambda: len(peers) == 5)
        r, w = await asyncio.open_connection(*ln.addr)
        w.write(b"kill")
        assert await r.readexactly(4) == b"done"
        for r2, w2 in others:
            got = await r2.read()
            while True:
                more = await r2.read(1 << 20)
                if not more:
                    break
                got += more
            assert set(got) <= {ord("y")}          # whatever was sent, in order
            w2.close()
        w.close()
        await stop(el, task)
        await wait_for(counters_zero)

    run(main(), timeout=60)


@needs_uring
def test_a_burst_of_connects(run: Any, uring: None) -> None:
    async def main() -> None:
        el, ln, task = await start(plain_echo)
        conns = await asyncio.gather(*(asyncio.open_connection(*ln.addr) for _ in range(300)))
        for i, (_r, w) in enumerate(conns):
            w.write(b"%d." % i)
        for i, (r, _w) in enumerate(conns):
            assert await r.readexactly(len(b"%d." % i)) == b"%d." % i
        for _, w in conns:
            w.close()
        await stop(el, task)
        await wait_for(counters_zero)

    run(main(), timeout=60)


@needs_uring
def test_cli_backend_flag() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "netpoll", "echo", "--handler", "sync",
                             "--backend", "io_uring", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "io_uring backend" in line, line
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_bench_backends_flag() -> None:
    from netpoll import bench

    with pytest.raises(SystemExit) as exc:
        bench.main(["--backends", "kqueue"])
    assert exc.value.code == 2
    parser = argparse.ArgumentParser()
    assert bench._backends("epoll", parser) == ["epoll"]
    assert bench._backends("epoll,io_uring", parser) == ["epoll", "io_uring"]
    spec = bench._on_backend(netpoll.bench.harness.netpoll_echo_spec(), "io_uring")
    assert spec.name.endswith("-io_uring") and spec.env["NETPOLL_BACKEND"] == "io_uring"


# -- the reactor suites on io_uring --------------------------------------------------

SUITES = ["tests/test_connection.py", "tests/test_eventloop.py", "tests/test_dialer.py",
          "tests/test_plain_handlers.py", "tests/test_reactor_safety.py"]


@needs_uring
@pytest.mark.skipif(os.environ.get("NETPOLL_BACKEND") == "io_uring",
                    reason="the whole suite already runs on io_uring (NETPOLL_BACKEND=io_uring)")
@pytest.mark.skipif(os.environ.get("NETPOLL_CI_URING_PASS") == "1",
                    reason="CI runs the whole suite on io_uring in its second pass (.ci/run)")
@pytest.mark.timeout(900)
@pytest.mark.parametrize("suite", SUITES)
def test_suite_on_io_uring(suite: str) -> None:
    env = dict(os.environ, NETPOLL_BACKEND="io_uring", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", suite],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=850)
    tail = "\n".join(proc.stdout.splitlines()[-15:])
    assert proc.returncode == 0, f"{suite} on io_uring:\n{tail}\n{proc.stderr[-2000:]}"
    assert " passed" in tail
