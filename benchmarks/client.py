"""Client-side benchmark: netpoll clients vs asyncio/uvloop Streams clients.

The server is the C epoll echo (it returns every frame unchanged), so the
numbers are the clients' own cost. Scenarios, as netpoll-benchmark does:

* pool — 100 long-lived connections, one request in flight on each
  (netpoll: examples/rpc_client.RpcPool; Streams: one task per connection);
* mux  — 100 concurrent callers over 4 connections, responses matched by a
  sequence id (netpoll: examples/mux_client.MuxClient, writes through
  mux.ShardQueue; Streams: a reader task per connection dispatching futures).

Frames are 4-byte big-endian length + payload (mux adds a 4-byte sequence id).
The client runs pinned to CPU 0 and the server to CPU 1; each case is
repeated (interleaved) and the medians reported.

    python benchmarks/client.py [--duration 3] [--repeat 3] [--size 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

CALLERS = 100
MUX_CONNS = 4


# -- workers (run in a subprocess) -------------------------------------------------

async def drive(call: Any, duration: float) -> dict[str, Any]:
    lat: list[float] = []
    stop = time.perf_counter() + duration
    payload = os.urandom(ARGS.size)

    async def caller() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            got = await call(payload)
            lat.append(time.perf_counter() - t0)
            if len(got) != len(payload):
                raise AssertionError("short response")

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    lat.sort()
    n = len(lat)
    return {"requests": n, "rps": n / dt, "p50_us": lat[n // 2] * 1e6,
            "p99_us": lat[int(n * 0.99)] * 1e6,
            "user_us": (r1.ru_utime - r0.ru_utime) * 1e6 / n,
            "cpu_us": (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1e6 / n}


async def netpoll_pool(port: int) -> dict[str, Any]:
    from rpc_client import RpcPool

    async with RpcPool("tcp", ("127.0.0.1", port), size=CALLERS) as pool:
        await drive(pool.call, 0.3)
        return await drive(pool.call, ARGS.duration)


async def netpoll_mux(port: int) -> dict[str, Any]:
    from mux_client import MuxClient

    async with MuxClient("tcp", ("127.0.0.1", port), connections=MUX_CONNS) as mux:
        await drive(mux.call, 0.3)
        return await drive(mux.call, ARGS.duration)


async def streams_pool(port: int) -> dict[str, Any]:
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CALLERS)]
    for c in conns:
        free.put_nowait(c)

    async def call(payload: bytes) -> bytes:
        r, w = await free.get()
        try:
            w.write(struct.pack(">I", len(payload)) + payload)
            n = struct.unpack(">I", await r.readexactly(4))[0]
            return await r.readexactly(n)
        finally:
            free.put_nowait((r, w))

    await drive(call, 0.3)
    res = await drive(call, ARGS.duration)
    for _, w in conns:
        w.close()
    return res


async def streams_mux(port: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    pending: dict[int, asyncio.Future[bytes]] = {}
    chans = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MUX_CONNS)]
    seq = 0

    async def reader(r: asyncio.StreamReader) -> None:
        while True:
            n, s = struct.unpack(">II", await r.readexactly(8))
            body = await r.readexactly(n - 4)
            fut = pending.pop(s, None)
            if fut is not None and not fut.done():
                fut.set_result(body)

    readers = [asyncio.ensure_future(reader(r)) for r, _ in chans]

    async def call(payload: bytes) -> bytes:
        nonlocal seq
        seq += 1
        s = seq
        fut: asyncio.Future[bytes] = loop.create_future()
        pending[s] = fut
        _, w = chans[s % MUX_CONNS]
        w.write(struct.pack(">II", len(payload) + 4, s) + payload)
        return await fut

    await drive(call, 0.3)
    res = await drive(call, ARGS.duration)
    for t in readers:
        t.cancel()
    for _, w in chans:
        w.close()
    return res


WORKERS = {"netpoll-pool": netpoll_pool, "netpoll-mux": netpoll_mux,
           "streams-pool": streams_pool, "streams-mux": streams_mux}


def worker() -> int:
    fn = WORKERS[ARGS.worker]
    if ARGS.uvloop:
        import uvloop

        res = uvloop.run(fn(ARGS.port))
    else:
        res = asyncio.run(fn(ARGS.port))
    print(json.dumps(res))
    return 0


# -- driver ------------------------------------------------------------------------

CASES = [
    ("pool", "netpoll (asyncio)", "netpoll-pool", False),
    ("pool", "netpoll (uvloop)", "netpoll-pool", True),
    ("pool", "asyncio Streams", "streams-pool", False),
    ("pool", "uvloop Streams", "streams-pool", True),
    ("mux", "netpoll (asyncio)", "netpoll-mux", False),
    ("mux", "netpoll (uvloop)", "netpoll-mux", True),
    ("mux", "asyncio Streams", "streams-mux", False),
    ("mux", "uvloop Streams", "streams-mux", True),
]


def main() -> int:
    from netpoll.bench import harness

    tools = harness.build_tools()
    port = harness.free_port("127.0.0.1")
    server = subprocess.Popen(["taskset", "-c", "1", str(tools.c_echo), "-p", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        assert server.stdout is not None
        server.stdout.readline()
        for rep in range(ARGS.repeat):
            for scen, name, kind, uv in CASES:
                cmd = ["taskset", "-c", "0", sys.executable, __file__, "--worker", kind,
                       "--port", str(port), "--duration", str(ARGS.duration),
                       "--size", str(ARGS.size)] + (["--uvloop"] if uv else [])
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if out.returncode != 0:
                    print(f"{scen} {name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results.setdefault((scen, name), []).append(res)
                print(f"  [{rep + 1}/{ARGS.repeat}] {scen:4s} {name:18s} "
                      f"{res['rps']:9.0f} req/s  p99 {res['p99_us']:7.0f} us", file=sys.stderr)
    finally:
        server.terminate()
        server.wait()
    lines = [f"Client side, {ARGS.size} B request/response against the C echo server, "
             f"{CALLERS} callers; median of {ARGS.repeat} interleaved runs of "
             f"{ARGS.duration:g} s.", "",
             "| scenario | client | req/s | p50 us | p99 us | client user us/req | "
             "x uvloop Streams |", "|---|---|---:|---:|---:|---:|---:|"]
    for scen in ("pool", "mux"):
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for (s, name), rs in results.items() if s == scen}
        base = med.get("uvloop Streams", {}).get("rps")
        for name, m in med.items():
            ratio = f"{m['rps'] / base:.2f}" if base else "-"
            lines.append(f"| {scen} | {name} | {m['rps']:.0f} | {m['p50_us']:.0f} | "
                         f"{m['p99_us']:.0f} | {m['user_us']:.2f} | {ratio} |")
    print("\n".join(lines))
    if ARGS.markdown:
        Path(ARGS.markdown).write_text("\n".join(lines) + "\n")
    return 0


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args()


ARGS = parse()

if __name__ == "__main__":
    raise SystemExit(worker() if ARGS.worker else main())
