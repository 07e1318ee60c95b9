"""``python -m netpoll bench``: the headline benchmark.

Two cases in a minute or two, each against the same peers, run interleaved and
repeated (medians shown):

* echo, 1 KiB messages, 50 connections, ping-pong;
* framed RPC (4-byte big-endian length + payload, decoded and re-encoded by
  the server), 64 B payloads, 100 connections, ping-pong.

Peers: netpoll on the asyncio loop and on uvloop, with its async handler and
(once the servers take ``--handler sync``) its plain-function handler; the
asyncio and uvloop Protocol servers from `netpoll.bench.peers`; the uvloop
Protocol server on aiofastnet's transports (the closest competitor: Cython
transports inside an asyncio loop, like netpoll); and a C epoll echo server
(the ceiling).  Every netpoll peer runs on the epoll backend and, where the kernel
allows it, on io_uring (``--backends``).  The load generator is a small C program; both C tools are compiled
on first use with the system ``cc`` and cached.  The full matrices live in the
repository's ``benchmarks/`` directory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["main"]

_DESCRIPTION = """\
Run netpoll's headline benchmark and print a comparison table.

Cases (both ping-pong, one request in flight per connection):
  echo   1 KiB messages over 50 connections
  rpc    64 B framed requests (4-byte big-endian length + payload) over 100
         connections; the server decodes each request and encodes a new response
Peers: netpoll (asyncio loop, uvloop) with the async handler, and with the plain
(sync) handler where the server offers --handler sync, each on the epoll backend and
(where the kernel allows it) on io_uring (rows ending in -io_uring; --backends); asyncio Protocol; uvloop
Protocol; aiofastnet (uvloop Protocol on aiofastnet's transports; on asyncio if
uvloop is missing); a C epoll echo server, the ceiling.  Missing optional
packages (uvloop, aiofastnet) skip their peers with a note.

The server is pinned to one core and the C load generator to another.  The
columns: req/s; p50/p99 latency (send -> full response) in microseconds;
server user-space CPU microseconds per request (what the library itself costs:
on loopback the kernel dominates total CPU); server total CPU per request;
server CPU% (near 100 = the server is the bottleneck); throughput ratios to
uvloop's Protocol and to the C server; errors; and "busy" on rows whose runs
had other processes competing for the CPUs (numbers suspect).
"""

_EPILOG = """\
examples:
  python -m netpoll bench                      # ~100 s per backend; both by default
  python -m netpoll bench --quick              # ~15 s smoke run
  python -m netpoll bench --cases rpc --connections 500 --json out.json
  python -m netpoll bench --backends io_uring  # netpoll on io_uring only
"""


def _repo_example(name: str) -> Path | None:
    """`examples/<name>` when running from a source checkout, else None."""
    root = Path(__file__).resolve().parents[3]
    path = root / "examples" / name
    if path.is_file() and (root / "pyproject.toml").is_file():
        return path
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the headline benchmark; returns the exit status (0 ok, 1 errors, 2 cannot run)."""
    from . import harness as h

    parser = argparse.ArgumentParser(
        prog="python -m netpoll bench",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    h.add_run_arguments(
        parser,
        normal=(1.2, 0.3, 3),
        quick=(0.6, 0.2, 1),
        quick_help="a ~15 s smoke run for CI: duration 0.6 s, warm-up 0.2 s, one run per peer",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--cases",
        default="echo,rpc",
        metavar="echo,rpc",
        help="which cases to run (default both)",
    )
    load.add_argument(
        "--connections",
        type=int,
        metavar="N",
        help="connections for every case (default: echo 50, rpc 100)",
    )
    load.add_argument(
        "--size",
        type=int,
        metavar="BYTES",
        help="message/payload size for every case (default: echo 1024, rpc 64)",
    )
    load.add_argument(
        "--backends",
        default=None,
        metavar="epoll,io_uring",
        help="netpoll's poller backends, side by side (default: epoll and, where the "
        "kernel allows it, io_uring; rows of io_uring peers end in -io_uring)",
    )
    args = parser.parse_args(argv)
    h.resolve_run_arguments(args)
    wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
    if not wanted or wanted - {"echo", "rpc"}:
        parser.error("--cases takes echo, rpc or echo,rpc")
    if (args.connections is not None and args.connections < 1) or (
        args.size is not None and args.size < 1
    ):
        parser.error("--connections and --size must be positive")

    try:
        tools = h.build_tools(args.cache_dir)
    except h.BenchError as exc:
        print(f"netpoll bench: cannot build the C load generator: {exc}", file=sys.stderr)
        return 2
    uv = h.have_uvloop()
    if not uv:
        print("note: uvloop is not installed: uvloop peers skipped", file=sys.stderr)
    afn = h.have_aiofastnet()
    if not afn:
        print(
            "note: aiofastnet is not installed: its peer skipped"
            " (pip install 'netpoll[aiofastnet]')",
            file=sys.stderr,
        )
    loops = [False, True] if uv else [False]
    backends = _backends(args.backends, parser)

    def peers(kind: str, netpoll: Callable[[bool, str], h.ServerSpec]) -> list[h.ServerSpec]:
        specs = [
            _on_backend(netpoll(loop, style), backend)
            for style in h.HANDLER_STYLES
            for backend in backends
            for loop in loops
        ]
        specs += [h.peer_spec(kind)]
        specs += [h.peer_spec(kind, True)] if uv else []
        specs += [h.peer_spec(kind, uv, aiofastnet=True)] if afn else []
        return [*specs, h.c_echo_spec(tools)]

    def afn_name(kind: str) -> str:  # ratios in the JSON: rps_vs_aiofastnet, ucpu_vs_...
        return h.peer_spec(kind, uv, aiofastnet=True).name

    suites: list[tuple[h.Case, list[h.ServerSpec], dict[str, str]]] = []
    if "echo" in wanted:
        size, conns = args.size or 1024, args.connections or 50
        specs = peers("protocol", lambda uvl, style: h.netpoll_echo_spec(uvl, handler=style))
        case = h.Case(f"echo {_size(size)} x{conns}", size, conns)
        refs = {"uvloop": "uvloop-protocol", "C": "c-echo", "aiofastnet": afn_name("protocol")}
        suites.append((case, specs, refs))
    if "rpc" in wanted:
        size, conns = args.size or 64, args.connections or 100
        script = _repo_example("rpc_server.py")
        specs = peers(
            "rpc-protocol", lambda uvl, style: h.netpoll_rpc_spec(uvl, script, handler=style)
        )
        case = h.Case(f"rpc {_size(size)} x{conns}", size, conns, mode="frame")
        refs = {"uvloop": "uvloop-rpc-protocol", "C": "c-echo"}
        suites.append((case, specs, {**refs, "aiofastnet": afn_name("rpc-protocol")}))

    if args.peers:  # names differ per case (uvloop-protocol, uvloop-rpc-protocol)
        known = [s for _, specs, _ in suites for s in specs]
        keep = {s.name for s in h.select_peers(known, args.peers)}
        suites = [(c, [s for s in specs if s.name in keep], r) for c, specs, r in suites]
    rows, runs, skipped = [], [], []
    for case, specs, refs in suites:
        if not specs:
            continue
        res = h.run_suite(
            specs,
            [case],
            tools,
            args.repeat,
            args.duration,
            args.warmup,
            args.host,
            refs,
            loadgen_args=args.loadgen_args,
        )
        rows += res.rows
        runs += res.runs
        skipped += res.skipped
    result = h.SuiteResult(rows=rows, runs=runs, skipped=sorted(set(skipped)))
    columns = [
        h.Column("case", "case"),
        h.Column("peer", "peer"),
        h.Column("req/s", "rps", ",.0f"),
        h.Column("p50 us", "p50_us", ",.0f"),
        h.Column("p99 us", "p99_us", ",.0f"),
        h.Column("user us/req", "user_us_per_req", ".2f"),
        h.Column("cpu us/req", "cpu_us_per_req", ".2f"),
        h.Column("srv cpu%", "server_cpu_pct", ".0f"),
        h.Column("x uvloop", "rps_vs_uvloop", ".2f"),
        h.Column("x C", "rps_vs_C", ".2f"),
        h.Column("errors", "errors", "d"),
    ]
    meta = {
        **h.machine_info(),
        "benchmark": "netpoll bench",
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": args.repeat,
    }
    title = (
        f"netpoll bench: median of {args.repeat} x {args.duration:g} s per peer "
        f"(server on cpu {meta['pinning'][0]}, loadgen on cpu {meta['pinning'][1]})"
    )
    h.report(result, columns, args, meta, title=title)
    return 1 if any(r.get("errors") for r in rows) else 0


def _backends(raw: str | None, parser: argparse.ArgumentParser) -> list[str]:
    """The backends to run netpoll on: --backends, else epoll and (if usable) io_uring."""
    if raw is not None:
        wanted = [b.strip() for b in raw.split(",") if b.strip()]
        if not wanted or set(wanted) - {"epoll", "io_uring"}:
            parser.error("--backends takes epoll, io_uring or epoll,io_uring")
        return wanted
    try:
        from netpoll import _core

        why = _core._uring_probe()[1]
    except ImportError as exc:  # not built: the netpoll peers are skipped anyway
        why = str(exc)
    if why:
        print(f"note: io_uring unavailable here ({why}): epoll only", file=sys.stderr)
        return ["epoll"]
    return ["epoll", "io_uring"]


def _on_backend(spec: Any, backend: str) -> Any:
    """`spec` with NETPOLL_BACKEND=backend (named ...-io_uring unless epoll)."""
    if backend == "epoll":
        return replace(spec, env={**(spec.env or {}), "NETPOLL_BACKEND": "epoll"})
    return replace(spec, name=f"{spec.name}-{backend}",
                   env={**(spec.env or {}), "NETPOLL_BACKEND": backend})


def _size(n: int) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}KiB"
    return f"{n}B"
