"""User-space instructions per request, counted by callgrind (noise-free).

This machine's wall-clock numbers move with whatever else runs on it;
instruction counts do not. Each server runs under ``valgrind --tool=callgrind``
twice, driven by the C load generator for N1 and then N2 requests; the
difference of the two totals divided by N2 - N1 cancels start-up and import
and leaves the cost of one request in the server's own process (kernel time
is not counted: it is the same socket work for every peer).

Under valgrind the server is the bottleneck, so requests batch more per
wakeup than in a real run: per-wakeup costs (the event loop's own iteration)
are amortised more than they would be. Read the numbers as the cost of the
request path, and use the echo harness for throughput and latency.

    python benchmarks/instructions.py                  # echo 1 KiB x 50 connections
    python benchmarks/instructions.py --mode frame --size 64 --depth 16
    python benchmarks/instructions.py --only "uvloop Protocol,aiofastnet (uvloop)"

The aiofastnet peers (the same Protocol servers on aiofastnet's transports,
over asyncio and over uvloop) run when aiofastnet is installed
(``pip install 'netpoll[aiofastnet]'``); otherwise they are skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_loadgen() -> str:
    from netpoll.bench import harness

    return str(harness.build_tools().loadgen)


def peers(mode: str) -> dict[str, list[str]]:
    cmd = "rpc-server" if mode == "frame" else "echo"
    out = {
        "netpoll (asyncio)": [PY, "-m", "netpoll", cmd, "--port", "{port}"],
        "netpoll (uvloop)": [PY, "-m", "netpoll", cmd, "--port", "{port}", "--uvloop"],
        # plain-function handlers (conn.input + flush_nowait), run inside the poller's pass
        "netpoll sync (asyncio)": [PY, "-m", "netpoll", cmd, "--port", "{port}",
                                   "--handler", "sync"],
        "netpoll sync (uvloop)": [PY, "-m", "netpoll", cmd, "--port", "{port}",
                                  "--handler", "sync", "--uvloop"],
        # the same plain handler on the io_uring backend (the default above is epoll)
        "netpoll sync io_uring (asyncio)": [PY, "-m", "netpoll", cmd, "--port", "{port}",
                                            "--handler", "sync", "--backend", "io_uring"],
        "netpoll sync io_uring (uvloop)": [PY, "-m", "netpoll", cmd, "--port", "{port}",
                                           "--handler", "sync", "--backend", "io_uring",
                                           "--uvloop"],
    }
    kind = "rpc-protocol" if mode == "frame" else "protocol"
    peer = [PY, "-m", "netpoll.bench.peers", "--kind", kind, "--port", "{port}"]
    out["asyncio Protocol"] = peer
    out["uvloop Protocol"] = [*peer, "--uvloop"]
    out["aiofastnet (asyncio)"] = [*peer, "--aiofastnet"]
    out["aiofastnet (uvloop)"] = [*peer, "--aiofastnet", "--uvloop"]
    if mode != "frame":
        # the same Protocol/Streams servers, unchanged, on netpoll.loop_factory() transports
        tp = [PY, "benchmarks/transport_peer.py", "--port", "{port}"]
        out["np-tr Protocol (asyncio)"] = [*tp, "--kind", "protocol"]
        out["np-tr Protocol (uvloop)"] = [*tp, "--kind", "protocol", "--uvloop"]
        out["asyncio Streams"] = [PY, "-m", "netpoll.bench.peers", "--kind", "streams",
                                  "--port", "{port}"]
        out["uvloop Streams"] = [*out["asyncio Streams"], "--uvloop"]
        out["np-tr Streams (asyncio)"] = [*tp, "--kind", "streams"]
        out["np-tr Streams (uvloop)"] = [*tp, "--kind", "streams", "--uvloop"]
    return out


def available(argv: list[str]) -> str | None:
    """None if the peer can run here, else why not."""
    for mod in ("uvloop", "aiofastnet"):
        if f"--{mod}" in argv and importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed"
    return None


def count(argv: list[str], loadgen: str, n: int, args: argparse.Namespace) -> int:
    port = free_port()
    out = Path(tempfile.mkdtemp()) / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    cmd += [a.format(port=port) for a in argv]
    srv = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert srv.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = srv.stdout.readline()
            if not line or "ready" in line:
                break
        subprocess.run([loadgen, "-p", str(port), "-c", str(args.connections),
                        "-s", str(args.size), "-d", str(args.depth), "-m", args.mode,
                        "-n", str(n), "-w", "0", "-t", "300"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        srv.send_signal(signal.SIGINT)
        try:
            srv.wait(60)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
    text = out.read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"no callgrind total for {argv[:4]}")
    shutil.rmtree(out.parent, ignore_errors=True)
    return int(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["echo", "frame"], default="echo",
                    help="echo, or 4-byte length-prefixed frames (RPC server)")
    ap.add_argument("--size", type=int, default=1024, help="message/payload bytes")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--depth", type=int, default=1, help="requests in flight per connection")
    ap.add_argument("--n1", type=int, default=2000)
    ap.add_argument("--n2", type=int, default=12000)
    ap.add_argument("--only", help="comma-separated peer names to run")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    loadgen = build_loadgen()
    table = []
    for name, argv in peers(args.mode).items():
        if args.only and name not in args.only.split(","):
            continue
        if why := available(argv):
            print(f"{name:20s} skipped: {why}", flush=True)
            continue
        a = count(argv, loadgen, args.n1, args)
        b = count(argv, loadgen, args.n2, args)
        per = (b - a) / (args.n2 - args.n1)
        table.append((name, per))
        print(f"{name:20s} {per:10.0f} instructions/request", flush=True)
    base = dict(table).get("uvloop Protocol")
    if base:
        print()
        print(f"{'server':20s} {'instr/req':>10s} {'vs uvloop Protocol':>20s}")
        for name, per in table:
            print(f"{name:20s} {per:10.0f} {per / base:19.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
