"""TLS on netpoll connections (API.md "TLS"): server, dialer, bad input.

A test CA and server/client certificates are made once per session with the
``openssl`` command-line tool (skipped, saying so, where it is missing).
Every scenario runs on stock asyncio and on uvloop, on loopback only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import fd_count, rss_kib, wait_for
from netpoll import EndOfStreamError

pytestmark = pytest.mark.timeout(60)

OPENSSL = shutil.which("openssl")


@pytest.fixture(params=["fast", "sslobject"], autouse=True)
def tls_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs on the OpenSSL fast path (where it resolves) and on SSLObject."""
    from netpoll import _core

    want = request.param == "fast"
    prev = _core._tls_set_fast(want)
    if want and not _core._tls_set_fast(True):
        _core._tls_set_fast(prev)
        pytest.skip("the OpenSSL fast path is not available here (libssl symbols not found)")
    yield str(request.param)
    _core._tls_set_fast(prev)


def tool_env() -> dict[str, str]:
    """The environment for external tools (curl, openssl, wrk): no sanitizer preload."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _sh(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=60, env=tool_env())


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem; server.pem/.key for localhost, 127.0.0.1 and sni.test; client.pem/.key."""
    if OPENSSL is None:
        pytest.skip("the openssl command-line tool is not installed (apt-get install openssl)")
    d = tmp_path_factory.mktemp("pki")
    _sh(OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=netpoll test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, ext in (("server", "subjectAltName=DNS:localhost,DNS:sni.test,IP:127.0.0.1\n"
                                 "extendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        _sh(OPENSSL, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=netpoll test {name}",
            cwd=d)
        (d / f"{name}.ext").write_text(ext + "basicConstraints=CA:FALSE\n")
        _sh(OPENSSL, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d)
    return d


def server_ctx(pki: Path, *, mtls: bool = False, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    if mtls:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki / "ca.pem")
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_ctx(pki: Path, *, cert: bool = False, alpn: list[str] | None = None,
               verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(pki / "ca.pem")
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(pki / "client.pem", pki / "client.key")
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def echo(ctx: Any, conn: netpoll.Connection) -> None:
    n = len(conn.reader)
    data = await conn.reader.next(n)
    conn.writer.write_binary(bytes(data))
    await conn.writer.flush()


class Server:
    """An EventLoop serving TLS on 127.0.0.1 (async context manager)."""

    def __init__(self, sctx: ssl.SSLContext, on_request: Callable[..., Any] = echo,
                 timeout: float | None = None, **kw: Any) -> None:
        self.ln = netpoll.create_listener("tcp", "127.0.0.1:0", ssl=sctx,
                                          ssl_handshake_timeout=timeout)
        self.port = self.ln.addr[1]
        self.loop = netpoll.EventLoop(on_request, **kw)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Server:
        self.task = asyncio.ensure_future(self.loop.serve(self.ln))
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.loop.shutdown(2.0)
        assert self.task is not None
        await self.task


def blocking_client(port: int, cctx: ssl.SSLContext, payload: bytes,
                    server_hostname: str = "localhost") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with cctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            return got


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# -- echo ---------------------------------------------------------------------------


def test_echo_python_ssl_client(run: Any, pki: Path) -> None:
    async def main() -> None:
        async with Server(server_ctx(pki)) as srv:
            got = await in_thread(blocking_client, srv.port, client_ctx(pki), b"hello tls" * 100)
            assert got == b"hello tls" * 100

    run(main())


def test_echo_netpoll_dialer(run: Any, pki: Path, tls_path: str) -> None:
    from netpoll import _core

    async def main() -> None:
        infos: list[Any] = []

        async def on_connect(ctx: Any, conn: netpoll.Connection) -> None:
            infos.append(conn.tls)

        async with Server(server_ctx(pki), on_connect=on_connect) as srv:
            conn = await netpoll.dial_connection("tcp", f"127.0.0.1:{srv.port}",
                                                 ssl=client_ctx(pki), timeout=5)
            try:
                assert _core._tls_is_fast(conn) == (tls_path == "fast")
                assert conn.tls is not None
                assert conn.tls.version in ("TLSv1.3", "TLSv1.2")
                assert conn.tls.cipher
                assert conn.tls.server_hostname == "127.0.0.1"
                assert conn.tls.peer_certificate["subject"]
                for size in (1, 1000, 20000, 100_000):
                    msg = os.urandom(size)
                    await conn.write(msg)
                    assert await conn.reader.read_binary(size) == msg
            finally:
                conn.close()
            assert infos and infos[0] is not None and infos[0].version == conn.tls.version
            # plaintext connections have no tls
            plain_ln = netpoll.create_listener("tcp", "127.0.0.1:0")
            plain = netpoll.EventLoop(echo)
            t = asyncio.ensure_future(plain.serve(plain_ln))
            c2 = await netpoll.dial_connection("tcp", plain_ln.addr)
            assert c2.tls is None
            c2.close()
            await plain.shutdown(1)
            await t

    run(main())


def test_big_message_across_records(run: Any, pki: Path) -> None:
    size = 16 << 20

    async def main() -> None:
        async with Server(server_ctx(pki)) as srv:
            conn = await netpoll.Dialer().dial_connection(
                "tcp", ("127.0.0.1", srv.port), ssl=client_ctx(pki),
                server_hostname="localhost")
            msg = os.urandom(size)
            try:
                conn.writer.write_binary(msg)
                flushed = asyncio.ensure_future(conn.writer.flush())
                got = await conn.reader.read_binary(size)
                await flushed
                assert got == msg
            finally:
                conn.close()

    run(main(), timeout=50)


# -- certificates, SNI, ALPN ----------------------------------------------------------


def test_verification_failure_on_dial(run: Any, pki: Path) -> None:
    async def main() -> None:
        async with Server(server_ctx(pki)) as srv:
            bad = ssl.create_default_context()     # does not trust the test CA
            with pytest.raises(ssl.SSLCertVerificationError):
                await netpoll.dial_connection("tcp", ("127.0.0.1", srv.port), ssl=bad,
                                              timeout=5)
            with pytest.raises(ssl.SSLCertVerificationError):   # wrong name
                await netpoll.dial_connection("tcp", ("127.0.0.1", srv.port),
                                              ssl=client_ctx(pki), server_hostname="other.test")
            # the server goes on
            got = await in_thread(blocking_client, srv.port, client_ctx(pki), b"ok")
            assert got == b"ok"

    run(main())


def test_mtls(run: Any, pki: Path) -> None:
    async def main() -> None:
        peers: list[Any] = []

        async def on_connect(ctx: Any, conn: netpoll.Connection) -> None:
            assert conn.tls is not None
            peers.append(conn.tls.peer_certificate)

        async with Server(server_ctx(pki, mtls=True), on_connect=on_connect) as srv:
            got = await in_thread(blocking_client, srv.port, client_ctx(pki, cert=True), b"m")
            assert got == b"m"
            assert peers and dict(x[0] for x in peers[0]["subject"])["commonName"] == \
                "netpoll test client"
            # no client certificate: the handshake fails on the server; the
            # client sees it at its first read (TLS 1.3) or in the handshake
            with pytest.raises((ssl.SSLError, ConnectionError, EndOfStreamError)):
                conn = await netpoll.dial_connection("tcp", ("127.0.0.1", srv.port),
                                                     ssl=client_ctx(pki), timeout=5)
                try:
                    await conn.write(b"x")
                    await conn.reader.next(1)
                finally:
                    conn.close()
            assert len(peers) == 1
            got = await in_thread(blocking_client, srv.port, client_ctx(pki, cert=True), b"m2")
            assert got == b"m2"

    run(main())


def test_sni_and_alpn(run: Any, pki: Path) -> None:
    async def main() -> None:
        seen: list[str | None] = []
        sctx = server_ctx(pki, alpn=["h2", "http/1.1"])
        sctx.sni_callback = lambda so, name, ctx: seen.append(name)   # type: ignore[func-returns-value]
        infos: list[Any] = []

        async def on_connect(ctx: Any, conn: netpoll.Connection) -> None:
            infos.append(conn.tls)

        async with Server(sctx, on_connect=on_connect) as srv:
            conn = await netpoll.dial_connection(
                "tcp", ("127.0.0.1", srv.port), ssl=client_ctx(pki, alpn=["http/1.1"]),
                server_hostname="sni.test")
            try:
                assert conn.tls is not None
                assert conn.tls.alpn_protocol == "http/1.1"
                assert conn.tls.server_hostname == "sni.test"
                await conn.write(b"ping")
                assert await conn.reader.read_binary(4) == b"ping"
            finally:
                conn.close()
        assert seen == ["sni.test"]
        assert infos[0].server_hostname == "sni.test"
        assert infos[0].alpn_protocol == "http/1.1"

    run(main())


# -- real clients ---------------------------------------------------------------------

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n"
            b"Connection: close\r\n\r\nhello netpoll")[:-1]


async def http_responder(ctx: Any, conn: netpoll.Connection) -> None:
    await conn.reader.until(b"\r\n\r\n")
    conn.writer.write_binary(RESPONSE)
    await conn.writer.flush()
    conn.close()


def test_openssl_s_client(run: Any, pki: Path) -> None:
    async def main() -> None:
        async with Server(server_ctx(pki), on_request=http_responder) as srv:
            proc = await asyncio.create_subprocess_exec(
                str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{srv.port}",
                "-servername", "localhost", "-CAfile", str(pki / "ca.pem"),
                "-verify_return_error", "-quiet", "-ign_eof",
                env=tool_env(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(
                proc.communicate(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"), 20)
            assert b"hello netpol" in out, (out, err)

    run(main(), timeout=30)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_https(run: Any, pki: Path) -> None:
    async def main() -> None:
        async with Server(server_ctx(pki, alpn=["http/1.1"]),
                          on_request=http_responder) as srv:
            proc = await asyncio.create_subprocess_exec(
                "curl", "-sS", "--http1.1", "--cacert", str(pki / "ca.pem"),
                f"https://localhost:{srv.port}/",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=tool_env())
            out, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, err
            assert out == b"hello netpol"

    run(main(), timeout=30)


# -- bad input: the server goes on, nothing leaks ------------------------------------


async def raw_exchange(port: int, data: bytes, *, rst: bool = False) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        if data:
            w.write(data)
            await w.drain()
        if rst:
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            w.transport.abort()
            return b""
        try:
            return await asyncio.wait_for(r.read(), 10)
        except ConnectionError:
            return b""
    finally:
        w.close()


def client_hello(pki: Path) -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    so = client_ctx(pki).wrap_bio(inc, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        so.do_handshake()
    return out.read()


@pytest.mark.parametrize("kind", ["plaintext", "garbage", "truncated", "rst", "rst_mid"])
def test_bad_handshake_input(run: Any, pki: Path, kind: str,
                             caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        called: list[str] = []

        async def on_connect(ctx: Any, conn: netpoll.Connection) -> None:
            called.append("connect")

        async def on_request(ctx: Any, conn: netpoll.Connection) -> None:
            called.append("request")
            await echo(ctx, conn)

        hello = client_hello(pki)
        data = {
            "plaintext": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "garbage": os.urandom(3000),
            "truncated": hello[: len(hello) // 2],
            "rst": b"",
            "rst_mid": hello,
        }[kind]
        async with Server(server_ctx(pki), on_request=on_request, on_connect=on_connect,
                          timeout=0.5) as srv:
            if kind == "truncated":
                # a record that never completes: the handshake timeout closes it
                r, w = await asyncio.open_connection("127.0.0.1", srv.port)
                w.write(data)
                await w.drain()
                assert await asyncio.wait_for(r.read(), 10) == b""
                w.close()
            else:
                await raw_exchange(srv.port, data, rst=kind.startswith("rst"))
            await wait_for(lambda: srv.loop.connections == 0)
            assert called == []
            got = await in_thread(blocking_client, srv.port, client_ctx(pki), b"after")
            assert got == b"after"
            assert called == ["connect", "request"]

    with caplog.at_level(logging.DEBUG, logger="netpoll"):
        run(main())
    if kind in ("plaintext", "garbage", "truncated"):
        fails = [r for r in caplog.records if "tls handshake failed" in r.getMessage()]
        assert len(fails) == 1, [r.getMessage() for r in caplog.records]


def test_peer_stops_mid_handshake_and_silent_connections(run: Any, pki: Path) -> None:
    n = 200

    async def main() -> None:
        base = fd_count()
        async with Server(server_ctx(pki), timeout=0.5) as srv:
            rss0 = rss_kib()
            socks = []
            for _ in range(n):
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect(("127.0.0.1", srv.port))
                except BlockingIOError:
                    pass
                socks.append(s)
            await wait_for(lambda: srv.loop.connections == n, 5)
            # bounded memory: a connection waiting for its ClientHello holds no
            # OpenSSL record buffers (about 10 KiB in all; 40+ KiB with them)
            grew = rss_kib() - rss0
            assert grew < n * 30, f"{n} pending handshakes grew RSS by {grew} KiB"
            # every one is closed by the handshake timeout
            await wait_for(lambda: srv.loop.connections == 0, 10)
            for s in socks:
                s.setblocking(True)
                s.settimeout(5)
                assert s.recv(10) == b""
                s.close()
            got = await in_thread(blocking_client, srv.port, client_ctx(pki), b"still here")
            assert got == b"still here"
        assert fd_count() <= base + 2

    run(main(), timeout=40)


def test_dial_handshake_timeout(run: Any, pki: Path) -> None:
    async def main() -> None:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        try:
            with pytest.raises(netpoll.DialTimeoutError):
                await netpoll.dial_connection("tcp", lsock.getsockname(), ssl=client_ctx(pki),
                                              ssl_handshake_timeout=0.3)
        finally:
            lsock.close()

    run(main())


def threaded_tls_server(pki: Path, script: Callable[[ssl.SSLSocket], None]) -> tuple[int, threading.Thread]:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    port = lsock.getsockname()[1]
    sctx = server_ctx(pki)

    def serve() -> None:
        try:
            raw, _ = lsock.accept()
            raw.settimeout(10)
            s = sctx.wrap_socket(raw, server_side=True)
            try:
                script(s)
            finally:
                s.close()
        finally:
            lsock.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return port, t


def test_close_without_close_notify(run: Any, pki: Path) -> None:
    def script(s: ssl.SSLSocket) -> None:
        s.sendall(b"abc")
        s.recv(1)          # wait until the client asks for more
        s.shutdown(socket.SHUT_RDWR)   # SSLSocket.shutdown: the TCP stream ends, no close_notify

    async def main() -> None:
        port, t = threaded_tls_server(pki, script)
        conn = await netpoll.dial_connection("tcp", ("127.0.0.1", port), ssl=client_ctx(pki))
        try:
            assert await conn.reader.read_binary(3) == b"abc"
            await conn.write(b"!")
            with pytest.raises(EndOfStreamError):
                await conn.reader.next(10)
            with pytest.raises(EndOfStreamError):
                await conn.read()
        finally:
            conn.close()
        await in_thread(t.join, 5)

    run(main())


def test_close_notify_is_clean_eof(run: Any, pki: Path) -> None:
    def script(s: ssl.SSLSocket) -> None:
        s.sendall(b"bye")
        s.unwrap()         # sends close_notify

    async def main() -> None:
        port, t = threaded_tls_server(pki, script)
        conn = await netpoll.dial_connection("tcp", ("127.0.0.1", port), ssl=client_ctx(pki))
        try:
            assert await conn.read() == b"bye"
            assert await conn.read() == b""
            with pytest.raises(EndOfStreamError):
                await conn.reader.next(1)
        finally:
            conn.close()
        await in_thread(t.join, 5)

    run(main())


def test_server_close_sends_close_notify(run: Any, pki: Path) -> None:
    async def closer(ctx: Any, conn: netpoll.Connection) -> None:
        await echo(ctx, conn)
        conn.close()

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx(pki).wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"x")
                got = s.recv(10)
                # a clean close_notify: recv returns b"" (no SSLEOFError)
                assert s.recv(10) == b""
                return got

    async def main() -> None:
        async with Server(server_ctx(pki), on_request=closer) as srv:
            assert await in_thread(client, srv.port) == b"x"

    run(main())


@pytest.fixture
def tls12_only(pki: Path) -> Iterator[ssl.SSLContext]:
    ctx = server_ctx(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    yield ctx


def test_tls12_and_no_renegotiation(run: Any, pki: Path, tls12_only: ssl.SSLContext) -> None:
    async def main() -> None:
        async with Server(tls12_only) as srv:
            conn = await netpoll.dial_connection("tcp", ("127.0.0.1", srv.port),
                                                 ssl=client_ctx(pki))
            try:
                assert conn.tls is not None and conn.tls.version == "TLSv1.2"
                await conn.write(b"12")
                assert await conn.reader.read_binary(2) == b"12"
            finally:
                conn.close()
        assert tls12_only.options & getattr(ssl, "OP_NO_RENEGOTIATION", 0) == \
            getattr(ssl, "OP_NO_RENEGOTIATION", 0)

    run(main())


def test_listener_accept_tls(run: Any, pki: Path) -> None:
    async def main() -> None:
        ln = netpoll.create_listener("tcp", "127.0.0.1:0", ssl=server_ctx(pki))
        try:
            fut = asyncio.ensure_future(in_thread(blocking_client, ln.addr[1], client_ctx(pki),
                                                  b"acc"))
            conn = await ln.accept()
            try:
                assert conn.tls is not None
                data = await conn.reader.read_binary(3)
                await conn.write(data)
            finally:
                assert await fut == b"acc"
                conn.close()
        finally:
            ln.close()

    run(main())


def test_argument_checks(pki: Path) -> None:
    with pytest.raises(TypeError):
        netpoll.create_listener("tcp", "127.0.0.1:0", ssl=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        netpoll.create_listener("tcp", "127.0.0.1:0", ssl_handshake_timeout=1.0)
    with pytest.raises(ValueError):
        netpoll.create_listener("tcp", "127.0.0.1:0", ssl=server_ctx(pki),
                                ssl_handshake_timeout=-1)


def mem_tls_client(port: int, cctx: ssl.SSLContext) -> tuple[socket.socket, ssl.SSLObject,
                                                                ssl.MemoryBIO]:
    """A blocking socket with a client SSLObject over MemoryBIOs, handshake done."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    so = cctx.wrap_bio(inc, out, server_hostname="localhost")
    while True:
        try:
            so.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(out.read())
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake") from None
            inc.write(data)
    sock.sendall(out.read())
    return sock, so, out


def test_rst_mid_record(run: Any, pki: Path) -> None:
    async def main() -> None:
        got: list[bytes] = []

        async def on_request(ctx: Any, conn: netpoll.Connection) -> None:
            data = bytes(await conn.reader.next(len(conn.reader)))
            got.append(data)
            await conn.write(data)

        async with Server(server_ctx(pki), on_request=on_request) as srv:
            def client() -> None:
                sock, so, out = mem_tls_client(srv.port, client_ctx(pki))
                so.write(b"whole")
                sock.sendall(out.read())
                time.sleep(0.3)        # (an RST makes the kernel drop unread input)
                so.write(b"y" * 5000)
                rec = out.read()
                sock.sendall(rec[: len(rec) // 2])       # half a record, then RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()

            await in_thread(client)
            await wait_for(lambda: srv.loop.connections == 0)
            assert b"".join(got) == b"whole"
            got.clear()
            assert await in_thread(blocking_client, srv.port, client_ctx(pki), b"ok") == b"ok"

    run(main())


def test_garbage_after_handshake(run: Any, pki: Path) -> None:
    async def main() -> None:
        async with Server(server_ctx(pki)) as srv:
            def client() -> None:
                sock, so, out = mem_tls_client(srv.port, client_ctx(pki))
                sock.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))   # a forged record
                sock.settimeout(10)
                try:
                    while sock.recv(65536):
                        pass
                except ConnectionError:
                    pass
                sock.close()

            await in_thread(client)
            await wait_for(lambda: srv.loop.connections == 0)
            assert await in_thread(blocking_client, srv.port, client_ctx(pki), b"ok") == b"ok"

    run(main())


def test_renegotiation_refused(run: Any, pki: Path, tls12_only: ssl.SSLContext) -> None:
    async def main() -> None:
        async with Server(tls12_only) as srv:
            proc = await asyncio.create_subprocess_exec(
                str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{srv.port}", "-tls1_2",
                "-CAfile", str(pki / "ca.pem"), "-servername", "localhost",
                env=tool_env(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            assert proc.stdin is not None
            proc.stdin.write(b"R\n")            # s_client: renegotiate
            await proc.stdin.drain()
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            assert await in_thread(blocking_client, srv.port, client_ctx(pki), b"ok") == b"ok"

    run(main(), timeout=20)


KEEPALIVE = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")


def keepalive_responder(ctx: Any, conn: netpoll.Connection) -> None:
    """A plain handler: answer every complete request in the buffer (pipelining too)."""
    buf = conn.input
    while True:
        try:
            buf.until(b"\r\n\r\n")
        except netpoll.NotEnoughDataError:
            break
        conn.writer.write_binary(KEEPALIVE)
    conn.flush_nowait()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_https(run: Any, pki: Path) -> None:
    async def main() -> None:
        async with Server(server_ctx(pki), on_request=keepalive_responder) as srv:
            proc = await asyncio.create_subprocess_exec(
                "wrk", "-t1", "-c8", "-d1s", f"https://127.0.0.1:{srv.port}/",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=tool_env())
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            text = out.decode()
            assert proc.returncode == 0, text
            assert "requests in" in text and "Socket errors" not in text, text
            assert "Non-2xx" not in text, text
            done = int(text.split(" requests in")[0].split()[-1])
            assert done > 100, text

    run(main(), timeout=30)


def test_httpx_and_aiohttp_clients(run: Any, pki: Path) -> None:
    httpx = pytest.importorskip("httpx")
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> None:
        async with Server(server_ctx(pki, alpn=["http/1.1"]),
                          on_request=keepalive_responder) as srv:
            url = f"https://localhost:{srv.port}/"
            async with httpx.AsyncClient(verify=client_ctx(pki)) as client:
                for _ in range(3):          # keep-alive: one connection, three requests
                    r = await client.get(url)
                    assert r.status_code == 200 and r.text == "ok"
            async with aiohttp.ClientSession() as session:
                for _ in range(3):
                    async with session.get(url, ssl=client_ctx(pki)) as resp:
                        assert resp.status == 200
                        assert await resp.text() == "ok"

    run(main(), timeout=30)


def test_dial_unix_without_server_hostname(run: Any, pki: Path, tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "tls.sock")
        ln = netpoll.create_listener("unix", path)
        try:
            with pytest.raises(ValueError):     # check_hostname needs a name (as asyncio)
                await netpoll.dial_connection("unix", path, ssl=client_ctx(pki))
        finally:
            ln.close()

    run(main())
