"""A length-prefixed RPC client on netpoll: a pool of long-lived connections.

Frames are a 4-byte big-endian payload length followed by the payload (see
``rpc_server.py``). Each pooled connection carries one request at a time:
a caller takes an idle connection, writes its request, reads the response,
and puts the connection back. The pool never polls its connections: the
poller notices a peer close on an idle connection and its close callback
drops it, and the next call dials a fresh one.

    python examples/rpc_server.py --port 9000 &
    python examples/rpc_client.py --port 9000 --connections 8 --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import time
from typing import Any

import netpoll

_HEADER = struct.Struct(">I")


class RpcPool:
    """Up to `size` connections to one server, each with one request in flight.

    ``await pool.call(payload)`` returns the response payload. Connections
    are dialed on demand and reused; a connection that fails mid-call is
    closed (its stream may be out of step) and the error is raised.
    """

    def __init__(self, network: str, address: Any, size: int = 8, *,
                 dial_timeout: float = 5.0, read_timeout: float | None = 10.0) -> None:
        if size < 1:
            raise ValueError(f"RpcPool(size={size}): must be >= 1")
        self.network = network
        self.address = address
        self.size = size
        self.dial_timeout = dial_timeout
        self._dialer = netpoll.Dialer(read_timeout=read_timeout, write_timeout=read_timeout)
        self._idle: list[netpoll.Connection] = []     # LIFO: the warmest connection first
        self._all: set[netpoll.Connection] = set()
        self._dialing = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    @property
    def connections(self) -> int:
        """Open connections in the pool (idle or busy)."""
        return len(self._all)

    async def call(self, payload: bytes) -> bytes:
        """Send one request and return the response's payload."""
        idle = self._idle
        if idle and not self._closed and idle[-1].is_active():
            conn = idle.pop()            # the common case, without the _acquire coroutine
        else:
            conn = await self._acquire()
        try:
            writer = conn.writer
            out = writer.malloc(4 + len(payload))
            _HEADER.pack_into(out, 0, len(payload))
            out[4:] = payload
            await writer.flush()
            reader = conn.reader
            n = _HEADER.unpack(await reader.next(4))[0]
            response = await reader.read_binary(n)
            reader.release()
        except BaseException:
            conn.close()                 # whatever happened, this stream is out of step
            self._release(None)
            raise
        self._release(conn)
        return response

    async def close(self) -> None:
        """Close every connection; later calls raise ConnectionClosedError."""
        self._closed = True
        for conn in list(self._all):
            conn.close()
        for w in self._waiters:
            if not w.done():
                w.set_result(None)

    async def __aenter__(self) -> RpcPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the pool ----------------------------------------------------------------------

    async def _acquire(self) -> netpoll.Connection:
        while True:
            if self._closed:
                raise netpoll.ConnectionClosedError("RpcPool: closed")
            while self._idle:
                conn = self._idle.pop()
                if conn.is_active():
                    return conn
                conn.close()             # died while idle (its callback already dropped it)
            if len(self._all) + self._dialing < self.size:
                return await self._dial()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _dial(self) -> netpoll.Connection:
        self._dialing += 1
        try:
            conn = await self._dialer.dial_connection(self.network, self.address,
                                                      timeout=self.dial_timeout)
        finally:
            self._dialing -= 1
        self._all.add(conn)
        conn.add_close_callback(self._forget)
        return conn

    def _forget(self, conn: netpoll.Connection) -> None:
        """Close callback: the poller (or we) closed it; drop it from the pool."""
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._wake_one()

    def _release(self, conn: netpoll.Connection | None) -> None:
        if conn is not None and conn.is_active() and not self._closed:
            self._idle.append(conn)
        if self._waiters:
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            w = self._waiters.pop(0)
            if not w.done():
                w.set_result(None)
                return


async def demo(network: str, address: Any, connections: int, requests: int, size: int,
               concurrency: int) -> int:
    """Run `requests` calls from `concurrency` tasks over the pool; check every answer."""
    done = 0
    wrong = 0
    async with RpcPool(network, address, connections) as pool:

        async def worker(w: int) -> None:
            nonlocal done, wrong
            i = w
            while i < requests:
                payload = i.to_bytes(8, "big") + os.urandom(max(size - 8, 0))
                if await pool.call(payload) != payload:
                    wrong += 1
                done += 1
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
        print(f"{done} calls over {pool.connections} connections in {elapsed:.3f}s "
              f"({done / elapsed:,.0f} req/s), {wrong} wrong answers")
    return 0 if wrong == 0 and done == requests else 1


def main(argv: list[str] | None = None) -> int:
    """Run a short demo against a server; returns 0 when every answer was right."""
    parser = argparse.ArgumentParser(description="netpoll pooled RPC client demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--unix", metavar="PATH", help="dial a Unix socket instead")
    parser.add_argument("--connections", type=int, default=8, help="pool size (8)")
    parser.add_argument("--concurrency", type=int, default=32, help="calling tasks (32)")
    parser.add_argument("--requests", type=int, default=10_000, help="calls in all (10000)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (64)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    network, address = ("unix", args.unix) if args.unix else ("tcp", (args.host, args.port))
    coro = demo(network, address, args.connections, args.requests, args.size,
                args.concurrency)
    if args.uvloop:
        import uvloop

        return int(uvloop.run(coro))
    try:
        return asyncio.run(coro)
    except (OSError, netpoll.NetpollError) as exc:
        print(f"rpc_client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
