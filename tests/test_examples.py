"""The examples work end to end.

Each example server runs as a subprocess on 127.0.0.1 (port 0; it prints
the bound address and ``ready``), on stock asyncio and on uvloop. It is
driven by its client, both as a script (the demo must report no wrong
answer) and in process (the client classes against the parametrized loop),
and by a raw socket that splits and coalesces requests. SIGTERM must shut
the server down gracefully: requests already sent are answered, then the
connection closes and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import netpoll
from conftest import wait_for

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"netpoll_example_{name}", EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rpc_client = load("rpc_client.py")
mux_client = load("mux_client.py")


class Server:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.address = ("127.0.0.1", port)
        self.signalled = False

    def terminate(self) -> None:
        """Send SIGTERM once (a second one may land after the loop restored SIG_DFL)."""
        if not self.signalled and self.proc.poll() is None:
            self.signalled = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit code (the server must shut down by itself)."""
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the server did not shut down after SIGTERM") from None


@contextlib.contextmanager
def server(script: str, uvloop: bool = False, port: int = 0,
           extra: tuple[str, ...] = ()) -> Iterator[Server]:
    argv = [sys.executable, str(EXAMPLES / script), "--host", "127.0.0.1", "--port", str(port)]
    if uvloop:
        argv.append("--uvloop")
    argv.extend(extra)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:
        try:
            assert proc.stdout is not None
            bound = None
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    assert proc.stderr is not None
                    raise AssertionError(f"{script} exited early: {proc.stderr.read()}")
                if line.startswith("listening on "):
                    bound = int(line.rsplit(":", 1)[1])
                if line.strip() == "ready":
                    break
            assert bound, f"{script} did not say where it listens"
            srv = Server(proc, bound)
            yield srv
            assert srv.stop() == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args],
                          capture_output=True, text=True, timeout=45)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise AssertionError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def recv_until_eof(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(1 << 16):
        out += chunk
    return bytes(out)


def rpc_frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def mux_frame(seq: int, payload: bytes) -> bytes:
    return struct.pack(">II", len(payload), seq) + payload


uvloop_param = pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])


def _skip_without_uvloop(uvloop: bool) -> None:
    if uvloop and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed")


# -- the RPC pair --------------------------------------------------------------------------


@uvloop_param
def test_rpc_client_script(uvloop: bool) -> None:
    _skip_without_uvloop(uvloop)
    with server("rpc_server.py", uvloop) as srv:
        args = ["--port", str(srv.port), "--requests", "3000", "--connections", "4"]
        res = run_script("rpc_client.py", *args, *(["--uvloop"] if uvloop else []))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "3000 calls over 4 connections" in res.stdout
        assert ", 0 wrong answers" in res.stdout


@uvloop_param
def test_rpc_pool_in_process(run: Any, uvloop: bool) -> None:
    _skip_without_uvloop(uvloop)

    async def main(port: int) -> None:
        async with rpc_client.RpcPool("tcp", f"127.0.0.1:{port}", size=3) as pool:
            payloads = [b"", b"x", os.urandom(100), os.urandom(70_000), os.urandom(1 << 20)]
            payloads += [b"call %d" % i for i in range(200)]
            answers = await asyncio.gather(*(pool.call(p) for p in payloads))
            assert answers == payloads
            assert pool.connections == 3             # long-lived, never more than the size

    with server("rpc_server.py", uvloop) as srv:
        run(main(srv.port), timeout=30)


@pytest.mark.parametrize("handler", ["async", "sync"])
def test_rpc_server_split_and_coalesced_requests(handler: str) -> None:
    """Requests split byte by byte, and many in one write, are all answered in order
    (by the coroutine handler and by the plain-function one)."""
    payloads = [os.urandom(n) for n in (0, 1, 3, 4, 5, 100, 4096, 70_000)] * 3
    with server("rpc_server.py", extra=("--handler", handler)) as srv, \
            socket.create_connection(srv.address, 5) as sock:
        sock.settimeout(10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = rpc_frame(b"split")
        for i in range(len(first)):                 # one byte at a time
            sock.sendall(first[i:i + 1])
            time.sleep(0.002)
        assert recv_exactly(sock, len(first)) == first
        stream = b"".join(rpc_frame(p) for p in payloads)
        sock.sendall(stream)                        # all at once
        assert recv_exactly(sock, len(stream)) == stream
        cut = len(stream) // 3                      # frames straddling writes
        sock.sendall(stream[:cut])
        time.sleep(0.01)
        sock.sendall(stream[cut:])
        assert recv_exactly(sock, len(stream)) == stream


@uvloop_param
def test_rpc_server_graceful_shutdown_answers_received_requests(uvloop: bool) -> None:
    _skip_without_uvloop(uvloop)
    stream = b"".join(rpc_frame(b"req %d" % i) for i in range(500))
    with server("rpc_server.py", uvloop) as srv, socket.create_connection(srv.address, 5) as sock:
        sock.settimeout(10)
        sock.sendall(stream)
        srv.terminate()        # right after the requests went out
        assert recv_until_eof(sock) == stream       # every answer, then a clean close
        assert srv.stop() == 0


def test_rpc_pool_drops_dead_connections_and_redials(run: Any) -> None:
    """The server goes away while the pool is idle: the poller tells the pool, whose
    connections drop to zero without a call; the next call dials the new server."""
    async def main() -> None:
        with server("rpc_server.py") as first:
            port = first.port
            pool = rpc_client.RpcPool("tcp", ("127.0.0.1", port), size=4)
            await asyncio.gather(*(pool.call(b"hello") for _ in range(8)))
            assert pool.connections == 4
            assert first.stop() == 0
        await wait_for(lambda: pool.connections == 0, timeout=5)
        with server("rpc_server.py", port=port):
            assert await pool.call(b"again") == b"again"
            assert pool.connections == 1
            await pool.close()

    run(main(), timeout=40)


# -- the multiplexed pair --------------------------------------------------------------------


@uvloop_param
def test_mux_client_script(uvloop: bool) -> None:
    _skip_without_uvloop(uvloop)
    with server("mux_server.py", uvloop) as srv:
        args = ["--port", str(srv.port), "--tasks", "300", "--requests", "6000"]
        res = run_script("mux_client.py", *args, *(["--uvloop"] if uvloop else []))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "6000 calls from 300 tasks over 4 connections" in res.stdout
        assert ", 0 wrong answers" in res.stdout


@uvloop_param
def test_mux_client_in_process(run: Any, uvloop: bool) -> None:
    """1,000 tasks over 4 connections; every response reaches the call that sent it."""
    _skip_without_uvloop(uvloop)
    async def main(port: int) -> None:
        async with mux_client.MuxClient("tcp", ("127.0.0.1", port)) as client:

            async def task(t: int) -> None:
                for i in range(3):
                    payload = b"task %d call %d " % (t, i) * (1 + (t * 7 + i) % 50)
                    assert await client.call(payload) == payload

            await asyncio.gather(*(task(t) for t in range(1000)))
            big = os.urandom(3 << 20)
            assert await client.call(big) == big
            conns = {ch.conn for ch in client._channels if ch is not None}
            assert len(conns) == 4

    with server("mux_server.py", uvloop) as srv:
        run(main(srv.port), timeout=40)


def test_mux_server_answers_out_of_band_ids() -> None:
    """The server echoes each frame's sequence id; pipelined, split frames all come back."""
    frames = [mux_frame(seq, b"p%d" % seq * (seq % 9)) for seq in (7, 1, 2**32 - 1, 0, 42)]
    stream = b"".join(frames)
    with server("mux_server.py") as srv, socket.create_connection(srv.address, 5) as sock:
        sock.settimeout(10)
        sock.sendall(stream[:5])
        time.sleep(0.01)
        sock.sendall(stream[5:])
        assert recv_exactly(sock, len(stream)) == stream


@uvloop_param
def test_mux_server_graceful_shutdown_answers_received_requests(uvloop: bool) -> None:
    _skip_without_uvloop(uvloop)
    stream = b"".join(mux_frame(i, b"req %d" % i) for i in range(1000))
    with server("mux_server.py", uvloop) as srv, socket.create_connection(srv.address, 5) as sock:
        sock.settimeout(10)
        sock.sendall(stream)
        srv.terminate()
        assert recv_until_eof(sock) == stream
        assert srv.stop() == 0


def test_mux_client_fails_pending_calls_when_the_server_dies(run: Any) -> None:
    async def main() -> None:
        with socket.socket() as ls:                  # accepts (in the kernel), never answers
            ls.bind(("127.0.0.1", 0))
            ls.listen(16)
            client = mux_client.MuxClient("tcp", ls.getsockname(), call_timeout=5)
            calls = [asyncio.ensure_future(client.call(b"lost")) for _ in range(8)]
            await asyncio.sleep(0.2)
            assert not any(c.done() for c in calls)
            accepted = []
            while True:
                ls.setblocking(False)
                try:
                    accepted.append(ls.accept()[0])
                except BlockingIOError:
                    break
            for s in accepted:
                s.close()                            # the peer goes away
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, netpoll.ConnectionClosedError) for r in results), results
            await client.close()

    run(main(), timeout=20)


def test_mux_client_call_timeout(run: Any) -> None:
    """A call with no response fails with TimeoutError after call_timeout (swept, so a
    little late, never early); calls without a timeout stay pending; nothing is left."""
    async def main() -> None:
        with socket.socket() as ls:                  # accepts (in the kernel), never answers
            ls.bind(("127.0.0.1", 0))
            ls.listen(16)
            loop = asyncio.get_running_loop()
            client = mux_client.MuxClient("tcp", ls.getsockname(), call_timeout=0.3)
            t0 = loop.time()
            calls = [asyncio.ensure_future(client.call(b"lost")) for _ in range(5)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            took = loop.time() - t0
            assert all(isinstance(r, TimeoutError) for r in results), results
            assert 0.3 <= took < 1.0, took
            assert all(not ch.pending for ch in client._channels if ch is not None)
            client.call_timeout = None
            waiting = asyncio.ensure_future(client.call(b"lost"))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            await client.close()
            assert isinstance(
                (await asyncio.gather(waiting, return_exceptions=True))[0],
                netpoll.ConnectionClosedError,
            )

    run(main(), timeout=20)


async def _shutdown_right_after(app: Any, server: netpoll.EventLoop, shutdown: Any,
                                stream: bytes) -> bytes:
    """Serve in process; send `stream`; start shutdown before the server has read it."""
    ln = netpoll.create_listener("tcp", "127.0.0.1:0")
    serving = asyncio.ensure_future(server.serve(ln))
    sock = socket.create_connection(ln.addr, 5)
    try:
        await wait_for(lambda: server.connections == 1)
        sock.sendall(stream)                        # now in the server's receive queue
        await shutdown(5.0)
        await serving
        sock.settimeout(5)
        return recv_until_eof(sock)
    finally:
        sock.close()
        ln.close()


def test_mux_server_shutdown_right_after_requests_arrive(run: Any) -> None:
    """Shutdown starts before the server has read anything: the requests the kernel
    holds are read, answered through the ShardQueues and flushed before the close."""
    mux_server = load("mux_server.py")
    stream = b"".join(mux_frame(i, b"late %d" % i) for i in range(300))   # < one read
    app = mux_server.MuxServer()
    assert run(_shutdown_right_after(app, app.server, app.shutdown, stream)) == stream


def test_rpc_server_shutdown_right_after_many_requests_arrive(run: Any) -> None:
    """API.md: 'A request fully received before shutdown gets its answer.'"""
    rpc_server = load("rpc_server.py")
    stream = b"".join(rpc_frame(b"late %d" % i) for i in range(10_000))   # ~120 KB
    server = netpoll.EventLoop(rpc_server.on_request)
    assert run(_shutdown_right_after(None, server, server.shutdown, stream)) == stream
