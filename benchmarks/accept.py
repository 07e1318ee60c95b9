#!/usr/bin/env python3
"""Connection churn: how fast a netpoll server accepts, serves and closes connections.

    python benchmarks/accept.py                    # 3 rounds x 3 s, 16 lanes, 64 B
    python benchmarks/accept.py --rounds 5 --seconds 3 --lanes 32 --uvloop
    python benchmarks/accept.py --callgrind         # user-space instructions per connection

Each connection of the C client (benchmarks/accept_churn.c, built with cc) is
connect -> send 64 B -> read the echo -> close, on 16 lanes at once. Peers (a
server process pinned to CPU 0, the client to CPU 1; rounds interleaved, the
median round shown):

  io_uring-ring      io_uring pollers, multishot ACCEPT on a poller's ring (the default)
  io_uring-reader    io_uring pollers, listener polled by the loop (NETPOLL_URING_ACCEPT=0)
  epoll              epoll pollers (the loop's add_reader, accept4 in batches)

Columns: connections/s, server CPU (user+sys) per connection from /proc/PID/stat,
the ratio to io_uring-reader, and (where `perf` can count them: root, or
kernel.perf_event_paranoid <= 1) the server's instructions per connection in user
space and in the kernel, which a busy shared machine disturbs far less than
throughput.

--callgrind runs each server under valgrind's callgrind instead (4 lanes, 8 s): the
server's user-space instructions per connection, counted from after a 1 s warm-up
(callgrind_control -z) to the end (-d). Deterministic enough to compare on a busy
machine; the kernel's share (accept4, io_uring_enter, TCP) is not in it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SERVER = r"""
import asyncio, sys
import netpoll

def echo(ctx, conn):
    buf = conn.input
    conn.write_buffer(buf.slice(len(buf)))
    conn.flush_nowait()

async def main():
    ln = netpoll.create_listener("tcp", "127.0.0.1:0", backlog=4096)
    el = netpoll.EventLoop(echo)
    task = asyncio.ensure_future(el.serve(ln))
    print(ln.addr[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await el.shutdown(1)
    await task

if sys.argv[1] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""

PEERS = {
    "io_uring-ring": {"NETPOLL_BACKEND": "io_uring", "NETPOLL_URING_ACCEPT": "1"},
    "io_uring-reader": {"NETPOLL_BACKEND": "io_uring", "NETPOLL_URING_ACCEPT": "0"},
    "epoll": {"NETPOLL_BACKEND": "epoll"},
}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(peer: str, client: str, args: argparse.Namespace
              ) -> tuple[float, float, float, float]:
    env = dict(os.environ, **PEERS[peer])
    env.pop("NETPOLL_URING_SETUP", None) if not args.keep_setup else None
    srv = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", SERVER,
                            "uvloop" if args.uvloop else "asyncio"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert srv.stdout is not None and srv.stdin is not None
        port = srv.stdout.readline().strip()
        time.sleep(0.2)
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e",
                                     "instructions:u,instructions:k", "-p", str(srv.pid)],
                                    stderr=subprocess.PIPE, text=True)
            time.sleep(0.1)
        cpu0 = cpu_seconds(srv.pid)
        out = subprocess.run(["taskset", "-c", "1", client, "-p", port, "-l", str(args.lanes),
                              "-s", str(args.size), "-d", str(args.seconds), "-w",
                              str(args.warmup)], capture_output=True, text=True, check=True)
        cpu = cpu_seconds(srv.pid) - cpu0
        iu = ik = float("nan")
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            _, err = perf.communicate(timeout=10)
            for line in err.splitlines():
                f = line.split(",")
                if len(f) > 2 and f[0].strip().isdigit():
                    if f[2].startswith("instructions:u"):
                        iu = float(f[0])
                    elif f[2].startswith("instructions:k"):
                        ik = float(f[0])
        vals = dict(kv.split("=") for kv in out.stdout.split())
        conns, total, secs = int(vals["conns"]), int(vals["total"]), float(vals["seconds"])
        if int(vals["errors"]):
            print(f"  {peer}: {vals['errors']} errors", file=sys.stderr)
        srv.stdin.close()
        srv.wait(10)
        total = max(total, 1)
        return conns / secs, cpu / total * 1e6, iu / total, ik / total
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()


def callgrind_round(peer: str, client: str, args: argparse.Namespace) -> tuple[int, int]:
    env = dict(os.environ, PYTHONMALLOC="malloc", **PEERS[peer])
    env.pop("NETPOLL_URING_SETUP", None) if not args.keep_setup else None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        srv = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                                sys.executable, "-c", SERVER,
                                "uvloop" if args.uvloop else "asyncio"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            assert srv.stdout is not None and srv.stdin is not None
            port = srv.stdout.readline().strip()
            lanes = ["-l", "4", "-s", str(args.size), "-w", "0"]
            subprocess.run([client, "-p", port, "-d", "1", *lanes], capture_output=True, check=True)
            subprocess.run(["callgrind_control", "-z", str(srv.pid)], capture_output=True, check=True)
            res = subprocess.run([client, "-p", port, "-d", "8", *lanes], capture_output=True,
                                 text=True, check=True)
            subprocess.run(["callgrind_control", "-d", str(srv.pid)], capture_output=True, check=True)
            total = int(dict(kv.split("=") for kv in res.stdout.split())["total"])
            srv.stdin.close()
            srv.wait(60)
            dump = next(Path(tmp).glob("cg.out.1"))
            ir = next(int(line.split()[1]) for line in dump.read_text().splitlines()
                      if line.startswith("summary:"))
            return ir, total
        finally:
            if srv.poll() is None:
                srv.kill()
                srv.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--lanes", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--uvloop", action="store_true")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--callgrind", action="store_true",
                    help="user-space instructions per connection under callgrind instead")
    ap.add_argument("--no-perf", dest="perf", action="store_false",
                    help="do not count instructions with perf")
    ap.add_argument("--keep-setup", action="store_true",
                    help="keep NETPOLL_URING_SETUP from the environment (default: CLAMP only)")
    args = ap.parse_args()
    if shutil.which("cc") is None or shutil.which("taskset") is None:
        print("accept.py: needs cc and taskset", file=sys.stderr)
        return 2
    peers = args.peers.split(",")
    if args.perf and not args.callgrind and (
            shutil.which("perf") is None or "<not supported>" in subprocess.run(
            ["perf", "stat", "-x", ",", "-e", "instructions:k", "true"], capture_output=True,
            text=True).stderr):
        print("accept.py: perf cannot count instructions here; CPU time only", file=sys.stderr)
        args.perf = False
    with tempfile.TemporaryDirectory() as tmp:
        client = str(Path(tmp) / "accept_churn")
        subprocess.run(["cc", "-O2", "-o", client, str(HERE / "accept_churn.c")], check=True)
        if args.callgrind:
            if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
                print("accept.py: --callgrind needs valgrind", file=sys.stderr)
                return 2
            loop = "uvloop" if args.uvloop else "asyncio"
            print(f"callgrind, 4 lanes x 8 s, {args.size} B, {loop}; user-space "
                  f"instructions per connection (rounds)")
            for p in peers:
                per = []
                for _ in range(args.rounds):
                    ir, total = callgrind_round(p, client, args)
                    per.append(ir / max(total, 1))
                print(f"{p:18} {statistics.median(per):10,.0f}  "
                      + " ".join(f"{x:,.0f}" for x in per))
            return 0
        res: dict[str, list[tuple[float, float, float, float]]] = {p: [] for p in peers}
        for r in range(args.rounds):
            for p in peers:
                res[p].append(one_round(p, client, args))
                print(f"round {r + 1} {p}: {res[p][-1][0]:,.0f} conn/s", file=sys.stderr)
    base = statistics.median(x[0] for x in res.get("io_uring-reader", res[peers[0]]))
    loop = "uvloop" if args.uvloop else "asyncio"
    print(f"\n{args.lanes} lanes, {args.size} B, {loop}, median of {args.rounds} rounds "
          f"x {args.seconds:g} s")
    print(f"{'peer':18} {'conn/s':>10} {'CPU us/conn':>12} {'vs reader':>10} "
          f"{'instr/conn user':>16} {'kernel':>10}  rounds (conn/s)")
    for p in peers:
        rates = [x[0] for x in res[p]]
        med = statistics.median(rates)
        cpu = statistics.median(x[1] for x in res[p])
        iu = statistics.median(x[2] for x in res[p])
        ik = statistics.median(x[3] for x in res[p])
        print(f"{p:18} {med:10,.0f} {cpu:12.1f} {med / base:9.2f}x {iu:16,.0f} {ik:10,.0f}  "
              + " ".join(f"{x:,.0f}" for x in rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
