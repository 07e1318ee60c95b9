"""examples/http_server.py against raw sockets and wrk.

The server runs as a subprocess on 127.0.0.1 (port 0), on stock asyncio and
on uvloop.  Raw sockets check the bytes of keep-alive, pipelined, HEAD,
404, ``Connection: close``, HTTP/1.0 and malformed requests; ``wrk`` (skipped
when missing: Debian package ``wrk``) must see no socket error and no
non-2xx answer.  SIGTERM must shut the server down with exit code 0.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from example_server import example_server, recv_exactly

pytest.importorskip(
    "httptools", reason="the HTTP example parses with httptools: pip install httptools"
)

pytestmark = pytest.mark.timeout(120)

SERVER = Path(__file__).resolve().parent.parent / "examples" / "http_server.py"

loops = pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])

DATE = rb"Date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n"


def response(status: bytes, body: bytes, connection: bytes = b"", head: bool = False) -> bytes:
    """The regex of one exact response (only the Date value varies)."""
    text = re.escape(b"HTTP/1.1 " + status + b"\r\nServer: netpoll\r\n") + DATE
    text += re.escape(b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body))
    if connection:
        text += re.escape(b"Connection: " + connection + b"\r\n")
    return text + re.escape(b"\r\n" + (b"" if head else body))


OK = response(b"200 OK", b"Hello, World!")
ONE_OK_LEN = 132  # one 200 response: a fixed length, as the Date header has a fixed width


def http_server(uvloop: bool = False) -> contextlib.AbstractContextManager[int]:
    """Run the example; yields its port; on exit SIGTERM must stop it with code 0."""
    return example_server(SERVER.name, uvloop)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), 5)
    sock.settimeout(10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_until_eof(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(65536):
        out += chunk
    return bytes(out)


GET = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n"


def test_response_length_is_fixed() -> None:
    with http_server() as port, connect(port) as sock:
        sock.sendall(GET)
        data = recv_exactly(sock, ONE_OK_LEN)
        assert re.fullmatch(OK, data), data


@loops
def test_keep_alive_and_pipelining(uvloop: bool) -> None:
    with http_server(uvloop) as port, connect(port) as sock:
        for _ in range(50):  # keep-alive: one request at a time on one connection
            sock.sendall(GET)
            assert re.fullmatch(OK, recv_exactly(sock, ONE_OK_LEN))
        sock.sendall(GET * 200)  # pipelined in one write
        assert re.fullmatch(OK * 200, recv_exactly(sock, 200 * ONE_OK_LEN))
        stream = GET * 20
        for i in range(len(stream)):  # split byte by byte across requests
            sock.sendall(stream[i : i + 1])
            if i % 7 == 0:
                time.sleep(0.0005)
        assert re.fullmatch(OK * 20, recv_exactly(sock, 20 * ONE_OK_LEN))


def test_paths_methods_and_bodies() -> None:
    head = response(b"200 OK", b"Hello, World!", head=True)
    missing = response(b"404 Not Found", b"Not Found")
    with http_server() as port, connect(port) as sock:
        sock.sendall(
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        expected = head + missing + OK + OK
        data = b""
        while not re.fullmatch(expected, data):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
            assert len(data) < 1000, data


def test_connection_close() -> None:
    close = response(b"200 OK", b"Hello, World!", b"close")
    with http_server() as port:
        with connect(port) as sock:
            # the request after `Connection: close` is never answered
            sock.sendall(GET + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + GET)
            data = recv_until_eof(sock)
            assert re.fullmatch(OK + close, data), data
        with connect(port) as sock:  # HTTP/1.0 closes by default ...
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert re.fullmatch(close, recv_until_eof(sock))
        keep = response(b"200 OK", b"Hello, World!", b"keep-alive")
        with connect(port) as sock:  # ... and keeps the connection when asked
            sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
            data = recv_exactly(sock, 2 * (ONE_OK_LEN + len(b"Connection: keep-alive\r\n")))
            assert re.fullmatch(keep * 2, data), data


def test_malformed_request_gets_400() -> None:
    with http_server() as port:
        with connect(port) as sock:
            sock.sendall(GET + b"NOT HTTP AT ALL\r\n\r\n")
            data = recv_until_eof(sock)
            assert re.fullmatch(
                OK
                + re.escape(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 11\r\nConnection: close\r\n\r\nBad Request"
                ),
                data,
            ), data
        with connect(port) as sock:  # the server goes on
            sock.sendall(GET)
            assert re.fullmatch(OK, recv_exactly(sock, ONE_OK_LEN))


@loops
def test_wrk(uvloop: bool) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk not found (Debian: apt-get install wrk)")
    with http_server(uvloop) as port:
        proc = subprocess.run(
            [wrk, "-t1", "-c10", "-d1s", f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        out = proc.stdout
        assert proc.returncode == 0, out + proc.stderr
        done = re.search(r"(\d+) requests in", out)
        assert done and int(done.group(1)) > 100, out
        assert "Socket errors" not in out, out
        assert "Non-2xx" not in out, out
