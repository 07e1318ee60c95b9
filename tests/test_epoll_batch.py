"""NETPOLL_EPOLL_BATCH: how many ready connections one epoll_wait takes before their
handlers run (default 8; 0 takes all that are ready). Read once, at import, so each
setting runs in its own interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent

# 120 connections, every one of them ready at once, 30 rounds of a message that
# differs per connection and per round: every byte must come back to its sender.
# A handler closes another connection now and then, so closes land between
# capped batches (the rest of the ready list is read after user code ran).
SCRIPT = r"""
import asyncio, random, sys
import netpoll

N, ROUNDS = 120, 30
conns = []

def on_prepare(conn):
    conns.append(conn)

def echo(ctx, conn):
    buf = conn.input
    data = buf.read_binary(len(buf))
    if data.startswith(b"kill") and len(conns) > 1:
        victim = conns[-1]
        if victim is not conn and victim.is_active():
            victim.close()
    conn.write_binary(data)
    conn.flush_nowait()

async def main():
    ln = netpoll.create_listener("tcp", "127.0.0.1:0")
    el = netpoll.EventLoop(echo, on_prepare=on_prepare)
    task = asyncio.ensure_future(el.serve(ln))
    await asyncio.sleep(0)
    pairs = [await asyncio.open_connection(*ln.addr) for _ in range(N)]
    for rnd in range(ROUNDS):
        msgs = [(b"%d:%d:" % (i, rnd)) * (1 + (i * 7 + rnd) % 50) for i in range(N)]
        for (_, w), m in zip(pairs, msgs):
            w.write(m)
        for (r, _), m in zip(pairs, msgs):
            got = await asyncio.wait_for(r.readexactly(len(m)), 10)
            assert got == m, (got[:40], m[:40])
    # a handler that closes another connection mid-batch
    r0, w0 = pairs[0]
    w0.write(b"kill")
    assert await asyncio.wait_for(r0.readexactly(4), 10) == b"kill"
    rl, _ = pairs[-1]
    assert await asyncio.wait_for(rl.read(), 10) == b""
    for _, w in pairs:
        w.close()
    await el.shutdown(2)
    await asyncio.wait_for(task, 5)
    print("ok", netpoll.get_config()["backend"])

asyncio.run(main())
"""


def run_with(value: str | None, code: str = SCRIPT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NETPOLL_BACKEND="epoll")
    env.pop("NETPOLL_EPOLL_BATCH", None)
    if value is not None:
        env["NETPOLL_EPOLL_BATCH"] = value
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=100)


@pytest.mark.parametrize("value", [None, "0", "1", "8", "64"])
def test_every_batch_size_serves_every_byte(value: str | None) -> None:
    proc = run_with(value)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok epoll"


@pytest.mark.parametrize("value", ["-1", "65537", "eight"])
def test_a_bad_value_is_an_error_at_import(value: str) -> None:
    proc = run_with(value, "import netpoll")
    assert proc.returncode != 0
    assert "NETPOLL_EPOLL_BATCH" in proc.stderr and "ValueError" in proc.stderr
