#!/usr/bin/env python3
"""RESP (Redis protocol) servers side by side, driven by redis-benchmark.

Peers: ``examples/resp_server.py`` on netpoll (asyncio loop and uvloop), the
same commands behind an ``asyncio.Protocol`` + hiredis
(``examples/peers/resp_asyncio.py``, asyncio and uvloop), and a real
``redis-server --save "" --appendonly no``.

Each run starts a fresh server pinned to one core and runs
``redis-benchmark -c C -P P -n N -t TEST --csv`` pinned to another, with a
fixed request count.  At -c 50 -P 16 the single-threaded redis-benchmark is
itself the limit (about 1M req/s), so req/s alone says little: the number
that tells the servers apart is the **server CPU per request**, user +
system time of the server process (``/proc/<pid>/stat``) over the run
divided by the N requests.  Ratios: req/s and CPU to redis-server, CPU to
the asyncio Protocol server.  Peers are interleaved (A, B, C, A, B, C, ...)
and the table shows medians.

    python benchmarks/resp.py                      # ~5 min
    python benchmarks/resp.py --quick              # ~40 s
    python benchmarks/resp.py --tests set,get --pipeline 16 --markdown resp.md

Needs redis-benchmark (Debian: ``apt-get install redis-tools``), and
redis-server for the reference peer (``redis-server``; skipped with a note
when missing), hiredis for the Python peers (``pip install hiredis``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netpoll.bench import harness as h

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"




@dataclass(frozen=True)
class Case:
    """One redis-benchmark load: a test (``set``), clients, pipeline depth, requests."""

    test: str
    clients: int
    pipeline: int
    requests: int

    @property
    def name(self) -> str:
        return f"{self.test.upper()} c{self.clients} P{self.pipeline}"


def python_peer(name: str, script: Path, uvloop: bool) -> Any:
    argv = [sys.executable, str(script), "--host", "{host}", "--port", "{port}"]
    if uvloop:
        argv.append("--uvloop")
    return h.ServerSpec(
        name, tuple(argv), probe=(sys.executable, str(script), "--help"),
        note=f"{script.name} cannot run (hiredis missing? pip install hiredis)",
    )  # fmt: skip


def peer_specs(uvloop: bool) -> list[Any]:
    """Every peer, uvloop ones only if uvloop is installed, redis-server if found."""
    server, peer = EXAMPLES / "resp_server.py", EXAMPLES / "peers" / "resp_asyncio.py"
    specs = [python_peer("netpoll-asyncio", server, False)]
    specs += [python_peer("netpoll-uvloop", server, True)] if uvloop else []
    specs += [python_peer("asyncio-protocol", peer, False)]
    specs += [python_peer("uvloop-protocol", peer, True)] if uvloop else []
    redis = shutil.which("redis-server") or "redis-server"
    specs.append(
        h.ServerSpec(
            "redis-server",
            (
                redis,
                "--bind",
                "{host}",
                "--port",
                "{port}",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ),
            probe=(redis, "--version"),
            note="redis-server not found (apt-get install redis-server)",
        )  # fmt: skip
    )
    return specs


def run_benchmark(
    tool: str, host: str, port: int, case: Case, client_cpu: int | None, timeout: float
) -> dict[str, Any]:
    """One redis-benchmark run; its CSV row as numbers."""
    argv = [
        tool, "-h", host, "-p", str(port), "-c", str(case.clients), "-P", str(case.pipeline),
        "-n", str(case.requests), "-t", case.test, "--csv",
    ]  # fmt: skip
    with h.pinned_to(client_cpu):  # the child inherits the affinity
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    if proc.returncode != 0 or len(rows) < 2:
        raise h.BenchError(
            f"redis-benchmark failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    row = dict(zip(rows[0], rows[1], strict=False))
    return {
        "rps": float(row["rps"]),
        "p50_ms": float(row["p50_latency_ms"]),
        "p99_ms": float(row["p99_latency_ms"]),
    }


def measure(
    spec: Any, case: Case, tool: str, host: str, cpus: tuple[int | None, int | None],
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """Start `spec`, run `case` against it once, stop it; req/s and CPU per request."""
    server_cpu, client_cpu = cpus
    port = h.free_port(host)
    with h.ServerProcess(spec, host, port, server_cpu) as server:
        h.prime(host, port, b"PING\r\n")  # a connection closed first, as in a live server
        psi0 = h.cpu_pressure_us()
        t0, (u0, s0) = time.monotonic(), h.proc_cpu(server.pid)
        result = run_benchmark(tool, host, port, case, client_cpu, timeout)
        t1, (u1, s1) = time.monotonic(), h.proc_cpu(server.pid)
        psi1 = h.cpu_pressure_us()
        if not server.alive():
            raise h.BenchError(f"{spec.name} died: {server.stderr_tail(500)}")
    user, system = u1 - u0, s1 - s0
    result.update(
        user_us_per_req=1e6 * user / case.requests,
        sys_us_per_req=1e6 * system / case.requests,
        cpu_us_per_req=1e6 * (user + system) / case.requests,
        server_cpu_pct=100 * (user + system) / (t1 - t0),
    )
    if psi0 is not None and psi1 is not None:
        result["cpu_pressure_pct"] = 100 * (psi1 - psi0) / 1e6 / (t1 - t0)
    return result


MEDIAN_KEYS = (
    "rps", "p50_ms", "p99_ms", "user_us_per_req", "sys_us_per_req", "cpu_us_per_req",
    "server_cpu_pct", "cpu_pressure_pct",
)  # fmt: skip


def summarize(runs: Sequence[dict[str, Any]], cases: Sequence[Case], peers: Sequence[str]) -> list:
    """One row per (case, peer): medians, then ratios to redis-server and asyncio-protocol."""
    rows = []
    for case in cases:
        by_peer = {}
        for peer in peers:
            group = [r for r in runs if r["case"] == case.name and r["peer"] == peer]
            ok = [r for r in group if "failed" not in r]
            if not group:
                continue
            row: dict[str, Any] = {"case": case.name, "peer": peer, "runs": len(ok)}
            row["errors"] = len(group) - len(ok)
            for key in MEDIAN_KEYS:
                vals = [r[key] for r in ok if isinstance(r.get(key), int | float)]
                row[key] = statistics.median(vals) if vals else None
            h.mark_busy(row, ok)  # the table marks rows with busy runs
            by_peer[peer] = row
            rows.append(row)
        for row in by_peer.values():
            for label, ref in (("redis", "redis-server"), ("asyncio", "asyncio-protocol")):
                other = by_peer.get(ref, {})
                row[f"rps_vs_{label}"] = h._ratio(row.get("rps"), other.get("rps"))
                row[f"cpu_vs_{label}"] = h._ratio(
                    row.get("cpu_us_per_req"), other.get("cpu_us_per_req")
                )
    return rows


COLUMNS = [
    ("case", "case", ""),
    ("peer", "peer", ""),
    ("req/s", "rps", ",.0f"),
    ("p50 ms", "p50_ms", ".3f"),
    ("cpu us/req", "cpu_us_per_req", ".2f"),
    ("user us/req", "user_us_per_req", ".2f"),
    ("sys us/req", "sys_us_per_req", ".2f"),
    ("srv cpu%", "server_cpu_pct", ".0f"),
    ("rps x redis", "rps_vs_redis", ".2f"),
    ("cpu x redis", "cpu_vs_redis", ".2f"),
    ("cpu x asyncio", "cpu_vs_asyncio", ".2f"),
    ("failed", "errors", "d"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="RESP servers (netpoll, asyncio/uvloop Protocol + hiredis, redis-server) "
        "under redis-benchmark: req/s and server CPU per request.",
        epilog="Peer names: netpoll-asyncio netpoll-uvloop asyncio-protocol uvloop-protocol "
        "redis-server.",
    )
    parser.add_argument(
        "--tests",
        default="ping_mbulk,set,get",
        help="redis-benchmark tests (default ping_mbulk,set,get)",
    )
    parser.add_argument("--clients", type=int, default=50, help="connections (default 50)")
    parser.add_argument(
        "--pipeline", default="16,1", help="pipeline depths, comma-separated (default 16,1)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        help="requests per run at -P > 1 (default 1000000); -P 1 runs a fifth",
    )
    parser.add_argument("--repeat", type=int, help="runs per case and peer (default 3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="set and get at -P 16 only, 300000 requests, one run each",
    )
    parser.add_argument("--peers", metavar="NAME,...", help="run only these peers")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (127.0.0.1)")
    parser.add_argument("--markdown", metavar="PATH", help="also write a markdown report")
    parser.add_argument("--json", metavar="PATH", help="also write medians and runs as JSON")
    args = parser.parse_args(argv)  # fmt: skip

    tool = shutil.which("redis-benchmark")
    if tool is None:
        print("redis-benchmark not found: apt-get install redis-tools", file=sys.stderr)
        return 2
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    pipelines = [int(p) for p in args.pipeline.split(",") if p.strip()]
    requests = args.requests or (300_000 if args.quick else 1_000_000)
    repeat = args.repeat or (1 if args.quick else 3)
    if args.quick:
        tests, pipelines = (["set", "get"] if args.tests == "ping_mbulk,set,get" else tests), [16]
    cases = [
        Case(t, args.clients, p, requests if p > 1 else max(1000, requests // 5))
        for p in pipelines
        for t in tests
    ]
    specs = h.select_peers(peer_specs(h.have_uvloop()), args.peers)
    usable = h.check_available(specs)
    cpus = h.cpu_plan()
    if cpus == (None, None):
        print("note: fewer than 2 usable cores: server and client are not pinned", file=sys.stderr)

    runs: list[dict[str, Any]] = []
    total, n, started = len(cases) * repeat * len(usable), 0, time.monotonic()
    with h.pinned_to(cpus[1]):
        for case in cases:
            for r in range(repeat):
                for spec in usable:  # interleaved
                    n += 1
                    try:
                        res = measure(spec, case, tool, args.host, cpus, timeout=300)
                        msg = (
                            f"{res['rps']:>11,.0f} req/s  cpu {res['cpu_us_per_req']:5.2f} us/req"
                            f"  srv {res['server_cpu_pct']:3.0f}%"
                        )
                        if (res.get("cpu_pressure_pct") or 0) > h.BUSY_PRESSURE_PCT:
                            msg += f"  BUSY MACHINE (cpu pressure {res['cpu_pressure_pct']:.0f}%)"
                    except (h.BenchError, subprocess.TimeoutExpired) as exc:
                        res = {"failed": str(exc)}
                        msg = f"FAILED: {str(exc).splitlines()[0]}"
                    res.update(case=case.name, peer=spec.name, repeat=r)
                    runs.append(res)
                    print(
                        f"[{n}/{total}] {case.name:<18} {spec.name:<17} run {r + 1}/{repeat}  "
                        f"{msg}  ({time.monotonic() - started:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )

    rows = summarize(runs, cases, [s.name for s in usable])
    columns = [h.Column(*c) for c in COLUMNS]
    title = (
        f"RESP: redis-benchmark -c {args.clients}, fixed request count, median of {repeat}; "
        f"server CPU = user + system of the server process per request"
    )
    print(title)
    print(h.format_table(rows, columns))
    skipped = [s.name for s in specs if s not in usable]
    notes = [f"{name} was skipped (not available)" for name in skipped]
    if note := h.contention_note(runs):
        notes.append(note)
    for note in notes:
        print(f"note: {note}")
    meta = {**h.machine_info(), "benchmark": "benchmarks/resp.py", "repeat": repeat}
    if args.markdown:
        pin = meta.get("pinning") or (None, None)
        text = [
            f"# {title}",
            "",
            f"- machine: {meta['cpu']}, {meta['cores']} cores, kernel {meta['kernel']}",
            f"- Python {meta['python']}, uvloop {meta['uvloop']}, {meta['time']}",
            f"- server pinned to cpu {pin[0]}, redis-benchmark to cpu {pin[1]}",
            "",
            h.format_markdown(rows, columns),
            "",
            *[f"- {note}" for note in notes],
        ]
        Path(args.markdown).write_text("\n".join(text) + "\n")
        print(f"wrote {args.markdown}")
    if args.json:
        import json

        payload = {"meta": meta, "results": rows, "runs": runs, "skipped": skipped}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
