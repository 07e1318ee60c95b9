"""Fuzz LinkBuffer: random operation sequences checked against a bytearray model.

    python fuzz/fuzz_linkbuffer.py -runs=100000            # atheris (libFuzzer flags)
    python fuzz/fuzz_linkbuffer.py --random --runs 100000  # plain randomized loop

The input bytes drive a sequence of LinkBuffer calls (writes, malloc/malloc_ack,
write_direct, write_buffer, flush, every read, slice, release, close). The model is
two bytearrays, ``readable`` and ``pending``. After every call the lengths, and
regularly the contents, must agree; memoryviews handed out are kept and must
still show the bytes they showed when taken (API.md: views stay valid and
unchanged across release(), close() and later writes).

Only documented exceptions may escape a call, and only when the model says so:
NotEnoughDataError (past the readable length; nothing consumed) and ValueError
(negative size, malloc_ack/write_direct past malloc_len, empty delimiter, closed
buffer; UnicodeDecodeError from read_string, nothing consumed). Anything else,
or a mismatch, raises AssertionError: a crash for libFuzzer.

The extension is not instrumented for coverage (no clang -fsanitize=fuzzer
build), so atheris mutates blindly on the C side; the harness itself is.
"""

from __future__ import annotations

import inspect
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from netpoll import LinkBuffer, NotEnoughDataError

MAX_OPS = 300
MAX_HELD = 24


class Exhausted(Exception):
    """The input is used up."""


class Src:
    """Consumes the fuzz input: small ints, sizes, seeds."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise Exhausted
        b = self.data[self.pos]
        self.pos += 1
        return b

    def below(self, n: int) -> int:
        """An int in [0, n)."""
        if n <= 1:
            return 0
        v = self.byte()
        if n > 256:
            v = v << 8 | self.byte()
        if n > 65536:
            v = v << 8 | self.byte()
        return v % n

    def size(self) -> int:
        kind = self.below(6)
        if kind == 0:
            return self.below(17)
        if kind == 1:
            return 17 + self.below(1500)
        if kind == 2:
            return 4090 + self.below(11)
        if kind == 3:
            return 8190 + self.below(11)
        if kind == 4:
            return 4101 + self.below(16000)
        return self.below(300)

    def payload(self, n: int) -> bytes:
        return random.Random(self.below(65536)).randbytes(n)

    def count(self, avail: int) -> int:
        """A read size: usually fits, sometimes one or two past the end, rarely negative."""
        k = self.below(16)
        if k == 0:
            return -1 - self.below(3)
        if k == 1:
            return avail + 1 + self.below(2)
        if k < 5:
            return self.below(min(avail, 16) + 1)
        return self.below(avail + 1)


class Model:
    def __init__(self, size: int) -> None:
        self.buf = LinkBuffer(size)
        self.readable = bytearray()
        self.pending = bytearray()
        self.held: list[tuple[memoryview, bytes]] = []
        self.slices: list[tuple[LinkBuffer, bytearray]] = []
        self.closed = False

    def hold(self, v: memoryview, want: bytes) -> None:
        assert bytes(v) == want, (bytes(v)[:40], want[:40])
        if len(self.held) >= MAX_HELD:
            self.held.pop(0)
        self.held.append((v, want))

    def check(self, deep: bool = False) -> None:
        for v, want in self.held:
            assert bytes(v) == want, "a held view changed"
        if self.closed:
            return
        assert len(self.buf) == len(self.readable), (len(self.buf), len(self.readable))
        assert self.buf.malloc_len() == len(self.pending)
        assert self.buf.is_empty() == (not self.readable)
        if deep:
            assert self.buf.bytes() == self.readable
            assert b"".join(bytes(v) for v in self.buf.get_bytes()) == self.readable
        for s, m in self.slices:
            assert len(s) == len(m)
            if deep:
                assert s.bytes() == m

    def refused(self, fn: Callable[[], Any], *errors: type[BaseException]) -> None:
        """fn must raise one of errors and leave the buffer unchanged."""
        before = len(self.buf), self.buf.malloc_len()
        try:
            fn()
        except errors:
            pass
        else:
            raise AssertionError(f"expected {errors} from {fn}")
        assert (len(self.buf), self.buf.malloc_len()) == before
        assert self.buf.bytes() == self.readable

    # -- operations --------------------------------------------------------------------

    def op(self, src: Src) -> None:
        ops = OPS
        name = ops[src.below(len(ops))]
        getattr(self, "op_" + name)(src)

    def op_write_binary(self, src: Src) -> None:
        n = src.size()
        data = src.payload(n)
        kind = src.below(3)
        if kind == 0:
            assert self.buf.write_binary(data) == n
        else:
            mutable = bytearray(data)
            obj: Any = mutable if kind == 1 else memoryview(mutable)
            assert self.buf.write_binary(obj) == n
            mutable[:] = b"\xee" * len(mutable)       # mutable objects are copied
        self.pending += data

    def op_write_string(self, src: Src) -> None:
        text = src.payload(src.below(200)).decode("latin-1")
        enc = text.encode("utf-8")
        assert self.buf.write_string(text) == len(enc)
        self.pending += enc

    def op_write_byte(self, src: Src) -> None:
        b = src.byte()
        self.buf.write_byte(b)
        self.pending.append(b)

    def op_malloc(self, src: Src) -> None:
        n = src.size()
        data = src.payload(n)
        mv = self.buf.malloc(n)
        assert len(mv) == n and not mv.readonly
        mv[:] = data
        mv.release()
        self.pending += data

    def op_malloc_ack(self, src: Src) -> None:
        k = src.below(len(self.pending) + 3)
        if k > len(self.pending):
            self.refused(lambda: self.buf.malloc_ack(k), ValueError)
            return
        self.buf.malloc_ack(k)
        del self.pending[k:]

    def op_write_direct(self, src: Src) -> None:
        data = src.payload(src.size())
        rc = src.below(len(self.pending) + 3)
        obj: Any = data if src.below(2) else bytearray(data)
        if rc > len(self.pending):
            self.refused(lambda: self.buf.write_direct(obj, rc), ValueError)
            return
        self.buf.write_direct(obj, rc)
        at = len(self.pending) - rc
        self.pending[at:at] = data

    def op_write_buffer(self, src: Src) -> None:
        if self.slices and src.below(2):
            other, m = self.slices.pop(src.below(len(self.slices)))
        else:
            other, m = LinkBuffer(src.below(9000)), bytearray(src.payload(src.size()))
            other.write_binary(bytes(m))
            other.flush()
            other.write_binary(b"unflushed")           # not moved
        if src.below(2):
            self.buf.write_buffer(other)
        else:
            self.buf.append(other)
        self.pending += m
        try:
            len(other)
        except ValueError:
            pass
        else:
            raise AssertionError("write_buffer must close the other buffer")

    def op_flush(self, src: Src) -> None:
        self.buf.flush()
        self.readable += self.pending
        self.pending.clear()

    def _read(self, src: Src, name: str) -> None:
        n = src.count(len(self.readable))
        fn = getattr(self.buf, name)
        if n < 0:
            self.refused(lambda: fn(n), ValueError)
            return
        if n > len(self.readable):
            self.refused(lambda: fn(n), NotEnoughDataError)
            return
        want = bytes(self.readable[:n])
        v = fn(n)
        del self.readable[:n]
        if name in ("next",):
            assert isinstance(v, memoryview) and v.readonly
            self.hold(v, want)
        elif name == "read_binary":
            assert type(v) is bytes and v == want
        elif name == "skip":
            assert v is None

    def op_next(self, src: Src) -> None:
        self._read(src, "next")

    def op_skip(self, src: Src) -> None:
        self._read(src, "skip")

    def op_read_binary(self, src: Src) -> None:
        self._read(src, "read_binary")

    def op_peek(self, src: Src) -> None:
        n = src.count(len(self.readable))
        if n < 0:
            self.refused(lambda: self.buf.peek(n), ValueError)
        elif n > len(self.readable):
            self.refused(lambda: self.buf.peek(n), NotEnoughDataError)
        else:
            self.hold(self.buf.peek(n), bytes(self.readable[:n]))

    def op_read_string(self, src: Src) -> None:
        n = src.count(len(self.readable))
        if n < 0:
            self.refused(lambda: self.buf.read_string(n), ValueError)
            return
        if n > len(self.readable):
            self.refused(lambda: self.buf.read_string(n), NotEnoughDataError)
            return
        raw = bytes(self.readable[:n])
        try:
            want = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.refused(lambda: self.buf.read_string(n), UnicodeDecodeError)
            return
        assert self.buf.read_string(n) == want
        del self.readable[:n]

    def op_read_byte(self, src: Src) -> None:
        if not self.readable:
            self.refused(self.buf.read_byte, NotEnoughDataError)
            return
        assert self.buf.read_byte() == self.readable[0]
        del self.readable[:1]

    def op_until(self, src: Src) -> None:
        kind = src.below(4)
        delim: int | bytes
        if kind == 0:
            delim = src.byte()
            d = bytes([delim])
        elif kind == 1 and self.readable:
            i = src.below(len(self.readable))
            d = delim = bytes(self.readable[i : i + 1 + src.below(4)])   # occurs
        elif kind == 2:
            self.refused(lambda: self.buf.until(b""), ValueError)
            return
        else:
            d = delim = src.payload(1 + src.below(3))
        i = self.readable.find(d)
        if i < 0:
            self.refused(lambda: self.buf.until(delim), NotEnoughDataError)
            return
        want = bytes(self.readable[: i + len(d)])
        self.hold(self.buf.until(delim), want)
        del self.readable[: i + len(d)]

    def op_slice(self, src: Src) -> None:
        n = src.count(len(self.readable))
        if n < 0:
            self.refused(lambda: self.buf.slice(n), ValueError)
            return
        if n > len(self.readable):
            self.refused(lambda: self.buf.slice(n), NotEnoughDataError)
            return
        s = self.buf.slice(n)
        m = bytearray(self.readable[:n])
        del self.readable[:n]
        assert s.bytes() == m
        if len(self.slices) >= 4:
            old, _ = self.slices.pop(0)
            old.close()
        self.slices.append((s, m))

    def op_use_slice(self, src: Src) -> None:
        if not self.slices:
            return
        s, m = self.slices[src.below(len(self.slices))]
        k = src.below(3)
        if k == 0:
            n = src.below(len(m) + 1)
            self.hold(s.next(n), bytes(m[:n]))
            del m[:n]
        elif k == 1:
            s.write_binary(b"more")                   # a slice is a buffer of its own
            s.flush()
            m += b"more"
        else:
            self.slices.remove((s, m))
            s.close()

    def op_release(self, src: Src) -> None:
        self.buf.release()

    def op_get_bytes(self, src: Src) -> None:
        views = self.buf.get_bytes()
        assert b"".join(bytes(v) for v in views) == self.readable
        if views:
            v = views[src.below(len(views))]
            self.hold(v, bytes(v))

    def op_check(self, src: Src) -> None:
        self.check(deep=True)

    def op_close(self, src: Src) -> None:
        if src.below(4):          # rare: most sequences should go deep
            return
        self.buf.close()
        self.buf.close()          # a second close does nothing
        self.closed = True
        for fn in (lambda: len(self.buf), lambda: self.buf.next(0), self.buf.flush):
            try:
                fn()
            except ValueError:
                pass
            else:
                raise AssertionError("a closed LinkBuffer must raise ValueError")
        self.check()
        self.buf = LinkBuffer(src.below(9000))
        self.readable.clear()
        self.pending.clear()
        self.closed = False


OPS = [
    name[3:]
    for name in vars(Model)
    if name.startswith("op_") and name != "op_"
]
# writes and flushes more often than the rest, so reads find data
OPS += ["write_binary", "malloc", "flush", "flush", "next", "write_direct", "until"]


def TestOneInput(data: bytes) -> None:
    src = Src(data)
    try:
        m = Model(src.below(9000))
    except Exhausted:
        return
    try:
        for i in range(MAX_OPS):
            m.op(src)
            m.check(deep=i % 16 == 15)
    except Exhausted:
        pass
    m.check(deep=True)
    m.buf.close()
    m.closed = True
    for s, _ in m.slices:
        s.close()
    m.check()           # views still unchanged after every close


def run_random(runs: int, seed: int = 0, max_len: int = 4096) -> int:
    """The harness without atheris: random inputs of random length. Returns runs done."""
    rnd = random.Random(seed)
    for _ in range(runs):
        TestOneInput(rnd.randbytes(rnd.randrange(1, max_len)))
    return runs


def main(argv: list[str]) -> None:
    if "--random" in argv or not _have_atheris():
        import argparse

        p = argparse.ArgumentParser()
        p.add_argument("--random", action="store_true")
        p.add_argument("--runs", type=int, default=10000)
        p.add_argument("--seed", type=int, default=0)
        a = p.parse_args([x for x in argv[1:] if not x.startswith("-runs=")])
        t0 = time.monotonic()
        n = run_random(a.runs, a.seed)
        print(f"fuzz_linkbuffer: {n} random inputs, no failure, {time.monotonic() - t0:.1f}s")
        return
    import atheris

    instrument_module(sys.modules[__name__])      # the model's branches
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


def instrument_module(mod: Any) -> None:
    """Atheris coverage for the Python code of one module (instrument_all() takes ~30 s)."""
    import atheris

    def one(fn: Any) -> None:
        if inspect.isfunction(fn) and fn.__module__ == mod.__name__:
            atheris.instrument_func(fn)

    for obj in list(vars(mod).values()):
        if inspect.isclass(obj) and obj.__module__ == mod.__name__:
            for member in vars(obj).values():
                one(getattr(member, "fget", member))
        else:
            one(obj)


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main(sys.argv)
