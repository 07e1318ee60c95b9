"""Real software nobody here wrote, running on netpoll's loop unchanged.

uvicorn (httptools) serving an ASGI app driven by httpx and by wrk, an aiohttp
web server with an aiohttp client, and redis-py's asyncio client against a
real redis-server — each on ``netpoll.loop_factory()`` over stock asyncio and
over uvloop. Every test checks that the connections really were netpoll
transports (it counts them).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import netpoll
from conftest import LOOPS, uvloop
from netpoll.transports import NetpollTransport


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the netpoll transports made during the test."""
    count = [0]
    init = NetpollTransport.__init__

    def counting(self: NetpollTransport, *args: Any, **kw: Any) -> None:
        count[0] += 1
        init(self, *args, **kw)

    monkeypatch.setattr(NetpollTransport, "__init__", counting)
    return count


@pytest.fixture(params=LOOPS)
def np_loop_run(request: pytest.FixtureRequest) -> Callable[..., Any]:
    kind = request.param
    if kind == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed")
    base = uvloop.new_event_loop if kind == "uvloop" else None

    def _run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return netpoll.run(asyncio.wait_for(coro, timeout), base=base)

    return _run


def _listening_socket() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


# -- uvicorn -------------------------------------------------------------------------


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/loop":
        import netpoll.transports

        loop = asyncio.get_running_loop()
        name = type(loop).__name__ if netpoll.transports.is_netpoll_loop(loop) else "not netpoll"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": name.encode()})
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    reply = b"hello, " + (body or scope["path"].encode())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(reply)).encode())]})
    await send({"type": "http.response.body", "body": reply})


async def _uvicorn(sock: socket.socket) -> tuple[Any, asyncio.Task[None]]:
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("httptools")
    config = uvicorn.Config(_asgi_app, http="httptools", loop="none", log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # uvicorn < 0.29
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            await task
            raise AssertionError("uvicorn did not start")
        await asyncio.sleep(0.01)
    return server, task


@pytest.fixture
def no_signal_capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """uvicorn >= 0.29 captures SIGINT/SIGTERM in serve(); keep pytest's handlers."""
    try:
        import contextlib

        import uvicorn
    except ImportError:
        yield
        return
    if hasattr(uvicorn.Server, "capture_signals"):
        monkeypatch.setattr(uvicorn.Server, "capture_signals",
                            lambda self: contextlib.nullcontext())
    yield


def test_uvicorn_httpx(np_loop_run: Callable[..., Any], made: list[int],
                       no_signal_capture: None) -> None:
    httpx = pytest.importorskip("httpx")

    async def main() -> None:
        sock = _listening_socket()
        port = sock.getsockname()[1]
        server, task = await _uvicorn(sock)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for i in range(20):  # keep-alive: one connection, many requests
                    r = await client.get(f"/n{i}")
                    assert r.status_code == 200 and r.text == f"hello, /n{i}"
                big = b"z" * 300_000
                r = await client.post("/", content=big)
                assert r.content == b"hello, " + big
                rs = await asyncio.gather(*(client.get(f"/c{i}") for i in range(10)))
                assert [r.text for r in rs] == [f"hello, /c{i}" for i in range(10)]
        finally:
            server.should_exit = True
            await task
            sock.close()

    np_loop_run(main())
    assert made[0] >= 2  # the server's and httpx's connections


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_uvicorn_wrk(np_loop_run: Callable[..., Any], made: list[int],
                     no_signal_capture: None) -> None:
    async def main() -> str:
        sock = _listening_socket()
        port = sock.getsockname()[1]
        server, task = await _uvicorn(sock)
        try:
            proc = await asyncio.create_subprocess_exec(
                "wrk", "-t1", "-c20", "-d1s", f"http://127.0.0.1:{port}/",
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
            return out.decode()
        finally:
            server.should_exit = True
            await task
            sock.close()

    out = np_loop_run(main())
    m = re.search(r"(\d+) requests in", out)
    assert m is not None and int(m.group(1)) > 100, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    assert made[0] >= 20


@pytest.mark.parametrize("factory", ["new_event_loop", "new_uvloop_event_loop"])
def test_uvicorn_cli_loop_option(factory: str) -> None:
    """``uvicorn --loop netpoll.transports:new_event_loop`` (uvicorn >= 0.36)."""
    uvicorn = pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    if not hasattr(uvicorn.Config, "get_loop_factory"):
        pytest.skip("this uvicorn takes no loop factory in --loop (needs >= 0.36)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent),
         "test_frameworks:_asgi_app", "--host", "127.0.0.1", "--port", str(port),
         "--http", "httptools", "--loop", f"netpoll.transports:{factory}",
         "--lifespan", "off", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/loop", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert r.status_code == 200 and r.text.startswith("Netpoll"), r.text
        assert httpx.get(f"http://127.0.0.1:{port}/x", timeout=2).text == "hello, /x"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
        assert proc.returncode in (0, -15), out


# -- aiohttp -------------------------------------------------------------------------


# Known flake (CPython 3.13, uvloop base, seen once in a full run): a listening socket of
# aiohttp's site is reported unclosed at garbage collection after the test passed. It is
# a teardown warning, not a failed request; the warning stays visible, the test does not
# error on it, and it is listed in the closing note to be found.
@pytest.mark.filterwarnings("default::pytest.PytestUnraisableExceptionWarning")
def test_aiohttp_server_and_client(np_loop_run: Callable[..., Any], made: list[int],
                                   tmp_path: Any) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    blob = os.urandom(3 << 20)      # a static file: aiohttp's FileResponse calls loop.sendfile
    (tmp_path / "blob.bin").write_bytes(blob)

    async def static(request: Any) -> Any:
        return web.FileResponse(tmp_path / "blob.bin")

    async def hello(request: Any) -> Any:
        return web.Response(text="hello " + request.match_info.get("name", "x"))

    async def echo(request: Any) -> Any:
        return web.Response(body=await request.read())

    async def ws(request: Any) -> Any:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(msg.data.upper())
        return sock

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.get("/h/{name}", hello), web.post("/echo", echo),
                        web.get("/ws", ws), web.get("/blob", static)])
        runner = web.AppRunner(app)
        await runner.setup()
        sock = _listening_socket()
        port = sock.getsockname()[1]
        site = web.SockSite(runner, sock)
        await site.start()
        try:
            async with aiohttp.ClientSession() as session:
                for i in range(10):
                    async with session.get(f"http://127.0.0.1:{port}/h/{i}") as r:
                        assert r.status == 200 and await r.text() == f"hello {i}"
                data = bytes(range(256)) * 2000
                async with session.post(f"http://127.0.0.1:{port}/echo", data=data) as r:
                    assert await r.read() == data
                async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as w:
                    await w.send_str("abc")
                    assert (await w.receive()).data == "ABC"
                for _ in range(2):           # then the keep-alive connection goes on
                    async with session.get(f"http://127.0.0.1:{port}/blob") as r:
                        assert r.status == 200 and await r.read() == blob
        finally:
            await runner.cleanup()
            sock.close()

    np_loop_run(main())
    assert made[0] >= 2  # one keep-alive client connection and its server side


# -- redis-py ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not start")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_py_asyncio(np_loop_run: Callable[..., Any], made: list[int],
                          redis_port: int) -> None:
    redis_asyncio = pytest.importorskip("redis.asyncio")

    async def main() -> None:
        r = redis_asyncio.Redis(host="127.0.0.1", port=redis_port)
        try:
            assert await r.ping()
            await r.set("netpoll:k", b"v" * 100_000)
            assert await r.get("netpoll:k") == b"v" * 100_000
            async with r.pipeline(transaction=True) as p:
                for _ in range(100):
                    p.incr("netpoll:n")
                res = await p.execute()
            assert res[-1] - res[0] == 99
            results = await asyncio.gather(*(r.echo(f"m{i}") for i in range(20)))
            assert results == [f"m{i}".encode() for i in range(20)]
            ps = r.pubsub()
            await ps.subscribe("netpoll:ch")
            assert (await ps.get_message(timeout=2))["type"] == "subscribe"
            await r.publish("netpoll:ch", "hi")
            msg = None
            for _ in range(50):
                msg = await ps.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if msg:
                    break
            assert msg is not None and msg["data"] == b"hi"
            await ps.aclose() if hasattr(ps, "aclose") else await ps.close()
            await r.delete("netpoll:k", "netpoll:n")
        finally:
            await r.aclose() if hasattr(r, "aclose") else await r.close()

    np_loop_run(main())
    assert made[0] >= 2
