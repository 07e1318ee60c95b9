"""Memory safety of LinkBuffer views (API.md, LinkBuffer, "Memory safety").

Go Netpoll invalidates a slice from Next at Release; the Python port does not:
every memoryview handed out stays valid and unchanged for as long as it is
held, after release(), close() and later writes, and a chunk goes back to the
pool only when the buffer has let it go and no view of it remains.

These tests hold views across thousands of cycles that would recycle memory
(release, close, new buffers of the same size classes, slices, appends,
malloc_ack dropping reserved space) and check every held view still shows its
bytes. Some also compare addresses (through the buffer protocol, with ctypes)
to show no live chunk is handed out a second time. In the debug build the live
chunk and node counts must be back to zero after each test.
"""

from __future__ import annotations

import faulthandler
import gc
import random
import sys

import pytest

from bufaddr import addr
from netpoll import LinkBuffer, NotEnoughDataError, _buffer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _watchdog():
    # pytest-timeout cannot interrupt an endless loop in C code that holds the GIL; this
    # C-level watchdog dumps every thread's stack and ends the process instead of hanging.
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


KIB = 1024
DEBUG_BUILD = bool(getattr(_buffer, "NETPOLL_DEBUG_BUILD", False))
needs_debug_build = pytest.mark.skipif(
    not DEBUG_BUILD, reason="live counts exist only in the debug build (NETPOLL_DEBUG=1)"
)


def counts() -> dict[str, int]:
    gc.collect()
    return dict(_buffer._debug_counts())


class Held:
    """Views kept alive with the bytes they showed when taken."""

    def __init__(self, limit: int, rng: random.Random) -> None:
        self.items: list[tuple[memoryview, bytes]] = []
        self.limit = limit
        self.rng = rng

    def add(self, view: memoryview, expected: bytes | None = None) -> None:
        if expected is None:
            expected = bytes(view)
        else:
            assert bytes(view) == expected
        if len(self.items) >= self.limit:
            self.items.pop(self.rng.randrange(len(self.items)))
        self.items.append((view, expected))

    def check(self) -> None:
        bad = [i for i, (v, e) in enumerate(self.items) if bytes(v) != e]
        assert not bad, f"{len(bad)} of {len(self.items)} held views changed"

    def clear(self) -> None:
        self.items.clear()


@pytest.fixture(autouse=True)
def _no_leaked_chunks_or_nodes(request):
    gc.collect()
    before = _buffer._debug_counts()
    failed_before = request.session.testsfailed
    yield
    if not DEBUG_BUILD or request.session.testsfailed != failed_before:
        return  # a failed test's traceback still holds its buffers and views
    after = counts()
    if before.get("chunks", 0) == 0 and before.get("nodes", 0) == 0:
        assert after.get("chunks") == 0 and after.get("nodes") == 0, after
    else:
        assert after.get("chunks", 0) <= before["chunks"], (before, after)
        assert after.get("nodes", 0) <= before["nodes"], (before, after)


def random_write(buf: LinkBuffer, rng: random.Random, model: bytearray) -> None:
    """One write of a random kind and size (around the 4 KiB and 8 KiB boundaries)."""
    n = rng.choice(
        [
            rng.randrange(1, 64),
            rng.randrange(64, 3000),
            rng.randrange(4090, 4100),
            rng.randrange(8180, 8200),
            rng.randrange(4100, 20000),
        ]
    )
    data = rng.randbytes(n)
    kind = rng.randrange(5)
    if kind == 0:
        buf.write_binary(data)
    elif kind == 1:
        ba = bytearray(data)
        buf.write_binary(ba)
        ba[:] = b"\xee" * n  # the buffer copied it; scribbling is allowed
    elif kind == 2:
        m = buf.malloc(n)
        m[:] = data
    elif kind == 3:
        m = buf.malloc(n + 50)
        m[:n] = data
        m[n:] = b"\xdd" * 50
        buf.malloc_ack(buf.malloc_len() - 50)
    else:
        buf.write_string(data.decode("latin-1"), "latin-1")
    model += data


# -- views across release and later writes ---------------------------------------------------


def test_views_survive_release_and_writes_over_many_cycles():
    rng = random.Random(1)
    held = Held(300, rng)
    buf = LinkBuffer()
    model = bytearray()
    for cycle in range(4000):
        for _ in range(rng.randrange(1, 4)):
            random_write(buf, rng, model)
        buf.flush()
        while model and rng.random() < 0.8:
            op = rng.randrange(5)
            n = rng.randrange(1, min(len(model), 9000) + 1)
            if op == 0:
                v = buf.next(n)
                held.add(v, bytes(model[:n]))
                del model[:n]
            elif op == 1:
                held.add(buf.peek(n), bytes(model[:n]))
            elif op == 2:
                delim = bytes(model[n - 1 : n])
                end = model.index(delim) + 1
                held.add(buf.until(delim), bytes(model[:end]))
                del model[:end]
            elif op == 3:
                for v in buf.get_bytes()[:2]:
                    held.add(v)
            else:
                buf.skip(n)
                del model[:n]
        buf.release()
        if cycle % 97 == 0:
            held.check()
            assert buf.bytes() == model
    held.check()
    buf.close()
    held.check()


def test_view_unchanged_when_buffer_empties_and_is_written_again():
    # The classic reuse bug: once everything is consumed the node could be rewound to
    # offset 0 and the next write would land under a live view.
    buf = LinkBuffer()
    views = []
    for i in range(3000):
        payload = bytes([i & 0xFF]) * (1 + i % 700)
        buf.write_binary(payload)
        buf.flush()
        v = buf.next(len(payload))
        views.append((v, payload))
        if i % 3 == 0:
            buf.release()
        if len(views) > 50:
            views.pop(0)
        for held, expected in views[-3:]:
            assert bytes(held) == expected
    assert all(bytes(v) == e for v, e in views)


def test_peek_views_are_not_overwritten_by_later_peeks():
    # Go reuses one cachePeek buffer for cross-node peeks; held views must not see that.
    rng = random.Random(2)
    parts = [rng.randbytes(3000) for _ in range(8)]
    whole = b"".join(parts)
    buf = LinkBuffer()
    for part in parts:
        other = LinkBuffer()
        other.write_binary(part)
        other.flush()
        buf.append(other)
    buf.flush()
    held = Held(1000, rng)
    offset = 0
    for _ in range(500):
        n = rng.randrange(3001, 9000)
        if offset + n > len(whole):
            break
        held.add(buf.peek(n), whole[offset : offset + n])
        held.add(buf.peek(n // 2), whole[offset : offset + n // 2])
        buf.skip(37)
        offset += 37
        held.check()
    held.check()


def test_cross_node_next_copies_survive_release():
    rng = random.Random(3)
    held = Held(200, rng)
    for _ in range(300):
        buf = LinkBuffer()
        parts = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(4)]
        for part in parts:
            other = LinkBuffer()
            other.write_binary(part)
            other.flush()
            buf.append(other)
        buf.flush()
        whole = b"".join(parts)
        n = len(parts[0]) + len(parts[1]) // 2 + 1
        held.add(buf.next(n), whole[:n])
        buf.release()
        # more cross-node reads that would reuse a freed copy buffer
        rest = whole[n:]
        k = len(rest) // 2
        if k:
            held.add(buf.next(k), rest[:k])
        buf.release()
        held.check()
    held.check()


# -- views across close and buffer reuse -----------------------------------------------------


def test_views_survive_close_while_new_buffers_recycle_memory():
    rng = random.Random(4)
    held = Held(400, rng)
    for cycle in range(3000):
        buf = LinkBuffer(rng.choice([0, 64, 4096, 16384]))
        model = bytearray()
        random_write(buf, rng, model)
        random_write(buf, rng, model)
        buf.flush()
        n = rng.randrange(1, len(model) + 1)
        if rng.random() < 0.5:
            held.add(buf.next(n), bytes(model[:n]))
        else:
            held.add(buf.peek(n), bytes(model[:n]))
        if rng.random() < 0.3:
            for v in buf.get_bytes():
                held.add(v)
        if rng.random() < 0.5:
            buf.write_binary(b"pending" * 10)  # unflushed bytes are dropped by close
        if rng.random() < 0.8:
            buf.close()
        del buf  # else: dropped without close()
        if cycle % 101 == 0:
            held.check()
    held.check()


def test_views_survive_buffer_deallocation():
    held = []
    for i in range(2000):
        buf = LinkBuffer()
        data = bytes([i % 251]) * (10 + i % 9000)
        buf.write_binary(data)
        buf.flush()
        held.append((buf.peek(len(data)), data))
        del buf
        if len(held) > 100:
            held.pop(0)
    assert all(bytes(v) == d for v, d in held)


# -- malloc views ----------------------------------------------------------------------------


def test_malloc_view_unchanged_after_malloc_ack_drops_it():
    # The dropped reservation must not be handed to the next write while the view lives.
    for size in (10, 100, 4000, 9000):
        buf = LinkBuffer()
        m = buf.malloc(size)
        m[:] = b"a" * size
        buf.malloc_ack(0)
        buf.write_binary(b"x" * size)
        buf.flush()
        assert bytes(m) == b"a" * size
        assert buf.bytes() == b"x" * size
        m2 = buf.malloc(size)
        m2[:] = b"b" * size
        buf.malloc_ack(size // 2)
        buf.write_binary(b"y" * size)
        buf.flush()
        assert bytes(m2) == b"b" * size
        assert buf.bytes() == b"x" * size + b"b" * (size // 2) + b"y" * size


def test_writes_through_a_stale_malloc_view_never_reach_other_data():
    # A stale malloc view is the caller's memory: scribbling on it after malloc_ack(0),
    # flush or close must not show up in this or any later buffer.
    rng = random.Random(5)
    stale = []
    live = []
    for cycle in range(2000):
        buf = LinkBuffer()
        size = rng.choice([8, 100, 1000, 4096, 9000])
        m = buf.malloc(size)
        how = cycle % 3
        if how == 0:
            buf.malloc_ack(0)
        elif how == 1:
            m[:] = b"k" * size
            buf.flush()
        stale.append(m)
        data = rng.randbytes(size)
        buf.write_binary(data)
        buf.flush()
        live.append((buf, data))
        if how == 2:
            other = LinkBuffer()
            other.write_binary(data)
            other.flush()
            buf.close()
            live[-1] = (other, data)
        for v in stale[-5:]:
            v[:] = b"\x00" * len(v)
        if len(live) > 20:
            old, _ = live.pop(0)
            old.close()
        if len(stale) > 50:
            stale.pop(0)
        for b, d in live[-3:]:
            got = b.bytes()
            assert got.endswith(d), "a stale malloc view wrote into a live buffer"
    for b, d in live:
        assert b.bytes().endswith(d)
        b.close()


def test_malloc_view_keeps_bytes_after_read_release_close():
    buf = LinkBuffer()
    m = buf.malloc(5000)
    m[:] = b"m" * 5000
    buf.flush()
    v = buf.next(5000)
    buf.release()
    buf.close()
    for _ in range(200):
        other = LinkBuffer()
        w = other.malloc(5000)
        w[:] = b"z" * 5000
        other.flush()
        other.close()
    assert bytes(m) == b"m" * 5000
    assert bytes(v) == b"m" * 5000


# -- no chunk reuse under a live view --------------------------------------------------------


@pytest.mark.parametrize("size", [1, 64, 1000, 4096, 5000, 65536])
def test_no_chunk_is_reused_while_a_view_of_it_lives(size):
    buf = LinkBuffer()
    m = buf.malloc(size)
    m[:] = b"v" * size
    buf.flush()
    v = buf.next(size)
    lo, hi = addr(v), addr(v) + size
    del m
    buf.release()
    buf.close()
    del buf
    gc.collect()
    for i in range(500):
        other = LinkBuffer(size if i % 2 else 0)
        w = other.malloc(size)
        a = addr(w)
        assert not (a < hi and lo < a + size), "a chunk under a live view was reused"
        w[:] = b"w" * size
        other.flush()
        other.close()
    assert bytes(v) == b"v" * size


@needs_debug_build
def test_chunk_goes_back_only_when_the_last_view_goes():
    base = counts()
    buf = LinkBuffer()
    m = buf.malloc(3000)
    m[:] = b"q" * 3000
    buf.flush()
    v1 = buf.next(1000)
    v2 = buf.peek(1000)
    del m
    buf.close()
    mid = counts()
    assert mid["nodes"] == base["nodes"]
    assert mid["chunks"] == base["chunks"] + 1, (base, mid)
    del v1
    assert counts()["chunks"] == base["chunks"] + 1
    assert bytes(v2) == b"q" * 1000
    del v2
    assert counts() == base


@needs_debug_build
def test_memory_stays_flat_over_many_cycles():
    buf = LinkBuffer()
    for _ in range(200):
        buf.write_binary(b"x" * 1500)
        buf.flush()
        buf.next(700)
        buf.release()
    start = counts()
    for i in range(20000):
        buf.write_binary(b"x" * 1500)
        buf.flush()
        if i % 2:
            buf.next(1500)
        else:
            buf.peek(1400)
            buf.skip(1500)
        buf.release()
    end = counts()
    assert end["chunks"] <= start["chunks"] + 2, (start, end)
    assert end["nodes"] <= start["nodes"] + 2, (start, end)


@needs_debug_build
def test_counts_return_to_zero_after_buffers_and_views_are_dropped():
    base = counts()
    bufs = [LinkBuffer(s) for s in (0, 1, 4096, 65536)]
    views = []
    big = b"L" * 10_000
    for b in bufs:
        b.write_binary(b"small")
        b.write_binary(big)
        m = b.malloc(9000)
        m[:] = b"M" * 9000
        b.flush()
        views.append(b.peek(10))
        views.append(b.next(6000))
        views.extend(b.get_bytes())
        views.append(m)
    s = bufs[0].slice(100)
    views.append(s.peek(50))
    assert counts()["chunks"] > base["chunks"]
    for b in bufs:
        b.close()
    del bufs, m, b
    s.close()
    del s
    assert counts()["nodes"] == base["nodes"]
    assert counts()["chunks"] > base["chunks"]  # the views still hold their chunks
    del views
    assert counts() == base


# -- slices and appends ----------------------------------------------------------------------


def test_slices_survive_parent_release_close_and_reuse_over_many_cycles():
    rng = random.Random(6)
    held = Held(200, rng)
    slices: list[tuple[LinkBuffer, bytearray]] = []
    for cycle in range(2000):
        buf = LinkBuffer()
        model = bytearray()
        for _ in range(rng.randrange(1, 4)):
            random_write(buf, rng, model)
        buf.flush()
        n = rng.randrange(0, len(model) + 1)
        s = buf.slice(n)
        slices.append((s, bytearray(model[:n])))
        del model[:n]
        if model and rng.random() < 0.5:
            k = rng.randrange(1, len(model) + 1)
            held.add(buf.next(k), bytes(model[:k]))
        buf.release()
        if rng.random() < 0.7:
            buf.close()
        del buf
        # read from an older slice, keep a view of it, sometimes close the slice
        s_old, m_old = slices[rng.randrange(len(slices))]
        if m_old:
            k = rng.randrange(1, len(m_old) + 1)
            held.add(s_old.next(k), bytes(m_old[:k]))
            del m_old[:k]
            s_old.release()
        if len(slices) > 30:
            old, m = slices.pop(0)
            assert old.bytes() == m
            old.close()
        if cycle % 50 == 0:
            held.check()
            for sl, m in slices:
                assert sl.bytes() == m
    held.check()
    for sl, m in slices:
        assert sl.bytes() == m
        sl.close()
    held.check()


def test_appended_views_survive_over_many_cycles():
    rng = random.Random(7)
    held = Held(200, rng)
    target = LinkBuffer()
    model = bytearray()
    for cycle in range(2000):
        other = LinkBuffer()
        omodel = bytearray()
        random_write(other, rng, omodel)
        other.flush()
        k = rng.randrange(0, len(omodel) + 1)
        held.add(other.next(k), bytes(omodel[:k]))  # consumed, not released, then moved
        del omodel[:k]
        for v in other.get_bytes()[:1]:
            held.add(v)
        getattr(target, "append" if cycle % 2 else "write_buffer")(other)
        with pytest.raises(ValueError):
            other.len()
        model += omodel
        target.flush()
        if model:
            n = rng.randrange(1, len(model) + 1)
            held.add(target.next(n), bytes(model[:n]))
            del model[:n]
        target.release()
        if cycle % 100 == 0:
            held.check()
            assert target.bytes() == model
    target.close()
    held.check()


def test_write_direct_views_survive():
    rng = random.Random(8)
    held = Held(100, rng)
    for _ in range(1000):
        buf = LinkBuffer()
        head = rng.randbytes(rng.randrange(2, 200))
        direct = rng.randbytes(rng.randrange(1, 9000))
        m = buf.malloc(len(head))
        m[:] = head
        split = rng.randrange(0, len(head) + 1)
        buf.write_direct(direct, len(head) - split)
        buf.flush()
        whole = head[:split] + direct + head[split:]
        held.add(m, head)
        held.add(buf.next(len(whole)), whole)
        buf.release()
        buf.write_binary(rng.randbytes(300))
        buf.flush()
        buf.close()
    held.check()


# -- linked bytes ----------------------------------------------------------------------------


def test_linked_bytes_held_by_views_and_let_go_after():
    data = bytes(range(256)) * 64  # 16 KiB, linkable
    base = sys.getrefcount(data)
    views = []
    for _ in range(100):
        buf = LinkBuffer()
        buf.write_binary(data)
        buf.flush()
        views.append(buf.next(len(data) // 2))
        buf.close()
    assert all(bytes(v) == data[: len(data) // 2] for v in views)
    del views
    gc.collect()
    assert sys.getrefcount(data) == base


def test_failed_read_then_close_keeps_views():
    buf = LinkBuffer()
    buf.write_binary(b"abc")
    buf.flush()
    v = buf.peek(3)
    with pytest.raises(NotEnoughDataError):
        buf.next(4)
    buf.close()
    assert bytes(v) == b"abc"
