"""The server tests/test_workers.py runs under ``python -m netpoll workers``.

A line protocol: each request is one line; the answer is ``<pid>\\n`` of the
worker that answered, so a test sees which worker served it.

* ``ping``  answered at once
* ``slow``  answered after 0.3 s
* ``slow1`` answered after 1 s (a request in flight when a drain begins)
* ``block`` blocks the worker's event loop for 60 s (the heartbeat timeout)

``serve`` is a plain EventLoop server; ``serve_asyncio`` the same protocol
on an asyncio Streams server, drained through an ``on_shutdown`` hook, and
``serve_transports`` that Streams server on ``netpoll.transports``.
``WORKERS_APP_FAIL=import`` makes importing this module raise;
``serve_fails`` raises when it starts.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import netpoll
from netpoll.workers import counted, counted_prepare, current_worker

if os.environ.get("WORKERS_APP_FAIL") == "import":
    raise RuntimeError("workers_app: failing at import as asked")

PID_LINE = f"{os.getpid()}\n".encode()


async def on_request(ctx: Any, conn: Any) -> None:
    line = bytes(await conn.until(b"\n")).strip()
    if line == b"slow":
        await asyncio.sleep(0.3)
    elif line == b"slow1":
        await asyncio.sleep(1.0)
    elif line == b"block":
        time.sleep(60)
    conn.write_binary(PID_LINE)
    await conn.flush()


async def serve(listener: Any) -> None:
    """A plain EventLoop server: no signal code, the worker drains it."""
    await netpoll.EventLoop(counted(on_request), on_prepare=counted_prepare()).serve(listener)


async def serve_fails(listener: Any) -> None:
    raise RuntimeError("serve_fails: cannot start")


async def _serve_streams(listener: Any, start_server: Any, name: str) -> None:
    """Not an EventLoop: the worker cannot find it, so a hook drains it."""
    active: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        active.add(task)
        try:
            while line := await reader.readline():
                if line.strip() == b"slow":
                    await asyncio.sleep(0.3)
                if line.strip() == b"transport":
                    writer.write(f"{type(writer.transport).__module__}\n".encode())
                    await writer.drain()
                    continue
                writer.write(PID_LINE)
                await writer.drain()
        finally:
            active.discard(task)
            writer.close()

    sock = socket.socket(fileno=os.dup(listener.fileno()))
    server = await start_server(handle, sock=sock)

    async def drain() -> None:
        server.close()                   # stop accepting
        if active:                       # let running requests finish (3.11's
            await asyncio.wait(active)   # wait_closed does not wait for them)
        print(f"workers_app: {name} server drained", flush=True)

    worker = current_worker()
    assert worker is not None
    worker.on_shutdown(drain)
    try:
        await server.serve_forever()
    except asyncio.CancelledError:       # server.close() ends serve_forever
        pass


async def serve_asyncio(listener: Any) -> None:
    """An asyncio Streams server (stock transports)."""
    await _serve_streams(listener, asyncio.start_server, "asyncio")


async def serve_transports(listener: Any) -> None:
    """The same Streams server on netpoll's transports (netpoll.transports.start_server)."""
    await _serve_streams(listener, netpoll.transports.start_server, "netpoll.transports")
