"""Soak: many requests and many connection open/close cycles on one server.

CI sizes: 20,000 requests and 2,000 connection cycles; ``NETPOLL_FULL=1``: 1,000,000
requests and 100,000 cycles (marked ``slow``). After each run:

* the socket count is back to its baseline and the server has no connection left;
* RSS grew by less than 10% between the warm-up point (20% of the load) and the end;
* in the debug build (NETPOLL_DEBUG=1), no connection object is alive once the
  clients are gone and the garbage is collected, while the loop still runs
  (conftest checks chunks and nodes again after the loop is closed).

Both servers set read and idle timeouts, as a real one would. The "waiting"
handler is written Go style (a loop of awaited reads), so every read that
waits arms a read-timeout timer; the "batch" one only reads what is buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import socket
import struct
import time
import weakref
from typing import Any

import pytest

import netpoll
from conftest import fd_count, rss_kib, wait_for
from netpoll import Connection, ConnectionClosedError, EndOfStreamError, _buffer

pytestmark = pytest.mark.timeout(120)

FULL = os.environ.get("NETPOLL_FULL") == "1"
SIZES = [
    pytest.param("ci", id="ci"),
    pytest.param(
        "full",
        id="full",
        marks=[
            pytest.mark.slow,
            pytest.mark.skipif(not FULL, reason="full-size load: set NETPOLL_FULL=1"),
            pytest.mark.timeout(1800),
        ],
    ),
]
HDR = struct.Struct(">I")
DEBUG_BUILD = bool(_buffer.NETPOLL_DEBUG_BUILD)
READ_TIMEOUT = 30.0
IDLE_TIMEOUT = 60.0


@pytest.fixture(params=SIZES)
def size(request: pytest.FixtureRequest) -> str:
    return str(request.param)






def frame(payload: bytes) -> bytes:
    return HDR.pack(len(payload)) + payload


def live_connections() -> int:
    from netpoll import _core

    for _ in range(3):
        gc.collect()
    return int(_core._debug_counts().get("connections", 0))


async def batch_handler(ctx: Any, conn: Connection) -> None:
    r, w = conn.reader, conn.writer
    answered = False
    while len(r) >= 4:
        n = HDR.unpack(await r.peek(4))[0]
        if len(r) < 4 + n:
            break
        w.write_binary(await r.next(4 + n))
        answered = True
    if answered:
        await w.flush()


async def waiting_handler(ctx: Any, conn: Connection) -> None:
    r, w = conn.reader, conn.writer
    try:
        while True:
            n = HDR.unpack(await r.next(4))[0]
            body = await r.next(n)
            w.write_binary(HDR.pack(n))
            w.write_binary(body)
            if len(r) == 0:
                await w.flush()
    except (EndOfStreamError, ConnectionClosedError):
        return


HANDLERS = {"batch": batch_handler, "waiting": waiting_handler}
# The read+idle variants caught a leak in the core as it was on main (before the timer
# rework in the working tree): every timer entry stayed in the poller's heap until its
# deadline and kept its Connection, buffers and future alive, so closed connections
# were freed only after idle_timeout and memory grew with waits x read_timeout.
TIMEOUTS = [
    pytest.param("none", id="no-timeouts"),
    pytest.param("read+idle", id="read+idle-timeouts"),
]


@pytest.fixture(params=TIMEOUTS)
def timeouts(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Server:
    """An EventLoop that tracks the connections it accepted without keeping them alive.

    A WeakSet, not a list of weakrefs: a list would grow by one weakref per connection
    (about 80 bytes) and that growth is what the RSS check would then measure. (It did:
    the 100k-cycle soak grew 16% until this was a WeakSet.)
    """

    def __init__(self, el: netpoll.EventLoop, addr: Any) -> None:
        self.el = el
        self.addr = addr
        self.conns: weakref.WeakSet[Connection] = weakref.WeakSet()
        self.accepted = 0

    def alive(self) -> int:
        """Server-side Connection objects still alive (all closed by then)."""
        for _ in range(3):
            gc.collect()
        return len(self.conns)


@contextlib.asynccontextmanager
async def server(style: str, timeouts: str) -> Any:
    ln = netpoll.create_listener("tcp", "127.0.0.1:0")
    srv: Server

    def on_prepare(conn: Connection) -> None:
        srv.conns.add(conn)
        srv.accepted += 1

    kw: dict[str, Any] = {}
    if timeouts == "read+idle":
        kw = {"read_timeout": READ_TIMEOUT, "idle_timeout": IDLE_TIMEOUT}
    el = netpoll.EventLoop(HANDLERS[style], on_prepare=on_prepare, **kw)
    srv = Server(el, ln.addr)
    task = asyncio.ensure_future(el.serve(ln))
    await asyncio.sleep(0)
    try:
        yield srv
    finally:
        if not task.done():
            with contextlib.suppress(TimeoutError):
                await el.shutdown(5)
        assert await asyncio.wait_for(task, 10) is None
        ln.close()


async def request_client(
    addr: tuple[str, int], seed: int, batches: int, window: int, progress: list[int]
) -> None:
    """Pipelines `window` requests at a time and checks every answer byte for byte."""
    loop = asyncio.get_running_loop()
    rnd = random.Random(seed)
    pool = [frame(rnd.randbytes(rnd.randrange(8, 200))) for _ in range(64)]
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, addr)
        buf = bytearray(1 << 16)
        for b in range(batches):
            start = (b * 7 + seed) % 64
            req = b"".join(pool[(start + k) % 64] for k in range(window))
            await loop.sock_sendall(s, req)
            got = bytearray()
            while len(got) < len(req):
                n = await asyncio.wait_for(loop.sock_recv_into(s, buf), 10)
                assert n > 0, "server closed"
                got += buf[:n]
            assert got == req
            progress[0] += window
    finally:
        s.close()


@pytest.mark.parametrize("style", ["batch", "waiting"])
def test_soak_requests(run, size, style, timeouts):
    total = {"ci": 20_000, "full": 1_000_000}[size]
    conns, window = 16, 5
    batches = total // (conns * window)

    async def main() -> dict[str, Any]:
        fds = fd_count()
        progress = [0]
        async with server(style, timeouts) as srv:
            el, addr = srv.el, srv.addr
            clients = [
                asyncio.ensure_future(request_client(addr, k, batches, window, progress))
                for k in range(conns)
            ]
            t0 = time.monotonic()
            await wait_for(lambda: progress[0] >= total // 5, 600)
            gc.collect()
            warm = rss_kib()
            await asyncio.gather(*clients)
            elapsed = time.monotonic() - t0
            await wait_for(lambda: el.connections == 0, 10)
            gc.collect()
            end = rss_kib()
            alive = srv.alive()
            live = live_connections() if DEBUG_BUILD else None
        return {
            "alive": alive,
            "done": progress[0],
            "elapsed": elapsed,
            "warm": warm,
            "end": end,
            "fds": (fds, fd_count()),
            "live": live,
        }

    res = run(main(), timeout={"ci": 90, "full": 1700}[size])
    growth = (res["end"] - res["warm"]) / res["warm"]
    print(
        f"{style}/{timeouts}: {res['done']} requests in {res['elapsed']:.1f}s "
        f"({res['done'] / res['elapsed']:.0f}/s), RSS {res['warm'] >> 10} -> "
        f"{res['end'] >> 10} MiB ({growth:+.1%}), sockets {res['fds']}, "
        f"closed connections alive {res['alive']}, debug live {res['live']}"
    )
    assert res["done"] == batches * conns * window
    assert res["fds"][0] == res["fds"][1]
    assert res["alive"] == 0
    assert growth < 0.10
    if DEBUG_BUILD:
        assert res["live"] == 0




def test_soak_connection_cycles(run, size, timeouts):
    cycles = {"ci": 2_000, "full": 100_000}[size]
    workers = 16
    per = cycles // workers

    async def cycle_worker(addr: tuple[str, int], wid: int, progress: list[int]) -> None:
        loop = asyncio.get_running_loop()
        rnd = random.Random(wid)
        for i in range(per):
            if i % 3 == 0:          # a netpoll client connection
                c = await netpoll.dial_connection("tcp", addr, timeout=5)
                try:
                    msg = frame(rnd.randbytes(rnd.randrange(1, 100)))
                    await c.write(msg)
                    assert await c.reader.read_binary(len(msg)) == msg
                finally:
                    c.close()
            else:                   # a raw socket, closed normally or with a reset
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    await loop.sock_connect(s, addr)
                    msg = frame(rnd.randbytes(rnd.randrange(1, 100)))
                    await loop.sock_sendall(s, msg)
                    got = b""
                    while len(got) < len(msg):
                        part = await asyncio.wait_for(loop.sock_recv(s, 4096), 10)
                        assert part
                        got += part
                    assert got == msg
                    if i % 3 == 2:
                        s.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                finally:
                    s.close()
            progress[0] += 1

    async def main() -> dict[str, Any]:
        fds = fd_count()
        progress = [0]
        async with server("batch", timeouts) as srv:
            el, addr = srv.el, srv.addr
            t0 = time.monotonic()
            ws = [asyncio.ensure_future(cycle_worker(addr, w, progress)) for w in range(workers)]
            await wait_for(lambda: progress[0] >= cycles // 5, 600)
            gc.collect()
            warm = rss_kib()
            objects_warm = len(gc.get_objects())
            done_warm = progress[0]
            await asyncio.gather(*ws)
            elapsed = time.monotonic() - t0
            await wait_for(lambda: el.connections == 0, 10)
            gc.collect()
            end = rss_kib()
            alive = srv.alive()
            objects = len(gc.get_objects()) - objects_warm
            live = live_connections() if DEBUG_BUILD else None
        return {
            "alive": alive,
            "objects": objects,
            "measured": progress[0] - done_warm,
            "accepted": srv.accepted,
            "done": progress[0],
            "elapsed": elapsed,
            "warm": warm,
            "end": end,
            "fds": (fds, fd_count()),
            "live": live,
        }

    res = run(main(), timeout={"ci": 90, "full": 1700}[size])
    growth = (res["end"] - res["warm"]) / res["warm"]
    print(
        f"objects +{res['objects']} over {res['measured']} cycles; "
        f"cycles/{timeouts}: {res['done']} in {res['elapsed']:.1f}s ({res['done'] / res['elapsed']:.0f}/s), "
        f"RSS {res['warm'] >> 10} -> {res['end'] >> 10} MiB ({growth:+.1%}), "
        f"sockets {res['fds']}, closed connections alive {res['alive']}, "
        f"debug live {res['live']}"
    )
    assert res["done"] == per * workers
    assert res["accepted"] == per * workers
    assert res["fds"][0] == res["fds"][1]
    assert res["alive"] == 0
    assert res["objects"] < 500          # nothing left behind per cycle (gc-tracked objects)
    assert growth < 0.10
    if DEBUG_BUILD:
        assert res["live"] == 0
