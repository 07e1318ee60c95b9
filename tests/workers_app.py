"""The server tests/test_workers.py runs under ``python -m netpoll workers``.

A line protocol: each request is one line; the answer is ``<pid>\\n`` of the
worker that answered, so a test sees which worker served it.

* ``ping``  answered at once
* ``slow``  answered after 0.3 s (a request in flight during a drain)
* ``block`` blocks the worker's event loop for 60 s (the heartbeat timeout)

``WORKERS_APP_FAIL=import`` makes importing this module raise;
``serve_fails`` raises when it starts.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import netpoll
from netpoll.workers import counted, counted_prepare

if os.environ.get("WORKERS_APP_FAIL") == "import":
    raise RuntimeError("workers_app: failing at import as asked")

PID_LINE = f"{os.getpid()}\n".encode()


async def on_request(ctx: Any, conn: Any) -> None:
    line = bytes(await conn.until(b"\n")).strip()
    if line == b"slow":
        await asyncio.sleep(0.3)
    elif line == b"block":
        time.sleep(60)
    conn.write_binary(PID_LINE)
    await conn.flush()


async def serve(listener: Any) -> None:
    """A plain EventLoop server: no signal code, the worker drains it."""
    await netpoll.EventLoop(counted(on_request), on_prepare=counted_prepare()).serve(listener)


async def serve_fails(listener: Any) -> None:
    raise RuntimeError("serve_fails: cannot start")
