#!/usr/bin/env python3
"""Is the load generator neutral?  loadgen and refgen on the same peers, interleaved.

For each round and each peer, three runs, each against a fresh server: loadgen
unprimed (``-k 0``, how loadgen measured before round 2), loadgen primed (the
default, ``-k 1``) and refgen (``src/netpoll/bench/refgen.c``: a second
generator that shares no code with loadgen).  A neutral loadgen agrees with
refgen on every peer; the unprimed runs show how far off the old one was.
Medians over the rounds; the server's page faults per request tell a cold
asyncio server (2 per request) from a warm one (0).

    python benchmarks/fairness.py                       # echo 1 KiB x 50, 3 rounds, ~1 min
    python benchmarks/fairness.py --kinds protocol,streams --uvloop --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from netpoll.bench import harness as h

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="protocol", help="peers.py kinds (default protocol)")
    ap.add_argument("--uvloop", action="store_true", help="also the same kinds on uvloop (control)")
    ap.add_argument("--aiofastnet", action="store_true", help="also on aiofastnet's transports")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--json", metavar="PATH", help="also write every run as JSON")
    args = ap.parse_args(argv)

    tools = h.build_tools()
    case = h.Case(f"echo {h.size_name(args.size)} x{args.connections}", args.size, args.connections)
    loops = [False, True] if args.uvloop and h.have_uvloop() else [False]
    afn = [False, True] if args.aiofastnet and h.have_aiofastnet() else [False]
    specs = [
        h.peer_spec(kind, uv, aiofastnet=a)
        for kind in args.kinds.split(",")
        for a in afn
        for uv in loops
    ]
    gens = ("loadgen -k 0 (old)", "loadgen -k 1 (new)", "refgen")
    cpus = h.cpu_plan()
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with h.pinned_to(cpus[1]):
        for r in range(args.rounds):
            for spec in specs:
                for gen in gens:
                    if gen == "refgen":
                        res = h.measure_refgen(
                            spec, case, tools, args.duration, args.warmup, cpus=cpus
                        )
                    else:
                        k = "0" if "old" in gen else "1"
                        res = h.measure(
                            spec, case, tools, args.duration, args.warmup, cpus=cpus,
                            loadgen_args=["-k", k],
                        )  # fmt: skip
                    runs.setdefault((spec.name, gen), []).append(res)
                    print(
                        f"round {r + 1} {spec.name:28s} {gen:19s} {res['rps']:>9,.0f} req/s"
                        f"  srv {res.get('server_cpu_pct', float('nan')):3.0f}%"
                        f"  faults/req {res.get('server_faults_per_req', float('nan')):4.2f}"
                        f"  cpu pressure {res.get('cpu_pressure_pct', float('nan')):3.0f}%",
                        file=sys.stderr,
                        flush=True,
                    )

    def med(xs: list[dict[str, Any]], key: str) -> float:
        vals = [x[key] for x in xs if isinstance(x.get(key), int | float)]
        return statistics.median(vals) if vals else float("nan")

    print(f"{case.name}: median of {args.rounds} rounds x {args.duration:g} s, interleaved")
    print(
        f"{'peer':28s} {'generator':19s} {'req/s':>9s} {'x refgen':>8s} {'faults/req':>10s}  runs"
    )
    for spec in specs:
        ref = med(runs[(spec.name, "refgen")], "rps")
        for gen in gens:
            xs = runs[(spec.name, gen)]
            rps = med(xs, "rps")
            print(
                f"{spec.name:28s} {gen:19s} {rps:>9,.0f} {rps / ref:>8.2f} "
                f"{med(xs, 'server_faults_per_req'):>10.2f}  "
                + ", ".join(f"{x['rps']:,.0f}" for x in xs)
            )
    busy = [x for xs in runs.values() for x in xs if (x.get("cpu_pressure_pct") or 0) > 5]
    if busy:
        print(f"warning: {len(busy)} loadgen runs had CPU competition; compare within rounds")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{k[0]} | {k[1]}": v for k, v in runs.items()}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
