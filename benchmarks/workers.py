"""Server CPU per request under run_workers, at 1, 2 and 4 workers.

On a 2-core machine throughput scaling cannot be shown (the load generator
needs one core), so this measures what can be: the supervisor and every
worker are pinned to one core, the C load generator to the other, and the
server's CPU (user + system, the whole process tree: supervisor + workers)
is divided by the requests answered. If the supervisor, the heartbeats or
the SO_REUSEPORT listeners added contention, this number would grow with N.
Per-worker CPU shares show the spread. The same N plain processes (each
binding the port with SO_REUSEPORT, no supervisor) are measured interleaved
as the baseline: the difference is what run_workers adds.

    python benchmarks/workers.py [--duration 5] [--repeat 3] [--workers 1,2,4]
    python benchmarks/workers.py --instructions [--requests 20000]

The CPU times move with whatever else runs on the machine; ``--instructions``
runs the same tree under ``valgrind --tool=callgrind --trace-children=yes``,
zeroes every process's counters once the workers are ready, drives
``--requests`` requests and reads the counters back (``callgrind_control``):
user-space instructions per request, supervisor and heartbeats included,
start-up and shutdown excluded. Under valgrind the server is the bottleneck,
so requests batch more per wakeup than in a real run.

Load: framed RPC (4-byte length + 64 B), 100 connections, depth 1 (netpoll's
rpc_on_request in each worker, on asyncio).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import netpoll
from netpoll.bench import harness
from netpoll.servers import rpc_on_request

HERE = Path(__file__).resolve().parent


async def serve(listener: Any) -> None:
    """What each worker runs (`workers:serve` with this directory on the path)."""
    await netpoll.EventLoop(rpc_on_request).serve(listener)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """Leave nothing behind: SIGKILL what is left of the process group, then reap."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _group_alive(proc.pid):
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
                return True
    return False


def worker_cpu(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        except OSError:
            out.append(0.0)
    return out


# The baseline: N plain processes, each binding the port with SO_REUSEPORT
# itself, no supervisor; they are started by one parent that only waits.
PLAIN = """
import asyncio, os, sys, netpoll
from netpoll.servers import rpc_on_request
port, n = int(sys.argv[1]), int(sys.argv[2])
async def main():
    ln = netpoll.create_listener("tcp", ("127.0.0.1", port), reuse_port=True)
    print("worker", os.getpid(), "ready", flush=True)
    await netpoll.EventLoop(rpc_on_request).serve(ln)
if n:
    import subprocess
    kids = [subprocess.Popen([sys.executable, "-c", sys.argv[3], str(port), "0", ""])
            for _ in range(n)]
    for k in kids:
        k.wait()
else:
    asyncio.run(main())
"""


def one_run(tools: Any, n: int, args: argparse.Namespace, plain: bool) -> dict[str, Any]:
    server_cpu, client_cpu = harness.cpu_plan()
    port = harness.free_port("127.0.0.1")
    log_path = Path(f"/tmp/netpoll-workers-bench-{os.getpid()}.log")
    if plain:
        argv = [sys.executable, "-c", PLAIN, str(port), str(n), PLAIN]
    else:
        argv = [sys.executable, "-m", "netpoll", "workers", "workers:serve", "--bind",
                f"tcp:127.0.0.1:{port}", "--workers", str(n)]
    with open(log_path, "wb") as logf:
        sup = harness._spawn_pinned(server_cpu, argv, cwd=HERE, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while len(re.findall(r"worker (\d+) ready", log_path.read_text())) < n:
            if time.monotonic() > deadline or sup.poll() is not None:
                raise RuntimeError(f"workers did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        pids = [int(p) for p in re.findall(r"worker (\d+) ready", log_path.read_text())]
        cpu0 = worker_cpu(pids)
        sup0 = worker_cpu([sup.pid])[0]
        case = harness.Case("rpc-64B-x100", size=64, connections=100, mode="frame")
        res = harness.run_loadgen(tools, "127.0.0.1", port, case, args.duration, args.warmup,
                                  server_pid=sup.pid, server_cpu=server_cpu,
                                  client_cpu=client_cpu)
        cpu1 = worker_cpu(pids)
        sup1 = worker_cpu([sup.pid])[0]
        per = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
        total = sum(per) or 1.0
        res["worker_share_pct"] = [round(100 * p / total, 1) for p in per]
        res["parent_cpu_s"] = sup1 - sup0       # the supervisor's own CPU (ticks: 10 ms)
        return res
    finally:
        # run_workers: the supervisor drains its workers; plain: the parent only
        # waits, so its servers get the signal through the process group.
        if plain:
            os.killpg(sup.pid, signal.SIGTERM)
        else:
            os.kill(sup.pid, signal.SIGTERM)
        try:
            sup.wait(20)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(sup)
        log_path.unlink(missing_ok=True)


def _callgrind_ir(pid: int) -> int:
    out = subprocess.run(["callgrind_control", "-e", "Ir", str(pid)], capture_output=True,
                         text=True, timeout=120).stdout
    return sum(int(m.replace(",", "")) for m in re.findall(r"Th \d+\s+([\d,]+)", out))


def instructions(n_workers: int, n: int, loadgen: str,
                 idle_seconds: float = 10.0) -> dict[str, float]:
    """User-space instructions (workers, supervisor) executed while answering `n` requests.

    The counters of every process are zeroed once all workers are ready and
    read when loadgen is done, so start-up, imports and shutdown are not in
    the window; the heartbeats and the supervisor's wakeups during it are.
    """
    import tempfile

    port = harness.free_port("127.0.0.1")
    out = Path(tempfile.mkdtemp())
    log_path = out / "log"
    cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes",
           f"--callgrind-out-file={out}/cg.%p",
           sys.executable, "-m", "netpoll", "workers", "workers:serve", "--bind",
           f"tcp:127.0.0.1:{port}", "--workers", str(n_workers), "--ready-timeout", "900"]
    server_cpu, _ = harness.cpu_plan()
    with open(log_path, "wb") as logf:
        sup = harness._spawn_pinned(server_cpu, cmd, cwd=HERE, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while len(re.findall(r"worker (\d+) ready", log_path.read_text())) < n_workers:
            if time.monotonic() > deadline or sup.poll() is not None:
                raise RuntimeError(f"workers did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        pids = [int(p) for p in re.findall(r"worker (\d+) ready", log_path.read_text())]
        time.sleep(2.0)                  # let the first heartbeats' one-off work pass

        def zero() -> float:
            subprocess.run(["callgrind_control", "-z", str(sup.pid), *map(str, pids)],
                           check=True, capture_output=True, timeout=120)
            return time.monotonic()

        # Idle: what runs per second of wall time (heartbeats, the supervisor's
        # wakeups). Under valgrind a request takes ~100x longer than in a real
        # run, so these time-driven costs weigh ~100x more per request here.
        t0 = zero()
        time.sleep(idle_seconds)
        idle_w, idle_s = sum(_callgrind_ir(p) for p in pids), _callgrind_ir(sup.pid)
        idle_t = time.monotonic() - t0
        t0 = zero()
        subprocess.run([loadgen, "-p", str(port), "-c", "100", "-s", "64", "-d", "1",
                        "-m", "frame", "-n", str(n), "-w", "0", "-t", "900"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers_ir = sum(_callgrind_ir(p) for p in pids)
        sup_ir = _callgrind_ir(sup.pid)
        window = time.monotonic() - t0
    finally:
        os.kill(sup.pid, signal.SIGTERM)
        try:
            sup.wait(300)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(sup)
        for f in out.iterdir():
            f.unlink()
        out.rmdir()
    res = {"workers_ir": workers_ir, "sup_ir": sup_ir, "window": window,
           "idle_workers_per_s": idle_w / idle_t, "idle_sup_per_s": idle_s / idle_t}
    print(f"  workers={n_workers} n={n}: {res}", file=sys.stderr, flush=True)
    return res


def main_instructions(args: argparse.Namespace) -> int:
    loadgen = str(harness.build_tools().loadgen)
    counts = [int(x) for x in args.workers.split(",")]
    rows = []
    for n in counts:
        rows.append((n, instructions(n, args.requests, loadgen)))
    print("| workers | all instr / request | request path instr / request | vs 1 worker "
          "| idle instr/s per worker | supervisor instr/s | window s |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for n, r in rows:
        total = (r["workers_ir"] + r["sup_ir"]) / args.requests
        # the request path: the load window minus what the same processes do idle
        path = (r["workers_ir"] - r["idle_workers_per_s"] * r["window"]) / args.requests
        base = base or path
        print(f"| {n} | {total:.0f} | {path:.0f} | {100 * (path / base - 1):+.1f}% | "
              f"{r['idle_workers_per_s'] / n:.0f} | {r['sup_ir'] / r['window']:.0f} | "
              f"{r['window']:.1f} |", flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--instructions", action="store_true",
                   help="count user-space instructions per request under callgrind "
                        "(noise-free; slow) instead of timing CPU")
    p.add_argument("--requests", type=int, default=20000,
                   help="requests counted per run with --instructions")
    args = p.parse_args()
    if args.instructions:
        return main_instructions(args)
    tools = harness.build_tools()
    counts = [int(x) for x in args.workers.split(",")]
    kinds = ["run_workers", "plain"]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(k, n): [] for k in kinds
                                                         for n in counts}
    for r in range(args.repeat):
        for n in counts:                      # interleaved: 1, 2, 4, 1, 2, 4, ...
            for kind in kinds:
                res = one_run(tools, n, args, plain=kind == "plain")
                runs[kind, n].append(res)
                print(f"run {r + 1} {kind} workers={n}: {res['rps']:.0f} req/s, "
                      f"{res['cpu_us_per_req']:.2f} cpu us/req, "
                      f"shares {res['worker_share_pct']}, parent {res['parent_cpu_s']:.2f} s, "
                      f"pressure {res.get('cpu_pressure_pct', float('nan')):.1f}%",
                      file=sys.stderr)
    print("| server | workers | req/s | cpu us/req | user us/req | srv cpu% | parent cpu s "
          "| per-worker CPU share % |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        for n in counts:
            rs = runs[kind, n]
            med = {k: statistics.median(r[k] for r in rs)
                   for k in ("rps", "cpu_us_per_req", "user_us_per_req", "server_cpu_pct",
                             "parent_cpu_s")}
            shares = rs[len(rs) // 2]["worker_share_pct"]
            print(f"| {kind} | {n} | {med['rps']:.0f} | {med['cpu_us_per_req']:.2f} | "
                  f"{med['user_us_per_req']:.2f} | {med['server_cpu_pct']:.0f} | "
                  f"{med['parent_cpu_s']:.2f} | {' / '.join(str(s) for s in shares)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
