#!/usr/bin/env python3
"""The RPC suite, after cloudwego/netpoll-benchmark.

Protocol: a 4-byte big-endian length header + payload; the server decodes each
request frame and encodes a new response frame with the same payload.

Scenarios, each at 64 B and 1 KiB payloads:

* pool  - 100, 500 and 1000 long-lived connections, one request in flight each;
* idle  - the same plus 4x as many idle connections (80% idle), which prices
          the per-connection cost of a server;
* mux   - 4 connections x 16 requests in flight each (pipelined/multiplexed).

Peers: the Protocol, BufferedProtocol and Streams RPC servers on asyncio and
on uvloop; the Protocol server on aiofastnet's transports over both loops
(skipped with a note if aiofastnet is not installed); netpoll
(``examples/rpc_server.py``, asyncio and uvloop, async handler, and the plain
handler once the example takes ``--handler sync``) and the C echo server as
the ceiling (echoing a frame returns the same frame).  Reported: QPS, p99, p999, server user CPU per
request, RSS, ratios to uvloop's Protocol server and to C.

    python benchmarks/rpc.py                 # full suite, ~30 min
    python benchmarks/rpc.py --quick         # ~1 min
    python benchmarks/rpc.py --scenarios mux --sizes 64 --json mux.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RPC_SERVER = ROOT / "examples" / "rpc_server.py"


def main(argv: list[str] | None = None) -> int:
    from netpoll.bench import harness as h
    parser = argparse.ArgumentParser(
        description="netpoll RPC benchmark (netpoll-benchmark scenarios).",
        epilog="Peer names: netpoll-asyncio netpoll-uvloop asyncio-rpc-protocol "
        "asyncio-rpc-buffered asyncio-rpc-streams uvloop-rpc-protocol uvloop-rpc-buffered "
        "uvloop-rpc-streams c-echo.",
    )
    h.add_run_arguments(
        parser,
        normal=(3.0, 1.0, 3),
        quick=(0.8, 0.2, 1),
        quick_help="a ~1 minute run: 64 B; pool and idle at 100 connections, mux; one run each",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--scenarios",
        default="pool,idle,mux",
        metavar="pool,idle,mux",
        help="which scenarios to run (default all three)",
    )
    load.add_argument(
        "--sizes", type=h.int_list, metavar="B,...", help="payload sizes (default 64,1024)"
    )
    load.add_argument(
        "--connections",
        type=h.int_list,
        metavar="N,...",
        help="active connections for pool and idle (default 100,500,1000)",
    )
    load.add_argument(
        "--idle-factor",
        type=int,
        default=4,
        metavar="K",
        help="idle scenario: K idle connections per active one (default 4 = 80%% idle)",
    )
    load.add_argument(
        "--mux",
        default="4x16",
        metavar="CxD",
        help="mux scenario: connections x requests in flight per connection (default 4x16)",
    )
    parser.add_argument("--markdown", metavar="PATH", help="also write a markdown report")
    args = parser.parse_args(argv)
    h.resolve_run_arguments(args)
    scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    if not scenarios or scenarios - {"pool", "idle", "mux"}:
        parser.error("--scenarios takes a comma-separated subset of pool,idle,mux")
    try:
        mux_conns, mux_depth = (int(v) for v in args.mux.lower().split("x"))
    except ValueError:
        parser.error("--mux takes CONNECTIONSxDEPTH, e.g. 4x16")
    sizes = args.sizes or ([64] if args.quick else [64, 1024])
    conns = args.connections or ([100] if args.quick else [100, 500, 1000])

    try:
        tools = h.build_tools(args.cache_dir)
    except h.BenchError as exc:
        print(f"cannot build the C tools: {exc}", file=sys.stderr)
        return 2
    uv = h.have_uvloop()
    if not uv:
        print("note: uvloop is not installed: uvloop peers skipped", file=sys.stderr)
    kinds = ("rpc-protocol", "rpc-buffered", "rpc-streams")
    loops = [False, True] if uv else [False]
    # the plain (sync) handler and aiofastnet are skipped with a note where missing
    specs = [h.netpoll_rpc_spec(u, RPC_SERVER, handler=s) for s in h.HANDLER_STYLES for u in loops]
    specs += [h.peer_spec(k) for k in kinds]
    specs += [h.peer_spec(k, True) for k in kinds] if uv else []
    specs += [h.peer_spec("rpc-protocol", u, aiofastnet=True) for u in loops]
    specs += [h.c_echo_spec(tools)]
    specs = h.select_peers(specs, args.peers)

    cases = []
    for size in sizes:
        sz = h.size_name(size)
        if "pool" in scenarios:
            cases += [h.Case(f"pool {sz} c{c}", size, c, mode="frame") for c in conns]
        if "idle" in scenarios:
            k = args.idle_factor
            cases += [
                h.Case(f"idle {sz} c{c}+{k * c}", size, c, idle=k * c, mode="frame") for c in conns
            ]
        if "mux" in scenarios:
            cases.append(
                h.Case(
                    f"mux {sz} {mux_conns}x{mux_depth}",
                    size,
                    mux_conns,
                    depth=mux_depth,
                    mode="frame",
                )
            )
    estimate = len(cases) * len(specs) * args.repeat * (args.duration + args.warmup + 0.6)
    print(
        f"rpc suite: {len(cases)} cases x {len(specs)} peers x {args.repeat} runs, "
        f"about {estimate / 60:.0f} min",
        file=sys.stderr,
    )
    refs = {"uvloop": "uvloop-rpc-protocol", "C": "c-echo"}
    result = h.run_suite(
        specs,
        cases,
        tools,
        args.repeat,
        args.duration,
        args.warmup,
        args.host,
        refs,
        loadgen_args=args.loadgen_args,
    )
    columns = [
        h.Column("case", "case"),
        h.Column("peer", "peer"),
        h.Column("QPS", "rps", ",.0f"),
        h.Column("p99 us", "p99_us", ",.0f"),
        h.Column("p999 us", "p999_us", ",.0f"),
        h.Column("user us/req", "user_us_per_req", ".2f"),
        h.Column("cpu us/req", "cpu_us_per_req", ".2f"),
        h.Column("srv cpu%", "server_cpu_pct", ".0f"),
        h.Column("RSS MiB", "rss_mb", ".1f"),
        h.Column("x uvloop", "rps_vs_uvloop", ".2f"),
        h.Column("x C", "rps_vs_C", ".2f"),
        h.Column("errors", "errors", "d"),
    ]
    meta = {
        **h.machine_info(),
        "benchmark": "benchmarks/rpc.py",
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": args.repeat,
    }
    title = f"rpc: median of {args.repeat} x {args.duration:g} s (warm-up {args.warmup:g} s)"
    h.report(result, columns, args, meta, title=title)
    if args.markdown:
        Path(args.markdown).write_text(h.markdown_report(result, columns, meta, title))
        print(f"wrote {args.markdown}")
    return 1 if any(r.get("errors") for r in result.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
