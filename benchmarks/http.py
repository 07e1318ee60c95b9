#!/usr/bin/env python3
"""HTTP/1.1 keep-alive servers side by side, driven by wrk.

Peers: ``examples/http_server.py`` on netpoll (asyncio loop and uvloop), the
same HTTP code behind an ``asyncio.Protocol`` (``examples/peers/http_asyncio.py``,
asyncio and uvloop; all parse with httptools and send the same bytes), and
nginx with one worker answering ``return 200 "Hello, World!"``.

Each run starts a fresh server pinned to one core, warms it up with a short
wrk run, then runs ``wrk -t1 -cC -dD`` pinned to another core.  Reported:
req/s and latency from wrk, and the server CPU per request: user + system
time of the server's process tree (``/proc/<pid>/stat``) over the measured
wrk run divided by the requests wrk completed.  Ratios to uvloop Protocol.
Peers are interleaved (A, B, C, A, B, C, ...); the table shows medians.

    python benchmarks/http.py                     # ~2 min
    python benchmarks/http.py --quick             # ~30 s
    python benchmarks/http.py --connections 50,200 --markdown http.md

Needs wrk (Debian: ``apt-get install wrk``), httptools for the Python peers
and nginx for the reference peer (skipped with a note when missing).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python benchmarks/http.py`, this directory comes first on sys.path and
# this file would shadow the standard library's `http` package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from netpoll.bench import harness as h  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    default_type text/plain;
    client_body_temp_path @DIR@/body;
    proxy_temp_path @DIR@/proxy;
    fastcgi_temp_path @DIR@/fastcgi;
    uwsgi_temp_path @DIR@/uwsgi;
    scgi_temp_path @DIR@/scgi;
    server {
        listen @HOST@:@PORT@;
        location / { return 200 "Hello, World!"; }
    }
}
"""


class Peer:
    """A server: `spec(host, port, tmp)` gives the ServerSpec for one run."""

    def __init__(self, name: str, argv: list[str] | None = None, nginx: str | None = None):
        self.name, self.argv, self.nginx = name, argv, nginx

    def spec(self, host: str, port: int, tmp: Path) -> Any:
        if self.nginx is None:
            assert self.argv is not None
            return h.ServerSpec(self.name, tuple(self.argv))
        conf = NGINX_CONF.replace("@DIR@", str(tmp)).replace("@PORT@", str(port))
        conf = conf.replace("@HOST@", f"[{host}]" if ":" in host else host)
        (tmp / "nginx.conf").write_text(conf)
        argv = (self.nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "e.log"))
        return h.ServerSpec(self.name, argv)

    def available(self) -> str | None:
        """None if the peer can run, else why not."""
        if self.nginx is not None:
            return None
        assert self.argv is not None
        probe = subprocess.run([*self.argv[:2], "--help"], capture_output=True, check=False)
        return None if probe.returncode == 0 else "cannot run (httptools missing?)"


def peers(uvloop: bool) -> list[Peer]:
    server, peer = EXAMPLES / "http_server.py", EXAMPLES / "peers" / "http_asyncio.py"

    def py(name: str, script: Path, uv: bool) -> Peer:
        argv = [sys.executable, str(script), "--host", "{host}", "--port", "{port}"]
        return Peer(name, argv + (["--uvloop"] if uv else []))

    out = [py("netpoll-asyncio", server, False)]
    out += [py("netpoll-uvloop", server, True)] if uvloop else []
    out += [py("asyncio-protocol", peer, False)]
    out += [py("uvloop-protocol", peer, True)] if uvloop else []
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    out += [Peer("nginx", nginx=nginx)] if nginx else []
    return out


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests, req/s, latency percentiles, socket errors and non-2xx count from wrk."""
    res: dict[str, Any] = {}
    if m := re.search(r"(\d+) requests in ([\d.]+\w+)", out):
        res["requests"] = int(m.group(1))
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        if m := re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M):
            res[f"p{pct}_ms"] = _ms(m.group(1))
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors = sum(int(g) for g in m.groups())
    res["socket_errors"] = errors
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    return res


def run_wrk(wrk: str, url: str, conns: int, seconds: float, cpu: int | None) -> dict[str, Any]:
    # wrk takes whole seconds
    argv = [wrk, "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", url]
    with h.pinned_to(cpu):  # the child inherits the affinity
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    res = parse_wrk(proc.stdout)
    if proc.returncode != 0 or "requests" not in res:
        raise h.BenchError(f"wrk failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return res


def measure(
    peer: Peer, conns: int, wrk: str, host: str, cpus: tuple[int | None, int | None],
    duration: float, warmup: float,
) -> dict[str, Any]:  # fmt: skip
    server_cpu, client_cpu = cpus
    port = h.free_port(host)
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    with tempfile.TemporaryDirectory(prefix="netpoll-http-bench-") as tmp:
        spec = peer.spec(host, port, Path(tmp))
        with h.ServerProcess(spec, host, port, server_cpu) as server:
            if warmup > 0:
                run_wrk(wrk, url, conns, warmup, client_cpu)
            psi0 = h.cpu_pressure_us()
            t0, (u0, s0) = time.monotonic(), h.proc_cpu(server.pid)
            res = run_wrk(wrk, url, conns, duration, client_cpu)
            t1, (u1, s1) = time.monotonic(), h.proc_cpu(server.pid)
            psi1 = h.cpu_pressure_us()
            if not server.alive():
                raise h.BenchError(f"{peer.name} died: {server.stderr_tail(500)}")
    n = res["requests"] or 1
    user, system = u1 - u0, s1 - s0
    res.update(
        user_us_per_req=1e6 * user / n,
        sys_us_per_req=1e6 * system / n,
        cpu_us_per_req=1e6 * (user + system) / n,
        server_cpu_pct=100 * (user + system) / (t1 - t0),
    )
    if psi0 is not None and psi1 is not None:
        res["cpu_pressure_pct"] = 100 * (psi1 - psi0) / 1e6 / (t1 - t0)
    return res


MEDIAN_KEYS = (
    "rps", "p50_ms", "p99_ms", "cpu_us_per_req", "user_us_per_req", "sys_us_per_req",
    "server_cpu_pct", "cpu_pressure_pct",
)  # fmt: skip

COLUMNS = [
    ("case", "case", ""),
    ("peer", "peer", ""),
    ("req/s", "rps", ",.0f"),
    ("p50 ms", "p50_ms", ".3f"),
    ("p99 ms", "p99_ms", ".3f"),
    ("cpu us/req", "cpu_us_per_req", ".2f"),
    ("user us/req", "user_us_per_req", ".2f"),
    ("sys us/req", "sys_us_per_req", ".2f"),
    ("srv cpu%", "server_cpu_pct", ".0f"),
    ("rps x uvloop", "rps_vs_uvloop", ".2f"),
    ("cpu x uvloop", "cpu_vs_uvloop", ".2f"),
    ("errors", "errors", "d"),
]


def summarize(runs: list[dict[str, Any]], cases: list[str], names: list[str]) -> list:
    rows = []
    for case in cases:
        by_peer = {}
        for name in names:
            group = [r for r in runs if r["case"] == case and r["peer"] == name]
            if not group:
                continue
            ok = [r for r in group if "failed" not in r]
            row: dict[str, Any] = {"case": case, "peer": name, "runs": len(ok)}
            row["errors"] = sum(
                1 if "failed" in r else r["socket_errors"] + r["non2xx"] for r in group
            )
            for key in MEDIAN_KEYS:
                vals = [r[key] for r in ok if isinstance(r.get(key), int | float)]
                row[key] = statistics.median(vals) if vals else None
            h.mark_busy(row, ok)  # the table marks rows with busy runs
            by_peer[name] = row
            rows.append(row)
        ref = by_peer.get("uvloop-protocol", {})
        for row in by_peer.values():
            row["rps_vs_uvloop"] = h._ratio(row.get("rps"), ref.get("rps"))
            row["cpu_vs_uvloop"] = h._ratio(row.get("cpu_us_per_req"), ref.get("cpu_us_per_req"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="HTTP/1.1 keep-alive servers (netpoll, asyncio/uvloop Protocol + httptools, "
        "nginx) under wrk: req/s and server CPU per request.",
        epilog="Peer names: netpoll-asyncio netpoll-uvloop asyncio-protocol uvloop-protocol nginx.",
    )
    parser.add_argument(
        "--connections", default="50", help="wrk connections, comma-separated (default 50)"
    )
    parser.add_argument("--duration", type=float, help="measured whole seconds per run (default 5)")
    parser.add_argument(
        "--warmup", type=float, help="warm-up whole seconds per run (default 1; 0: none)"
    )
    parser.add_argument("--repeat", type=int, help="runs per case and peer (default 3)")
    parser.add_argument("--quick", action="store_true", help="2 s runs, one each")
    parser.add_argument("--peers", metavar="NAME,...", help="run only these peers")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (127.0.0.1)")
    parser.add_argument("--markdown", metavar="PATH", help="also write a markdown report")
    parser.add_argument("--json", metavar="PATH", help="also write medians and runs as JSON")
    args = parser.parse_args(argv)

    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    duration = args.duration or (2.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else 1.0
    repeat = args.repeat or (1 if args.quick else 3)
    conns = [int(c) for c in args.connections.split(",") if c.strip()]
    all_peers = peers(h.have_uvloop())
    if args.peers:
        wanted = {p.strip() for p in args.peers.split(",") if p.strip()}
        unknown = wanted - {p.name for p in all_peers}
        if unknown:
            parser.error(f"unknown peer(s): {', '.join(sorted(unknown))}")
        all_peers = [p for p in all_peers if p.name in wanted]
    usable, notes = [], []
    for peer in all_peers:
        why = peer.available()
        if why is None:
            usable.append(peer)
        else:
            notes.append(f"{peer.name} was skipped: {why}")
            print(f"note: skipping {peer.name}: {why}", file=sys.stderr)
    if not any(p.nginx for p in all_peers) and not args.peers:
        notes.append("nginx was skipped: not found (apt-get install nginx-light)")
    cpus = h.cpu_plan()
    cases = [f"wrk -t1 -c{c}" for c in conns]
    runs: list[dict[str, Any]] = []
    total, n, started = len(conns) * repeat * len(usable), 0, time.monotonic()
    with h.pinned_to(cpus[1]):
        for c, case in zip(conns, cases, strict=True):
            for r in range(repeat):
                for peer in usable:  # interleaved
                    n += 1
                    try:
                        res = measure(peer, c, wrk, args.host, cpus, duration, warmup)
                        msg = (
                            f"{res['rps']:>10,.0f} req/s  cpu {res['cpu_us_per_req']:5.2f} us/req"
                            f"  srv {res['server_cpu_pct']:3.0f}%"
                        )
                        if res["socket_errors"] or res["non2xx"]:
                            msg += (
                                f"  ERRORS {res['socket_errors']} socket, {res['non2xx']} non-2xx"
                            )
                        if (res.get("cpu_pressure_pct") or 0) > h.BUSY_PRESSURE_PCT:
                            msg += f"  BUSY MACHINE (cpu pressure {res['cpu_pressure_pct']:.0f}%)"
                    except (h.BenchError, subprocess.TimeoutExpired) as exc:
                        res = {"failed": str(exc)}
                        msg = f"FAILED: {str(exc).splitlines()[0]}"
                    res.update(case=case, peer=peer.name, repeat=r)
                    runs.append(res)
                    print(
                        f"[{n}/{total}] {case:<14} {peer.name:<17} run {r + 1}/{repeat}  {msg}"
                        f"  ({time.monotonic() - started:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    rows = summarize(runs, cases, [p.name for p in usable])
    columns = [h.Column(*col) for col in COLUMNS]
    title = (
        f"HTTP/1.1 keep-alive: wrk {duration:g} s (warm-up {warmup:g} s), median of {repeat}; "
        "server CPU = user + system of the server process tree per request"
    )
    print(title)
    print(h.format_table(rows, columns))
    if note := h.contention_note(runs):
        notes.append(note)
    for note in notes:
        print(f"note: {note}")
    meta = {**h.machine_info(), "benchmark": "benchmarks/http.py", "repeat": repeat}
    if args.markdown:
        pin = meta.get("pinning") or (None, None)
        text = [
            f"# {title}",
            "",
            f"- machine: {meta['cpu']}, {meta['cores']} cores, kernel {meta['kernel']}",
            f"- Python {meta['python']}, uvloop {meta['uvloop']}, {meta['time']}",
            f"- server pinned to cpu {pin[0]}, wrk to cpu {pin[1]}",
            "",
            h.format_markdown(rows, columns),
            "",
            *[f"- {note}" for note in notes],
        ]
        Path(args.markdown).write_text("\n".join(text) + "\n")
        print(f"wrote {args.markdown}")
    if args.json:
        payload = {"meta": meta, "results": rows, "runs": runs}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
