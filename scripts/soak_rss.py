#!/usr/bin/env python3
"""A long connection-cycle soak outside pytest, printing memory as it goes.

    python scripts/soak_rss.py 500000                 # cycles, stock asyncio
    python scripts/soak_rss.py 500000 --loop uvloop

The same load as tests/test_soak.py::test_soak_connection_cycles (16 workers; a third
of the cycles dial with netpoll.dial_connection, the rest use raw sockets, a third of
those close with RST), against an EventLoop echoing length-prefixed frames. Ten times
during the run it prints RSS, glibc malloc's arena (in use / free, mallinfo2), the
number of gc-tracked objects and CPython's allocated blocks, so that a leak shows as a
column that keeps growing and an allocator high-water mark as one that levels off.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import random
import socket
import struct
import sys
from typing import Any

import netpoll

HDR = struct.Struct(">I")


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def mallinfo() -> MallInfo2 | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        return libc.mallinfo2()  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return None


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def report(tag: str) -> None:
    gc.collect()
    m = mallinfo()
    heap = f"malloc in use {m.uordblks >> 10} KiB, free {m.fordblks >> 10} KiB, " if m else ""
    print(
        f"{tag:>8}: RSS {rss_kib()} KiB, {heap}gc objects {len(gc.get_objects())}, "
        f"blocks {sys.getallocatedblocks()}",
        flush=True,
    )


def frame(payload: bytes) -> bytes:
    return HDR.pack(len(payload)) + payload


async def echo_frames(ctx: Any, conn: netpoll.Connection) -> None:
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


async def worker(addr: Any, wid: int, per: int, progress: list[int]) -> None:
    loop = asyncio.get_running_loop()
    rnd = random.Random(wid)
    for i in range(per):
        msg = frame(rnd.randbytes(rnd.randrange(1, 100)))
        if i % 3 == 0:
            c = await netpoll.dial_connection("tcp", addr, timeout=5)
            try:
                await c.write(msg)
                assert await c.reader.read_binary(len(msg)) == msg
            finally:
                c.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                await loop.sock_connect(s, addr)
                await loop.sock_sendall(s, msg)
                got = b""
                while len(got) < len(msg):
                    part = await asyncio.wait_for(loop.sock_recv(s, 4096), 10)
                    assert part, "server closed"
                    got += part
                assert got == msg
                if i % 3 == 2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                s.close()
        progress[0] += 1


async def main(cycles: int, workers: int) -> None:
    ln = netpoll.create_listener("tcp", "127.0.0.1:0")
    el = netpoll.EventLoop(echo_frames)
    serving = asyncio.ensure_future(el.serve(ln))
    await asyncio.sleep(0)
    progress = [0]
    per = cycles // workers
    tasks = [asyncio.ensure_future(worker(ln.addr, w, per, progress)) for w in range(workers)]
    step = max(1, per * workers // 10)
    mark = step
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
        if progress[0] >= mark:
            report(str(progress[0]))
            mark += step
    await asyncio.gather(*tasks)
    await el.shutdown(5)
    await serving
    ln.close()
    report("end")


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cycles", type=int, nargs="?", default=100_000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    a = p.parse_args()
    report("start")
    if a.loop == "uvloop":
        import uvloop

        uvloop.run(main(a.cycles, a.workers))
    else:
        asyncio.run(main(a.cycles, a.workers))


if __name__ == "__main__":
    cli()
