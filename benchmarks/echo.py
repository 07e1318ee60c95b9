#!/usr/bin/env python3
"""The full echo matrix: message sizes x connection counts x every peer.

Default: 64 B, 1 KiB and 16 KiB messages over 1, 50 and 500 ping-pong
connections, against netpoll (asyncio loop and uvloop; async handler, and the
plain handler once `python -m netpoll echo` takes ``--handler sync``), asyncio
Protocol, BufferedProtocol and Streams, uvloop Protocol and Streams, aiofastnet
Protocol on both loops (if installed), and the C epoll echo server (the
ceiling); 3 runs of each, peers interleaved, medians shown.
The server runs pinned to one core and the C load generator to another.

    python benchmarks/echo.py                       # full matrix, ~16 min
    python benchmarks/echo.py --quick               # ~1 min
    python benchmarks/echo.py --sizes 64 --connections 50 --markdown out.md

netpoll's peers need the package built (``pip install -e .``); without it they
are skipped with a note and the baselines still run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    from netpoll.bench import harness as h
    parser = argparse.ArgumentParser(
        description="netpoll echo benchmark: sizes x connections x peers.",
        epilog="Peer names: netpoll-asyncio netpoll-uvloop netpoll-sync-asyncio "
        "netpoll-sync-uvloop asyncio-protocol asyncio-buffered asyncio-streams "
        "uvloop-protocol uvloop-streams aiofastnet-asyncio-protocol "
        "aiofastnet-uvloop-protocol c-echo.",
    )
    h.add_run_arguments(
        parser,
        normal=(3.0, 1.0, 3),
        quick=(0.8, 0.2, 1),
        quick_help="a ~1 minute run: sizes 64,1024; connections 1,50; 0.8 s; one run each",
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--sizes", type=h.int_list, metavar="B,...", help="message sizes (default 64,1024,16384)"
    )
    load.add_argument(
        "--connections", type=h.int_list, metavar="N,...", help="connection counts (default 1,50,500)"
    )
    load.add_argument(
        "--depth",
        type=int,
        default=1,
        metavar="D",
        help="messages in flight per connection; 1 = ping-pong (default 1)",
    )
    parser.add_argument("--markdown", metavar="PATH", help="also write a markdown report")
    args = parser.parse_args(argv)
    h.resolve_run_arguments(args)
    sizes = args.sizes or ([64, 1024] if args.quick else [64, 1024, 16384])
    conns = args.connections or ([1, 50] if args.quick else [1, 50, 500])

    try:
        tools = h.build_tools(args.cache_dir)
    except h.BenchError as exc:
        print(f"cannot build the C tools: {exc}", file=sys.stderr)
        return 2
    uv = h.have_uvloop()
    loops = [False, True] if uv else [False]
    # the plain (sync) handler and aiofastnet are skipped with a note where missing
    specs = [h.netpoll_echo_spec(u, handler=s) for s in h.HANDLER_STYLES for u in loops]
    specs += [h.peer_spec(kind) for kind in ("protocol", "buffered", "streams")]
    specs += [h.peer_spec(kind, True) for kind in ("protocol", "streams")] if uv else []
    specs += [h.peer_spec("protocol", u, aiofastnet=True) for u in loops]
    specs += [h.c_echo_spec(tools)]
    if not uv:
        print("note: uvloop is not installed: uvloop peers skipped", file=sys.stderr)
    specs = h.select_peers(specs, args.peers)

    depth = f" d{args.depth}" if args.depth > 1 else ""
    cases = [
        h.Case(f"{h.size_name(s)} x{c}{depth}", s, c, depth=args.depth) for s in sizes for c in conns
    ]
    estimate = len(cases) * len(specs) * args.repeat * (args.duration + args.warmup + 0.5)
    print(
        f"echo matrix: {len(cases)} cases x {len(specs)} peers x {args.repeat} runs, "
        f"about {estimate / 60:.0f} min",
        file=sys.stderr,
    )
    refs = {"uvloop": "uvloop-protocol", "C": "c-echo"}
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
    columns = h.default_columns(list(refs))
    meta = {
        **h.machine_info(),
        "benchmark": "benchmarks/echo.py",
        "duration": args.duration,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "depth": args.depth,
    }
    title = f"echo: median of {args.repeat} x {args.duration:g} s (warm-up {args.warmup:g} s)"
    h.report(result, columns, args, meta, title=title)
    if args.markdown:
        Path(args.markdown).write_text(h.markdown_report(result, columns, meta, title))
        print(f"wrote {args.markdown}")
    return 1 if any(r.get("errors") for r in result.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
