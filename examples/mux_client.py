"""A multiplexed RPC client on netpoll: many tasks share 4 connections.

Frames are a 4-byte big-endian payload length, a 4-byte big-endian
sequence id, then the payload (see ``mux_server.py``). Any number of calls
are in flight on each connection at once:

* writing: each call encodes its request into its own LinkBuffer and hands
  it to the connection's ``netpoll.mux.ShardQueue``, which appends the
  buffers without copying and sends each batch with one flush;
* reading: no reader task per connection. The connection's ``on_request``
  handler (set with ``set_on_request``) runs when responses arrive, decodes
  every complete frame and resolves the waiting call by its sequence id;
* a connection that closes fails its pending calls with
  ``ConnectionClosedError`` and is redialed by the next call.

    python examples/mux_server.py --port 9001 &
    python examples/mux_client.py --port 9001 --tasks 1000 --requests 50000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import struct
import sys
import time
from typing import Any

import netpoll
from netpoll.mux import ShardQueue

HEADER = struct.Struct(">II")       # payload length, sequence id
_NEVER = float("inf")


class _Channel:
    """One multiplexed connection: its write queue and its calls in flight."""

    __slots__ = ("conn", "queue", "pending")

    def __init__(self, conn: netpoll.Connection) -> None:
        self.conn = conn
        self.queue = ShardQueue(4, conn)
        # seq -> (the caller's future, its deadline on the loop's clock, or inf)
        self.pending: dict[int, tuple[asyncio.Future[bytes], float]] = {}
        conn.set_on_request(self.on_request)
        conn.add_close_callback(self.on_close)

    async def on_request(self, ctx: Any, conn: netpoll.Connection) -> None:
        """Responses arrived: resolve every call whose frame is complete."""
        reader = conn.reader
        pending = self.pending
        while len(reader) >= 8:
            n, seq = HEADER.unpack(await reader.peek(8))
            if len(reader) < 8 + n:
                break
            await reader.skip(8)
            payload = await reader.read_binary(n)
            entry = pending.pop(seq, None)
            if entry is not None and not entry[0].done():   # None: the caller gave up
                entry[0].set_result(payload)

    def on_close(self, conn: netpoll.Connection) -> None:
        pending, self.pending = self.pending, {}
        for seq, (fut, _) in pending.items():
            if not fut.done():
                fut.set_exception(netpoll.ConnectionClosedError(
                    f"mux call {seq}: connection closed before the response"))


class MuxClient:
    """`connections` multiplexed connections to one server (4 by default).

    ``await client.call(payload)`` sends a request on the next connection
    (round robin) and returns the response payload.
    """

    def __init__(self, network: str, address: Any, connections: int = 4, *,
                 dial_timeout: float = 5.0, call_timeout: float | None = 10.0) -> None:
        self.network = network
        self.address = address
        self.dial_timeout = dial_timeout
        self.call_timeout = call_timeout
        self._channels: list[_Channel | None] = [None] * connections
        self._dialing: list[asyncio.Future[_Channel] | None] = [None] * connections
        self._next = itertools.count()
        self._seq = itertools.count(1)
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None

    async def call(self, payload: bytes) -> bytes:
        """Send one request and wait for its response (matched by sequence id).

        Raises TimeoutError when no response came within ``call_timeout`` seconds
        (checked by one sweep per client, see `_sweep`), ConnectionClosedError when the
        connection closed first.
        """
        ch = await self._channel(next(self._next) % len(self._channels))
        seq = next(self._seq) & 0xFFFFFFFF
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        if self.call_timeout is None:
            ch.pending[seq] = (fut, _NEVER)
        else:
            ch.pending[seq] = (fut, loop.time() + self.call_timeout)
            if self._sweeper is None:
                self._arm_sweep(loop)
        buf = netpoll.LinkBuffer(8 + len(payload))
        out = buf.malloc(8 + len(payload))
        HEADER.pack_into(out, 0, len(payload), seq)
        out[8:] = payload
        buf.flush()
        ch.queue.add(lambda: buf)
        try:
            return await fut
        finally:
            ch.pending.pop(seq, None)

    def _arm_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.call_timeout is not None
        period = min(max(self.call_timeout / 10, 0.01), 1.0)
        self._sweeper = loop.call_later(period, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the calls past their deadline. One timer per client instead of one per call:
        a per-call ``asyncio.timeout()`` costs more than the rest of a call. A call times out
        between ``call_timeout`` and ``call_timeout`` + a tenth of it (at most 1 s) late."""
        self._sweeper = None
        now = loop.time()
        busy = False
        for ch in self._channels:
            if ch is None:
                continue
            for seq, (fut, deadline) in list(ch.pending.items()):
                busy = True
                if deadline <= now and not fut.done():
                    ch.pending.pop(seq, None)
                    fut.set_exception(TimeoutError(
                        f"mux call {seq}: no response within {self.call_timeout:g}s"))
        if busy and not self._closed:
            self._arm_sweep(loop)

    async def close(self) -> None:
        """Flush what is queued and close every connection."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for ch in self._channels:
            if ch is not None:
                await ch.queue.close()
                ch.conn.close()

    async def __aenter__(self) -> MuxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _channel(self, i: int) -> _Channel:
        ch = self._channels[i]
        if ch is not None and ch.conn.is_active():
            return ch
        if self._closed:
            raise netpoll.ConnectionClosedError("MuxClient: closed")
        dialing = self._dialing[i]
        if dialing is None:               # one dial per slot, however many calls wait
            dialing = self._dialing[i] = asyncio.ensure_future(self._dial(i))
        try:
            return await asyncio.shield(dialing)
        finally:
            if dialing.done():
                self._dialing[i] = None

    async def _dial(self, i: int) -> _Channel:
        conn = await netpoll.dial_connection(self.network, self.address,
                                             timeout=self.dial_timeout)
        old = self._channels[i]
        if old is not None:
            old.conn.close()
        ch = self._channels[i] = _Channel(conn)
        return ch


async def demo(network: str, address: Any, tasks: int, requests: int, size: int) -> int:
    """`tasks` tasks make `requests` calls over 4 connections; check every answer."""
    done = 0
    wrong = 0
    async with MuxClient(network, address) as client:

        async def worker(w: int) -> None:
            nonlocal done, wrong
            for i in range(w, requests, tasks):
                payload = i.to_bytes(8, "big") + os.urandom(max(size - 8, 0))
                if await client.call(payload) != payload:
                    wrong += 1
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(tasks)))
        elapsed = time.perf_counter() - t0
    print(f"{done} calls from {tasks} tasks over 4 connections in {elapsed:.3f}s "
          f"({done / elapsed:,.0f} req/s), {wrong} wrong answers")
    return 0 if wrong == 0 and done == requests else 1


def main(argv: list[str] | None = None) -> int:
    """Run a short demo against a server; returns 0 when every answer was right."""
    parser = argparse.ArgumentParser(description="netpoll multiplexed RPC client demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--unix", metavar="PATH", help="dial a Unix socket instead")
    parser.add_argument("--tasks", type=int, default=1000, help="calling tasks (1000)")
    parser.add_argument("--requests", type=int, default=20_000, help="calls in all (20000)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (64)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    network, address = ("unix", args.unix) if args.unix else ("tcp", (args.host, args.port))
    coro = demo(network, address, args.tasks, args.requests, args.size)
    try:
        if args.uvloop:
            import uvloop

            return int(uvloop.run(coro))
        return asyncio.run(coro)
    except (OSError, netpoll.NetpollError) as exc:
        print(f"mux_client: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
