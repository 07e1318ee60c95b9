"""LinkBuffer against a bytearray model, driven by a Hypothesis state machine.

The model is two bytearrays: ``readable`` (flushed, not consumed) and
``pending`` (written or reserved since the last flush). Every rule does one
LinkBuffer call and the same thing to the model; the invariants compare
lengths after every step. Some of the memoryviews the buffer hands out
(next, peek, until, get_bytes, malloc) are kept alive with the bytes they
showed when they were taken, and re-checked after every step: API.md says a
view stays valid and unchanged for as long as it is held, across release(),
close() and later writes. Slices are kept too, read later, appended back or
closed.

Sizes cluster around the 4 KiB in-place threshold (bytes at or above it may
be linked; mutable objects are always copied and are scribbled on and resized
right after the write) and around the 8 KiB tail-node rule.
"""

from __future__ import annotations

import faulthandler
import gc
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from netpoll import LinkBuffer, NotEnoughDataError, _buffer


@pytest.fixture(autouse=True)
def _watchdog():
    # pytest-timeout cannot interrupt an endless loop in C code that holds the GIL; this
    # C-level watchdog dumps every thread's stack and ends the process instead of hanging.
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


DEBUG_BUILD = bool(getattr(_buffer, "NETPOLL_DEBUG_BUILD", False))
# The debug build (the ASan pass of tests/test_sanitizers.py) checks the live-object
# counters with a gc.collect() after every example, so it runs fewer of them, longer.
pytestmark = pytest.mark.timeout(240 if DEBUG_BUILD else 60)
MAX_HELD = 24
MAX_SLICES = 4

SIZES = st.one_of(
    st.integers(0, 16),
    st.integers(17, 1500),
    st.integers(4090, 4100),
    st.integers(8190, 8200),
    st.integers(4101, 20000),
)
PERCENT = st.integers(0, 100)
SEED = st.integers(0, 2**32 - 1)


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def part_of(total: int, percent: int) -> int:
    return total * percent // 100


class LinkBufferMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.buf: LinkBuffer | None = None
        self.readable = bytearray()
        self.pending = bytearray()
        self.held: list[tuple[memoryview, bytes]] = []
        self.slices: list[tuple[LinkBuffer, bytearray]] = []
        # Hypothesis keeps the traceback of an earlier failing example (and the views its
        # frames hold) while it shrinks, so leaks are judged against the start of this one.
        self.counts_before: dict[str, int] = {}
        if DEBUG_BUILD:
            gc.collect()
            self.counts_before = dict(_buffer._debug_counts())

    # -- helpers ---------------------------------------------------------------------------

    def hold(self, view: memoryview, expected: bytes) -> None:
        assert bytes(view) == expected
        self.held.append((view, expected))
        if len(self.held) > MAX_HELD:
            self.held.pop(0)

    def check_unchanged(self) -> None:
        assert bytes(self.buf.peek(len(self.readable))) == self.readable
        assert len(self.buf) == len(self.readable)
        assert self.buf.malloc_len() == len(self.pending)

    # -- setup -----------------------------------------------------------------------------

    @initialize(hint=st.sampled_from([0, 1, 64, 4096, 16384, 65536]))
    def create(self, hint: int) -> None:
        self.buf = LinkBuffer(hint)

    # -- writes ----------------------------------------------------------------------------

    @rule(
        kind=st.sampled_from(["bytes", "bytearray", "memoryview", "bytes_view"]),
        n=SIZES,
        seed=SEED,
    )
    def write_binary(self, kind: str, n: int, seed: int) -> None:
        data = payload(n, seed)
        if kind == "bytes":
            obj: object = data
        elif kind == "bytearray":
            obj = bytearray(data)
        elif kind == "memoryview":
            obj = memoryview(bytearray(b"--" + data + b"--"))[2 : 2 + n]
        else:
            obj = memoryview(b"--" + data + b"--")[2 : 2 + n]
        assert self.buf.write_binary(obj) == n
        self.pending += data
        # mutable objects are copied: the caller may change and resize them at once
        if kind == "bytearray":
            obj[:] = b"\xaa" * n
            obj.extend(b"grow")
        elif kind == "memoryview":
            base = obj.obj
            obj.release()
            base[:] = b"\x55" * len(base)
            base.extend(b"grow")

    @rule(text=st.text(max_size=40), encoding=st.sampled_from(["utf-8", "utf-16-le"]))
    def write_string(self, text: str, encoding: str) -> None:
        encoded = text.encode(encoding)
        assert self.buf.write_string(text, encoding) == len(encoded)
        self.pending += encoded

    @rule(n=SIZES, seed=SEED)
    def write_string_large(self, n: int, seed: int) -> None:
        text = payload(n, seed).decode("latin-1")
        assert self.buf.write_string(text, "latin-1") == n
        self.pending += text.encode("latin-1")

    @rule(b=st.integers(0, 255))
    def write_byte(self, b: int) -> None:
        self.buf.write_byte(b)
        self.pending.append(b)

    @rule(n=SIZES, seed=SEED, keep=st.booleans())
    def malloc_fill(self, n: int, seed: int, keep: bool) -> None:
        data = payload(n, seed)
        m = self.buf.malloc(n)
        assert not m.readonly and len(m) == n
        m[:] = data
        self.pending += data
        if keep:
            self.hold(m, data)

    @rule(percent=PERCENT)
    def malloc_ack(self, percent: int) -> None:
        n = part_of(len(self.pending), percent)
        self.buf.malloc_ack(n)
        del self.pending[n:]

    @rule(extra=st.integers(1, 5000))
    def malloc_ack_too_far(self, extra: int) -> None:
        with pytest.raises(ValueError):
            self.buf.malloc_ack(len(self.pending) + extra)
        self.check_unchanged()

    @rule(n=SIZES, seed=SEED, percent=PERCENT)
    def write_direct(self, n: int, seed: int, percent: int) -> None:
        data = payload(n, seed)
        remain = part_of(len(self.pending), percent)
        at = len(self.pending) - remain
        self.buf.write_direct(data, remain)
        self.pending[at:at] = data

    @rule()
    def flush(self) -> None:
        self.buf.flush()
        self.readable += self.pending
        self.pending.clear()

    @rule(
        parts=st.lists(st.tuples(SIZES, SEED), min_size=0, max_size=3),
        consume=PERCENT,
        flush_between=st.booleans(),
        alias=st.sampled_from(["append", "write_buffer"]),
        keep=st.booleans(),
    )
    def append_other(self, parts, consume, flush_between, alias, keep) -> None:
        other = LinkBuffer()
        readable = bytearray()
        for n, seed in parts:
            data = payload(n, seed)
            other.write_binary(data)
            readable += data
            if flush_between:
                other.flush()
        other.flush()
        k = part_of(len(readable), consume)
        v = other.next(k)
        if keep:
            self.hold(v, bytes(readable[:k]))
        del v, readable[:k]
        getattr(self.buf, alias)(other)
        self.pending += readable
        with pytest.raises(ValueError):
            len(other)

    @precondition(lambda self: self.slices)
    @rule(index=st.integers(0, MAX_SLICES - 1))
    def append_slice(self, index: int) -> None:
        s, model = self.slices.pop(index % len(self.slices))
        self.buf.append(s)
        self.pending += model
        with pytest.raises(ValueError):
            s.len()

    # -- reads -----------------------------------------------------------------------------

    @rule(percent=PERCENT, keep=st.booleans())
    def next(self, percent: int, keep: bool) -> None:
        n = part_of(len(self.readable), percent)
        v = self.buf.next(n)
        assert v.readonly and len(v) == n
        expected = bytes(self.readable[:n])
        assert bytes(v) == expected
        del self.readable[:n]
        if keep:
            self.hold(v, expected)

    @rule(percent=PERCENT, keep=st.booleans())
    def peek(self, percent: int, keep: bool) -> None:
        n = part_of(len(self.readable), percent)
        v = self.buf.peek(n)
        assert v.readonly
        expected = bytes(self.readable[:n])
        assert bytes(v) == expected
        if keep:
            self.hold(v, expected)

    @rule(percent=PERCENT)
    def skip(self, percent: int) -> None:
        n = part_of(len(self.readable), percent)
        assert self.buf.skip(n) is None
        del self.readable[:n]

    @rule(
        start=PERCENT,
        length=st.integers(1, 4),
        other=st.one_of(st.integers(0, 255), st.binary(min_size=1, max_size=3)),
        use_found=st.booleans(),
        keep=st.booleans(),
    )
    def until(self, start, length, other, use_found, keep) -> None:
        if use_found and self.readable:
            i = part_of(len(self.readable) - 1, start)
            delim: int | bytes = bytes(self.readable[i : i + length])
        else:
            delim = other
        needle = bytes([delim]) if isinstance(delim, int) else delim
        idx = self.readable.find(needle)
        if idx < 0:
            with pytest.raises(NotEnoughDataError):
                self.buf.until(delim)
            self.check_unchanged()
            return
        end = idx + len(needle)
        v = self.buf.until(delim)
        expected = bytes(self.readable[:end])
        assert v.readonly
        assert bytes(v) == expected
        del self.readable[:end]
        if keep:
            self.hold(v, expected)

    @rule(percent=PERCENT)
    def read_binary(self, percent: int) -> None:
        n = part_of(len(self.readable), percent)
        got = self.buf.read_binary(n)
        assert type(got) is bytes
        assert got == self.readable[:n]
        del self.readable[:n]

    @rule(
        percent=PERCENT,
        codec=st.sampled_from([("latin-1", "strict"), ("utf-8", "replace"), ("utf-8", "strict")]),
    )
    def read_string(self, percent: int, codec: tuple[str, str]) -> None:
        n = part_of(len(self.readable), percent)
        encoding, errors = codec
        try:
            expected = bytes(self.readable[:n]).decode(encoding, errors)
        except UnicodeDecodeError:
            with pytest.raises(UnicodeDecodeError):
                self.buf.read_string(n, encoding, errors)
            self.check_unchanged()
            return
        assert self.buf.read_string(n, encoding, errors) == expected
        del self.readable[:n]

    @rule()
    def read_byte(self) -> None:
        if not self.readable:
            with pytest.raises(NotEnoughDataError):
                self.buf.read_byte()
            return
        assert self.buf.read_byte() == self.readable[0]
        del self.readable[:1]

    @rule(
        method=st.sampled_from(["next", "peek", "skip", "read_binary", "read_string", "slice"]),
        extra=st.integers(1, 10000),
    )
    def read_too_much(self, method: str, extra: int) -> None:
        n = len(self.readable) + extra
        with pytest.raises(NotEnoughDataError) as info:
            getattr(self.buf, method)(n)
        assert str(n) in str(info.value)
        self.check_unchanged()

    @rule(percent=PERCENT, keep=st.booleans())
    def slice(self, percent: int, keep: bool) -> None:
        n = part_of(len(self.readable), percent)
        s = self.buf.slice(n)
        model = bytearray(self.readable[:n])
        del self.readable[:n]
        assert len(s) == n
        assert s.bytes() == model
        assert b"".join(bytes(v) for v in s.get_bytes()) == model
        assert bytes(s.peek(n)) == model
        if keep:
            self.slices.append((s, model))
            if len(self.slices) > MAX_SLICES:
                old, _ = self.slices.pop(0)
                old.close()

    @precondition(lambda self: self.slices)
    @rule(index=st.integers(0, MAX_SLICES - 1), percent=PERCENT, keep=st.booleans())
    def read_slice(self, index: int, percent: int, keep: bool) -> None:
        s, model = self.slices[index % len(self.slices)]
        n = part_of(len(model), percent)
        v = s.next(n)
        expected = bytes(model[:n])
        assert bytes(v) == expected
        del model[:n]
        s.release()
        assert s.bytes() == model
        if keep:
            self.hold(v, expected)

    @precondition(lambda self: self.slices)
    @rule(index=st.integers(0, MAX_SLICES - 1))
    def close_slice(self, index: int) -> None:
        s, _ = self.slices.pop(index % len(self.slices))
        s.close()
        s.close()

    @rule()
    def release(self) -> None:
        self.buf.release()

    @rule()
    def bytes_(self) -> None:
        got = self.buf.bytes()
        assert type(got) is bytes
        assert got == self.readable

    @rule(keep=st.booleans())
    def get_bytes(self, keep: bool) -> None:
        views = self.buf.get_bytes()
        assert b"".join(bytes(v) for v in views) == self.readable
        if keep:
            for v in views[:3]:
                self.hold(v, bytes(v))

    @rule(hint=st.sampled_from([0, 4096, 65536]))
    def close_and_renew(self, hint: int) -> None:
        self.buf.close()
        self.buf.close()
        with pytest.raises(ValueError):
            len(self.buf)
        self.buf = LinkBuffer(hint)
        self.readable.clear()
        self.pending.clear()

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def lengths_match(self) -> None:
        if self.buf is None:
            return
        assert len(self.buf) == len(self.readable)
        assert self.buf.len() == len(self.readable)
        assert self.buf.is_empty() == (not self.readable)
        assert self.buf.malloc_len() == len(self.pending)

    @invariant()
    def slices_intact(self) -> None:
        for sliced, model in self.slices:
            assert len(sliced) == len(model)
            assert sliced.malloc_len() == 0

    @invariant()
    def held_views_unchanged(self) -> None:
        for view, expected in self.held:
            assert bytes(view) == expected

    def close_slices(self) -> None:
        for sliced, model in self.slices:
            assert sliced.bytes() == model
            sliced.close()
        self.slices.clear()

    def teardown(self) -> None:
        if self.buf is not None:
            assert self.buf.bytes() == self.readable
            self.buf.flush()
            assert self.buf.bytes() == self.readable + self.pending
            self.buf.close()
        self.close_slices()
        self.held_views_unchanged()
        self.buf = None
        self.slices.clear()
        self.held.clear()
        if DEBUG_BUILD:
            gc.collect()
            counts = _buffer._debug_counts()
            for key in ("chunks", "nodes"):
                assert counts.get(key) == self.counts_before.get(key), (self.counts_before, counts)


LinkBufferMachine.TestCase.settings = settings(
    max_examples=60 if DEBUG_BUILD else 150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestLinkBufferStateMachine = LinkBufferMachine.TestCase
