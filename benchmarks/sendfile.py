"""loop.sendfile() over a netpoll transport: os.sendfile against asyncio's fallback.

A netpoll loop over stock asyncio sends a file through a netpoll transport to a
reader in another process (recv_into, discarding), once with the transport's
native mode (os.sendfile, the default) and once forced to asyncio's fallback
(read into a buffer + transport.write), interleaved. Reported per mode: MB/s
and the sending process's CPU seconds (user + system) per GB, medians.

    python benchmarks/sendfile.py                 # 64 MiB x 5 rounds
    python benchmarks/sendfile.py --mib 256 --rounds 3
    python benchmarks/sendfile.py --base uvloop   # the netpoll loop over uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from asyncio import constants

import netpoll
from netpoll.transports import NetpollTransport

READER = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
buf = bytearray(1 << 20)
while s.recv_into(buf):
    pass
"""


async def send_once(path: str, native: bool) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(port)])
    conn, _ = await loop.run_in_executor(None, lsock.accept)
    lsock.close()
    conn.setblocking(False)
    tr, proto = await loop.connect_accepted_socket(asyncio.Protocol, conn)
    NetpollTransport._sendfile_compatible = (
        constants._SendfileMode.TRY_NATIVE if native else constants._SendfileMode.FALLBACK)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        await loop.sendfile(tr, f)
    tr.close()
    await loop.run_in_executor(None, reader.wait)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return dt, cpu


async def main(args: argparse.Namespace) -> None:
    assert netpoll.transports.is_netpoll_loop(asyncio.get_running_loop())
    size = args.mib << 20
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(os.urandom(1 << 20) * args.mib)
        path = f.name
    try:
        res: dict[str, list[tuple[float, float]]] = {"os.sendfile": [], "fallback": []}
        for _ in range(args.rounds):
            for mode in res:
                res[mode].append(await send_once(path, mode == "os.sendfile"))
        print(f"loop.sendfile of {args.mib} MiB over a netpoll transport ({args.base} base), "
              f"median of {args.rounds}")
        print(f"{'mode':12s} {'MB/s':>8s} {'CPU s/GB':>9s}")
        for mode, runs in res.items():
            mbs = statistics.median(size / dt / 1e6 for dt, _ in runs)
            cpu = statistics.median(c / (size / 1e9) for _, c in runs)
            print(f"{mode:12s} {mbs:8.0f} {cpu:9.3f}")
    finally:
        NetpollTransport._sendfile_compatible = constants._SendfileMode.TRY_NATIVE
        os.unlink(path)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=64, help="file size in MiB (default 64)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--base", choices=["asyncio", "uvloop"], default="asyncio",
                    help="the loop under the netpoll loop (default asyncio)")
    args = ap.parse_args()
    base = None
    if args.base == "uvloop":
        import uvloop

        base = uvloop.new_event_loop
    netpoll.run(main(args), base=base)
