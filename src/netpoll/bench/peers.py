"""Baseline servers that netpoll is measured against.

Each peer is the idiomatic way to write the server with plain asyncio (or
uvloop): nothing from netpoll is imported, so the process pays only for the
stdlib (this file also runs as a script, by path).

Kinds:

``protocol``      asyncio.Protocol echo: ``data_received`` -> ``transport.write``.
``buffered``      asyncio.BufferedProtocol echo into one preallocated bytearray.
``streams``       asyncio Streams echo: ``reader.read`` / ``writer.write`` / ``drain``.
``rpc-protocol``  framed RPC (4-byte big-endian length + payload) on a Protocol:
                  every complete request frame is decoded and a new response
                  frame (same payload) encoded; one joined ``write`` per
                  ``data_received``.
``rpc-buffered``  the same on a BufferedProtocol parsing in place.
``rpc-streams``   the same with ``readexactly`` / ``write`` / ``drain``.

Loops: stock asyncio, or uvloop with ``--uvloop``; ``--aiofastnet`` runs the
same code on aiofastnet's Cython transports over either loop (the loop is made
by ``aiofastnet.loop_factory``, which routes ``create_server`` and
``start_server`` through aiofastnet).  uvloop and aiofastnet are optional: if
one is asked for and not installed the script exits with status 2.

Run: ``python -m netpoll.bench.peers --kind K --host H --port P [--uvloop] [--aiofastnet]``.
Prints ``ready`` once listening and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import resource
import signal
import socket
import struct
import sys
from collections.abc import Callable
from typing import cast

__all__ = ["KINDS", "main"]

KINDS = ("protocol", "buffered", "streams", "rpc-protocol", "rpc-buffered", "rpc-streams")

_HDR = struct.Struct(">I")
_MAX_FRAME = 64 * 1024 * 1024
_READ_SIZE = 256 * 1024  # largest read for Streams (asyncio's Protocol reads are 256 KiB too)
_BUF_SIZE = 64 * 1024  # a BufferedProtocol's per-connection buffer, preallocated
_MIN_ROOM = 16 * 1024  # compact/grow the RPC buffer when less room than this is left


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Tracked:
    """Shared bookkeeping: TCP_NODELAY, read backpressure, clean shutdown."""

    live: set[asyncio.BaseTransport] = set()
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        _nodelay(transport)
        self.live.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self.transport)

    # The peer may send faster than it reads our replies: stop reading while the
    # write buffer is above the high-water mark, as a well-behaved server does.
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class EchoProtocol(_Tracked, asyncio.Protocol):
    """Echo: every chunk received is written straight back."""

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class EchoBufferedProtocol(_Tracked, asyncio.BufferedProtocol):
    """Echo reading into one preallocated buffer per connection."""

    def __init__(self) -> None:
        self.buf = bytearray(_BUF_SIZE)
        self.view = memoryview(self.buf)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self.view[:nbytes])
        if self.transport.get_write_buffer_size():
            # The transport may still refer to our memory; never overwrite it.
            self.buf = bytearray(_BUF_SIZE)
            self.view = memoryview(self.buf)


class RpcProtocol(_Tracked, asyncio.Protocol):
    """Framed RPC: decode every complete frame, answer all of them in one write."""

    def __init__(self) -> None:
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        unpack_from = _HDR.unpack_from
        pack = _HDR.pack
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while end - pos >= 4:
            (size,) = unpack_from(data, pos)
            if size > _MAX_FRAME:
                self.transport.close()
                return
            stop = pos + 4 + size
            if stop > end:
                break
            payload = data[pos + 4 : stop]  # decode: the request body
            out.append(pack(len(payload)))  # encode: a new response frame
            out.append(payload)
            pos = stop
        self.pending = data[pos:]
        if out:
            self.transport.write(b"".join(out))


class RpcBufferedProtocol(_Tracked, asyncio.BufferedProtocol):
    """Framed RPC parsed in place in a per-connection buffer (compacted, grown as needed)."""

    def __init__(self) -> None:
        self.buf = bytearray(_BUF_SIZE)
        self.view = memoryview(self.buf)
        self.start = 0  # first unparsed byte
        self.end = 0  # end of received bytes

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.buf) - self.end < _MIN_ROOM:
            self._make_room(_MIN_ROOM)
        return self.view[self.end :]

    def _make_room(self, need: int) -> None:
        """Move the unparsed tail to the front; grow if `need` bytes won't fit."""
        keep = self.end - self.start
        size = len(self.buf)
        while size < keep + need:
            size *= 2
        if size != len(self.buf):
            buf = bytearray(size)
            buf[:keep] = self.view[self.start : self.end]
            self.view.release()
            self.buf = buf
            self.view = memoryview(buf)
        else:
            self.view[:keep] = self.buf[self.start : self.end]
        self.start = 0
        self.end = keep

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        view = self.view
        unpack_from = _HDR.unpack_from
        pack = _HDR.pack
        out: list[bytes] = []
        pos = self.start
        end = self.end
        while end - pos >= 4:
            (size,) = unpack_from(view, pos)
            if size > _MAX_FRAME:
                self.transport.close()
                return
            stop = pos + 4 + size
            if stop > end:
                if 4 + size > len(self.buf):
                    self.start = pos
                    self._make_room(4 + size)
                    pos = self.start
                break
            payload = bytes(view[pos + 4 : stop])  # decode: the request body
            out.append(pack(len(payload)))  # encode: a new response frame
            out.append(payload)
            pos = stop
        if pos == self.end:
            self.start = self.end = 0
        else:
            self.start = pos
        if out:
            self.transport.write(b"".join(out))


_live_writers: set[asyncio.StreamWriter] = set()


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    _live_writers.discard(writer)
    writer.close()
    # Retrieves a reset's exception so asyncio does not log it as unhandled.
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def _echo_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _nodelay(writer.transport)
    _live_writers.add(writer)
    try:
        while data := await reader.read(_READ_SIZE):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        await _close_writer(writer)


async def _rpc_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _nodelay(writer.transport)
    _live_writers.add(writer)
    pack = _HDR.pack
    unpack = _HDR.unpack
    try:
        while True:
            (size,) = unpack(await reader.readexactly(4))
            if size > _MAX_FRAME:
                break
            payload = await reader.readexactly(size)  # decode: the request body
            writer.write(pack(len(payload)) + payload)  # encode: a new response frame
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        await _close_writer(writer)


_PROTOCOLS: dict[str, Callable[[], asyncio.BaseProtocol]] = {
    "protocol": EchoProtocol,
    "buffered": EchoBufferedProtocol,
    "rpc-protocol": RpcProtocol,
    "rpc-buffered": RpcBufferedProtocol,
}
_HANDLERS = {"streams": _echo_streams, "rpc-streams": _rpc_streams}


async def serve(kind: str, host: str, port: int, unix: str | None, backlog: int) -> None:
    """Serve `kind` until SIGINT/SIGTERM; print ``ready`` once listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server: asyncio.AbstractServer
    if kind in _PROTOCOLS:
        factory = _PROTOCOLS[kind]
        if unix:
            server = await loop.create_unix_server(factory, unix, backlog=backlog)
        else:
            server = await loop.create_server(factory, host, port, backlog=backlog)
    else:
        handler = _HANDLERS[kind]
        if unix:
            server = await asyncio.start_unix_server(
                handler, unix, backlog=backlog, limit=_READ_SIZE
            )
        else:
            server = await asyncio.start_server(
                handler, host, port, backlog=backlog, limit=_READ_SIZE
            )
    print("ready", flush=True)
    await stop.wait()
    server.close()
    for transport in list(_Tracked.live):
        transport.close()
    for writer in list(_live_writers):
        writer.close()
    await server.wait_closed()
    if unix:
        with contextlib.suppress(OSError):
            os.unlink(unix)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m netpoll.bench.peers",
        description="Run one baseline (asyncio / uvloop) server for the netpoll benchmarks.",
    )
    parser.add_argument("--kind", required=True, choices=KINDS, help="which server to run")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP port to bind")
    parser.add_argument("--unix", metavar="PATH", help="bind a unix socket instead of host/port")
    parser.add_argument("--backlog", type=int, default=4096, help="listen backlog (default 4096)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument(
        "--aiofastnet",
        action="store_true",
        help="use aiofastnet's transports on the chosen loop (aiofastnet.loop_factory)",
    )
    args = parser.parse_args(argv)
    _raise_nofile()
    base: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        try:
            base = importlib.import_module("uvloop").new_event_loop
        except ImportError:
            print("uvloop is not installed", file=sys.stderr)
            return 2
    factory = base
    if args.aiofastnet:
        try:
            aiofastnet = importlib.import_module("aiofastnet")
        except ImportError:
            print("aiofastnet is not installed (pip install aiofastnet)", file=sys.stderr)
            return 2
        factory = aiofastnet.loop_factory(base)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(args.kind, args.host, args.port, args.unix, args.backlog))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
