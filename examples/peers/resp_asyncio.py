"""The RESP server of ``examples/resp_server.py`` written the usual asyncio way.

An ``asyncio.Protocol`` whose ``data_received`` feeds a ``hiredis.Reader``
and writes the answers of each chunk with one ``transport.write``; the
command table, reply encoding and the parsing loop are imported from
``resp_server.py``, so a benchmark compares the I/O layers only.  A
benchmark peer for ``benchmarks/resp.py``:

    python examples/peers/resp_asyncio.py --host 127.0.0.1 --port 6381 [--uvloop]

Prints ``listening on ADDRESS`` and ``ready``; stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resp_server import ConnState, process_bytes  # noqa: E402


class RespProtocol(asyncio.Protocol):
    """One connection: a hiredis reader, answers batched per ``data_received``."""

    def __init__(self) -> None:
        self.state = ConnState()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        out: list[bytes] = []
        quit = process_bytes(self.state, data, out)
        transport = self.transport
        assert transport is not None
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if quit:
            transport.close()


async def serve(host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RespProtocol, host, port)
    addr_host, addr_port = server.sockets[0].getsockname()[:2]
    where = f"[{addr_host}]:{addr_port}" if ":" in addr_host else f"{addr_host}:{addr_port}"
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {where}", flush=True)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run until a signal."""
    parser = argparse.ArgumentParser(description="asyncio Protocol + hiredis RESP server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6381)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    coro = serve(args.host, args.port)
    if args.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
