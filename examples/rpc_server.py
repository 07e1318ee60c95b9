"""A length-prefixed RPC server on netpoll.

Protocol (the netpoll-benchmark RPC scenario): every request and every
response is a frame, a 4-byte big-endian payload length followed by the
payload. The server decodes each request and encodes its response (the same
payload) into a new buffer.

    python examples/rpc_server.py --host 127.0.0.1 --port 9000 [--uvloop] [--handler sync]
    python examples/rpc_server.py --unix /tmp/rpc.sock

It prints ``listening on ADDRESS`` and then ``ready`` on stdout once it
accepts connections, and shuts down gracefully on SIGINT or SIGTERM
(requests already received are answered). The benchmark harness runs this
file, so ``on_request`` is written for speed:

* it runs only when input is buffered, and answers every complete frame that
  is there (requests may arrive split, or many in one read);
* reads never wait: the length is peeked, and the frame is taken only once
  it is whole (otherwise the handler returns and runs again on more data);
* each response is encoded into the connection's output buffer with
  ``write_binary`` (a header, then a zero-copy view of the payload) and they go out
  in ONE flush per call, however many there were.

``--handler sync`` serves with ``on_request_plain`` instead: the same parsing as a plain
function on ``conn.input`` with ``conn.flush_nowait()``, run inside the poller's pass with
no coroutine (docs/handler-model.md); the server then bounds unsent output with
``write_buffer_limit``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import sys
from typing import Any

import netpoll

_HEADER = struct.Struct(">I")


async def on_request(ctx: Any, conn: netpoll.Connection) -> None:
    """Answer every complete request frame in the buffer, then flush once.

    One view of everything buffered is parsed in place (zero-copy when it sits
    in one node); each response is encoded into the output buffer; the input
    is consumed with one skip and the answers leave with one flush.
    """
    reader = conn.reader
    avail = len(reader)
    if avail < 4:
        return
    data = await reader.peek(avail)
    write = conn.writer.write_binary
    pos = 0
    while avail - pos >= 4:
        n = _HEADER.unpack_from(data, pos)[0]
        end = pos + 4 + n
        if end > avail:
            break                          # the rest of this frame has not arrived yet
        write(_HEADER.pack(n))             # the response, encoded into a new buffer
        write(data[pos + 4:end])
        pos = end
    if pos:
        await reader.skip(pos)
        await conn.writer.flush()


def on_request_plain(ctx: Any, conn: netpoll.Connection) -> None:
    """The same answer as on_request, as a plain function: sync reads, flush_nowait()."""
    buf = conn.input
    avail = len(buf)
    if avail < 4:
        return
    data = buf.peek(avail)
    write = conn.write_binary
    pos = 0
    while avail - pos >= 4:
        n = _HEADER.unpack_from(data, pos)[0]
        end = pos + 4 + n
        if end > avail:
            break                          # called again when the rest arrives
        write(_HEADER.pack(n))
        write(data[pos + 4:end])
        pos = end
    if pos:
        buf.skip(pos)
        conn.flush_nowait()


async def serve(host: str, port: int, unix: str | None = None, handler: str = "async") -> None:
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
    if handler == "sync":
        server = netpoll.EventLoop(on_request_plain, write_buffer_limit=4 << 20)
    else:
        server = netpoll.EventLoop(on_request)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.ensure_future(server.serve(ln))
    print(f"listening on {where}", flush=True)
    print("ready", flush=True)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    try:
        await server.shutdown(5.0)
    except TimeoutError as exc:
        print(f"rpc_server: {exc}", file=sys.stderr)
    finally:
        stopping.cancel()
        await serving
        ln.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the server until a signal; returns the exit code."""
    parser = argparse.ArgumentParser(description="netpoll length-prefixed RPC server")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="TCP port (9000; 0 = any)")
    parser.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--handler", choices=["async", "sync"], default="async",
                        help="async (coroutine) or sync (plain function) handler")
    args = parser.parse_args(argv)
    coro = serve(args.host, args.port, args.unix, args.handler)
    if args.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
