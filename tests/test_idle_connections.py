"""Idle connections carry no LinkBuffers (issue 11): the first byte in, the first
write out, ``conn.input`` and the reader/writer calls on a connection that has
had no traffic behave exactly as on one that has, and an idle connection's
server memory stays small."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import resource
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import start, stop, wait_for
from netpoll import Connection, NotEnoughDataError

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def _fresh_state(conn: Connection) -> dict[str, Any]:
    buf = conn.input
    out: dict[str, Any] = {"len": len(conn), "len()": conn.len(), "input": len(buf),
                           "output_len": conn.output_len(), "malloc_len": conn.malloc_len()}
    try:
        buf.peek(1)
    except NotEnoughDataError:
        out["peek"] = "not enough"
    try:
        buf.write_binary(b"x")
    except ValueError:
        out["write"] = "refused"
    out["same"] = conn.input is buf
    return out


FRESH = {"len": 0, "len()": 0, "input": 0, "output_len": 0, "malloc_len": 0,
         "peek": "not enough", "write": "refused", "same": True}


def test_fresh_connection_then_first_byte(run: Any) -> None:
    """on_prepare sees a connection with no traffic; it is served normally after."""

    async def main() -> None:
        states: list[dict[str, Any]] = []

        def on_prepare(conn: Connection) -> None:
            states.append(_fresh_state(conn))

        async def on_request(ctx: Any, conn: Connection) -> None:
            conn.write_binary(bytes(await conn.next(len(conn))))
            await conn.flush()

        el, ln, task = await start(on_request, on_prepare=on_prepare)
        r, w = await asyncio.open_connection(*ln.addr)
        r2, w2 = await asyncio.open_connection(*ln.addr)
        await wait_for(lambda: len(states) == 2)
        await asyncio.sleep(0.05)                  # idle a while
        w.write(b"first")
        assert await asyncio.wait_for(r.readexactly(5), 5) == b"first"
        w2.write(b"other")                         # the second one is untouched by the first
        assert await asyncio.wait_for(r2.readexactly(5), 5) == b"other"
        assert states == [FRESH, FRESH]
        for wr in (w, w2):
            wr.close()
        await stop(el, task)

    run(main())


def test_output_before_any_input(run: Any) -> None:
    """A greeting written in on_connect (no byte received yet) goes out; then echo."""

    async def main() -> None:
        async def on_connect(ctx: Any, conn: Connection) -> None:
            assert conn.output_len() == 0 and len(conn) == 0
            conn.write_binary(b"hello\n")
            assert conn.output_len() == 6
            await conn.flush()

        async def on_request(ctx: Any, conn: Connection) -> None:
            conn.write_binary(bytes(await conn.next(len(conn))))
            await conn.flush()

        el, ln, task = await start(on_request, on_connect=on_connect)
        r, w = await asyncio.open_connection(*ln.addr)
        assert await asyncio.wait_for(r.readexactly(6), 5) == b"hello\n"
        w.write(b"ping")
        assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
        w.close()
        await stop(el, task)

    run(main())


def test_dialed_connection_reads_and_writes_from_fresh(run: Any) -> None:
    """A dialed connection: zero-length reads, a read that waits, malloc, writes."""

    async def main() -> None:
        def plain_echo(ctx: Any, conn: Connection) -> None:
            buf = conn.input
            conn.write_binary(buf.next(len(buf)))
            conn.flush_nowait()

        el, ln, task = await start(plain_echo)
        c = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
        try:
            assert bytes(await c.peek(0)) == b""
            assert bytes(await c.next(0)) == b""
            await c.skip(0)
            assert len(c) == 0 and c.output_len() == 0
            waiting = asyncio.ensure_future(c.read_binary(3))   # waits on an empty input
            await asyncio.sleep(0.02)
            assert not waiting.done()
            mv = c.malloc(3)
            mv[:] = b"abc"
            await c.flush()
            assert await asyncio.wait_for(waiting, 5) == b"abc"
        finally:
            c.close()
        # a connection closed before any traffic
        d = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
        d.close()
        assert d.output_len() == 0 and len(d) == 0 and len(d.input) == 0
        await stop(el, task)

    run(main())


def test_idle_connections_closed_by_peer_and_by_server(run: Any) -> None:
    async def main() -> None:
        closed: list[int] = []

        def on_prepare(conn: Connection) -> None:
            conn.add_close_callback(lambda c: closed.append(c.output_len()))

        async def on_request(ctx: Any, conn: Connection) -> None:
            await conn.skip(len(conn))

        el, ln, task = await start(on_request, on_prepare=on_prepare, idle_timeout=0.2)
        socks = [socket.create_connection(ln.addr) for _ in range(6)]
        socks[0].close()                           # peer close of an idle connection
        await wait_for(lambda: len(closed) >= 1)
        await wait_for(lambda: len(closed) == 6, timeout=5)   # idle timeout closes the rest
        assert closed == [0] * 6
        for s in socks[1:]:
            s.close()
        await stop(el, task)

    run(main())


def _idle_bench() -> Any:
    spec = importlib.util.spec_from_file_location("idle_bench", ROOT / "benchmarks" / "idle.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(120)
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", "")
                    or os.environ.get("PYTHONMALLOC") is not None,
                    reason="RSS is not comparable under ASan / another allocator")
def test_idle_connection_rss_bound() -> None:
    """2,000 idle connections: server RSS growth per connection <= 512 B (measured ~390)."""
    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 512:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low")
    if soft != resource.RLIM_INFINITY and soft < n + 512:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n + 512, hard))
    try:
        idle = _idle_bench()
        argv = [sys.executable, "-m", "netpoll", "echo", "--port", "{port}"]
        per_conn = min(idle.measure(argv, n) for _ in range(2))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert per_conn <= 512, f"{per_conn:.0f} B of server RSS per idle connection"
