"""Streams on the core: netpoll.transports.start_server / open_connection.

Every scenario runs twice on the same kind of loop (stock asyncio and uvloop):
once with asyncio's own ``start_server`` / ``open_connection`` (the
reference) and once with netpoll's, whose reader and writer are the core's
(``StreamCore``, reactor/streams.pyx) and whose client_connected_cb runs on
the core's Handler. The scenario returns what it observed; both runs must
observe the same. Real loopback sockets; the peer is asyncio's own Streams
(or a raw socket) so that only the side under test differs.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import socket
import ssl
import struct
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import _shutdown, new_loop
from netpoll import transports as nt

pytestmark = pytest.mark.timeout(60)

IMPLS = ("asyncio", "netpoll")
GAP = 0.03  # between chunks the peer sends, so that each arrives on its own


def _api(impl: str) -> Any:
    if impl == "asyncio":
        return SimpleNamespace(
            start_server=asyncio.start_server, open_connection=asyncio.open_connection,
            start_unix_server=asyncio.start_unix_server,
            open_unix_connection=asyncio.open_unix_connection, impl=impl)
    return SimpleNamespace(
        start_server=nt.start_server, open_connection=nt.open_connection,
        start_unix_server=nt.start_unix_server, open_unix_connection=nt.open_unix_connection,
        impl=impl)


Scenario = Callable[[Any], Coroutine[Any, Any, Any]]


def run_both(loop_kind: str, scenario: Scenario, timeout: float = 15.0) -> Any:
    """The scenario's result with asyncio's Streams, checked equal with netpoll's."""
    results = {}
    for impl in IMPLS:
        loop = new_loop(loop_kind)
        try:
            results[impl] = loop.run_until_complete(asyncio.wait_for(scenario(_api(impl)), timeout))
        finally:
            _shutdown(loop)
    assert results["netpoll"] == results["asyncio"], results
    return results["netpoll"]


def _err(exc: BaseException) -> tuple[Any, ...]:
    """What a test compares of an exception."""
    out: tuple[Any, ...] = (type(exc).__name__, exc.args)
    if isinstance(exc, asyncio.IncompleteReadError):
        out += (exc.partial, exc.expected)
    if isinstance(exc, asyncio.LimitOverrunError):
        out += (exc.consumed,)
    return out


async def _serve_one(api: Any, handler: Callable[..., Any], chunks: list[bytes],
                     *, eof: bool = True, limit: int = 2**16,
                     read_reply: bool = True) -> tuple[Any, bytes]:
    """Serve `handler`; a peer sends `chunks` (GAP apart), then EOF; returns (handler result, reply)."""
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            res = await handler(reader, writer)
        except BaseException as exc:  # the scenario reports it
            if not done.done():
                done.set_exception(exc)
            raise
        else:
            if not done.done():
                done.set_result(res)
        finally:
            writer.close()

    server = await api.start_server(cb, "127.0.0.1", 0, limit=limit)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        for c in chunks:
            await asyncio.sleep(GAP)
            w.write(c)
            await w.drain()
        if eof:
            await asyncio.sleep(GAP)
            w.write_eof()
    except OSError:
        pass  # the handler was done before the peer
    res = await done
    try:
        reply = await r.read() if read_reply else b""
    except ConnectionError:
        reply = b"<reset>"
    w.close()
    server.close()
    await server.wait_closed()
    return res, reply


async def _ops(reader: asyncio.StreamReader, ops: list[tuple[str, Any]]) -> list[Any]:
    out: list[Any] = []
    for name, arg in ops:
        try:
            if arg is None:
                out.append(await getattr(reader, name)())
            else:
                out.append(await getattr(reader, name)(arg))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            out.append(_err(exc))
    out.append(reader.at_eof())
    return out


# -- reads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ops", [
    [("read", 2), ("read", 5), ("read", 100), ("read", 0), ("read", -1)],
    [("read", 1), ("read", 1), ("read", 1), ("read", 1000), ("read", 1000), ("read", 1000),
     ("read", 1000)],
    [("read", -1)],
    [("read", 100), ("read", -1), ("read", 5), ("read", -1)],
], ids=["mixed", "small-then-large", "read-all", "after-eof"])
def test_read_sizes(loop_kind: str, ops: list[tuple[str, Any]]) -> None:
    chunks = [b"abc", b"defg", b"hij" * 50]

    async def scenario(api: Any) -> Any:
        return await _serve_one(api, lambda r, w: _ops(r, ops), chunks)

    run_both(loop_kind, scenario)


@pytest.mark.parametrize("ops", [
    [("readline", None), ("readuntil", b"\r\n"), ("readexactly", 3), ("readuntil", b"|"),
     ("readexactly", 10), ("readline", None)],
    [("readexactly", 7), ("readexactly", 0), ("readexactly", 9), ("readline", None),
     ("readline", None), ("readline", None)],
    [("readuntil", b"ne2\r"), ("readuntil", b"zz"), ("read", 10)],
    [("readexactly", -1), ("readuntil", b""), ("readline", None)],
    [("readexactly", 100)],
], ids=["mixed", "exactly", "multibyte-sep", "bad-args", "incomplete"])
def test_line_until_exactly_at_chunk_boundaries(loop_kind: str,
                                                ops: list[tuple[str, Any]]) -> None:
    # each separator is split across two chunks at least once
    chunks = [b"line1\nli", b"ne2\r", b"\nxx", b"x|e", b"nd"]

    async def scenario(api: Any) -> Any:
        return await _serve_one(api, lambda r, w: _ops(r, ops), chunks)

    run_both(loop_kind, scenario)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="readuntil takes a tuple from 3.13")
@pytest.mark.parametrize("limit", [2**16, 6])
def test_readuntil_tuple_of_separators(loop_kind: str, limit: int) -> None:
    ops: list[tuple[str, Any]] = [
        ("readuntil", (b"\r\n", b"\n")), ("readuntil", (b"|", b"e")), ("readuntil", ()),
        ("readuntil", (b"xx", b"x|")), ("readuntil", (b"", b"a")), ("read", -1)]
    chunks = [b"line1\nli", b"ne2\r", b"\nxx", b"x|e", b"nd"]

    async def scenario(api: Any) -> Any:
        return await _serve_one(api, lambda r, w: _ops(r, ops), chunks, limit=limit)

    run_both(loop_kind, scenario)


@pytest.mark.parametrize("case", ["line-over", "until-found-over", "until-not-found",
                                  "line-not-found", "exactly-over-limit"])
def test_limits(loop_kind: str, case: str) -> None:
    limit = 8
    if case == "line-over":
        chunks, ops = [b"0123456789abc", b"def\nshort\n"], [("readline", None), ("readline", None)]
    elif case == "until-found-over":
        chunks, ops = [b"0123456789|rest|"], [("readuntil", b"|"), ("read", 11), ("readuntil", b"|")]
    elif case == "until-not-found":
        chunks, ops = [b"0123", b"456789abcdefghij", b"|"], [("readuntil", b"|"), ("read", 100)]
    elif case == "line-not-found":
        chunks, ops = [b"0123", b"456789abcdefghij", b"x\nok\n"], [("readline", None),
                                                                 ("readline", None)]
    else:
        chunks, ops = [b"x" * 30], [("readexactly", 25), ("read", 100)]

    async def scenario(api: Any) -> Any:
        return await _serve_one(api, lambda r, w: _ops(r, ops), chunks, limit=limit)

    run_both(loop_kind, scenario)


def test_async_for_lines(loop_kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        lines = [line async for line in reader]
        return lines, reader.at_eof()

    async def scenario(api: Any) -> Any:
        return await _serve_one(api, handler, [b"a\nb", b"b\n", b"ccc\nlast"])

    assert run_both(loop_kind, scenario)[0] == ([b"a\n", b"bb\n", b"ccc\n", b"last"], True)


def test_pause_reading_above_twice_the_limit(loop_kind: str) -> None:
    # the reader pauses its transport above 2 * limit and resumes at or below limit
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        tr: Any = writer.transport
        seen = []
        while len(reader._buffer) < 3000:
            await asyncio.sleep(GAP)
        seen.append(tr.is_reading())
        data = await reader.readexactly(2500)
        seen.append(tr.is_reading())
        rest = await reader.read()
        return seen, len(data) + len(rest)

    async def scenario(api: Any) -> Any:
        return await _serve_one(api, handler, [b"x" * 1000] * 4, limit=1000)

    assert run_both(loop_kind, scenario)[0] == ([False, True], 4000)


# -- EOF, reset, drain -----------------------------------------------------------------------


def test_half_close_then_reply(loop_kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        data = await reader.read()
        eof = reader.at_eof()
        writer.write(data.upper())
        writer.writelines([b"-", b"done"])
        await writer.drain()
        return eof, writer.can_write_eof(), writer.is_closing()

    async def scenario(api: Any) -> Any:
        return await _serve_one(api, handler, [b"hello ", b"world"])

    assert run_both(loop_kind, scenario) == ((True, True, False), b"HELLO WORLD-done")


def test_server_write_eof_client_reads(loop_kind: str) -> None:
    # the client side: api.open_connection against asyncio's own server
    async def scenario(api: Any) -> Any:
        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            line = await r.readline()
            w.write(line * 3)
            w.write_eof()
            await r.read()
            w.close()

        server = await asyncio.start_server(cb, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await api.open_connection("127.0.0.1", port, limit=16)
        writer.write(b"ping\n")
        await writer.drain()
        out = [await reader.readline(), await reader.readexactly(4),
               await reader.readuntil(b"\n")]
        try:
            await reader.readexactly(1)
        except asyncio.IncompleteReadError as exc:
            out.append(_err(exc))
        out.append(reader.at_eof())
        out.append(writer.get_extra_info("peername")[1] == port)
        writer.close()
        await writer.wait_closed()
        out.append(writer.is_closing())
        server.close()
        await server.wait_closed()
        return out

    run_both(loop_kind, scenario)


def test_peer_reset_mid_read_and_drain_after(loop_kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        out = [await reader.readexactly(3)]
        try:
            await reader.read(10)
            out.append("no error")
        except ConnectionError as exc:
            out.append(type(exc).__name__)
        out.append(type(reader.exception()).__name__)
        if type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
            return out  # uvloop's own transport raises RuntimeError from write() here
        writer.write(b"x")
        try:
            await writer.drain()
            out.append("drained")
        except ConnectionError as exc:
            out.append(type(exc).__name__)
        return out

    async def scenario(api: Any) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            done.set_result(await handler(r, w))
            w.close()

        server = await api.start_server(cb, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"abc")
        await asyncio.sleep(0.1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST
        res = await done
        server.close()
        await server.wait_closed()
        return res

    expected = [b"abc", "ConnectionResetError", "ConnectionResetError"]
    if loop_kind == "asyncio":
        expected.append("ConnectionResetError")
    assert run_both(loop_kind, scenario) == expected


def test_drain_waits_at_the_high_water_mark_for_a_slow_reader(loop_kind: str) -> None:
    big = b"y" * (4 << 20)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        tr: Any = writer.transport
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        tr.set_write_buffer_limits(high=64 * 1024)
        writer.write(big)
        above = tr.get_write_buffer_size() > 64 * 1024
        drain = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.15)
        waiting = not drain.done()
        await reader.readexactly(2)  # the peer starts reading once it has sent this
        await drain
        after = tr.get_write_buffer_size() <= 16 * 1024
        writer.write(b"end")
        await writer.drain()  # not paused: at once
        return above, waiting, after

    async def scenario(api: Any) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            done.set_result(await handler(r, w))
            w.close()

        server = await api.start_server(cb, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        sock.connect(("127.0.0.1", port))
        r, w = await asyncio.open_connection(sock=sock)
        await asyncio.sleep(0.2)  # slow: nothing read yet
        w.write(b"go")
        got = 0
        while got < len(big) + 3:
            chunk = await r.read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
            await asyncio.sleep(0.001)
        res = await done
        w.close()
        server.close()
        await server.wait_closed()
        return res, got

    assert run_both(loop_kind, scenario) == ((True, True, True), len(big) + 3)


# -- composing with asyncio -------------------------------------------------------------------


def test_wait_for_timeout_cancel_and_sleep_around_reads(loop_kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        out: list[Any] = []
        try:
            await asyncio.wait_for(reader.read(10), 0.01)
        except TimeoutError:
            out.append("timeout")
        try:
            async with asyncio.timeout(0.01):
                await reader.readexactly(5)
        except TimeoutError:
            out.append("timeout2")
        task = asyncio.ensure_future(reader.readuntil(b"!"))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            out.append("cancelled")
        await asyncio.sleep(0.01)
        # nothing was lost to the cancelled reads
        out.append(await asyncio.wait_for(reader.readuntil(b"!"), 5))
        out.extend(await asyncio.gather(reader.readexactly(3), asyncio.sleep(0.01, "slept")))
        t2 = asyncio.ensure_future(reader.read(1))
        await asyncio.sleep(0)
        try:
            await reader.read(1)
        except RuntimeError as exc:
            out.append(str(exc))
        out.append(await t2)
        out.append(await reader.read())
        return out

    async def scenario(api: Any) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            done.set_result(await handler(r, w))
            w.close()

        server = await api.start_server(cb, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.2)
        w.write(b"hello!abc")
        await asyncio.sleep(0.2)
        w.write(b"zq")
        w.write_eof()
        res = await done
        w.close()
        server.close()
        await server.wait_closed()
        return res

    assert run_both(loop_kind, scenario) == [
        "timeout", "timeout2", "cancelled", b"hello!", b"abc", "slept",
        "read() called while another coroutine is already waiting for incoming data",
        b"z", b"q"]


def test_cancel_the_handler_while_it_waits(loop_kind: str) -> None:
    async def scenario(api: Any) -> Any:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[Any] = loop.create_future()
        seen: asyncio.Future[Any] = loop.create_future()

        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            started.set_result(asyncio.current_task())
            try:
                await r.read(10)
            except asyncio.CancelledError:
                seen.set_result("cancelled")
                raise
            finally:
                w.close()

        server = await api.start_server(cb, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        task = await started
        await asyncio.sleep(0.02)
        out = [task.cancel(), await seen, await asyncio.wait_for(r.read(), 5)]
        w.close()
        server.close()
        await server.wait_closed()
        return out

    assert run_both(loop_kind, scenario) == [True, "cancelled", b""]


def test_isinstance_current_task_and_context(loop_kind: str) -> None:
    var: contextvars.ContextVar[int] = contextvars.ContextVar("var", default=0)

    async def scenario(api: Any) -> Any:
        loop = asyncio.get_running_loop()
        results: list[Any] = []
        done = asyncio.Event()

        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            me = asyncio.current_task()
            var.set(var.get() + 1)
            n = int(await r.readline())
            await asyncio.sleep(0.01)
            results.append((
                isinstance(r, asyncio.StreamReader), isinstance(w, asyncio.StreamWriter),
                me is not None, asyncio.current_task() is me, var.get(), n,
                w.transport is not None, w.get_extra_info("sockname") is not None,
            ))
            w.close()
            if len(results) == 2:
                done.set()

        server = await api.start_server(cb, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [await api.open_connection("127.0.0.1", port) for _ in range(2)]
        for i, (_, w) in enumerate(clients):
            w.write(b"%d\n" % i)
        await asyncio.wait_for(done.wait(), 5)
        out = [isinstance(r, asyncio.StreamReader) and isinstance(w, asyncio.StreamWriter)
               for r, w in clients]
        for _, w in clients:
            w.close()
            await w.wait_closed()
        server.close()
        await server.wait_closed()
        assert loop.is_running()
        return sorted(results), out, var.get()

    run_both(loop_kind, scenario)


def test_netpoll_objects_are_the_core_ones(loop_kind: str) -> None:
    loop = new_loop(loop_kind)

    async def main() -> Any:
        kinds: list[Any] = []

        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            kinds.append((type(r).__name__, type(w).__name__, r._np.attached,
                          type(asyncio.current_task()).__name__))
            w.close()

        server = await nt.start_server(cb, "127.0.0.1", 0)
        r, w = await nt.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        assert await r.read() == b""
        kinds.append((type(r).__name__, type(w).__name__, r._np.attached))
        w.close()
        server.close()
        await server.wait_closed()
        return kinds

    try:
        assert loop.run_until_complete(asyncio.wait_for(main(), 10)) == [
            ("NetpollStreamReader", "NetpollStreamWriter", True, "Handler"),
            ("NetpollStreamReader", "NetpollStreamWriter", True)]
    finally:
        _shutdown(loop)


def test_exception_in_callback_is_logged_and_others_unaffected(loop_kind: str) -> None:
    async def scenario(api: Any) -> Any:
        loop = asyncio.get_running_loop()
        reported: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: reported.append(ctx))

        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            line = await r.readline()
            if line == b"boom\n":
                raise ValueError("boom")
            w.write(line.upper())
            await w.drain()
            w.close()

        server = await api.start_server(cb, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(b"boom\n")
        await asyncio.sleep(0.05)
        w2.write(b"fine\n")
        answer = await asyncio.wait_for(r2.read(), 5)
        if api.impl == "netpoll" or sys.version_info >= (3, 12):
            # the failed connection is closed, the error reported as asyncio 3.12+ does
            assert await asyncio.wait_for(r1.read(), 5) == b""
            assert [c["message"] for c in reported] == [
                "Unhandled exception in client_connected_cb"]
            assert isinstance(reported[0]["exception"], ValueError)
        w1.close()
        w2.close()
        server.close()
        gc.collect()
        return answer

    assert run_both(loop_kind, scenario) == b"FINE\n"


def test_server_close_and_loop_teardown_with_waiting_handlers(loop_kind: str) -> None:
    # asyncio.run's teardown cancels the handlers still waiting in a read
    for impl in IMPLS:
        api = _api(impl)
        seen: list[str] = []

        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                     seen: list[str] = seen) -> None:
            try:
                await r.read(10)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            finally:
                w.close()

        async def main(api: Any = api) -> None:
            server = await api.start_server(cb, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            # blocking sockets of no loop: still open when the loop goes
            _clients.extend(socket.create_connection(("127.0.0.1", port)) for _ in range(3))
            await asyncio.sleep(0.05)
            server.close()
            assert not server.is_serving()

        def factory() -> asyncio.AbstractEventLoop:
            return new_loop(loop_kind)

        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
        assert seen == ["cancelled"] * 3, (impl, seen)
        for c in _clients:
            c.close()
        _clients.clear()


_clients: list[Any] = []


def test_unix_server_and_connection(loop_kind: str, tmp_path: Path) -> None:
    async def scenario(api: Any) -> Any:
        path = str(tmp_path / f"s-{api.impl}.sock")

        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write((await r.readuntil(b";")) * 2)
            await w.drain()
            w.close()

        server = await api.start_unix_server(cb, path)
        r, w = await api.open_unix_connection(path)
        w.write(b"ab;cd")
        out = [await r.read(), type(r).__name__ == "NetpollStreamReader"]
        w.close()
        server.close()
        await server.wait_closed()
        return out[0]

    assert run_both(loop_kind, scenario) == b"ab;ab;"


def test_echo_many_requests(loop_kind: str) -> None:
    # the benchmark's handler shape, many round trips on several connections
    async def scenario(api: Any) -> Any:
        async def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.close()

        server = await api.start_server(cb, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def client(i: int) -> int:
            r, w = await api.open_connection("127.0.0.1", port)
            total = 0
            for k in range(200):
                msg = b"%d:%d;" % (i, k) * (k % 7 + 1)
                w.write(msg)
                await w.drain()
                total += len(await r.readexactly(len(msg)))
            w.close()
            await w.wait_closed()
            return total

        out = await asyncio.gather(*(client(i) for i in range(8)))
        server.close()
        await server.wait_closed()
        return out

    run_both(loop_kind, scenario)


# -- TLS: ssl= keeps asyncio's objects; start_tls on a core stream switches it to feed_data ----

OPENSSL = __import__("shutil").which("openssl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if OPENSSL is None:
        pytest.skip("the openssl command-line tool is not installed")
    import subprocess

    d = tmp_path_factory.mktemp("pki")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
                    "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   cwd=d, check=True, capture_output=True)
    return d


def test_ssl_and_start_tls(loop_kind: str, pki: Path) -> None:
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(pki / "c.pem", pki / "k.pem")
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(pki / "c.pem")

    async def scenario(api: Any) -> Any:
        async def tls_cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(await r.readline())
            await w.drain()
            w.close()

        server = await api.start_server(tls_cb, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        r, w = await api.open_connection("127.0.0.1", port, ssl=cctx,
                                         server_hostname="localhost")
        w.write(b"over tls\n")
        out = [await r.read()]
        w.close()
        server.close()
        await server.wait_closed()

        async def starttls_cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            assert await r.readline() == b"STARTTLS\n"
            w.write(b"OK\n")
            await w.drain()
            await w.start_tls(sctx)
            w.write((await r.readline()).upper())
            await w.drain()
            w.close()

        server = await api.start_server(starttls_cb, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await api.open_connection("127.0.0.1", port)
        w.write(b"STARTTLS\n")
        out.append(await r.readline())
        await w.start_tls(cctx, server_hostname="localhost")
        w.write(b"secret\n")
        out.append(await r.read())
        out.append(w.get_extra_info("sslcontext") is cctx)
        w.close()
        server.close()
        await server.wait_closed()
        return out

    assert run_both(loop_kind, scenario) == [b"over tls\n", b"OK\n", b"SECRET\n", True]
