"""``python -m netpoll``: the command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="TCP port (default 9000; 0 = any)")
    p.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead of TCP")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio")
    p.add_argument("--handler", choices=["async", "sync"], default="async",
                   help="handler style: async (coroutines) or sync (plain functions on "
                        "conn.input, run inside the poller's pass); default async")
    p.add_argument("--backend", choices=["epoll", "io_uring", "auto"], default=None,
                   help="poller backend (default: NETPOLL_BACKEND, else epoll)")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m netpoll",
        description="netpoll: zero-copy buffers and an epoll reactor inside asyncio.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("bench", help="run the headline benchmark and print the comparison table",
                   add_help=False)
    echo = sub.add_parser("echo", help="run an echo server until SIGINT/SIGTERM")
    _server_args(echo)
    rpc = sub.add_parser("rpc-server", help="run the length-prefixed RPC server "
                                            "(4-byte big-endian length + payload)")
    _server_args(rpc)
    from netpoll.workers import add_arguments as workers_arguments

    workers_arguments(sub.add_parser("workers", help="run module:serve on N worker processes "
                                                     "under a supervisor (docs/workers.md)"))
    if argv and argv[0] == "bench":
        from netpoll.bench import main as bench_main

        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "workers":
        from netpoll.workers import main_from_args

        return main_from_args(args)
    from netpoll.servers import run_server

    kind = "echo" if args.command == "echo" else "rpc"
    try:
        return run_server(kind, args.host, args.port, use_uvloop=args.uvloop, unix=args.unix,
                          handler=args.handler, backend=args.backend)
    except OSError as exc:       # e.g. the address is in use: one line, no traceback
        where = args.unix or f"{args.host}:{args.port}"
        text = exc.strerror or str(exc)
        print(f"netpoll {args.command}: {text if where in text else f'{where}: {text}'}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
