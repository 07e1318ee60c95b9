#!/usr/bin/env python3
"""uvicorn and aiohttp, unchanged, on the netpoll loop vs uvloop vs stock asyncio.

Each server is a plain-text hello (uvicorn + httptools with an ASGI app;
aiohttp ``web.Response(text=...)``) run by ``python benchmarks/frameworks.py
--serve KIND LOOP PORT`` pinned to core 0, loaded by ``wrk -t1 -cC -dDs
--latency`` pinned to core 1. Loops: ``uvloop`` (uvloop.run), ``asyncio``
(asyncio.run), ``netpoll`` (netpoll.run over stock asyncio) and
``netpoll-uvloop`` (netpoll.run over uvloop). Rounds are interleaved and the
table shows medians of requests/s and p99, with the ratio to the same framework
on uvloop (issue 13's goal: netpoll over stock asyncio >= 1.15x).

    python benchmarks/frameworks.py                  # 3 rounds x 5 s, both frameworks
    python benchmarks/frameworks.py --kinds uvicorn --rounds 5 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

# benchmarks/http.py would shadow the standard library's http (which uvicorn imports)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

LOOPS = ("uvloop", "asyncio", "netpoll", "netpoll-uvloop")
BODY = b"Hello, world!"


# -- servers (run in the child process) -------------------------------------------------

async def _asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": BODY})


async def _serve_uvicorn(port: int) -> None:
    import uvicorn

    config = uvicorn.Config(_asgi, host="127.0.0.1", port=port, http="httptools",
                            loop="none", log_level="warning", lifespan="off",
                            access_log=False)
    await uvicorn.Server(config).serve()


async def _serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=BODY.decode())

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def serve(kind: str, loop: str, port: int) -> None:
    coro = (_serve_uvicorn if kind == "uvicorn" else _serve_aiohttp)(port)
    if loop == "uvloop":
        import uvloop
        uvloop.run(coro)
    elif loop == "asyncio":
        asyncio.run(coro)
    else:
        import netpoll
        base = None
        if loop == "netpoll-uvloop":
            import uvloop
            base = uvloop.new_event_loop
        netpoll.run(coro, base=base)


# -- driver --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() and \
        os.cpu_count() > 1 else []  # type: ignore[operator]


def _us(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        return float("nan")
    v = float(m.group(1))
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]


def one(kind: str, loop: str, conns: int, duration: float) -> tuple[float, float]:
    port = _free_port()
    proc = subprocess.Popen([*_pin(0), sys.executable, __file__, "--serve", kind, loop,
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc)
        subprocess.run([*_pin(1), "wrk", "-t1", "-c", str(conns), "-d", "1s",
                        f"http://127.0.0.1:{port}/"], capture_output=True, timeout=60)
        out = subprocess.run([*_pin(1), "wrk", "-t1", "-c", str(conns), "-d",
                              f"{duration:g}s", "--latency", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, timeout=duration + 60).stdout
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)   # the latency distribution's line
    if rps is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{kind} on {loop}: wrk said\n{out}")
    return float(rps.group(1)), _us(p99.group(1)) if p99 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", nargs=3, metavar=("KIND", "LOOP", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--kinds", default="uvicorn,aiohttp")
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    kinds = args.kinds.split(",")
    loops = args.loops.split(",")
    res: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for kind in kinds:
            for loop in loops:
                rps, p99 = one(kind, loop, args.connections, args.duration)
                res.setdefault((kind, loop), []).append((rps, p99))
                print(f"round {r + 1}: {kind:8} {loop:15} {rps:10,.0f} req/s  p99 {p99:8,.0f} us",
                      file=sys.stderr, flush=True)
    print(f"\n| framework | loop | req/s (median of {args.rounds}) | p99 us | x same on uvloop |")
    print("|---|---|---:|---:|---:|")
    for kind in kinds:
        ref = statistics.median(x[0] for x in res.get((kind, "uvloop"), [(float("nan"), 0)]))
        for loop in loops:
            rows = res[(kind, loop)]
            rps = statistics.median(x[0] for x in rows)
            p99 = statistics.median(x[1] for x in rows)
            print(f"| {kind} | {loop} | {rps:,.0f} | {p99:,.0f} | {rps / ref:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
