"""Adapters between netpoll Readers/Writers and Python's file-likes and asyncio streams.

Ports nocopy_readwriter_test.go (NETPOLL.md §3): TestZCReader (Next/Peek/Skip
against an endless source), TestZCWriter (Malloc + Flush writes through),
TestZCEOF (the source's end is EndOfStreamError), TestIOReadWriter (a
LinkBuffer round-trips through the io wrappers) and TestIOReadWriter2
(read-all terminates on an empty buffer). Adds the Python uses: json,
pickle, gzip and tarfile over a LinkBuffer, and StreamReader-style code
reading a real netpoll connection, on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import pickle
import socket
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import netpoll
from netpoll.adapters import LinkBufferIO, SinkWriter, SourceReader, StreamAdapter

pytestmark = pytest.mark.timeout(30)


class Endless(io.RawIOBase):
    """An endless source of b"abcdefgh..." that counts its reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self.reads += 1
        mv = memoryview(b)
        for i in range(len(mv)):
            mv[i] = 97 + (self.pos + i) % 26
        self.pos += len(mv)
        return len(mv)


def alphabet(start: int, n: int) -> bytes:
    return bytes(97 + (start + i) % 26 for i in range(n))


# -- new_reader over file-likes -----------------------------------------------------------


def test_zc_reader_endless_source(run: Any) -> None:
    """TestZCReader: Next(8 KiB) / Peek / Skip against an endless reader."""

    async def main() -> None:
        src = Endless()
        r = netpoll.new_reader(src)
        assert isinstance(r, SourceReader)
        assert r.len() == 0
        assert bytes(await r.next(8192)) == alphabet(0, 8192)
        assert bytes(await r.peek(10)) == alphabet(8192, 10)
        await r.skip(10)
        assert bytes(await r.next(3)) == alphabet(8202, 3)
        assert await r.read_byte() == alphabet(8205, 1)[0]
        assert await r.read_binary(4) == alphabet(8206, 4)
        assert await r.read_string(2) == alphabet(8210, 2).decode()
        s = await r.slice(5)
        assert s.bytes() == alphabet(8212, 5)
        s.close()
        r.release()
        assert src.reads >= 1
        r.close()

    run(main())


def test_zc_reader_fills_in_place(run: Any) -> None:
    """readinto goes straight into LinkBuffer memory: one read of a big request."""

    async def main() -> None:
        src = Endless()
        r = netpoll.new_reader(src)
        await r.next(1 << 20)
        assert src.reads == 1
        r.close()

    run(main())


def test_zc_reader_eof(run: Any) -> None:
    """TestZCEOF: the source's end is EndOfStreamError; what arrived stays readable."""

    async def main() -> None:
        r = netpoll.new_reader(io.BytesIO(b"hello"))
        with pytest.raises(netpoll.EndOfStreamError, match="only 5 of 6 bytes"):
            await r.next(6)
        assert r.len() == 5
        assert not r.at_eof()
        assert bytes(await r.next(5)) == b"hello"
        assert r.at_eof()
        with pytest.raises(netpoll.EndOfStreamError):
            await r.read_byte()
        with pytest.raises(EOFError):                # also an EOFError, as documented
            await r.skip(1)
        assert await r.read(10) == b""
        r.close()

    run(main())


def test_zc_reader_until(run: Any) -> None:
    async def main() -> None:
        data = b"first line\nsecond\n" + b"x" * 100_000 + b"\nunterminated"
        r = netpoll.new_reader(io.BufferedReader(io.BytesIO(data), buffer_size=7))
        assert bytes(await r.until(b"\n")) == b"first line\n"
        assert bytes(await r.until(ord("\n"))) == b"second\n"
        assert len(await r.until(b"\n")) == 100_001
        with pytest.raises(netpoll.EndOfStreamError):
            await r.until(b"\n")
        assert await r.read_binary(r.len()) == b"unterminated"
        r.close()

    run(main())


def test_zc_reader_read_only_sources_and_errors(run: Any) -> None:
    class ReadOnly:
        def __init__(self, data: bytes) -> None:
            self.f = io.BytesIO(data)

        def read(self, n: int) -> bytes:
            return self.f.read(min(n, 3))

    class WouldBlock(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> None:
            return None

    async def main() -> None:
        r = netpoll.new_reader(ReadOnly(b"abcdefgh"))
        assert bytes(await r.next(8)) == b"abcdefgh"
        with pytest.raises(ValueError, match="negative"):
            await r.next(-1)
        with pytest.raises(TypeError):
            await r.next("1")  # type: ignore[arg-type]
        assert bytes(await r.next(0)) == b""
        with pytest.raises(BlockingIOError, match="would block"):
            await netpoll.new_reader(WouldBlock()).next(1)
        with pytest.raises(TypeError, match="new_reader"):
            netpoll.new_reader(42)
        r.close()

    run(main())


def test_gzip_source(run: Any) -> None:
    """A decompressing file-like is a source like any other."""

    async def main() -> None:
        payload = b"line %d\n" * 1
        blob = gzip.compress(b"".join(payload.replace(b"%d", str(i).encode())
                                      for i in range(1000)))
        r = netpoll.new_reader(gzip.GzipFile(fileobj=io.BytesIO(blob)))
        lines = []
        while True:
            try:
                lines.append(bytes(await r.until(b"\n")))
            except netpoll.EndOfStreamError:
                break
        assert lines[0] == b"line 0\n" and lines[-1] == b"line 999\n" and len(lines) == 1000
        r.close()

    run(main())


def test_new_reader_over_a_filled_linkbuffer(run: Any) -> None:
    """Connection-shaped code can be fed from a LinkBuffer: its end is the end of stream."""

    async def main() -> None:
        buf = netpoll.LinkBuffer()
        buf.write_binary(b"\x00\x00\x00\x03abc")
        buf.flush()
        r = netpoll.new_reader(buf)
        n = int.from_bytes(await r.next(4), "big")
        assert await r.read_binary(n) == b"abc"
        with pytest.raises(netpoll.EndOfStreamError):
            await r.next(1)
        r.close()
        assert len(buf) == 0      # still open: the caller owns it
        buf.close()

    run(main())


# -- new_writer over file-likes -------------------------------------------------------


def test_zc_writer(run: Any) -> None:
    """TestZCWriter: Malloc + Flush writes through; nothing before flush."""

    async def main() -> None:
        dst = io.BytesIO()
        w = netpoll.new_writer(dst)
        assert isinstance(w, SinkWriter)
        mv = w.malloc(5)
        mv[:] = b"hello"
        w.write_binary(b" ")
        w.write_string("wörld")
        w.write_byte(ord("!"))
        assert dst.getvalue() == b""
        assert w.malloc_len() == 13
        await w.flush()
        assert dst.getvalue() == "hello wörld!".encode()
        assert w.malloc_len() == 0
        other = netpoll.LinkBuffer()
        other.write_binary(b"+appended" * 1000)
        other.flush()
        w.append(other)
        big = bytes(10_000)
        w.write_direct(big, 0)
        assert await w.write(b"end") == 3
        assert dst.getvalue().endswith(b"+appended" * 1000 + big + b"end")
        w.malloc(10)
        w.malloc_ack(2)
        await w.flush()
        assert len(dst.getvalue()) == 13 + 9000 + 10_000 + 3 + 2
        w.close()

    run(main())


def test_zc_writer_partial_writes(run: Any) -> None:
    """A raw destination that takes a few bytes per call still gets everything, in order."""

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            chunk = bytes(memoryview(b)[:3])
            self.data += chunk
            return len(chunk)

    async def main() -> None:
        dst = Trickle()
        w = netpoll.new_writer(dst)
        for i in range(50):
            w.write_binary(b"%03d," % i)
        await w.flush()
        assert bytes(dst.data) == b"".join(b"%03d," % i for i in range(50))
        w.close()

    run(main())


def test_read_writer_over_a_socket_file(run: Any) -> None:
    """new_read_writer over socket.makefile("rwb") (blocking, with data ready)."""

    async def main() -> None:
        a, b = socket.socketpair()
        with a, b:
            f = b.makefile("rwb")
            rw = netpoll.new_read_writer(f)
            a.sendall(b"ping\n")
            assert bytes(await rw.until(b"\n")) == b"ping\n"
            rw.write_binary(b"pong\n")
            await rw.flush()
            f.flush()
            assert a.recv(5) == b"pong\n"
            rw.close()
            f.close()

    run(main())


def test_stream_read_writer_over_asyncio_streams(run: Any) -> None:
    """new_read_writer((StreamReader, StreamWriter)): asyncio streams as a netpoll ReadWriter."""

    async def main() -> None:
        received = bytearray()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.readexactly(6)
            received.extend(data)
            writer.write(b"x" * 100_000 + b"\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            pair = await asyncio.open_connection("127.0.0.1", port)
            rw = netpoll.new_read_writer(pair)
            rw.write_string("hello\n")
            await rw.flush()
            line = await rw.until(b"\n")
            assert len(line) == 100_001
            with pytest.raises(netpoll.EndOfStreamError):
                await rw.next(1)
            assert bytes(received) == b"hello\n"
            rw.close()
            pair[1].close()
            await pair[1].wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_connection_passes_through(run: Any) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        conn = netpoll.new_fd_connection(a.detach())
        try:
            assert netpoll.new_reader(conn) is conn
            assert netpoll.new_writer(conn) is conn
            assert netpoll.new_read_writer(conn) is conn
        finally:
            conn.close()
            b.close()

    run(main())


# -- file-likes over a LinkBuffer ------------------------------------------------------


def filled(data: bytes) -> netpoll.LinkBuffer:
    buf = netpoll.LinkBuffer(16)
    # several nodes, so reads cross node boundaries
    for i in range(0, len(data), 1000):
        buf.write_binary(bytearray(data[i:i + 1000]))
        buf.flush()
    return buf


def test_io_read_writer_roundtrip() -> None:
    """TestIOReadWriter: a LinkBuffer wrapped as a writer and a reader round-trips."""
    buf = netpoll.LinkBuffer()
    w = netpoll.new_io_writer(buf)
    assert isinstance(w, LinkBufferIO) and w.writable() and not w.readable()
    assert w.write(b"hello ") == 6
    assert w.write(memoryview(bytearray(b"world"))) == 5
    assert len(buf) == 11                     # flushed at once
    r = netpoll.new_io_reader(buf)
    assert r.readable() and not r.writable() and not r.seekable()
    assert r.read(5) == b"hello"
    assert r.read() == b" world"
    assert r.read() == b""                     # TestIOReadWriter2: empty means EOF at once
    with pytest.raises(io.UnsupportedOperation):
        r.write(b"x")
    with pytest.raises(io.UnsupportedOperation):
        w.read()
    r.close()
    with pytest.raises(ValueError):
        r.read()
    buf.close()


def test_io_reader_readinto_readline_and_iteration() -> None:
    buf = filled(b"".join(b"row %d\n" % i for i in range(2000)) + b"tail")
    r = netpoll.new_io_read_writer(buf)
    assert r.readline() == b"row 0\n"
    ba = bytearray(6)
    assert r.readinto(ba) == 6 and bytes(ba) == b"row 1\n"
    assert r.readline(3) == b"row"
    assert r.readline() == b" 2\n"
    rows = list(r)
    assert rows[0] == b"row 3\n" and rows[-1] == b"tail" and len(rows) == 1998
    assert r.read() == b"" and len(buf) == 0
    r.write(b"more\n")
    assert r.readline() == b"more\n"
    r.close()
    buf.close()


def test_json_over_a_linkbuffer() -> None:
    doc = {"name": "netpoll", "values": list(range(3000)), "nested": {"ok": True}}
    buf = netpoll.LinkBuffer()
    with io.TextIOWrapper(netpoll.new_io_writer(buf), encoding="utf-8") as text:
        json.dump(doc, text)
    assert len(buf) > 4000
    assert json.load(netpoll.new_io_reader(buf)) == doc
    assert len(buf) == 0
    buf.close()


def test_pickle_over_a_linkbuffer() -> None:
    objs = [{"a": 1}, list(range(10_000)), b"\x00" * 70_000, "text"]
    buf = netpoll.LinkBuffer()
    w = netpoll.new_io_writer(buf)
    for obj in objs:
        pickle.dump(obj, w, protocol=pickle.HIGHEST_PROTOCOL)
    r = netpoll.new_io_reader(buf)
    assert [pickle.load(r) for _ in objs] == objs
    with pytest.raises(EOFError):
        pickle.load(r)
    buf.close()


def test_gzip_over_a_linkbuffer() -> None:
    data = os.urandom(2000) * 50
    buf = netpoll.LinkBuffer()
    with gzip.GzipFile(fileobj=netpoll.new_io_writer(buf), mode="wb") as gz:
        gz.write(data)
    assert 0 < len(buf) < len(data)
    with gzip.GzipFile(fileobj=netpoll.new_io_reader(buf)) as gz:
        assert gz.read() == data
    buf.close()


def _tar_blob() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, body in (("a.txt", b"alpha" * 300), ("b.bin", os.urandom(5000))):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def test_tarfile_streaming_over_a_linkbuffer() -> None:
    blob = _tar_blob()
    buf = filled(blob)
    with tarfile.open(fileobj=netpoll.new_io_reader(buf), mode="r|*") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    assert got["a.txt"] == b"alpha" * 300 and len(got["b.bin"]) == 5000
    buf.close()


def test_tarfile_default_mode_needs_seekable() -> None:
    """tarfile.open(fileobj=...) probes compressions and seeks back: seekable=True."""
    blob = _tar_blob()
    buf = filled(blob)
    f = netpoll.new_io_reader(buf, seekable=True)
    assert f.seekable()
    with tarfile.open(fileobj=f) as tar:
        names = tar.getnames()
        assert names == ["a.txt", "b.bin"]
        member = tar.extractfile("a.txt")
        assert member is not None and member.read() == b"alpha" * 300
    f.close()
    buf.close()


def test_seekable_reader_positions() -> None:
    buf = filled(b"0123456789" * 300)
    f = netpoll.new_io_reader(buf, seekable=True)
    assert f.read(5) == b"01234" and f.tell() == 5
    assert f.seek(2) == 2 and f.read(4) == b"2345"
    assert f.seek(-1, io.SEEK_CUR) == 5
    assert f.peek(2)[:2] == b"56"
    assert f.seek(0, io.SEEK_END) == 3000 and f.read() == b""
    assert f.seek(2995) == 2995 and f.read() == b"56789"
    assert f.seek(10) == 10 and f.readline() == (b"0123456789" * 300)[10:]
    with pytest.raises(ValueError, match="negative"):
        f.seek(-1)
    plain = netpoll.new_io_reader(netpoll.LinkBuffer())
    with pytest.raises(io.UnsupportedOperation):
        plain.seek(0)
    f.close()
    buf.close()


def test_io_adapters_pass_files_through_and_reject_others() -> None:
    f = io.BytesIO()
    assert netpoll.new_io_reader(f) is f
    assert netpoll.new_io_writer(f) is f
    assert netpoll.new_io_read_writer(f) is f
    for fn in (netpoll.new_io_reader, netpoll.new_io_writer, netpoll.new_io_read_writer):
        with pytest.raises(TypeError):
            fn(42)


# -- Streams-like objects over a connection --------------------------------------------


@asynccontextmanager
async def conn_pair() -> AsyncIterator[tuple[netpoll.Connection, socket.socket]]:
    a, b = socket.socketpair()
    b.setblocking(False)
    conn = netpoll.new_fd_connection(a.detach())
    try:
        yield conn, b
    finally:
        conn.close()
        b.close()


async def send(sock: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


def test_stream_reader_over_a_connection(run: Any) -> None:
    async def main() -> None:
        async with conn_pair() as (conn, peer):
            s = netpoll.new_io_reader(conn)
            assert isinstance(s, StreamAdapter)
            await send(peer, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody-bytes")
            assert await s.readuntil(b"\r\n") == b"GET / HTTP/1.1\r\n"
            assert await s.readline() == b"Host: x\r\n"
            assert await s.readexactly(2) == b"\r\n"
            assert await s.read(4) == b"body"
            assert await s.read(100) == b"-bytes"
            reader = asyncio.ensure_future(s.readexactly(5))
            await asyncio.sleep(0.01)
            assert not reader.done()
            await send(peer, b"ab")
            await asyncio.sleep(0.01)
            await send(peer, b"cde")
            assert await asyncio.wait_for(reader, 5) == b"abcde"
            await send(peer, b"last line\nno newline")
            peer.shutdown(socket.SHUT_WR)
            assert [line async for line in s] == [b"last line\n", b"no newline"]
            assert s.at_eof()
            assert await s.read() == b""
            assert await s.read(10) == b""

    run(main())


def test_stream_reader_errors_as_asyncio(run: Any) -> None:
    async def main() -> None:
        async with conn_pair() as (conn, peer):
            s = netpoll.new_io_reader(conn, limit=16)
            await send(peer, b"0123456789abcdefXYZ\nrest")
            with pytest.raises(asyncio.LimitOverrunError) as lo:
                await s.readuntil(b"\n")
            assert lo.value.consumed > 16
            assert len(conn) == 24                       # nothing consumed
            with pytest.raises(ValueError):
                await s.readline()                       # drops the long line, as asyncio
            assert await s.readexactly(4) == b"rest"
            with pytest.raises(ValueError):
                await s.readuntil(b"")
            with pytest.raises(ValueError):
                await s.readexactly(-1)
            await send(peer, b"abc")
            peer.shutdown(socket.SHUT_WR)
            with pytest.raises(asyncio.IncompleteReadError) as ie:
                await s.readexactly(10)
            assert ie.value.partial == b"abc" and ie.value.expected == 10
            with pytest.raises(asyncio.IncompleteReadError) as ie2:
                await s.readuntil(b"\n")
            assert ie2.value.partial == b"" and ie2.value.expected is None
            with pytest.raises(io.UnsupportedOperation):
                s.write(b"x")

    run(main())


def test_stream_reader_same_answers_as_asyncio(run: Any) -> None:
    """Differential: the same reads on asyncio's StreamReader and on the adapter."""

    script = [("readuntil", b"|"), ("readexactly", 3), ("readline", None), ("read", 5),
              ("readuntil", b"END"), ("read", -1)]
    data = b"one|twothree\nfour-five...ENDtrailing"

    async def drive(s: Any) -> list[Any]:
        out: list[Any] = []
        for op, arg in script:
            fn = getattr(s, op)
            out.append(await (fn() if arg is None else fn(arg)))
        return out

    async def main() -> None:
        ref = asyncio.StreamReader()
        ref.feed_data(data)
        ref.feed_eof()
        expected = await drive(ref)
        async with conn_pair() as (conn, peer):
            await send(peer, data)
            peer.shutdown(socket.SHUT_WR)
            got = await drive(netpoll.new_io_reader(conn))
        # the adapter's read(5) returns what is buffered (all five arrived at once)
        assert got == expected

    run(main())


def test_stream_writer_over_a_connection(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with conn_pair() as (conn, peer):
            rw = netpoll.new_io_read_writer(conn)
            rw.write(b"hello ")
            rw.writelines([b"stream", bytearray(b"s\n")])
            await rw.drain()
            got = b""
            while len(got) < 14:
                got += await loop.sock_recv(peer, 100)
            assert got == b"hello streams\n"
            assert not rw.can_write_eof()
            assert rw.get_extra_info("peername") == conn.remote_addr
            assert rw.get_extra_info("nope", 7) == 7
            rw.write(b"pending at close")
            assert not rw.is_closing()
            rw.close()
            assert rw.is_closing()
            await rw.wait_closed()
            assert not conn.is_active()
            got = b""
            while True:
                chunk = await loop.sock_recv(peer, 100)
                if not chunk:
                    break
                got += chunk
            assert got == b"pending at close"

    run(main())


def test_stream_writer_only(run: Any) -> None:
    async def main() -> None:
        async with conn_pair() as (conn, peer):
            w = netpoll.new_io_writer(conn)
            assert isinstance(w, StreamAdapter)
            with pytest.raises(io.UnsupportedOperation):
                await w.read(1)
            async with w:
                w.write(b"x")
                await w.drain()
            assert not conn.is_active()

    run(main())


def test_stream_code_over_a_dialed_connection(run: Any) -> None:
    """A StreamReader-style line protocol client over a dialed netpoll connection."""

    async def main() -> None:
        async def upper(ctx: Any, conn: netpoll.Connection) -> None:
            line = await conn.reader.until(b"\n")
            await conn.write(bytes(line).upper())

        ln = netpoll.create_listener("tcp", "127.0.0.1:0")
        server = netpoll.EventLoop(upper)
        task = asyncio.ensure_future(server.serve(ln))
        try:
            conn = await netpoll.dial_connection("tcp", ln.addr, timeout=5)
            stream = netpoll.new_io_read_writer(conn)
            for word in (b"alpha", b"beta"):
                stream.write(word + b"\n")
                await stream.drain()
                assert await asyncio.wait_for(stream.readline(), 5) == word.upper() + b"\n"
            stream.close()
            await stream.wait_closed()
        finally:
            await server.shutdown(2)
            await task
            ln.close()

    run(main())


def test_streams_over_a_source_reader(run: Any) -> None:
    """The two directions compose: a file-like → netpoll Reader → StreamReader-like."""

    async def main() -> None:
        r = netpoll.new_reader(io.BytesIO(b"a\nbb\nccc"))
        s = netpoll.new_io_reader(r)
        assert [line async for line in s] == [b"a\n", b"bb\n", b"ccc"]
        assert s.at_eof()
        r.close()

    run(main())
