"""A multiplexed RPC server on netpoll: answers go out through a ShardQueue.

Protocol: a frame is a 4-byte big-endian payload length, a 4-byte
big-endian sequence id, then the payload. Clients keep many requests in
flight on each connection and match responses by sequence id, so the
server may answer in any order; this one answers each request with a frame
carrying the same id and payload.

Each connection gets a ``netpoll.mux.ShardQueue``: ``on_request`` decodes
every complete frame, encodes each response into its own LinkBuffer and
``add``s a getter for it. The queue moves those buffers to the connection
without copying and sends each batch with one flush, the way a server whose
responses come from many tasks would write.

    python examples/mux_server.py --host 127.0.0.1 --port 9001 [--uvloop]

Prints ``listening on ADDRESS`` and ``ready``; SIGINT/SIGTERM shut it down
gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import sys

import netpoll
from netpoll.mux import ShardQueue

HEADER = struct.Struct(">II")       # payload length, sequence id


class MuxServer:
    """The per-connection state lives in ``ctx``: the connection's ShardQueue."""

    def __init__(self) -> None:
        self.stopping = False
        self.server = netpoll.EventLoop(self.on_request, on_prepare=self.on_prepare)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Graceful shutdown: requests already received get their answers first.

        Answers wait in the ShardQueues until their drain runs, which
        EventLoop.shutdown cannot see: a connection whose on_request has
        returned looks idle and would be closed with answers still queued.
        So from now on each on_request waits for its queue to flush.
        """
        self.stopping = True
        await asyncio.sleep(0)        # batches queued before this point drain now
        await self.server.shutdown(timeout)

    def on_prepare(self, conn: netpoll.Connection) -> ShardQueue:
        return ShardQueue(4, conn)

    async def on_request(self, queue: ShardQueue, conn: netpoll.Connection) -> None:
        """Decode every complete request; queue one response buffer per request."""
        reader = conn.reader
        while len(reader) >= 8:
            n, seq = HEADER.unpack(await reader.peek(8))
            if len(reader) < 8 + n:
                break
            request = await reader.next(8 + n)
            response = netpoll.LinkBuffer(8 + n)
            out = response.malloc(8 + n)
            HEADER.pack_into(out, 0, n, seq)
            out[8:] = request[8:]
            response.flush()
            queue.add(lambda buf=response: buf)
        if self.stopping:
            # Shutting down: the answers must be out before the connection closes.
            await queue.close()


async def serve(host: str, port: int, unix: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully."""
    ln: netpoll.Listener
    if unix:
        ln = netpoll.create_listener("unix", unix)
        where = ln.addr
    else:
        tcp = netpoll.create_listener("tcp", (host, port))
        addr_host, addr_port = tcp.addr
        ln = tcp
        where = f"[{addr_host}]:{addr_port}" if ":" in addr_host else f"{addr_host}:{addr_port}"
    app = MuxServer()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.ensure_future(app.server.serve(ln))
    print(f"listening on {where}", flush=True)
    print("ready", flush=True)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    try:
        await app.shutdown(5.0)
    except TimeoutError as exc:
        print(f"mux_server: {exc}", file=sys.stderr)
    finally:
        stopping.cancel()
        await serving
        ln.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until a signal; returns the exit code."""
    parser = argparse.ArgumentParser(description="netpoll multiplexed RPC server")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9001, help="TCP port (9001; 0 = any)")
    parser.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    coro = serve(args.host, args.port, args.unix)
    if args.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
