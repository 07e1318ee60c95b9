"""An HTTP/1.1 keep-alive server on netpoll, parsed with httptools.

Every ``GET /`` is answered with a fixed ``Hello, World!`` (other paths get a
404, ``HEAD`` gets the headers alone); connections stay open (keep-alive)
unless the client sends ``Connection: close`` or speaks HTTP/1.0 without
``Connection: keep-alive``.  Pipelined requests are answered in order, all
answers of one wakeup in one flush.

    python examples/http_server.py --host 127.0.0.1 --port 8080 [--uvloop]
    curl -v http://127.0.0.1:8080/
    wrk -t1 -c50 -d5s http://127.0.0.1:8080/

It prints ``listening on ADDRESS`` and ``ready`` on stdout, and shuts down
gracefully on SIGINT or SIGTERM (requests already received are answered).

The HTTP part (`HttpSession`: the httptools callbacks and the responses) is
shared with the asyncio Protocol peer in ``peers/http_asyncio.py``, so a
benchmark compares the I/O layers only.  Responses are prebuilt byte strings
carrying a ``Date`` header that a timer renews once a second, as production
servers do.  A request body is parsed and discarded.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from email.utils import formatdate

import httptools

import netpoll

__all__ = ["HttpSession", "Responses", "start_date_clock", "on_prepare", "on_request", "main"]

SERVER_NAME = b"netpoll"
BODY = b"Hello, World!"
NOT_FOUND_BODY = b"Not Found"
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n"
    b"Connection: close\r\n\r\nBad Request"
)


class Responses:
    """Prebuilt responses, rebuilt when the Date header changes (once a second).

    ``table[found + 2 * head]`` is ``(plain, close, keep_alive)``: the response
    without a Connection header, with ``Connection: close`` and with
    ``Connection: keep-alive`` (for HTTP/1.0 clients that asked for it).
    """

    table: list[tuple[bytes, bytes, bytes]] = []

    @classmethod
    def build(cls, now: float | None = None) -> None:
        date = formatdate(now, usegmt=True).encode()

        def make(status: bytes, body: bytes, connection: bytes, with_body: bool) -> bytes:
            head = (
                b"HTTP/1.1 " + status + b"\r\nServer: " + SERVER_NAME + b"\r\nDate: " + date
                + b"\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
            )  # fmt: skip
            if connection:
                head += b"Connection: " + connection + b"\r\n"
            return head + b"\r\n" + (body if with_body else b"")

        table = []
        for head in (False, True):
            for status, body in ((b"404 Not Found", NOT_FOUND_BODY), (b"200 OK", BODY)):
                table.append(
                    tuple(make(status, body, c, not head) for c in (b"", b"close", b"keep-alive"))
                )
        cls.table = table  # type: ignore[assignment]


Responses.build()


def start_date_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Renew the responses' Date header every second on `loop`; returns a stop function."""
    handle: asyncio.TimerHandle | None = None

    def tick() -> None:
        nonlocal handle
        Responses.build()
        handle = loop.call_at(loop.time() + 1.0, tick)

    def stop() -> None:
        if handle is not None:
            handle.cancel()

    handle = loop.call_at(loop.time() + 1.0, tick)
    return stop


class HttpSession:
    """One connection's HTTP state: the httptools parser and its callbacks.

    ``feed(data)`` parses what arrived and appends the answers to ``out``;
    ``closing`` turns True once a response says the connection ends (the
    rest of the input is then ignored).
    """

    __slots__ = ("parser", "out", "url", "closing", "http10")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.out: list[bytes] = []
        self.url = b""
        self.closing = False
        self.http10: bool | None = None  # known after the first request

    # httptools callbacks (only those defined are called)

    def on_url(self, url: bytes) -> None:
        self.url += url  # called once per piece when a request arrives split

    def on_message_complete(self) -> None:
        if self.closing:
            return
        parser = self.parser
        url = self.url
        self.url = b""
        found = url == b"/" or url.startswith(b"/?")
        plain, close, keep = Responses.table[found + 2 * (parser.get_method() == b"HEAD")]
        if not parser.should_keep_alive():
            self.out.append(close)
            self.closing = True
            return
        if self.http10 is None:
            self.http10 = parser.get_http_version() == "1.0"
        self.out.append(keep if self.http10 else plain)

    def feed(self, data: bytes | memoryview) -> None:
        """Parse `data`; a malformed request gets a 400 and ends the connection."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.out.append(BAD_REQUEST)  # no protocol upgrades here
            self.closing = True
        except httptools.HttpParserError:
            if not self.closing:  # after `Connection: close` extra bytes are an error too
                self.out.append(BAD_REQUEST)
                self.closing = True

    def take(self) -> bytes:
        """The answers collected so far, as one bytes object; empties ``out``."""
        out = self.out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data


# ---------------------------------------------------------------- the netpoll handler


def on_prepare(conn: netpoll.Connection) -> HttpSession:
    """A fresh parser for every connection."""
    return HttpSession()


def on_request(session: HttpSession, conn: netpoll.Connection) -> Awaitable[None] | None:
    """Parse everything buffered, answer every complete request, flush once.

    A plain function: ``conn.input`` is read synchronously and the answers go out with
    ``flush_nowait()`` inside the poller's pass. A response that closes the connection
    hands back a coroutine that flushes it first.
    """
    buf = conn.input
    session.feed(buf.next(len(buf)))
    if session.out:
        conn.write_binary(session.take())
    if session.closing:
        return _flush_and_close(conn)
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
    stop_clock = start_date_clock(loop)
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
        print(f"http_server: {exc}", file=sys.stderr)
    finally:
        stopping.cancel()
        stop_clock()
        await serving
        ln.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the server until a signal; returns the exit code."""
    parser = argparse.ArgumentParser(description="netpoll HTTP/1.1 keep-alive server")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (8080; 0 = any)")
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
