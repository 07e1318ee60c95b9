"""Server memory per idle connection.

Opens N connections that never send a byte and reports how much the server's
RSS grew per connection, for netpoll and the asyncio/uvloop peers:

    python benchmarks/idle.py --connections 10000

An idle netpoll connection costs its Connection object (368 B + 16 B GC
header), its entries in the poller's and the server's connection sets (~50 B
each at 10,000), and the kernel's socket (not in RSS): no LinkBuffer (both are
shared empty sentinels until the first byte in / first write out), no input
chunk, no handler driver, no Context of its own. Measured: ~495 B at 10,000
connections, ~390 B at 2,000 (the sets' tables grow in steps).
"""

from __future__ import annotations

import argparse
import resource
import signal
import socket
import subprocess
import sys
import time

PY = sys.executable

PEERS = {
    "netpoll (asyncio)": [PY, "-m", "netpoll", "echo", "--port", "{port}"],
    "netpoll (uvloop)": [PY, "-m", "netpoll", "echo", "--port", "{port}", "--uvloop"],
    "asyncio Protocol": [PY, "-m", "netpoll.bench.peers", "--kind", "protocol",
                         "--port", "{port}"],
    "uvloop Protocol": [PY, "-m", "netpoll.bench.peers", "--kind", "protocol",
                        "--port", "{port}", "--uvloop"],
    "asyncio Streams": [PY, "-m", "netpoll.bench.peers", "--kind", "streams",
                        "--port", "{port}"],
}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(argv: list[str], n: int) -> float:
    port = free_port()
    srv = subprocess.Popen([a.format(port=port) for a in argv], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True,
                           preexec_fn=lambda: resource.setrlimit(
                               resource.RLIMIT_NOFILE, (n + 1024, n + 1024)))
    socks: list[socket.socket] = []
    try:
        assert srv.stdout is not None
        srv.stdout.readline()
        # warm up: one connection that does a round trip, so lazily made state exists
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"x")
            s.recv(1)
        time.sleep(0.3)
        before = rss_kb(srv.pid)
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(1.0)           # let the server accept everything
        after = rss_kb(srv.pid)
        # the connections must still be served
        socks[-1].sendall(b"y")
        assert socks[-1].recv(1) == b"y"
        return (after - before) * 1024 / n
    finally:
        for s in socks:
            s.close()
        srv.send_signal(signal.SIGINT)
        try:
            srv.wait(20)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        if srv.stdout is not None:
            srv.stdout.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    print(f"{'server':20s} {'bytes of RSS per idle connection':>34s}")
    for name, argv in PEERS.items():
        vals = sorted(measure(argv, args.connections) for _ in range(args.repeat))
        print(f"{name:20s} {vals[len(vals) // 2]:34.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
