"""Fuzz the example servers' parsers: RPC (length-prefixed), RESP and HTTP.

    python fuzz/fuzz_parsers.py --target=rpc -runs=100000              # atheris
    python fuzz/fuzz_parsers.py --target=resp --random --runs 100000   # no atheris

Each example's ``on_request`` (and ``on_prepare``) runs on a fake connection:
a real LinkBuffer for input and output, driven by the EventLoop's rules
(on_request runs while input is buffered, again only if the last call consumed
something or more arrived, never two at once; a read that must wait suspends
the handler until more input comes; when the input ends a waiting read raises
EndOfStreamError). The same input is fed three ways: whole, byte by byte, and
in random pieces. Checked:

* only documented exceptions escape a handler: EndOfStreamError and
  ConnectionClosedError (the connection ending). Anything else is a crash;
* the answer does not depend on how the input was split. RESP documents an
  exception: after a multibulk command the rest of a read goes to hiredis, so a
  pipeline that switches to inline inside one read is refused, and malformed
  input after a command can be read either way. For RESP this check is made on
  generated well-formed inputs that never switch from multibulk to inline;
  other RESP inputs are checked for crashes only;
* RPC: the answer is exactly the complete request frames, echoed.

A target whose example file is missing (or whose parser library is not
installed) is reported as unavailable; tests/test_fuzz.py skips it.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import random
import struct
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from netpoll import ConnectionClosedError, EndOfStreamError, LinkBuffer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ALLOWED = (EndOfStreamError, ConnectionClosedError)
HDR = struct.Struct(">I")


# -- loading the examples ---------------------------------------------------------------

_modules: dict[str, ModuleType | str] = {}


def load(target: str) -> ModuleType | None:
    """The example module, or None if it does not exist (yet) or cannot be imported."""
    if target not in _modules:
        path = EXAMPLES / f"{target}_server.py"
        if not path.exists():
            _modules[target] = f"{path} does not exist"
        else:
            spec = importlib.util.spec_from_file_location(f"netpoll_fuzz_{target}", path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(mod)
            except ImportError as exc:
                _modules[target] = f"{path.name}: {exc}"
            else:
                _modules[target] = mod
    m = _modules[target]
    return m if isinstance(m, ModuleType) else None


def unavailable(target: str) -> str | None:
    """Why a target cannot be fuzzed, or None."""
    if load(target) is None:
        return str(_modules[target])
    return None


# -- a connection without a socket --------------------------------------------------------


class _Need:
    """Yielded by a read that must wait: the driver resumes it when input comes."""

    __slots__ = ()

    def __await__(self) -> Any:
        yield self


NEED = _Need()


class FakeConn:
    """The Connection API the examples use, over LinkBuffers, with the EventLoop's rules."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.inbuf = LinkBuffer()
        self.outbuf = LinkBuffer()
        self.sent = bytearray()
        self.closed = False
        self.eof = False
        self.consumed = 0
        self.rx = 0
        self.coro: Any = None
        self.escaped: BaseException | None = None
        self.ctx = module.on_prepare(self) if hasattr(module, "on_prepare") else None

    # reader ------------------------------------------------------------------------
    @property
    def reader(self) -> FakeConn:
        return self

    @property
    def writer(self) -> FakeConn:
        return self

    @property
    def input(self) -> LinkBuffer:
        """The input buffer, for plain-function handlers (synchronous reads)."""
        return self.inbuf

    def __len__(self) -> int:
        return len(self.inbuf)

    def len(self) -> int:
        return len(self.inbuf)

    def release(self) -> None:
        self.inbuf.release()

    async def _need(self, n: int) -> None:
        while len(self.inbuf) < n:
            if self.closed:
                raise ConnectionClosedError(f"connection closed; {len(self.inbuf)} readable")
            if self.eof:
                raise EndOfStreamError(f"peer closed; {len(self.inbuf)} readable, {n} needed")
            await NEED

    async def _take(self, name: str, n: int, *args: Any) -> Any:
        await self._need(n)
        v = getattr(self.inbuf, name)(n, *args)
        if name != "peek":
            self.consumed += n
        return v

    async def next(self, n: int) -> memoryview:
        return await self._take("next", n)

    async def peek(self, n: int) -> memoryview:
        return await self._take("peek", n)

    async def skip(self, n: int) -> None:
        await self._take("skip", n)

    async def read_binary(self, n: int) -> bytes:
        return await self._take("read_binary", n)

    async def read_string(self, n: int, encoding: str = "utf-8", errors: str = "strict") -> str:
        return await self._take("read_string", n, encoding, errors)

    async def slice(self, n: int) -> LinkBuffer:
        return await self._take("slice", n)

    async def read_byte(self) -> int:
        await self._need(1)
        self.consumed += 1
        return self.inbuf.read_byte()

    async def until(self, delim: Any) -> memoryview:
        d = bytes([delim]) if isinstance(delim, int) else bytes(delim)
        while True:
            i = self.inbuf.bytes().find(d)
            if i >= 0:
                return await self.next(i + len(d))
            await self._need(len(self.inbuf) + 1)

    async def read(self, n: int = 65536) -> bytes:
        if not len(self.inbuf):
            if self.eof:
                return b""
            await self._need(1)
        return await self.read_binary(min(n, len(self.inbuf)))

    # writer ------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.closed:
            raise ConnectionClosedError("connection closed")

    def malloc(self, n: int) -> memoryview:
        self._writable()
        return self.outbuf.malloc(n)

    def malloc_len(self) -> int:
        return self.outbuf.malloc_len()

    def malloc_ack(self, n: int) -> None:
        self.outbuf.malloc_ack(n)

    def write_binary(self, data: Any) -> int:
        self._writable()
        return self.outbuf.write_binary(data)

    def write_string(self, s: str, encoding: str = "utf-8") -> int:
        self._writable()
        return self.outbuf.write_string(s, encoding)

    def write_byte(self, b: int) -> None:
        self._writable()
        self.outbuf.write_byte(b)

    def write_buffer(self, other: LinkBuffer) -> None:
        self._writable()
        self.outbuf.write_buffer(other)

    append = write_buffer

    async def flush(self) -> None:
        self._writable()
        self.outbuf.flush()
        self.sent += self.outbuf.read_binary(len(self.outbuf))
        self.outbuf.release()

    def flush_nowait(self) -> None:
        self._writable()
        self.outbuf.flush()
        self.sent += self.outbuf.read_binary(len(self.outbuf))
        self.outbuf.release()

    def output_len(self) -> int:
        return 0 if self.closed else len(self.outbuf) + self.outbuf.malloc_len()

    async def write(self, data: Any) -> int:
        n = self.write_binary(data)
        await self.flush()
        return n

    def close(self) -> None:
        self.closed = True

    def is_active(self) -> bool:
        return not self.closed and not self.eof

    # the driver ----------------------------------------------------------------------
    def _step(self) -> bool:
        """Advance the running handler; True if it finished."""
        try:
            y = self.coro.send(None)
        except StopIteration:
            self.coro = None
            return True
        except ALLOWED as exc:
            self.coro = None
            self.escaped = exc
            self.closed = True      # the server logs it and closes the connection
            return True
        assert y is NEED, f"handler awaited something other than input: {y!r}"
        return False

    def _chain(self) -> None:
        """Run on_request as the EventLoop does, until it waits or has nothing to do."""
        if self.coro is not None and not self._step():
            return
        first = True
        while not self.closed and len(self.inbuf):
            # every byte received is either still buffered or was consumed
            marks = (self.rx - len(self.inbuf), self.rx)
            if not first and marks == self._marks:
                return          # the last call consumed nothing: wait for more input
            first = False
            self._marks = marks
            try:
                res = self.module.on_request(self.ctx, self)
            except ALLOWED as exc:          # a plain handler raised
                self.escaped = exc
                self.closed = True
                return
            if res is None:
                continue                    # a plain handler: done
            self.coro = res
            if not self._step():
                return

    def feed(self, data: bytes) -> None:
        if self.closed:
            return
        self.inbuf.write_binary(data)
        self.inbuf.flush()
        self.rx += len(data)
        self._chain()

    def end(self) -> None:
        """The peer closed: a waiting read raises EndOfStreamError."""
        self.eof = True
        if self.coro is not None and not self.closed:
            self._step()
        if self.coro is not None:
            self.coro.close()
            self.coro = None
        self.inbuf.close()
        self.outbuf.close()


def drive(target: str, pieces: list[bytes]) -> tuple[bytes, bool]:
    """Feed the pieces to a fresh connection; returns (what was sent, closed)."""
    mod = load(target)
    assert mod is not None
    if hasattr(mod, "STORE"):
        mod.STORE.clear()       # the RESP example keeps one global dict
    conn = FakeConn(mod)
    for p in pieces:
        conn.feed(p)
    closed = conn.closed
    conn.end()
    return bytes(conn.sent), closed


def splits(data: bytes, seed: int) -> dict[str, list[bytes]]:
    rnd = random.Random(seed)
    pieces, i = [], 0
    while i < len(data):
        k = rnd.randrange(1, 64)
        pieces.append(data[i : i + k])
        i += k
    return {
        "whole": [data] if data else [],
        "bytewise": [data[i : i + 1] for i in range(len(data))],
        "random": pieces,
    }


# -- inputs: raw bytes or generated messages with mutations ---------------------------------

RESP_WORDS = [
    b"PING", b"ECHO", b"SET", b"GET", b"DEL", b"INCR", b"MGET", b"EXISTS", b"DBSIZE",
    b"FLUSHDB", b"SELECT", b"CLIENT", b"CONFIG", b"COMMAND", b"QUIT", b"ping", b"set",
    b"NX", b"XX", b"GET", b"EX", b"10", b"KEEPTTL", b"key", b"k2", b"-1",
    b"9223372036854775806", b"9223372036854775807", b"007", b"",
]  # fmt: skip


def gen_rpc(rnd: random.Random) -> bytes:
    out = []
    for _ in range(rnd.randrange(1, 6)):
        body = rnd.randbytes(rnd.choice([0, 1, 3, 4, 5, 100, 700]))
        out.append(HDR.pack(len(body)) + body)
    if rnd.random() < 0.3:
        out.append(HDR.pack(rnd.getrandbits(32))[: rnd.randrange(0, 5)])
    return b"".join(out)


_resp_switches = False     # did the last gen_resp switch from multibulk to inline?


def gen_resp(rnd: random.Random) -> bytes:
    global _resp_switches
    out = []
    inline = rnd.random() < 0.3
    multibulk_seen = False
    _resp_switches = False
    for _ in range(rnd.randrange(1, 6)):
        words = [rnd.choice(RESP_WORDS) for _ in range(rnd.randrange(1, 5))]
        if inline or rnd.random() < 0.1:
            words = [w for w in words if w] or [b"PING"]
            out.append(b" ".join(words) + rnd.choice([b"\r\n", b"\n"]))
            _resp_switches |= multibulk_seen
        else:
            multibulk_seen = True
            out.append(b"*%d\r\n" % len(words))
            for w in words:
                out.append(b"$%d\r\n%s\r\n" % (len(w), w))
    return b"".join(out)


def gen_http(rnd: random.Random) -> bytes:
    out = []
    for _ in range(rnd.randrange(1, 4)):
        method = rnd.choice([b"GET", b"HEAD", b"POST", b"PUT", b"BREW"])
        path = rnd.choice([b"/", b"/?a=1", b"/x", b"*", b"/%00"])
        ver = rnd.choice([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0"])
        hdrs = [b"Host: x"]
        body = b""
        k = rnd.random()
        if k < 0.2:
            body = rnd.randbytes(rnd.randrange(0, 50))
            hdrs.append(b"Content-Length: %d" % len(body))
        elif k < 0.35:
            chunk = rnd.randbytes(rnd.randrange(1, 20))
            hdrs.append(b"Transfer-Encoding: chunked")
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
        if rnd.random() < 0.2:
            hdrs.append(rnd.choice([b"Connection: close", b"Connection: keep-alive"]))
        if rnd.random() < 0.05:
            hdrs.append(b"Upgrade: websocket\r\nConnection: upgrade")
        out.append(b"%s %s %s\r\n%s\r\n\r\n%s" % (method, path, ver, b"\r\n".join(hdrs), body))
    return b"".join(out)


GENERATORS = {"rpc": gen_rpc, "resp": gen_resp, "http": gen_http}


def mutate(data: bytes, rnd: random.Random, times: int) -> bytes:
    b = bytearray(data)
    for _ in range(times):
        if not b:
            break
        k = rnd.randrange(4)
        i = rnd.randrange(len(b))
        if k == 0:
            b[i] = rnd.randrange(256)
        elif k == 1:
            del b[i : i + rnd.randrange(1, 8)]
        elif k == 2:
            b[i:i] = rnd.choice([b"\r\n", b"*", b"$", b"\n", b"\x00", b"-1", b"99999999"])
        else:
            j = rnd.randrange(len(b))
            b[i:i] = b[j : j + rnd.randrange(1, 16)]
    return bytes(b)


def make_input(target: str, data: bytes) -> tuple[bytes, bool]:
    """The first byte chooses: the raw input, or a generated message, mutated or not
    (seeded by the rest). Returns the input and whether the answer must not depend
    on how it is split."""
    if not data:
        return b"", True
    if data[0] & 1:
        return data[1:], target != "resp"
    rnd = random.Random(data[1:])
    msg = GENERATORS[target](rnd)
    times = rnd.randrange(0, 4) if data[0] & 2 else 0
    strict = target != "resp" or (times == 0 and not _resp_switches)
    return mutate(msg, rnd, times), strict


# -- the checks -------------------------------------------------------------------------------


def rpc_expected(data: bytes) -> bytes:
    out, i = [], 0
    while len(data) - i >= 4:
        n = HDR.unpack_from(data, i)[0]
        if len(data) - i < 4 + n:
            break
        out.append(data[i : i + 4 + n])
        i += 4 + n
    return b"".join(out)


def check(target: str, data: bytes, seed: int = 0, strict: bool = True) -> None:
    results = {name: drive(target, pieces) for name, pieces in splits(data, seed).items()}
    whole = results["whole"]
    if not strict:
        return      # crashes only (see the module docstring)
    for name, res in results.items():
        assert res == whole, f"{target}: answer fed {name} differs from fed whole: {data!r}"
    if target == "rpc":
        assert whole == (rpc_expected(data), False), f"rpc: wrong echo for {data!r}"


def one_input(target: str, data: bytes) -> None:
    msg, strict = make_input(target, data)
    check(target, msg, seed=len(data), strict=strict)


def run_random(target: str, runs: int, seed: int = 0) -> int:
    rnd = random.Random(seed)
    for _ in range(runs):
        one_input(target, rnd.randbytes(rnd.randrange(1, 300)))
    return runs


def main(argv: list[str]) -> None:
    target = os.environ.get("FUZZ_TARGET", "rpc")
    rest = []
    for a in argv[1:]:
        if a.startswith("--target="):
            target = a.split("=", 1)[1]
        else:
            rest.append(a)
    why = unavailable(target)
    if why:
        print(f"fuzz_parsers: target {target} unavailable: {why}")
        return
    if "--random" in rest or not _have_atheris():
        import argparse

        p = argparse.ArgumentParser()
        p.add_argument("--random", action="store_true")
        p.add_argument("--runs", type=int, default=10000)
        p.add_argument("--seed", type=int, default=0)
        a = p.parse_args([x for x in rest if not x.startswith("-runs=")])
        t0 = time.monotonic()
        n = run_random(target, a.runs, a.seed)
        print(f"fuzz_parsers[{target}]: {n} inputs, no failure, {time.monotonic() - t0:.1f}s")
        return
    import atheris

    instrument_module(sys.modules[__name__])
    instrument_module(load(target))       # the example parser is Python: real coverage
    atheris.Setup([argv[0], *rest], lambda data: one_input(target, data))
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
