"""LinkBuffer, method by method, against the contract in API.md.

Every test states one sentence of the contract (or one of Go Netpoll's rules
that API.md leaves to the port) and checks it from the outside: contents,
lengths, errors and their messages. Where zero-copy is part of the contract
("zero-copy when they lie in one node", "sharing their memory", "without
copying") the test compares buffer addresses, read through the buffer
protocol with ctypes.

In the debug build (``NETPOLL_DEBUG=1``) every test also checks that the live
chunk and node counts are back to zero once its buffers and views are gone.
"""

from __future__ import annotations

import array
import faulthandler
import gc
import re
import subprocess
import sys
import time

import pytest

import netpoll
import netpoll.errors
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
MIB = 1024 * 1024
DEBUG_BUILD = bool(getattr(_buffer, "NETPOLL_DEBUG_BUILD", False))


# -- helpers ---------------------------------------------------------------------------------


def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes that differ from any other (n, seed) pattern in most positions."""
    block = bytes((seed * 31 + i * 7 + (i >> 8)) & 0xFF for i in range(min(n, 65536)))
    reps, rest = divmod(n, len(block)) if block else (0, 0)
    return block * reps + block[:rest]


def filled(data: bytes = b"", size: int = 4096) -> LinkBuffer:
    buf = LinkBuffer(size)
    buf.write_binary(data)
    buf.flush()
    return buf


def make_nodes(*parts: bytes) -> LinkBuffer:
    """A buffer whose readable bytes lie in one node per part (append links, never copies)."""
    buf = LinkBuffer()
    for part in parts:
        other = LinkBuffer()
        other.write_binary(part)
        other.flush()
        buf.append(other)
    buf.flush()
    return buf


def nodes(buf: LinkBuffer) -> list[bytes]:
    return [bytes(v) for v in buf.get_bytes() if len(v)]


def run_isolated(code: str, timeout: float = 10.0) -> None:
    """Run code in a fresh interpreter; a crash or a hang fails the test, not the session."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s (an endless loop?)")
    if proc.returncode < 0:
        pytest.fail(f"crashed with signal {-proc.returncode}: {proc.stderr[-2000:]}")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]


def assert_msg(exc: BaseException, name: str, *numbers: int) -> None:
    msg = str(exc)
    assert name in msg, f"message {msg!r} does not name {name!r}"
    for number in numbers:
        assert re.search(rf"(?<![\d-]){re.escape(str(number))}(?!\d)", msg), (
            f"message {msg!r} does not give the number {number}"
        )


@pytest.fixture(autouse=True)
def _no_leaked_chunks_or_nodes(request):
    gc.collect()
    before = _buffer._debug_counts()
    failed_before = request.session.testsfailed
    yield
    if not DEBUG_BUILD or request.session.testsfailed != failed_before:
        return  # a failed test's traceback still holds its buffers
    gc.collect()
    after = _buffer._debug_counts()
    if before.get("chunks", 0) == 0 and before.get("nodes", 0) == 0:
        assert after.get("chunks") == 0 and after.get("nodes") == 0, after
    else:  # an earlier test leaked; do not blame this one for it
        assert after.get("chunks", 0) <= before["chunks"], (before, after)
        assert after.get("nodes", 0) <= before["nodes"], (before, after)


# -- module surface and errors ---------------------------------------------------------------


def test_exports_and_error_hierarchy():
    assert netpoll.LinkBuffer is LinkBuffer
    assert netpoll.errors.NotEnoughDataError is NotEnoughDataError
    assert issubclass(NotEnoughDataError, netpoll.errors.NetpollError)
    assert issubclass(netpoll.NetpollError, Exception)


@pytest.mark.parametrize("size", [None, 0, 1, 100, 4096, 5000, 65536, 9 * MIB])
def test_constructor_sizes(size):
    buf = LinkBuffer() if size is None else LinkBuffer(size)
    assert len(buf) == 0 and buf.len() == 0 and buf.is_empty()
    assert buf.malloc_len() == 0
    assert buf.bytes() == b""
    assert b"".join(bytes(v) for v in buf.get_bytes()) == b""
    buf.write_binary(b"hello")
    buf.flush()
    assert buf.read_binary(5) == b"hello"


def test_constructor_keyword_size():
    buf = LinkBuffer(size=0)
    buf.write_string("x")
    buf.flush()
    assert buf.bytes() == b"x"


def test_constructor_bad_arguments():
    with pytest.raises(ValueError) as info:
        LinkBuffer(-7)
    assert "-7" in str(info.value)
    for bad in ("10", 1.5, None, b"1"):
        with pytest.raises(TypeError):
            LinkBuffer(bad)


# -- len / is_empty / flush visibility -------------------------------------------------------


def test_nothing_readable_before_flush():
    buf = LinkBuffer()
    assert buf.write_binary(b"abc") == 3
    assert buf.write_string("de") == 2
    buf.write_byte(ord("f"))
    m = buf.malloc(2)
    m[:] = b"gh"
    assert len(buf) == 0 and buf.is_empty()
    assert buf.malloc_len() == 8
    assert buf.bytes() == b""
    with pytest.raises(NotEnoughDataError):
        buf.next(1)
    buf.flush()
    assert len(buf) == 8 and buf.len() == 8 and not buf.is_empty()
    assert buf.malloc_len() == 0
    assert buf.bytes() == b"abcdefgh"


def test_flush_twice_and_empty_flush_are_harmless():
    buf = LinkBuffer()
    buf.flush()
    buf.write_binary(b"xy")
    buf.flush()
    buf.flush()
    assert buf.bytes() == b"xy"
    buf.skip(1)
    buf.flush()
    buf.write_binary(b"z")
    buf.flush()
    buf.flush()
    assert buf.bytes() == b"yz"
    assert len(buf) == 2


def test_len_counts_only_unconsumed():
    buf = filled(b"0123456789")
    buf.next(3)
    assert len(buf) == 7
    buf.release()
    assert len(buf) == 7
    buf.skip(7)
    assert buf.is_empty()


# -- next / peek / skip ----------------------------------------------------------------------


def test_next_returns_readonly_view_and_consumes():
    buf = filled(b"hello world")
    v = buf.next(5)
    assert isinstance(v, memoryview)
    assert v.readonly
    assert bytes(v) == b"hello" and v.nbytes == 5 and len(v) == 5
    with pytest.raises(TypeError):
        v[0] = 0
    assert len(buf) == 6
    assert bytes(buf.next(6)) == b" world"
    assert buf.is_empty()


def test_next_zero_copy_within_one_node():
    buf = LinkBuffer()
    data = pattern(1000)
    m = buf.malloc(1000)
    m[:] = data
    base = addr(m)
    buf.flush()
    p = buf.peek(100)
    assert addr(p) == base
    v = buf.next(100)
    assert addr(v) == base
    w = buf.next(900)
    assert addr(w) == base + 100
    assert bytes(v) + bytes(w) == data


def test_next_across_nodes_is_a_contiguous_readonly_copy():
    buf = make_nodes(b"abc", b"de", b"fgh")
    assert nodes(buf) == [b"abc", b"de", b"fgh"]
    v = buf.next(4)
    assert bytes(v) == b"abcd"
    assert v.readonly and v.contiguous and v.nbytes == 4
    v2 = buf.next(4)
    assert bytes(v2) == b"efgh"
    assert buf.is_empty()


def test_next_past_end_raises_and_consumes_nothing():
    buf = filled(b"abcd")
    with pytest.raises(NotEnoughDataError) as info:
        buf.next(10)
    assert_msg(info.value, "next", 10, 4)
    assert len(buf) == 4 and buf.bytes() == b"abcd"
    assert bytes(buf.next(4)) == b"abcd"


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.next(0),
        lambda b: b.peek(0),
    ],
)
def test_zero_length_view_reads(call):
    for buf in (LinkBuffer(), filled(b"xyz")):
        before = buf.bytes()
        v = call(buf)
        assert isinstance(v, memoryview) and len(v) == 0
        assert buf.bytes() == before


def test_zero_length_other_reads():
    for buf in (LinkBuffer(), filled(b"xyz")):
        before = buf.bytes()
        assert buf.skip(0) is None
        assert buf.read_binary(0) == b""
        assert buf.read_string(0) == ""
        s = buf.slice(0)
        assert isinstance(s, LinkBuffer) and len(s) == 0 and s.bytes() == b""
        assert buf.bytes() == before


def test_peek_does_not_consume():
    buf = make_nodes(b"abc", b"defg")
    assert bytes(buf.peek(2)) == b"ab"
    assert bytes(buf.peek(5)) == b"abcde"
    assert bytes(buf.peek(7)) == b"abcdefg"
    assert bytes(buf.peek(1)) == b"a"
    assert len(buf) == 7
    p = buf.peek(5)
    assert p.readonly
    with pytest.raises(NotEnoughDataError) as info:
        buf.peek(8)
    assert_msg(info.value, "peek", 8, 7)
    assert bytes(buf.next(7)) == b"abcdefg"


def test_peek_across_nodes_does_not_grow_memory():
    # Go: TestLinkBufferPeekOutOfMemory — repeated cross-node peeks keep memory constant.
    parts = [pattern(8 * KIB, i) for i in range(20)]
    buf = make_nodes(*parts)
    whole = b"".join(parts)
    gc.collect()
    before = _buffer._debug_counts()
    for i in range(1024):
        n = 8 * KIB + 1 + (i * 37) % (100 * KIB)
        assert bytes(buf.peek(n)[-3:]) == whole[n - 3 : n]
    gc.collect()
    after = _buffer._debug_counts()
    assert after.get("chunks", 0) <= before.get("chunks", 0) + 2, (before, after)
    assert after.get("nodes", 0) <= before.get("nodes", 0) + 2, (before, after)


def test_skip():
    buf = make_nodes(b"abc", b"def", b"ghi")
    assert buf.skip(4) is None
    assert len(buf) == 5
    assert buf.bytes() == b"efghi"
    with pytest.raises(NotEnoughDataError) as info:
        buf.skip(6)
    assert_msg(info.value, "skip", 6, 5)
    assert buf.bytes() == b"efghi"
    buf.skip(5)
    assert buf.is_empty()


# -- until -----------------------------------------------------------------------------------


def test_until_single_byte_int_and_bytes():
    buf = filled(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    line = buf.until(b"\n")
    assert bytes(line) == b"GET / HTTP/1.1\r\n"
    assert line.readonly
    assert bytes(buf.until(10)) == b"Host: x\r\n"
    assert bytes(buf.until(b"\r\n")) == b"\r\n"
    assert buf.is_empty()


def test_until_first_occurrence_and_delim_at_start():
    buf = filled(b";a;b;")
    assert bytes(buf.until(b";")) == b";"
    assert bytes(buf.until(ord(";"))) == b"a;"
    assert bytes(buf.until(b"b;")) == b"b;"
    assert buf.is_empty()


def test_until_not_found_consumes_nothing():
    buf = filled(b"hello world")
    with pytest.raises(NotEnoughDataError) as info:
        buf.until(b"\r\n")
    assert_msg(info.value, "until", 11)
    with pytest.raises(NotEnoughDataError):
        buf.until(ord("z"))
    with pytest.raises(NotEnoughDataError):
        buf.until(b"world!")  # longer than what is left after its start
    assert buf.bytes() == b"hello world" and len(buf) == 11
    empty = LinkBuffer()
    with pytest.raises(NotEnoughDataError):
        empty.until(b"x")


def test_until_ignores_unflushed_bytes():
    buf = filled(b"abc")
    buf.write_binary(b"\n")
    with pytest.raises(NotEnoughDataError):
        buf.until(b"\n")
    buf.flush()
    assert bytes(buf.until(b"\n")) == b"abc\n"


@pytest.mark.parametrize(
    "data, delim",
    [
        (b"xx\r\nyy", b"\r\n"),
        (b"aaab", b"aab"),
        (b"abababc", b"ababc"),
        (b"a--b---c", b"---"),
        (b"0123456789", b"456"),
        (b"zzzzzzzzzzEND", b"END"),
        (b"a\x00\x00\x00b", b"\x00\x00"),
        (b"abcabcabd", b"abcabd"),
    ],
)
def test_until_multi_byte_delimiter_straddling_nodes(data, delim):
    expected = data[: data.index(delim) + len(delim)]
    n = len(data)
    for i in range(1, n):
        for j in range(i, n):
            parts = [p for p in (data[:i], data[i:j], data[j:]) if p]
            buf = make_nodes(*parts)
            got = buf.until(delim)
            assert bytes(got) == expected, (parts, delim)
            assert buf.bytes() == data[len(expected) :]


def test_until_single_byte_in_later_node():
    buf = make_nodes(b"abc", b"def", b"g\nh")
    assert bytes(buf.until(10)) == b"abcdefg\n"
    assert buf.bytes() == b"h"


def test_until_is_linear_over_many_nodes():
    # The scan for a multi-byte delimiter carries partial matches across nodes; it must
    # not start again from the first node at every node (quadratic on long buffers).
    parts = [bytes([65 + i % 26]) * 4096 for i in range(2000)]
    parts[-1] = parts[-1][:-1] + b"\r"
    buf = make_nodes(*parts, b"\nrest")
    start = time.perf_counter()
    line = buf.until(b"\r\n")
    elapsed = time.perf_counter() - start
    assert len(line) == 2000 * 4096 + 1
    assert bytes(line[-2:]) == b"\r\n"
    assert buf.bytes() == b"rest"
    assert elapsed < 2.0, elapsed
    near_miss = make_nodes(*([b"\r" * 4096] * 500), b"\r\n")
    start = time.perf_counter()
    assert len(near_miss.until(b"\r\n")) == 500 * 4096 + 2
    assert time.perf_counter() - start < 2.0


def test_until_bad_delimiters():
    buf = filled(b"abc\n")
    with pytest.raises(ValueError) as info:
        buf.until(b"")
    assert "until" in str(info.value)
    for bad in (256, -1, 1000):
        with pytest.raises(ValueError):
            buf.until(bad)
    for bad in ("\n", 1.5, None, [10]):
        with pytest.raises(TypeError):
            buf.until(bad)
    assert buf.bytes() == b"abc\n"


# -- read_binary / read_string / read_byte ---------------------------------------------------


def test_read_binary_is_an_independent_copy():
    buf = LinkBuffer()
    m = buf.malloc(8)
    m[:] = b"abcdefgh"
    buf.flush()
    got = buf.read_binary(5)
    assert type(got) is bytes and got == b"abcde"
    m[0] = ord("Z")  # the bytes object must not share memory with the buffer
    assert got == b"abcde"
    assert buf.bytes() == b"fgh"
    with pytest.raises(NotEnoughDataError) as info:
        buf.read_binary(4)
    assert_msg(info.value, "read_binary", 4, 3)
    assert buf.read_binary(3) == b"fgh"


def test_read_binary_across_nodes():
    buf = make_nodes(b"ab", b"cd", b"ef")
    assert buf.read_binary(5) == b"abcde"
    assert buf.read_binary(1) == b"f"


def test_read_string_encodings_and_errors():
    buf = filled("héllo wörld".encode() + "ñ".encode("latin-1"))
    assert buf.read_string(6) == "héllo"
    assert buf.read_string(1, "ascii") == " "
    assert buf.read_string(6, encoding="utf-8") == "wörld"
    assert buf.read_string(1, "latin-1") == "ñ"
    assert buf.is_empty()
    buf = filled(b"ab\xffcd")
    assert buf.read_string(5, errors="replace") == "ab\ufffdcd"


def test_read_string_decode_error_consumes_nothing():
    data = "é".encode() + b"xyz"
    buf = filled(data)
    with pytest.raises(UnicodeDecodeError):
        buf.read_string(1)  # half of a two-byte character
    assert buf.bytes() == data and len(buf) == 5
    with pytest.raises(UnicodeDecodeError):
        buf.read_string(5, "ascii")
    assert buf.bytes() == data
    with pytest.raises(LookupError):
        buf.read_string(2, "no-such-codec")
    assert buf.bytes() == data
    with pytest.raises(NotEnoughDataError) as info:
        buf.read_string(6)
    assert_msg(info.value, "read_string", 6, 5)
    assert buf.read_string(5) == "éxyz"


def test_read_string_across_nodes():
    enc = "añb".encode()
    buf = make_nodes(enc[:2], enc[2:])  # the two-byte character straddles the nodes
    assert buf.read_string(4) == "añb"


def test_read_byte():
    buf = make_nodes(b"\x00", b"\xff\x7f")
    assert buf.read_byte() == 0
    assert buf.read_byte() == 255
    assert buf.read_byte() == 127
    with pytest.raises(NotEnoughDataError) as info:
        buf.read_byte()
    assert_msg(info.value, "read_byte", 0)
    buf.write_byte(9)
    with pytest.raises(NotEnoughDataError):
        buf.read_byte()  # not flushed yet
    buf.flush()
    assert buf.read_byte() == 9


# -- slice -----------------------------------------------------------------------------------


def test_slice_moves_bytes_into_a_new_buffer():
    buf = filled(b"header|body|tail")
    buf.skip(7)
    s = buf.slice(4)
    assert isinstance(s, LinkBuffer)
    assert len(s) == 4 and s.bytes() == b"body"
    assert len(buf) == 5 and buf.bytes() == b"|tail"
    assert bytes(s.next(2)) == b"bo"
    assert s.read_binary(2) == b"dy"
    assert s.is_empty()
    with pytest.raises(NotEnoughDataError) as info:
        buf.slice(6)
    assert_msg(info.value, "slice", 6, 5)
    assert buf.bytes() == b"|tail"


def test_slice_shares_memory_single_node():
    buf = LinkBuffer()
    m = buf.malloc(100)
    m[:] = pattern(100)
    base = addr(m)
    buf.flush()
    buf.skip(10)
    s = buf.slice(50)
    v = s.peek(50)
    assert addr(v) == base + 10
    assert bytes(v) == pattern(100)[10:60]


def test_slice_shares_memory_across_nodes():
    parts = [pattern(3000, 1), pattern(3000, 2), pattern(3000, 3)]
    buf = make_nodes(*parts)
    ranges = [(addr(v), addr(v) + len(v)) for v in buf.get_bytes() if len(v)]
    assert len(ranges) == 3
    buf.skip(1000)
    s = buf.slice(6000)
    whole = b"".join(parts)
    assert s.bytes() == whole[1000:7000]
    assert b"".join(bytes(v) for v in s.get_bytes()) == whole[1000:7000]
    for v in s.get_bytes():
        if len(v):
            a = addr(v)
            assert any(lo <= a and a + len(v) <= hi for lo, hi in ranges), "slice copied"
    assert buf.bytes() == whole[7000:]


def test_slice_survives_parent_release_close_and_writes():
    buf = make_nodes(b"abcdef", b"ghijkl")
    s = buf.slice(9)
    buf.release()
    buf.write_binary(b"X" * 20000)
    buf.flush()
    buf.skip(len(buf))
    buf.release()
    buf.close()
    assert s.bytes() == b"abcdefghi"
    inner = s.slice(4)
    s.close()
    assert bytes(inner.next(4)) == b"abcd"


@pytest.mark.parametrize("target", ["other", "parent"])
def test_multi_node_slice_reads_and_appends(target):
    buf = make_nodes(b"ab", b"cd", b"ef")
    s = buf.slice(3)
    assert len(s) == 3 and s.bytes() == b"abc"
    assert b"".join(bytes(v) for v in s.get_bytes()) == b"abc"
    assert bytes(s.peek(3)) == b"abc"
    dest = LinkBuffer() if target == "other" else buf
    dest.append(s)
    assert dest.malloc_len() == 3
    dest.flush()
    assert dest.bytes() == (b"abc" if target == "other" else b"defabc")


def test_multi_node_slice_next_across_nodes():
    buf = make_nodes(b"ab", b"cd", b"ef")
    s = buf.slice(5)
    assert bytes(s.next(3)) == b"abc"
    assert s.read_binary(2) == b"de"
    assert s.is_empty()
    assert buf.bytes() == b"f"


_SLICE_READS = {
    "next_all": "assert bytes(s.next(n)) == want",
    "peek_all": "assert bytes(s.peek(n)) == want; assert s.bytes() == want",
    "skip_all": "s.skip(n); assert s.is_empty()",
    "skip_into_last": "s.skip(n - 1); assert s.bytes() == want[-1:]",
    "read_binary_all": "assert s.read_binary(n) == want",
    "read_string_all": "assert s.read_string(n, 'latin-1') == want.decode('latin-1')",
    "read_bytes_one_by_one": "assert bytes(s.read_byte() for _ in range(n)) == want",
    "until_last": "assert bytes(s.until(want[-1:])) == want",
    "slice_all": "t = s.slice(n); assert t.bytes() == want; assert bytes(t.next(n)) == want",
    "get_bytes": "assert b''.join(bytes(v) for v in s.get_bytes()) == want",
    "append_elsewhere": (
        "o = LinkBuffer(); o.append(s); o.flush(); assert o.bytes() == want; return"
    ),
}


@pytest.mark.parametrize("parts, n", [(2, 3), (2, 4), (3, 5), (3, 6)])
@pytest.mark.parametrize("op", sorted(_SLICE_READS))
def test_multi_node_slice_reads_in_a_fresh_interpreter(op, parts, n):
    # Isolated: with a broken slice these crash the interpreter or loop forever in C code
    # (where neither pytest-timeout method can stop them).
    code = f"""
import gc
from netpoll import LinkBuffer, _buffer
buf = LinkBuffer()
for part in (b"ab", b"cd", b"ef")[:{parts}]:
    other = LinkBuffer()
    other.write_binary(part)
    other.flush()
    buf.append(other)
buf.flush()
def check(buf):
    n = {n}
    want = b"abcdef"[:n]
    s = buf.slice(n)
    {_SLICE_READS[op]}
    s.release()
check(buf)
buf.close()
del buf, other
gc.collect()
if _buffer.NETPOLL_DEBUG_BUILD:
    counts = _buffer._debug_counts()
    assert counts["chunks"] == 0 and counts["nodes"] == 0, counts
print("ok")
"""
    run_isolated(code)


def test_slice_of_slice_and_parent_keep_reading():
    buf = filled(b"0123456789")
    s1 = buf.slice(6)
    s2 = s1.slice(3)
    assert s2.bytes() == b"012"
    assert s1.bytes() == b"345"
    assert buf.bytes() == b"6789"
    buf.write_binary(b"AB")
    buf.flush()
    assert buf.bytes() == b"6789AB"
    assert s2.read_binary(3) == b"012"


# -- release ---------------------------------------------------------------------------------


def test_release_keeps_unconsumed_data():
    buf = make_nodes(b"aaaa", b"bbbb", b"cccc")
    buf.next(6)
    buf.release()
    assert buf.bytes() == b"bbcccc"
    buf.release()
    buf.release()
    assert len(buf) == 6
    buf.write_binary(b"dd")
    buf.release()  # pending bytes are not consumed data
    buf.flush()
    assert buf.bytes() == b"bbccccdd"


@pytest.mark.parametrize("size", [100, 5000, 70000])
def test_spare_chunks_never_reuse_memory_a_view_still_shows(size):
    # A freed node parks its chunk for the next buffer only when nothing else
    # refers to it: a held view (next, peek) or slice keeps its bytes unchanged
    # while later buffers of the same size class are written, read and freed.
    kept = []
    for i in range(300):
        fill = bytes([i % 251]) * size
        buf = LinkBuffer()
        buf.write_binary(bytearray(fill))        # copied into a pooled chunk
        buf.flush()
        if i % 3 == 0:
            kept.append((fill, buf.next(size)))
        elif i % 3 == 1:
            kept.append((fill, buf.slice(size)))
        else:
            buf.skip(size)
        buf.release()
        buf.close()
    for fill, held in kept:
        got = bytes(held) if isinstance(held, memoryview) else held.bytes()
        assert got == fill


@pytest.mark.skipif(not DEBUG_BUILD, reason="live counts exist only in the debug build")
@pytest.mark.parametrize("how", ["skip", "next"])
def test_release_gives_back_consumed_nodes(how):
    buf = LinkBuffer()
    for i in range(4):
        m = buf.malloc(9000)  # > 8 KiB: each flush starts a new node
        m[:] = pattern(9000, i)
        del m
        buf.flush()
    gc.collect()
    full = _buffer._debug_counts()
    assert full["chunks"] >= 4 and full["nodes"] >= 4, full
    if how == "skip":
        buf.skip(3 * 9000 + 5)
    else:
        views = [buf.next(9000) for _ in range(3)]  # zero-copy views of three nodes
        views.append(buf.next(5))
        del views
    buf.release()
    gc.collect()
    after = _buffer._debug_counts()
    assert after["nodes"] <= full["nodes"] - 3, (full, after)
    assert after["chunks"] <= full["chunks"] - 3, (full, after)
    assert buf.bytes() == pattern(9000, 3)[5:]


# -- bytes / get_bytes -----------------------------------------------------------------------


def test_bytes_is_a_copy_not_consumed():
    buf = make_nodes(b"abc", b"def")
    b1 = buf.bytes()
    assert type(b1) is bytes and b1 == b"abcdef"
    assert len(buf) == 6
    buf.skip(2)
    assert buf.bytes() == b"cdef"
    assert b1 == b"abcdef"


def test_get_bytes_node_by_node_not_consumed():
    buf = make_nodes(b"abc", b"de", b"fgh")
    views = buf.get_bytes()
    assert isinstance(views, list)
    assert all(isinstance(v, memoryview) for v in views)
    assert [bytes(v) for v in views if len(v)] == [b"abc", b"de", b"fgh"]
    assert len(buf) == 8
    buf.skip(4)
    assert nodes(buf) == [b"e", b"fgh"]
    buf.write_binary(b"ijk")  # pending: not part of the readable data
    assert b"".join(bytes(v) for v in buf.get_bytes()) == b"efgh"


def test_get_bytes_zero_copy():
    buf = LinkBuffer()
    m = buf.malloc(64)
    m[:] = pattern(64)
    buf.flush()
    buf.skip(10)
    views = [v for v in buf.get_bytes() if len(v)]
    assert len(views) == 1 and addr(views[0]) == addr(m) + 10


def test_get_bytes_empty_buffer():
    assert b"".join(bytes(v) for v in LinkBuffer().get_bytes()) == b""
    buf = filled(b"xy")
    buf.skip(2)
    assert b"".join(bytes(v) for v in buf.get_bytes()) == b""


# -- malloc / malloc_len / malloc_ack --------------------------------------------------------


def test_malloc_gives_writable_contiguous_view():
    buf = LinkBuffer()
    m = buf.malloc(10)
    assert isinstance(m, memoryview)
    assert not m.readonly and m.contiguous and m.nbytes == 10 and len(m) == 10
    m[:] = b"0123456789"
    assert buf.malloc_len() == 10
    m0 = buf.malloc(0)
    assert len(m0) == 0
    assert buf.malloc_len() == 10
    buf.flush()
    assert buf.bytes() == b"0123456789"


@pytest.mark.parametrize(
    "n",
    [
        1,
        2,
        3,
        7,
        8,
        9,
        1023,
        1024,
        1025,
        4095,
        4096,
        4097,
        8191,
        8192,
        8193,
        65536,
        65537,
        MIB - 1,
        MIB,
        8 * MIB - 1,
        8 * MIB,
        8 * MIB + 1,
        9 * MIB,
    ],
)
def test_malloc_every_size_class_and_direct(n):
    buf = LinkBuffer()
    m = buf.malloc(n)
    assert m.nbytes == n
    data = pattern(n, n & 0xFF)
    m[:] = data
    buf.flush()
    assert len(buf) == n
    v = buf.next(n)
    assert addr(v) == addr(m)  # one malloc lies in one node: zero-copy
    assert bytes(v) == data


def test_malloc_views_fill_in_any_order_until_flush():
    buf = LinkBuffer()
    m1 = buf.malloc(3)
    m2 = buf.malloc(5000)  # does not fit the first node's rest: a new node
    m3 = buf.malloc(2)
    m3[:] = b"yz"
    m2[:] = b"x" * 5000
    m1[:] = b"abc"
    assert buf.malloc_len() == 5005
    buf.flush()
    assert buf.bytes() == b"abc" + b"x" * 5000 + b"yz"


def test_malloc_len_counts_every_kind_of_write():
    buf = LinkBuffer()
    buf.write_binary(b"abc")
    buf.write_string("dé")
    buf.write_byte(1)
    buf.malloc(5)
    assert buf.malloc_len() == 3 + 3 + 1 + 5
    buf.write_direct(b"XY", 0)
    assert buf.malloc_len() == 14
    other = filled(b"12345")
    buf.append(other)
    assert buf.malloc_len() == 19
    buf.flush()
    assert buf.malloc_len() == 0
    assert len(buf) == 19


def test_malloc_ack_keeps_prefix():
    buf = LinkBuffer()
    m = buf.malloc(10)
    m[:] = b"0123456789"
    assert buf.malloc_ack(4) is None
    assert buf.malloc_len() == 4
    buf.write_binary(b"ab")
    assert buf.malloc_len() == 6
    buf.flush()
    assert buf.bytes() == b"0123ab"


@pytest.mark.parametrize("size", [0, 1, 4096, None])
def test_malloc_ack_zero_keeps_nothing(size):
    # Go keeps the pending bytes of the flush node here (a probe in NETPOLL.md); API.md
    # says malloc_ack(0) keeps nothing, whatever the first node is.
    buf = LinkBuffer() if size is None else LinkBuffer(size)
    m = buf.malloc(10)
    m[:] = b"x" * 10
    buf.malloc_ack(0)
    assert buf.malloc_len() == 0
    buf.flush()
    assert len(buf) == 0 and buf.bytes() == b""
    buf2 = filled(b"keep", 0 if size is None else size)
    buf2.write_binary(b"drop")
    buf2.malloc_ack(0)
    buf2.flush()
    assert buf2.bytes() == b"keep"


def test_malloc_ack_over_written_and_linked_bytes():
    big = pattern(5000, 9)
    buf = LinkBuffer()
    buf.write_binary(b"hello")
    buf.write_binary(big)
    m = buf.malloc(3)
    m[:] = b"xyz"
    buf.malloc_ack(5 + 100)
    buf.flush()
    assert buf.bytes() == b"hello" + big[:100]
    buf.write_binary(b"after")
    buf.flush()
    assert buf.bytes() == b"hello" + big[:100] + b"after"


def test_malloc_ack_full_length_is_noop_and_past_end_raises():
    buf = LinkBuffer()
    buf.write_binary(b"abcd")
    buf.malloc_ack(4)
    assert buf.malloc_len() == 4
    with pytest.raises(ValueError) as info:
        buf.malloc_ack(10)
    assert_msg(info.value, "malloc_ack", 10, 4)
    assert buf.malloc_len() == 4
    buf.flush()
    assert buf.bytes() == b"abcd"
    buf.malloc_ack(0)
    with pytest.raises(ValueError):
        buf.malloc_ack(1)


def test_malloc_ack_does_not_touch_readable_bytes():
    buf = filled(b"readable")
    buf.write_binary(b"pending")
    buf.malloc_ack(3)
    assert buf.bytes() == b"readable"
    buf.flush()
    assert buf.bytes() == b"readablepen"


def test_tail_node_over_8k_not_reused_after_flush():
    # Go: "tail node must not be larger than 8KB to prevent OOM".
    buf = LinkBuffer()
    m = buf.malloc(9000)
    m[:] = pattern(9000)
    big = addr(m)
    buf.flush()
    small = buf.malloc(10)
    a = addr(small)
    assert not (big <= a < big + 16 * KIB), "a small write went into the >8 KiB node"
    small[:] = b"s" * 10
    buf.flush()
    assert buf.bytes() == pattern(9000) + b"s" * 10


def test_size_hint_over_8k_not_reused_after_flush():
    buf = LinkBuffer(64 * KIB)
    m = buf.malloc(10)
    m[:] = b"a" * 10
    first = addr(m)
    buf.flush()
    m2 = buf.malloc(10)
    assert not (first <= addr(m2) < first + 64 * KIB), "the 64 KiB tail node was reused"
    m2[:] = b"b" * 10
    buf.flush()
    assert buf.bytes() == b"a" * 10 + b"b" * 10


# -- write_binary / write_string / write_byte ------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 100, 4095, 4096, 4097, 8192, 100_000, 9 * MIB])
def test_write_binary_bytes_roundtrip(n):
    data = pattern(n, 3)
    buf = LinkBuffer()
    assert buf.write_binary(data) == n
    assert buf.malloc_len() == n
    buf.flush()
    assert len(buf) == n
    assert buf.bytes() == data


def test_write_binary_any_bytes_like():
    buf = LinkBuffer()
    arr = array.array("i", [1, 2, 3])
    assert buf.write_binary(arr) == arr.itemsize * 3  # bytes, not items
    assert buf.write_binary(memoryview(b"0123456789")[2:5]) == 3
    assert buf.write_binary(bytearray(b"ba")) == 2
    assert buf.write_binary(memoryview(bytearray(b"mv"))) == 2
    mv_i = memoryview(array.array("H", [0x4142, 0x4344]))
    assert buf.write_binary(mv_i) == 4
    buf.flush()
    assert buf.bytes() == arr.tobytes() + b"234" + b"ba" + b"mv" + mv_i.tobytes()


@pytest.mark.parametrize("n", [10, 4095, 4096, 5000, 1 * MIB])
def test_write_binary_copies_mutable_objects(n):
    original = pattern(n, 5)
    ba = bytearray(original)
    buf = LinkBuffer()
    buf.write_binary(ba)
    ba[:] = b"\x00" * n  # the caller may change it ...
    ba.extend(b"more")  # ... and resize it: the buffer must hold no export of it
    mv_src = bytearray(original)
    mv = memoryview(mv_src)
    buf.write_binary(mv[1:])
    mv.release()  # raises BufferError if the buffer still holds an export through mv
    mv_src[:] = b"\xff" * n
    del mv_src[:5]
    arr = array.array("B", original)
    buf.write_binary(arr)
    arr[0] ^= 0xFF
    arr.append(1)
    buf.flush()
    assert buf.bytes() == original + original[1:] + original


@pytest.mark.parametrize("n", [4096, 4097, 65536, 9 * MIB])
def test_write_binary_links_large_bytes(n):
    # API.md: "may be linked"; the issue: "an immutable bytes of 4 KiB or more is linked,
    # not copied". Linking holds a reference; the view of the data is the object itself.
    data = pattern(n, 7) + b""
    base = sys.getrefcount(data)
    buf = LinkBuffer()
    buf.write_binary(data)
    assert sys.getrefcount(data) > base, "a >= 4 KiB bytes was copied, not linked"
    buf.flush()
    v = buf.peek(n)
    assert addr(v) == addr(data)
    del v
    buf.skip(n)
    buf.release()
    buf.close()
    del buf
    gc.collect()
    assert sys.getrefcount(data) == base, "the linked bytes was not let go"


def test_linked_bytes_let_go_after_malloc_ack_drops_it():
    data = pattern(10_000, 11)
    base = sys.getrefcount(data)
    buf = LinkBuffer()
    buf.write_binary(b"head")
    buf.write_binary(data)
    buf.malloc_ack(4)
    buf.flush()
    assert buf.bytes() == b"head"
    buf.write_binary(b"tail")
    buf.flush()
    assert buf.bytes() == b"headtail"
    buf.close()
    del buf
    gc.collect()
    assert sys.getrefcount(data) == base


def test_write_binary_bad_types():
    buf = LinkBuffer()
    for bad in ("text", 3, None, [1, 2], 1.0, object()):
        with pytest.raises(TypeError):
            buf.write_binary(bad)
    assert buf.malloc_len() == 0


def test_write_string():
    buf = LinkBuffer()
    assert buf.write_string("héllo") == 6
    assert buf.write_string("") == 0
    assert buf.write_string("é", "latin-1") == 1
    assert buf.write_string("ab", encoding="utf-16-le") == 4
    big = "x" * 10_000
    assert buf.write_string(big) == 10_000
    buf.flush()
    assert buf.bytes() == "héllo".encode() + b"\xe9" + "ab".encode("utf-16-le") + big.encode()


def test_write_string_errors_write_nothing():
    buf = LinkBuffer()
    buf.write_string("ok")
    with pytest.raises(UnicodeEncodeError):
        buf.write_string("é", "ascii")
    with pytest.raises(LookupError):
        buf.write_string("x", "no-such-codec")
    for bad in (b"bytes", 3, None):
        with pytest.raises(TypeError):
            buf.write_string(bad)
    assert buf.malloc_len() == 2
    buf.flush()
    assert buf.bytes() == b"ok"


def test_write_byte():
    buf = LinkBuffer()
    for b in (0, 1, 127, 128, 255):
        buf.write_byte(b)
    assert buf.malloc_len() == 5
    for bad in (256, -1, 1000):
        with pytest.raises(ValueError):
            buf.write_byte(bad)
    for bad in ("a", b"a", 1.0, None):
        with pytest.raises(TypeError):
            buf.write_byte(bad)
    buf.flush()
    assert buf.bytes() == bytes([0, 1, 127, 128, 255])


def test_small_write_does_not_alias_caller():
    # Go: TestLinkBufferWriteBinary — a copied small write does not alias the caller.
    src = bytearray(b"abcdef")
    buf = LinkBuffer()
    buf.write_binary(memoryview(src)[:3])
    src[0:3] = b"XYZ"
    buf.flush()
    assert buf.bytes() == b"abc"


# -- write_direct ----------------------------------------------------------------------------


def test_write_direct_splices_between_malloc_halves():
    # Malloc(nA+nB); WriteDirect(b, nB) -> bufA | b | bufB
    buf = LinkBuffer()
    m = buf.malloc(10)
    m[:] = b"AAAAABBBBB"
    assert buf.write_direct(b"xyz", 5) is None
    assert buf.malloc_len() == 13
    assert len(buf) == 0
    buf.flush()
    assert buf.bytes() == b"AAAAAxyzBBBBB"


def test_write_direct_at_ends():
    buf = LinkBuffer()
    m = buf.malloc(4)
    m[:] = b"abcd"
    buf.write_direct(b"<", 4)
    buf.write_direct(b">", 0)
    buf.flush()
    assert buf.bytes() == b"<abcd>"
    empty = LinkBuffer()
    empty.write_direct(b"only", 0)
    empty.flush()
    assert empty.bytes() == b"only"


def test_write_direct_links_data_as_its_own_node():
    data = pattern(6000, 2)
    buf = LinkBuffer()
    m = buf.malloc(8)
    m[:] = b"AAAABBBB"
    buf.write_direct(data, 4)
    buf.flush()
    views = [v for v in buf.get_bytes() if len(v)]
    assert [bytes(v) for v in views] == [b"AAAA", data, b"BBBB"]
    assert addr(views[1]) == addr(data)
    assert addr(views[0]) == addr(m) and addr(views[2]) == addr(m) + 4


def test_write_direct_go_interleaved_sequence():
    # Go: TestLinkBufferWriteDirect — the malloc'd view is filled between the splices and
    # after them; every byte lands where the reserved offset says.
    buf = LinkBuffer()
    bt = buf.malloc(32)
    model = bytearray(32)
    reserved = list(range(32))  # model index of each reserved byte

    def direct(data: bytes, remain: int) -> None:
        at = buf.malloc_len() - remain
        buf.write_direct(data, remain)
        model[at:at] = data
        for k, idx in enumerate(reserved):
            if idx >= at:
                reserved[k] = idx + len(data)

    def put(i: int, value: bytes) -> None:
        bt[i : i + len(value)] = value
        for k, byte in enumerate(value):
            model[reserved[i + k]] = byte

    put(0, b"ab")
    direct(b"cdef", 30)
    put(2, b"g")
    direct(b"hijkl", 29)
    put(3, b"m")
    direct(b"nopqrst", 28)
    put(4, b"u")
    direct(b"vwxyz", 27)
    put(5, b"abcdefghijklmnopqrstuvwxyza")
    direct(b"abcdefghijklmnopqrstuvwxyz", 0)
    buf.flush()
    assert bytes(model).startswith(b"abcdefghijklmnopqrstuvwxyz" * 2)
    assert buf.bytes() == bytes(model)


def test_write_direct_then_malloc_ack_and_more_writes():
    # Go: TestMallocAck — Malloc + WriteDirect(7 KiB) + MallocAck + Flush + Malloc.
    big = pattern(7 * KIB, 4)
    buf = LinkBuffer()
    m = buf.malloc(10)
    m[:] = b"0123456789"
    buf.write_direct(big, 0)
    buf.malloc_ack(10 + 7 * KIB - 24)
    buf.flush()
    m2 = buf.malloc(5)
    m2[:] = b"after"
    buf.flush()
    assert buf.bytes() == b"0123456789" + big[:-24] + b"after"


def test_write_direct_bad_arguments():
    buf = LinkBuffer()
    m = buf.malloc(4)
    m[:] = b"abcd"
    with pytest.raises(ValueError) as info:
        buf.write_direct(b"x", -2)
    assert_msg(info.value, "write_direct", -2)
    with pytest.raises(ValueError) as info:
        buf.write_direct(b"x", 9)
    assert_msg(info.value, "write_direct", 9, 4)
    for bad in ("str", None, 5):
        with pytest.raises(TypeError):
            buf.write_direct(bad, 0)
    with pytest.raises(TypeError):
        buf.write_direct(b"x", "0")
    assert buf.malloc_len() == 4
    buf.flush()
    assert buf.bytes() == b"abcd"


# -- append / write_buffer -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["append", "write_buffer"])
def test_append_moves_readable_data_and_closes_other(method):
    buf = filled(b"head.")
    other = make_nodes(b"hello ", b"world")
    other.skip(6)
    getattr(buf, method)(other)
    assert buf.malloc_len() == 5
    assert buf.bytes() == b"head."  # not readable before flush
    with pytest.raises(ValueError):
        len(other)
    with pytest.raises(ValueError):
        other.next(0)
    other.close()  # a second close does nothing
    buf.flush()
    assert buf.bytes() == b"head.world"


def test_append_is_zero_copy():
    data = pattern(3000, 8)
    other = LinkBuffer()
    m = other.malloc(3000)
    m[:] = data
    other.flush()
    buf = LinkBuffer()
    buf.append(other)
    buf.flush()
    v = buf.next(3000)
    assert addr(v) == addr(m)
    assert bytes(v) == data


def test_append_then_write_and_go_write_buffer_example():
    # Go: TestLinkBufferWriteBuffer — appending two buffers gives {2, 3}.
    buf = LinkBuffer()
    b1 = filled(b"\x02")
    b2 = filled(b"\x03")
    buf.write_buffer(b1)
    buf.write_buffer(b2)
    buf.flush()
    assert buf.bytes() == b"\x02\x03"
    buf.write_binary(b"\x04")
    buf.flush()
    assert buf.bytes() == b"\x02\x03\x04"


def test_append_empty_buffer_and_consumed_buffer():
    buf = filled(b"x")
    buf.append(LinkBuffer())
    drained = filled(b"gone")
    drained.skip(4)
    buf.append(drained)
    assert buf.malloc_len() == 0
    buf.flush()
    assert buf.bytes() == b"x"


def test_append_malloc_ack_covers_appended_bytes():
    buf = LinkBuffer()
    buf.write_binary(b"ab")
    buf.append(filled(b"cdef"))
    buf.write_binary(b"gh")
    assert buf.malloc_len() == 8
    buf.malloc_ack(4)
    buf.flush()
    assert buf.bytes() == b"abcd"


def test_append_bad_types_and_self():
    buf = filled(b"abc")
    for bad in (b"x", bytearray(b"x"), None, "x"):
        with pytest.raises(TypeError):
            buf.append(bad)
        with pytest.raises(TypeError):
            buf.write_buffer(bad)
    try:
        buf.append(buf)  # meaningless; it must not corrupt memory or hang
    except ValueError:
        pass


# -- close -----------------------------------------------------------------------------------


def _closed_calls(other: LinkBuffer):
    return [
        ("len", lambda b: len(b)),
        ("len", lambda b: b.len()),
        ("is_empty", lambda b: b.is_empty()),
        ("next", lambda b: b.next(0)),
        ("next", lambda b: b.next(1)),
        ("peek", lambda b: b.peek(0)),
        ("skip", lambda b: b.skip(0)),
        ("until", lambda b: b.until(b"\n")),
        ("read_binary", lambda b: b.read_binary(0)),
        ("read_string", lambda b: b.read_string(0)),
        ("read_byte", lambda b: b.read_byte()),
        ("slice", lambda b: b.slice(0)),
        ("release", lambda b: b.release()),
        ("bytes", lambda b: b.bytes()),
        ("get_bytes", lambda b: b.get_bytes()),
        ("malloc", lambda b: b.malloc(1)),
        ("malloc_len", lambda b: b.malloc_len()),
        ("malloc_ack", lambda b: b.malloc_ack(0)),
        ("write_binary", lambda b: b.write_binary(b"x")),
        ("write_string", lambda b: b.write_string("x")),
        ("write_byte", lambda b: b.write_byte(1)),
        ("write_direct", lambda b: b.write_direct(b"x", 0)),
        ("write_buffer", lambda b: b.write_buffer(other)),
        ("append", lambda b: b.append(other)),
        ("flush", lambda b: b.flush()),
    ]


def test_every_method_of_a_closed_buffer_raises_value_error():
    buf = filled(b"some data\n")
    buf.write_binary(b"pending")
    buf.close()
    other = filled(b"other")
    for name, call in _closed_calls(other):
        with pytest.raises(ValueError) as info:
            call(buf)
        assert not isinstance(info.value, NotEnoughDataError), name
    buf.close()
    buf.close()
    assert other.bytes() == b"other"


def test_closed_buffer_messages_name_the_call():
    # API.md: "Every message names what failed"; the issue: "every message names the call".
    buf = filled(b"x")
    buf.close()
    other = filled(b"other")
    unnamed = []
    for name, call in _closed_calls(other):
        with pytest.raises(ValueError) as info:
            call(buf)
        if name not in str(info.value):
            unnamed.append((name, str(info.value)))
    assert not unnamed, unnamed


def test_close_empty_and_unused_buffers():
    for size in (0, 1, 4096, 65536):
        buf = LinkBuffer(size)
        buf.close()
        buf.close()
        with pytest.raises(ValueError):
            buf.is_empty()


def test_close_drops_pending_and_keeps_views():
    buf = filled(b"abcdef")
    v = buf.next(3)
    m = buf.malloc(4)
    m[:] = b"wxyz"
    buf.close()
    assert bytes(v) == b"abc"
    assert bytes(m) == b"wxyz"


def test_dropping_an_unclosed_buffer_is_fine():
    buf = make_nodes(b"a" * 5000, b"b" * 10)
    buf.write_binary(b"pending")
    v = buf.peek(5001)
    del buf
    gc.collect()
    assert bytes(v) == b"a" * 5000 + b"b"


# -- bad sizes and messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, call",
    [
        ("next", lambda b: b.next(-3)),
        ("peek", lambda b: b.peek(-3)),
        ("skip", lambda b: b.skip(-3)),
        ("read_binary", lambda b: b.read_binary(-3)),
        ("read_string", lambda b: b.read_string(-3)),
        ("slice", lambda b: b.slice(-3)),
        ("malloc", lambda b: b.malloc(-3)),
        ("malloc_ack", lambda b: b.malloc_ack(-3)),
        ("write_direct", lambda b: b.write_direct(b"x", -3)),
    ],
)
def test_negative_sizes_raise_value_error(name, call):
    buf = filled(b"abcdef")
    buf.write_binary(b"gh")
    with pytest.raises(ValueError) as info:
        call(buf)
    assert not isinstance(info.value, NotEnoughDataError)
    assert_msg(info.value, name, -3)
    assert buf.bytes() == b"abcdef" and buf.malloc_len() == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda b, x: b.next(x),
        lambda b, x: b.peek(x),
        lambda b, x: b.skip(x),
        lambda b, x: b.read_binary(x),
        lambda b, x: b.read_string(x),
        lambda b, x: b.slice(x),
        lambda b, x: b.malloc(x),
        lambda b, x: b.malloc_ack(x),
    ],
)
def test_size_arguments_of_wrong_type(call):
    buf = filled(b"abcdef")
    for bad in ("1", 1.0, None, b"\x01"):
        with pytest.raises(TypeError):
            call(buf, bad)
    assert buf.bytes() == b"abcdef" and buf.malloc_len() == 0


@pytest.mark.parametrize(
    "name, call",
    [
        ("next", lambda b: b.next(12)),
        ("peek", lambda b: b.peek(12)),
        ("skip", lambda b: b.skip(12)),
        ("read_binary", lambda b: b.read_binary(12)),
        ("read_string", lambda b: b.read_string(12)),
        ("slice", lambda b: b.slice(12)),
    ],
)
def test_reads_past_end_name_call_and_numbers(name, call):
    buf = make_nodes(b"abcde", b"fghijk")
    buf.write_binary(b"pending bytes do not count")
    with pytest.raises(NotEnoughDataError) as info:
        call(buf)
    assert_msg(info.value, name, 12, 11)
    assert buf.bytes() == b"abcdefghijk"
    assert len(buf) == 11


def test_not_enough_data_is_not_a_value_error_and_vice_versa():
    # Reads past the end and bad arguments are different failures.
    assert not issubclass(NotEnoughDataError, ValueError)
    buf = filled(b"ab")
    with pytest.raises(NotEnoughDataError):
        buf.next(3)
