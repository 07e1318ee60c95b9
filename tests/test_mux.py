"""netpoll.mux.ShardQueue: batched, ordered, zero-copy writes from many tasks.

Ports Go's mux/shard_queue_test.go (TestShardQueue) and adds the properties
the API promises: every getter's data whole and in add order, one flush per
batch, close() flushes what is queued, a closed connection drops data
without raising in the adders.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest

import netpoll
from netpoll import LinkBuffer
from netpoll.mux import ShardQueue

pytestmark = pytest.mark.timeout(60)

HEADER = struct.Struct(">III")      # task id, sequence number, payload length


def pair() -> tuple[netpoll.Connection, netpoll.Connection]:
    """Two netpoll connections over a socketpair (must run inside a loop)."""
    a, b = socket.socketpair()
    return netpoll.new_fd_connection(a.detach()), netpoll.new_fd_connection(b.detach())


def getter_of(data: bytes) -> Callable[[], LinkBuffer]:
    buf = LinkBuffer()
    buf.write_binary(data)
    buf.flush()
    return lambda: buf


async def read_all(conn: netpoll.Connection) -> bytes:
    """Everything the peer sends until it closes."""
    out = bytearray()
    while True:
        chunk = await conn.read(1 << 20)
        if not chunk:
            return bytes(out)
        out += chunk


def frame(task: int, seq: int, size: int) -> bytes:
    body = bytes([(task + seq + i) & 0xFF for i in range(min(size, 64))])
    body = (body * (size // max(len(body), 1) + 1))[:size]
    return HEADER.pack(task, seq, size) + body


def test_shard_queue_go_port(run: Any) -> None:
    """Go TestShardQueue: 16 getters x 11 B on 4 shards all arrive after Close."""

    async def main() -> None:
        client, server = pair()
        q = ShardQueue(4, client)
        for i in range(16):
            q.add(getter_of(b"hello world"[:10] + bytes([65 + i])))
        await q.close()
        client.close()
        got = await read_all(server)
        server.close()
        assert len(got) == 16 * 11
        assert got == b"".join(b"hello worl" + bytes([65 + i]) for i in range(16))

    run(main())


def test_thousand_tasks_every_byte_in_order(run: Any) -> None:
    """1,000 tasks x 5 messages of varied sizes: all bytes arrive, whole, in order per task."""
    tasks, per_task = 1000, 5
    rnd = random.Random(7)
    sizes = {(t, s): rnd.choice((0, 1, 17, 200, 1500, 5000, 20000))
             for t in range(tasks) for s in range(per_task)}

    async def main() -> None:
        client, server = pair()
        q = ShardQueue(32, client)
        reader = asyncio.ensure_future(read_all(server))

        async def worker(t: int) -> None:
            for s in range(per_task):
                q.add(getter_of(frame(t, s, sizes[t, s])))
                if (t + s) % 3 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(*(worker(t) for t in range(tasks)))
        await q.close()
        assert q.flushes < tasks * per_task // 10, q.flushes   # batched
        client.close()
        data = await reader
        server.close()

        expected_total = sum(HEADER.size + n for n in sizes.values())
        assert len(data) == expected_total
        next_seq = [0] * tasks
        pos = 0
        while pos < len(data):
            t, s, n = HEADER.unpack_from(data, pos)
            pos += HEADER.size
            assert s == next_seq[t], f"task {t}: got seq {s}, expected {next_seq[t]}"
            assert n == sizes[t, s]
            assert data[pos - HEADER.size:pos + n] == frame(t, s, n)
            next_seq[t] += 1
            pos += n
        assert pos == len(data)
        assert next_seq == [per_task] * tasks

    run(main(), timeout=30)


def test_add_order_is_kept_across_calls_and_getters(run: Any) -> None:
    async def main() -> None:
        client, server = pair()
        q = ShardQueue(3, client)
        parts = [f"[{i}]".encode() * (i % 7 + 1) for i in range(300)]
        for i in range(0, 300, 3):
            q.add(getter_of(parts[i]), getter_of(parts[i + 1]), getter_of(parts[i + 2]))
            if i % 30 == 0:
                await asyncio.sleep(0)
        await q.close()
        client.close()
        got = await read_all(server)
        server.close()
        assert got == b"".join(parts)

    run(main())


def test_one_flush_per_batch(run: Any) -> None:
    async def main() -> None:
        client, server = pair()
        q = ShardQueue(4, client)
        for i in range(100):
            q.add(getter_of(b"%03d" % i))
        assert q.flushes == 0          # nothing is sent from inside add()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert q.flushes == 1
        got = await server.reader.next(300)
        assert bytes(got) == b"".join(b"%03d" % i for i in range(100))
        await q.close()
        client.close()
        server.close()

    run(main())


def test_buffers_are_moved_not_copied(run: Any) -> None:
    """write_buffer takes the getter's buffer whole and closes it."""

    async def main() -> None:
        client, server = pair()
        q = ShardQueue(1, client)
        buf = LinkBuffer()
        buf.write_binary(b"moved")
        buf.flush()
        q.add(lambda: buf)
        await q.close()
        with pytest.raises(ValueError):
            len(buf)
        assert bytes(await server.reader.next(5)) == b"moved"
        client.close()
        server.close()

    run(main())


def test_none_getters_and_unflushed_buffers(run: Any) -> None:
    async def main() -> None:
        client, server = pair()
        q = ShardQueue(2, client)
        unflushed = LinkBuffer()
        unflushed.write_binary(b"tail")      # written but never flushed by the caller
        q.add(lambda: None, getter_of(b"head"), lambda: None, lambda: unflushed)
        await q.close()
        assert q.flushes == 1
        assert bytes(await server.reader.next(8)) == b"headtail"
        q2 = ShardQueue(2, client)
        q2.add(lambda: None)
        await q2.close()
        assert q2.flushes == 0               # nothing written: no flush
        client.close()
        server.close()

    run(main())


def test_close_flushes_queued_then_drops_later_adds(run: Any) -> None:
    async def main() -> None:
        client, server = pair()
        q = ShardQueue(4, client)
        for i in range(50):
            q.add(getter_of(bytes([i]) * 1000))
        await q.close()                      # queued data is out when close returns
        assert q.closed
        q.add(getter_of(b"late"))            # dropped silently, as in Go
        await q.close()                      # a second close is fine
        await asyncio.sleep(0.01)
        client.close()
        got = await read_all(server)
        server.close()
        assert got == b"".join(bytes([i]) * 1000 for i in range(50))

    run(main())


def test_close_waits_for_a_flush_under_backpressure(run: Any) -> None:
    async def main() -> None:
        client, server = pair()
        q = ShardQueue(4, client)
        big = b"B" * (8 << 20)               # more than the socket buffers hold
        q.add(getter_of(big))
        await asyncio.sleep(0.01)
        q.add(getter_of(b"after"))           # queued while the first flush waits
        reader = asyncio.ensure_future(read_all(server))
        await q.close()
        assert q.flushes == 2
        client.close()
        got = await reader
        server.close()
        assert len(got) == len(big) + 5 and got.endswith(b"Bafter")

    run(main())


def test_closed_connection_drops_data_without_raising(run: Any) -> None:
    async def main() -> None:
        client, server = pair()
        q = ShardQueue(4, client)
        q.add(getter_of(b"x" * 100))
        client.close()                       # before the drain runs
        q.add(getter_of(b"y"))
        await asyncio.sleep(0.01)
        q.add(getter_of(b"z"))               # after: dropped at once
        await q.close()
        assert q.flushes == 0
        assert await read_all(server) == b""
        server.close()

    run(main())


def test_peer_close_drops_data_without_raising(run: Any) -> None:
    async def main() -> None:
        client, server = pair()
        q = ShardQueue(4, client)
        server.close()
        for _ in range(200):
            q.add(getter_of(b"p" * 10_000))
            await asyncio.sleep(0)
        await q.close()
        assert not client.is_active()
        client.close()

    run(main())


def test_write_timeout_closes_the_connection(run: Any) -> None:
    """A flush error closes the connection (Go: mux closes on Flush error); adders see nothing."""

    async def main() -> None:
        a, peer = socket.socketpair()          # a plain socket that is never read
        client = netpoll.new_fd_connection(a.detach())
        try:
            client.set_write_timeout(0.05)
            q = ShardQueue(2, client)
            q.add(getter_of(b"w" * (16 << 20)))
            await asyncio.wait_for(q.close(), 5)
            assert not client.is_active()
            q2 = ShardQueue(2, client)
            q2.add(getter_of(b"more"))
            await q2.close()
        finally:
            client.close()
            peer.close()

    run(main())


def test_getter_error_is_logged_and_skipped(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    def bad() -> LinkBuffer:
        raise RuntimeError("encode failed")

    async def main() -> None:
        client, server = pair()
        q = ShardQueue(2, client)
        q.add(getter_of(b"one"), bad, lambda: "not a buffer", getter_of(b"two"))  # type: ignore
        await q.close()
        assert client.is_active()
        assert bytes(await server.reader.next(6)) == b"onetwo"
        client.close()
        server.close()

    with caplog.at_level(logging.ERROR, logger="netpoll"):
        run(main())
    assert sum("ShardQueue getter" in r.getMessage() for r in caplog.records) == 2


def test_shares_the_connection_with_a_user_flush(run: Any) -> None:
    """A flush already waiting on the connection delays the queue's flush; nothing is lost."""

    async def main() -> None:
        client, server = pair()
        client.write_binary(b"U" * (8 << 20))
        user_flush = asyncio.ensure_future(client.flush())
        await asyncio.sleep(0)
        assert not user_flush.done()         # under backpressure
        q = ShardQueue(2, client)
        q.add(getter_of(b"queued"))
        reader = asyncio.ensure_future(read_all(server))
        await user_flush
        await q.close()
        client.close()
        got = await reader
        server.close()
        assert len(got) == (8 << 20) + 6 and got.endswith(b"Uqueued")

    run(main())


def test_bad_size() -> None:
    with pytest.raises(ValueError, match="0"):
        ShardQueue(0, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ShardQueue("4", None)  # type: ignore[arg-type]


# -- mux.configure(shard_size=...) (Go's mux.ShardSize) ---------------------------------


def test_configure_shard_size() -> None:
    from netpoll import mux

    before = mux.get_config()["shard_size"]
    assert before == max(1, os.cpu_count() or 1)         # Go: GOMAXPROCS
    try:
        mux.configure(shard_size=32)                     # Go's comment: "recommended 32"
        assert mux.get_config() == {"shard_size": 32}
        class Conn:
            writer = None

        assert ShardQueue(None, Conn()).size == 32  # type: ignore[arg-type]
        assert ShardQueue(4, Conn()).size == 4  # type: ignore[arg-type]
        mux.configure()                                  # None leaves it as it is
        assert mux.get_config()["shard_size"] == 32
        for bad, exc in ((0, ValueError), (-1, ValueError), (mux.SHARD_SIZE_MAX + 1, ValueError),
                         (2**63, ValueError), (1.5, TypeError), (True, TypeError),
                         ("8", TypeError)):
            with pytest.raises(exc, match="shard_size"):
                mux.configure(shard_size=bad)  # type: ignore[arg-type]
            assert mux.get_config()["shard_size"] == 32  # unchanged after a bad value
        mux.configure(shard_size=mux.SHARD_SIZE_MAX)
        assert mux.get_config()["shard_size"] == mux.SHARD_SIZE_MAX
    finally:
        mux.configure(shard_size=before)


def test_default_size_queue_works(run: Any) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        b.setblocking(False)
        conn = netpoll.new_fd_connection(a.detach())
        try:
            q = ShardQueue(None, conn)
            for i in range(10):
                buf = LinkBuffer()
                buf.write_binary(b"%d;" % i)
                buf.flush()
                q.add(lambda buf=buf: buf)
            await q.close()
            loop = asyncio.get_running_loop()
            got = b""
            while len(got) < 20:
                got += await loop.sock_recv(b, 100)
            assert got == b"".join(b"%d;" % i for i in range(10))
        finally:
            conn.close()
            b.close()

    run(main())
