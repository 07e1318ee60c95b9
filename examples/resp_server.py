"""A RESP (Redis protocol) server on netpoll, parsed with hiredis.

Commands: PING, ECHO, SET, GET, DEL, INCR (and INCRBY, DECR, DECRBY), MGET,
EXISTS over one in-memory dict, plus the handshake commands real clients send first (CONFIG GET,
CLIENT, COMMAND, SELECT, and HELLO 2/3 as redis-py 5+ opens with ``HELLO 3``),
QUIT, DBSIZE and FLUSHDB/FLUSHALL.  Pipelining works: every command that has
arrived is answered, and all answers of one wakeup go out in one flush.

    python examples/resp_server.py --host 127.0.0.1 --port 6380 [--uvloop]
    redis-cli -p 6380 set greeting hello
    redis-benchmark -p 6380 -t ping_inline,ping_mbulk,set,get -P 16 -q

It prints ``listening on ADDRESS`` and ``ready`` on stdout, and shuts down
gracefully on SIGINT or SIGTERM (commands already received are answered).

How the input is parsed:

* Multibulk commands (``*2\\r\\n$3\\r\\nGET\\r\\n...``, what every client
  library sends) go to a ``hiredis.Reader``, one per connection: whatever is
  buffered is fed to it at once (a zero-copy view of the input), then every
  complete command is pulled out with ``gets()``.  A partial command stays
  inside the reader until the rest arrives.
* Inline commands (``PING\\r\\n``, what telnet users and redis-benchmark's
  PING_INLINE send) are lines of space-separated words.  hiredis parses
  replies, not inline requests, so they are split here.  As in Redis, the
  first byte at a command boundary decides: ``*`` starts a multibulk command,
  anything else an inline one.  The reader is known to be at a command
  boundary when it holds no unparsed byte right after returning a command.
  A switch from multibulk to inline *inside one read* makes hiredis stop with
  a protocol error; the input since the last boundary is then re-scanned to
  find where the inline part starts (see `ConnState`).

Replies are encoded into a list of bytes and written with one
``write_binary`` per wakeup, followed by one ``flush``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

import netpoll

__all__ = ["ConnState", "execute", "main", "on_prepare", "on_request", "process_bytes", "serve"]

Reply = bytes
Command = Callable[[list[Any]], Reply]

#: Longest inline command line (Redis: PROTO_INLINE_MAX_SIZE).
INLINE_MAX = 64 * 1024

STORE: dict[bytes, bytes] = {}

OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
NIL = b"$-1\r\n"
ZERO = b":0\r\n"
ONE = b":1\r\n"
CRLF = b"\r\n"
EMPTY_ARRAY = b"*0\r\n"
NOT_AN_INTEGER = b"-ERR value is not an integer or out of range\r\n"
SYNTAX_ERROR = b"-ERR syntax error\r\n"

#: Bulk string headers for small lengths, built once ($0\r\n ... $1023\r\n).
_BULK_HEADERS = [b"$%d\r\n" % n for n in range(1024)]
#: Integer replies for small numbers.
_INTEGERS = [b":%d\r\n" % n for n in range(1024)]


def bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    n = len(value)
    if n < 1024:
        return b"".join((_BULK_HEADERS[n], value, CRLF))
    return b"$%d\r\n%s\r\n" % (n, value)


def integer(n: int) -> bytes:
    """``n`` as a RESP integer."""
    if 0 <= n < 1024:
        return _INTEGERS[n]
    return b":%d\r\n" % n


def error(message: str) -> bytes:
    """A RESP error; CR and LF would end it early, so they become spaces."""
    text = message.replace("\r", " ").replace("\n", " ")
    return b"-" + text.encode("utf-8", "replace") + CRLF


def wrong_arity(name: bytes) -> bytes:
    return error(f"ERR wrong number of arguments for '{name.decode('latin-1').lower()}' command")


# ---------------------------------------------------------------- commands
# Each takes the whole command (name included) and returns the encoded reply.


def cmd_ping(cmd: list[Any]) -> Reply:
    if len(cmd) == 1:
        return PONG
    if len(cmd) == 2:
        return bulk(cmd[1])
    return wrong_arity(cmd[0])


def cmd_echo(cmd: list[Any]) -> Reply:
    if len(cmd) != 2:
        return wrong_arity(cmd[0])
    return bulk(cmd[1])


def cmd_set(cmd: list[Any]) -> Reply:
    if len(cmd) == 3:
        STORE[cmd[1]] = cmd[2]
        return OK
    if len(cmd) < 3:
        return wrong_arity(cmd[0])
    # The common options; expiry is accepted and not enforced (no clock in this example).
    nx = xx = get = False
    i = 3
    while i < len(cmd):
        opt = cmd[i].upper()
        if opt == b"NX":
            nx = True
        elif opt == b"XX":
            xx = True
        elif opt == b"GET":
            get = True
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and i + 1 < len(cmd):
            i += 1
        elif opt != b"KEEPTTL":
            return SYNTAX_ERROR
        i += 1
    if nx and xx:
        return SYNTAX_ERROR
    key = cmd[1]
    old = STORE.get(key)
    if (nx and old is not None) or (xx and old is None):
        return (bulk(old) if old is not None else NIL) if get else NIL
    STORE[key] = cmd[2]
    if get:
        return bulk(old) if old is not None else NIL
    return OK


def cmd_get(cmd: list[Any]) -> Reply:
    if len(cmd) != 2:
        return wrong_arity(cmd[0])
    value = STORE.get(cmd[1])
    if value is None:
        return NIL
    n = len(value)
    if n < 1024:
        return b"".join((_BULK_HEADERS[n], value, CRLF))
    return bulk(value)


def cmd_del(cmd: list[Any]) -> Reply:
    if len(cmd) < 2:
        return wrong_arity(cmd[0])
    removed = 0
    for key in cmd[1:]:
        if STORE.pop(key, None) is not None:
            removed += 1
    return integer(removed)


def cmd_exists(cmd: list[Any]) -> Reply:
    if len(cmd) < 2:
        return wrong_arity(cmd[0])
    return integer(sum(1 for key in cmd[1:] if key in STORE))


def incr_by(key: bytes, by: bytes | int) -> Reply:
    """INCR/INCRBY/DECR/DECRBY: add `by` to the integer stored at `key` (0 if absent)."""
    old = STORE.get(key, b"0")
    # Redis accepts exactly the canonical decimal form of a signed 64-bit integer.
    try:
        n = int(old)
        delta = by if type(by) is int else int(by)
    except ValueError:
        return NOT_AN_INTEGER
    if b"%d" % n != old:
        return NOT_AN_INTEGER
    n += delta
    if not -(2**63) <= n < 2**63:
        return error("ERR increment or decrement would overflow")
    STORE[key] = b"%d" % n
    return integer(n)


def cmd_incr(cmd: list[Any]) -> Reply:
    if len(cmd) != 2:
        return wrong_arity(cmd[0])
    return incr_by(cmd[1], 1)


def cmd_decr(cmd: list[Any]) -> Reply:
    if len(cmd) != 2:
        return wrong_arity(cmd[0])
    return incr_by(cmd[1], -1)


def cmd_incrby(cmd: list[Any]) -> Reply:
    """INCRBY key n (redis-py's ``incr()`` sends this one)."""
    if len(cmd) != 3:
        return wrong_arity(cmd[0])
    return incr_by(cmd[1], cmd[2])


def cmd_decrby(cmd: list[Any]) -> Reply:
    if len(cmd) != 3:
        return wrong_arity(cmd[0])
    try:
        return incr_by(cmd[1], -int(cmd[2]))
    except ValueError:
        return NOT_AN_INTEGER


def cmd_mget(cmd: list[Any]) -> Reply:
    if len(cmd) < 2:
        return wrong_arity(cmd[0])
    get = STORE.get
    parts = [b"*%d\r\n" % (len(cmd) - 1)]
    for key in cmd[1:]:
        value = get(key)
        parts.append(NIL if value is None else bulk(value))
    return b"".join(parts)


def cmd_dbsize(cmd: list[Any]) -> Reply:
    return integer(len(STORE))


def cmd_flush(cmd: list[Any]) -> Reply:
    STORE.clear()
    return OK


def cmd_ok(cmd: list[Any]) -> Reply:
    """CLIENT SETNAME/SETINFO, SELECT 0, ...: accepted and ignored."""
    return OK


def cmd_hello(cmd: list[Any]) -> Reply:
    """HELLO [protover]: redis-py 5+ opens every connection with ``HELLO 3``.

    The replies of this server read the same in RESP2 and RESP3 (nulls are
    the RESP2 ``$-1``, which RESP3 clients accept), so only the handshake
    itself differs: a map for protocol 3, a flat array for 2.
    """
    proto = 2
    if len(cmd) > 1:
        try:
            proto = int(cmd[1])
        except ValueError:
            return error("ERR Protocol version is not an integer or out of range")
        if proto not in (2, 3):
            return error("NOPROTO unsupported protocol version")
    fields = [
        bulk(b"server"), bulk(b"netpoll-resp"), bulk(b"version"), bulk(b"7.0.0"),
        bulk(b"proto"), integer(proto), bulk(b"id"), integer(1), bulk(b"mode"),
        bulk(b"standalone"), bulk(b"role"), bulk(b"master"), bulk(b"modules"), EMPTY_ARRAY,
    ]  # fmt: skip
    head = b"%%%d\r\n" % (len(fields) // 2) if proto == 3 else b"*%d\r\n" % len(fields)
    return head + b"".join(fields)


#: What CONFIG GET reports (redis-benchmark asks for these two before it starts).
CONFIG = {b"save": b"", b"appendonly": b"no"}


def cmd_config(cmd: list[Any]) -> Reply:
    """CONFIG GET name...: the names found in `CONFIG` (no patterns); no CONFIG SET."""
    if len(cmd) < 3 or cmd[1].upper() != b"GET":
        return error("ERR CONFIG: only CONFIG GET is supported here")
    parts = []
    for name in cmd[2:]:
        value = CONFIG.get(name.lower())
        if value is not None:
            parts += [bulk(name.lower()), bulk(value)]
    return b"*%d\r\n" % len(parts) + b"".join(parts)


def cmd_empty_array(cmd: list[Any]) -> Reply:
    """COMMAND (DOCS): nothing to report (redis-cli asks at startup for its hints)."""
    return EMPTY_ARRAY


COMMANDS: dict[bytes, Command] = {
    b"PING": cmd_ping,
    b"ECHO": cmd_echo,
    b"SET": cmd_set,
    b"GET": cmd_get,
    b"DEL": cmd_del,
    b"INCR": cmd_incr,
    b"INCRBY": cmd_incrby,
    b"DECR": cmd_decr,
    b"DECRBY": cmd_decrby,
    b"MGET": cmd_mget,
    b"EXISTS": cmd_exists,
    b"DBSIZE": cmd_dbsize,
    b"FLUSHDB": cmd_flush,
    b"FLUSHALL": cmd_flush,
    b"SELECT": cmd_ok,
    b"HELLO": cmd_hello,
    b"CLIENT": cmd_ok,
    b"CONFIG": cmd_config,
    b"COMMAND": cmd_empty_array,
}
QUIT = b"QUIT"


def unknown(cmd: list[Any]) -> Reply:
    name = cmd[0].decode("latin-1") if isinstance(cmd[0], bytes) else str(cmd[0])
    args = " ".join(f"'{a.decode('latin-1')}'" for a in cmd[1:] if isinstance(a, bytes))
    return error(f"ERR unknown command '{name}', with args beginning with: {args}")


def execute(cmd: Any) -> Reply:
    """The reply to one parsed command (a list of bytes, name first)."""
    if type(cmd) is not list or not cmd:
        return error("ERR Protocol error: expected an array of bulk strings")
    for arg in cmd:
        # hiredis also parses nested arrays, integers and nil; a command is bulk
        # strings only (found by fuzz/fuzz_parsers.py: SET k v with an array as
        # its option reached a handler as a list)
        if type(arg) is not bytes:
            return error("ERR Protocol error: expected an array of bulk strings")
    handler = COMMANDS.get(cmd[0]) or COMMANDS.get(cmd[0].upper())
    if handler is None:
        return unknown(cmd)
    return handler(cmd)


# ---------------------------------------------------------------- the handler


class ConnState:
    """Per-connection parser state (also used by the asyncio peer).

    ``reader`` is the hiredis reader; ``at_boundary`` is True when it holds no
    part of a command, so the next input byte starts one.  ``segment`` keeps
    the input fed since the last known boundary and ``done`` counts the
    commands completed in it: when a multibulk command is followed by an
    inline one inside one read (``redis-cli --pipe`` ends its stream with
    ``\\r\\n`` and an ECHO marker), hiredis stops with a protocol error and
    the rest of the input is found again by skipping ``done`` commands.
    ``pending`` holds an unfinished inline line.
    """

    __slots__ = ("reader", "at_boundary", "segment", "segment_len", "done", "pending")

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.at_boundary = True
        self.segment: list[bytes | memoryview] = []
        self.segment_len = 0
        self.done = 0
        self.pending = b""


def on_prepare(conn: netpoll.Connection) -> ConnState:
    """A fresh parser for every connection."""
    return ConnState()


def skip_commands(data: bytes, count: int) -> int | None:
    """The offset just past the first `count` multibulk commands of `data` (None: malformed)."""
    pos = 0
    try:
        for _ in range(count):
            if data[pos] != 42:
                return None
            nl = data.index(b"\r\n", pos)
            items = int(data[pos + 1 : nl])
            pos = nl + 2
            for _ in range(items):
                if data[pos] != 36:  # b"$"
                    return None
                nl = data.index(b"\r\n", pos)
                pos = nl + 2 + int(data[pos + 1 : nl]) + 2
    except (ValueError, IndexError):
        return None
    return pos if pos <= len(data) else None


#: Input kept for recovery before it is trimmed to the unfinished command.
SEGMENT_TRIM = 256 * 1024

#: Most elements an array header may declare. hiredis-py allocates a list of the declared
#: length as soon as it reads the header: `*999999999\r\n` (12 bytes) costs 8 GB of address
#: space, or MemoryError, and seconds of CPU to free. Redis caps its multibulk length too.
MAX_ELEMENTS = 1024 * 1024
#: Cheap gate: an aggregate header with 7 digits or more somewhere in the input. Only then
#: is the input walked (`too_many_elements`) to see whether it really is a header.
_BIG_HEADER = re.compile(rb"[*%~>|][-+]?[0-9]{7,}")
_AGGREGATES = b"*%~>|"
_BULKS = b"$=!"


def tail(segment: list[bytes | memoryview], n: int = 24) -> bytes:
    """The last `n` bytes fed since the last boundary (a header may span reads)."""
    parts: list[bytes] = []
    got = 0
    for piece in reversed(segment):
        parts.append(bytes(piece[-(n - got):]))
        got += len(parts[-1])
        if got >= n:
            break
    return b"".join(reversed(parts))


def too_many_elements(data: bytes) -> bool:
    """True if a complete aggregate header in `data` (commands from a boundary on)
    declares more than MAX_ELEMENTS elements. Incomplete or malformed input is left to
    hiredis (False)."""
    pos, end = 0, len(data)

    def value(pos: int) -> int | None:
        """The offset past the RESP value at `pos`; None: incomplete or malformed.
        Raises OverflowError for an oversized header."""
        nl = data.find(b"\r\n", pos)
        if nl < 0 or pos >= end:
            return None
        kind = data[pos]
        try:
            count = int(data[pos + 1 : nl]) if kind in _AGGREGATES or kind in _BULKS else 0
        except ValueError:
            return None
        pos = nl + 2
        if kind in _AGGREGATES:
            if count > MAX_ELEMENTS:
                raise OverflowError
            for _ in range(count * 2 if kind == 37 else count):  # b"%": a map, key and value
                nxt = value(pos)
                if nxt is None:
                    return None
                pos = nxt
        elif kind in _BULKS and count >= 0:
            pos += count + 2
            if pos > end:
                return None
        return pos

    try:
        while pos < end:
            if data[pos] == 42:  # a multibulk command
                nxt = value(pos)
                if nxt is None:
                    return False
                pos = nxt
            else:  # an inline command: one line
                nl = data.find(b"\n", pos)
                if nl < 0:
                    return False
                pos = nl + 1
    except (OverflowError, RecursionError):
        return True
    return False


def feed(state: ConnState, chunk: bytes | memoryview, out: list[bytes]) -> tuple[bool, bytes]:
    """Feed `chunk` to hiredis and answer every complete command into `out`.

    Returns (quit, rest): `rest` is input after a switch to inline commands,
    to be handled by `process_bytes`.
    """
    reader = state.reader
    if _BIG_HEADER.search(chunk) or (not state.at_boundary and _BIG_HEADER.search(
            tail(state.segment) + bytes(chunk[:24]))):
        # rare: a long digit run; walk the input since the last boundary to be sure
        data = b"".join([*state.segment, chunk]) if not state.at_boundary else bytes(chunk)
        if too_many_elements(data):
            out.append(error("ERR Protocol error: invalid multibulk length"))
            return True, b""
    if state.at_boundary:
        state.segment = [chunk]
        state.segment_len = len(chunk)
        state.done = 0
        state.at_boundary = False
    else:
        state.segment.append(chunk)
        state.segment_len += len(chunk)
    reader.feed(chunk)
    start = len(out)
    gets = reader.gets
    has_data = reader.has_data
    try:
        while (cmd := gets()) is not False:
            if type(cmd) is list and cmd and cmd[0] == QUIT:
                out.append(OK)
                return True, b""
            out.append(execute(cmd))
            if not has_data():
                state.at_boundary = True
    except hiredis.ProtocolError as exc:
        data = b"".join(state.segment)
        pos = skip_commands(data, state.done + len(out) - start)
        if pos is None or pos >= len(data) or data[pos] == 42:  # a real protocol error
            out.append(error(f"ERR Protocol error: {exc}"))
            return True, b""
        state.reader = hiredis.Reader()
        state.at_boundary = True
        state.segment = []
        return False, data[pos:]
    if state.at_boundary:
        state.segment = []
    else:
        state.done += len(out) - start
        if state.segment_len > SEGMENT_TRIM:  # keep only the unfinished command
            data = b"".join(state.segment)
            pos = skip_commands(data, state.done)
            if pos is not None:
                state.segment = [data[pos:]]
                state.segment_len = len(data) - pos
                state.done = 0
    return False, b""


def process_bytes(state: ConnState, data: bytes, out: list[bytes]) -> bool:
    """Answer the inline and multibulk commands in `data` into `out`; True means quit."""
    if state.pending:
        data = state.pending + data
        state.pending = b""
    while data:
        if state.at_boundary and data[0] != 42:
            used, quit = parse_inline(data, out)
            if quit:
                return True
            if used == 0:
                if len(data) > INLINE_MAX:
                    out.append(error("ERR Protocol error: too big inline request"))
                    return True
                state.pending = data  # a partial line: wait for the rest
                return False
            data = data[used:]
            continue
        quit, data = feed(state, data, out)
        if quit:
            return True
    return False


def parse_inline(data: bytes, out: list[bytes]) -> tuple[int, bool]:
    """Run the inline commands at the start of `data`, up to the first ``*`` at a line start.

    Returns (bytes consumed, quit requested).
    """
    pos = 0
    end = len(data)
    while pos < end and data[pos] != 42:  # b"*" starts a multibulk command
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        words = data[pos:nl].split()  # also drops a trailing \r
        pos = nl + 1
        if not words:
            continue  # Redis ignores empty lines
        if words[0].upper() == QUIT:
            out.append(OK)
            return pos, True
        out.append(execute(words))
    return pos, False


def on_request(state: ConnState, conn: netpoll.Connection) -> Awaitable[None] | None:
    """Answer every complete command that is buffered, then flush once.

    A plain function (it never has to wait): it reads ``conn.input`` synchronously and
    sends with ``flush_nowait()``, inside the poller's pass. Only QUIT, which must send
    its answer before closing, hands back a coroutine that flushes, then closes.
    """
    buf = conn.input
    out: list[bytes] = []
    quit = False
    while (n := len(buf)) and not quit:
        if state.at_boundary and (state.pending or buf.peek(1)[0] != 42):
            # Inline commands (rare): take everything as bytes; a partial line waits in state.
            quit = process_bytes(state, buf.read_binary(n), out)
            continue
        # Multibulk: hiredis gets a zero-copy view of everything buffered.
        quit, rest = feed(state, buf.next(n), out)
        if rest and not quit:
            quit = process_bytes(state, rest, out)
    if out:
        conn.write_binary(out[0] if len(out) == 1 else b"".join(out))
    if quit:
        return _flush_and_close(conn)
    if out:
        conn.flush_nowait()
    return None


async def _flush_and_close(conn: netpoll.Connection) -> None:
    await conn.flush()
    conn.close()


# ---------------------------------------------------------------- the process


async def serve(host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully."""
    ln = netpoll.create_listener("tcp", (host, port))
    addr_host, addr_port = ln.addr
    where = f"[{addr_host}]:{addr_port}" if ":" in addr_host else f"{addr_host}:{addr_port}"
    # plain handlers never wait for their output: bound it against clients that do not read
    server = netpoll.EventLoop(on_request, on_prepare=on_prepare, write_buffer_limit=4 << 20)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.ensure_future(server.serve(ln))
    print(f"listening on {where}", flush=True)
    print("ready", flush=True)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
    try:
        await server.shutdown(5.0)
    except TimeoutError as exc:
        print(f"resp_server: {exc}", file=sys.stderr)
    finally:
        stopping.cancel()
        await serving
        ln.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the server until a signal; returns the exit code."""
    parser = argparse.ArgumentParser(description="netpoll RESP (Redis protocol) server")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=6380, help="TCP port (6380; 0 = any)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    coro = serve(args.host, args.port)
    if args.uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
