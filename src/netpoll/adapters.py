"""Adapters between netpoll's Reader/Writer and Python's I/O worlds (Go: ``nocopy_readwriter.go``).

Two directions, as in Go:

``new_reader(src)``, ``new_writer(dst)``, ``new_read_writer(rw)``
    (Go's ``NewReader``/``NewWriter``/``NewReadWriter``) make a netpoll
    :class:`~netpoll.protocols.Reader` / :class:`~netpoll.protocols.Writer`
    out of a binary file-like object (``readinto``/``read`` and ``write``:
    files, ``io.BytesIO``, pipes, ``gzip.GzipFile``, ``socket.makefile("rwb")``)
    or an asyncio ``StreamReader``/``StreamWriter``. Code written for a
    connection's reader and writer then runs unchanged over them.

``new_io_reader(r)``, ``new_io_writer(w)``, ``new_io_read_writer(rw)``
    (Go's ``NewIOReader``/``NewIOWriter``/``NewIOReadWriter``) go the other
    way. Over a :class:`~netpoll.LinkBuffer` they give a synchronous binary
    file-like object (``io.BufferedIOBase``) so that ``json.load``,
    ``pickle.load``, ``gzip.GzipFile(fileobj=...)`` or ``tarfile.open(fileobj=...)``
    read and write the buffer. Over a connection (or any awaitable Reader)
    they give an object shaped like asyncio's ``StreamReader`` /
    ``StreamWriter``, so code written for streams reads a netpoll connection.

How the data moves
------------------

* Reading a file-like source: the adapter reserves memory in its LinkBuffer
  with ``malloc(n)``, lets the source ``readinto`` it directly, keeps what
  came with ``malloc_ack`` and makes it readable with ``flush``: one copy,
  the one the kernel or the source makes. A source without ``readinto`` is
  read with ``read(n)``; an immutable ``bytes`` chunk of 4 KiB or more is
  then linked into the buffer without a copy (as from an asyncio
  ``StreamReader``).
* Writing: ``flush()`` hands the destination one memoryview per buffer node
  (no copy on our side) and awaits ``drain()`` for a stream.
* Reading a LinkBuffer through a file-like consumes it, as Go's
  ``NewIOReader`` does; an empty buffer reads as end of file (``b""``).

End of data
-----------

A read on an adapter that the source cannot satisfy because the source
ended raises ``EndOfStreamError`` and consumes nothing; what arrived stays
readable (the same rule as a connection whose peer closed). The Streams-like
objects raise what asyncio's ``StreamReader`` raises instead:
``asyncio.IncompleteReadError`` and ``asyncio.LimitOverrunError``.

File-like sources and destinations are called synchronously: they must not
block for long (regular files, in-memory buffers, pipes with data). For a
socket, use a netpoll connection or an asyncio stream instead. Like
connections, adapters are not thread-safe.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from netpoll._buffer import LinkBuffer
from netpoll._core import Connection
from netpoll.errors import EndOfStreamError, NotEnoughDataError
from netpoll.protocols import BufferReader, BufferWriter, Delimiter, Reader, ReadWriter, Writer

__all__ = [
    "LinkBufferIO",
    "SourceReader",
    "SourceReadWriter",
    "StreamAdapter",
    "SinkWriter",
    "new_io_read_writer",
    "new_io_reader",
    "new_io_writer",
    "new_read_writer",
    "new_reader",
    "new_writer",
]

_F = TypeVar("_F", bound=io.IOBase)

_CHUNK = 64 * 1024          # bytes asked of a source per read when less is missing
_STREAM_LIMIT = 2 ** 16     # asyncio's default StreamReader limit

if TYPE_CHECKING:
    from typing_extensions import Buffer  # annotations only: not a runtime dependency

    # the concrete classes have the shapes the protocols describe
    def _conforms(c: Connection, b: LinkBuffer, s: SourceReadWriter) -> None:
        _r: Reader = c
        _w: Writer = c
        _rw: ReadWriter = s
        _br: BufferReader = b
        _bw: BufferWriter = b


def _check_n(op: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{op}: size must be an int, not {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{op}({n}): negative size")
    return n


def _is_async_method(obj: object, name: str) -> bool:
    return inspect.iscoroutinefunction(getattr(obj, name, None))


# -- netpoll Reader / Writer over a file-like or an asyncio stream ----------------------


class SourceReader:
    """A netpoll Reader that fills its LinkBuffer from a source (Go's ``zcReader``).

    Made by :func:`new_reader`. Every reading method waits (by reading the
    source) until enough data is buffered; when the source ends first it
    raises ``EndOfStreamError`` and consumes nothing. ``len()`` is what is
    buffered now.
    """

    def __init__(self, src: Any) -> None:
        self._src = src
        self._eof = False
        self._own_input = True
        if isinstance(src, LinkBuffer):
            # an already filled buffer: read it as a source that has ended
            self._input = src
            self._eof = True
            self._own_input = False
            self._fill_once: Callable[[int], Awaitable[int]] = self._fill_nothing
        elif _is_async_method(src, "read"):
            self._input = LinkBuffer()
            self._fill_once = self._fill_from_stream
        elif callable(getattr(src, "readinto", None)) or callable(getattr(src, "read", None)):
            self._input = LinkBuffer()
            self._fill_once = self._fill_from_file
        else:
            raise TypeError(f"new_reader: expected a binary file-like (readinto/read) or an "
                            f"asyncio StreamReader, not {type(src).__name__}")

    # -- filling ---------------------------------------------------------------

    async def _fill_nothing(self, want: int) -> int:
        return 0

    async def _fill_from_stream(self, want: int) -> int:
        data = await self._src.read(max(want, _CHUNK))
        if not data:
            return 0
        self._input.write_binary(data)     # >= 4 KiB of immutable bytes: linked, not copied
        self._input.flush()
        return len(data)

    async def _fill_from_file(self, want: int) -> int:
        src = self._src
        size = max(want, 4096)
        # readinto1/read1: at most one read of the raw source, so that a pipe or
        # a socket file returns what it has instead of blocking to fill `size`
        readinto = getattr(src, "readinto1", None) or getattr(src, "readinto", None)
        if readinto is not None:
            buf = self._input
            view = buf.malloc(size)
            try:
                got = readinto(view)
            except BaseException:
                buf.malloc_ack(0)
                raise
            finally:
                view.release()
            if got is None:
                buf.malloc_ack(0)
                raise BlockingIOError("new_reader: the source would block "
                                      "(readinto returned None): use a blocking file "
                                      "or an asyncio stream")
            buf.malloc_ack(got)
            buf.flush()
            return int(got)
        data = (getattr(src, "read1", None) or src.read)(size)
        if data is None:
            raise BlockingIOError("new_reader: the source would block (read returned None)")
        if data:
            self._input.write_binary(data)
            self._input.flush()
        return len(data)

    async def _fill(self, op: str, n: int) -> None:
        """Read the source until n bytes are buffered; EndOfStreamError if it ends first."""
        buf = self._input
        while len(buf) < n:
            if self._eof or not await self._fill_once(n - len(buf)):
                self._eof = True
                raise EndOfStreamError(
                    f"{op}: the source ended with only {len(buf)} of {n} bytes")

    # -- Reader --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._input)

    def len(self) -> int:
        """Bytes buffered now (readable without reading the source)."""
        return len(self._input)

    def release(self) -> None:
        """Give back the memory of consumed data."""
        self._input.release()

    def at_eof(self) -> bool:
        """True once the source has ended and nothing is buffered."""
        return self._eof and len(self._input) == 0

    async def next(self, n: int) -> memoryview:
        """The next n bytes, consumed (a view; zero-copy within one node)."""
        await self._fill("next", _check_n("next", n))
        return self._input.next(n)

    async def peek(self, n: int) -> memoryview:
        """The next n bytes, not consumed."""
        await self._fill("peek", _check_n("peek", n))
        return self._input.peek(n)

    async def skip(self, n: int) -> None:
        """Consume n bytes."""
        await self._fill("skip", _check_n("skip", n))
        self._input.skip(n)

    async def read_binary(self, n: int) -> bytes:
        """An independent copy of the next n bytes, consumed."""
        await self._fill("read_binary", _check_n("read_binary", n))
        return self._input.read_binary(n)

    async def read_string(self, n: int, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The next n bytes decoded, consumed (nothing consumed on a decode error)."""
        await self._fill("read_string", _check_n("read_string", n))
        return self._input.read_string(n, encoding, errors)

    async def read_byte(self) -> int:
        """One byte, consumed."""
        await self._fill("read_byte", 1)
        return self._input.read_byte()

    async def slice(self, n: int) -> LinkBuffer:
        """A LinkBuffer sharing the memory of the next n bytes, consumed."""
        await self._fill("slice", _check_n("slice", n))
        return self._input.slice(n)

    async def until(self, delim: Delimiter) -> memoryview:
        """Bytes up to and including the first `delim`, consumed.

        Reads the source until the delimiter comes; if the source ends first,
        raises EndOfStreamError and the bytes stay readable.
        """
        buf = self._input
        while True:
            try:
                return buf.until(delim)
            except NotEnoughDataError:
                pass
            # one read per rescan, growing with the line (capped), so a long
            # line costs O(n log n) scanning rather than O(n^2 / 4 KiB)
            if self._eof or not await self._fill_once(min(max(len(buf), 4096), 1 << 20)):
                self._eof = True
                raise EndOfStreamError(
                    f"until: the source ended after {len(buf)} bytes without the delimiter")

    async def read(self, n: int = 65536) -> bytes:
        """net.Conn-style: at least 1 byte, up to n (a copy); ``b""`` once the source ended."""
        _check_n("read", n)
        if n == 0:
            return b""
        if len(self._input) == 0:
            try:
                await self._fill("read", 1)
            except EndOfStreamError:
                return b""
        return self._input.read_binary(min(n, len(self._input)))

    def close(self) -> None:
        """Free the buffered data; the source is left open (it belongs to the caller)."""
        if self._own_input:
            self._input.close()


class SinkWriter:
    """A netpoll Writer that hands its data to a destination on ``flush()`` (Go's ``zcWriter``).

    Made by :func:`new_writer`. The writing methods are the LinkBuffer's;
    ``await flush()`` writes everything written so far to the destination
    (node by node, with no copy on this side) and, for an asyncio
    ``StreamWriter``, awaits ``drain()``.
    """

    def __init__(self, dst: Any) -> None:
        self._dst = dst
        self._output = LinkBuffer()
        if callable(getattr(dst, "write", None)) and _is_async_method(dst, "drain"):
            self._stream = True
        elif callable(getattr(dst, "write", None)):
            self._stream = False
        else:
            raise TypeError(f"new_writer: expected a binary file-like (write) or an asyncio "
                            f"StreamWriter, not {type(dst).__name__}")

    def malloc(self, n: int) -> memoryview:
        """Reserve n writable bytes to fill in place."""
        return self._output.malloc(n)

    def malloc_len(self) -> int:
        """Bytes written or reserved since the last flush."""
        return self._output.malloc_len()

    def malloc_ack(self, n: int) -> None:
        """Keep the first n bytes written since the last flush, drop the rest."""
        self._output.malloc_ack(n)

    def write_binary(self, data: Buffer) -> int:
        """Append any bytes-like object; returns its length."""
        return self._output.write_binary(data)

    def write_string(self, s: str, encoding: str = "utf-8") -> int:
        """Append encoded text; returns the bytes written."""
        return self._output.write_string(s, encoding)

    def write_byte(self, b: int) -> None:
        """Append one byte."""
        self._output.write_byte(b)

    def write_direct(self, data: Buffer, remain_cap: int) -> None:
        """Link `data` in front of the last `remain_cap` malloc'd bytes."""
        self._output.write_direct(data, remain_cap)

    def write_buffer(self, other: LinkBuffer) -> None:
        """Move all readable data of `other` here without copying; `other` is closed."""
        self._output.write_buffer(other)

    def append(self, other: LinkBuffer) -> None:
        """Same as write_buffer."""
        self._output.write_buffer(other)

    async def flush(self) -> None:
        """Write everything written so far to the destination (and drain a stream)."""
        out = self._output
        out.flush()
        total = len(out)
        if not total:
            return
        write = self._dst.write
        sent = 0
        try:
            for view in out.get_bytes():
                if self._stream:
                    write(view)
                    sent += len(view)
                    continue
                while view:
                    n = write(view)
                    if n is None:
                        raise BlockingIOError("new_writer: the destination would block "
                                              "(write returned None)")
                    n = int(n)
                    sent += n
                    view = view[n:]
        finally:
            out.skip(sent)
            out.release()
        if self._stream:
            await self._dst.drain()

    async def write(self, data: Buffer) -> int:
        """net.Conn-style: write_binary + flush."""
        n = self._output.write_binary(data)
        await self.flush()
        return n

    def close(self) -> None:
        """Drop unflushed data; the destination is left open (it belongs to the caller)."""
        self._output.close()


class SourceReadWriter(SourceReader, SinkWriter):
    """Both a :class:`SourceReader` and a :class:`SinkWriter` (Go's ``NewReadWriter``)."""

    def __init__(self, src: Any, dst: Any) -> None:
        SourceReader.__init__(self, src)
        SinkWriter.__init__(self, dst)

    async def read(self, n: int = 65536) -> bytes:
        """net.Conn-style read: at least 1 byte, up to n; ``b""`` once the source ended."""
        return await SourceReader.read(self, n)

    def close(self) -> None:
        """Free both buffers; the source and destination stay open."""
        SourceReader.close(self)
        SinkWriter.close(self)


@overload
def new_reader(src: Connection) -> Connection: ...
@overload
def new_reader(src: Any) -> SourceReader: ...
def new_reader(src: Any) -> Connection | SourceReader:
    """A netpoll Reader over `src` (Go's ``NewReader``).

    `src` is a binary file-like object (``readinto`` or ``read``), an
    asyncio ``StreamReader`` (or anything whose ``read`` is a coroutine
    function), or a filled LinkBuffer (read as a source that has ended). A
    connection is returned as it is.
    """
    if isinstance(src, Connection):
        return src
    return SourceReader(src)


@overload
def new_writer(dst: Connection) -> Connection: ...
@overload
def new_writer(dst: Any) -> SinkWriter: ...
def new_writer(dst: Any) -> Connection | SinkWriter:
    """A netpoll Writer over `dst` (Go's ``NewWriter``).

    `dst` is a binary file-like object (``write``) or an asyncio
    ``StreamWriter`` (``write`` + ``drain``). A connection is returned as it is.
    """
    if isinstance(dst, Connection):
        return dst
    return SinkWriter(dst)


@overload
def new_read_writer(rw: Connection) -> Connection: ...
@overload
def new_read_writer(rw: Any) -> SourceReadWriter: ...
def new_read_writer(rw: Any) -> Connection | SourceReadWriter:
    """A netpoll Reader and Writer in one object (Go's ``NewReadWriter``).

    `rw` is a binary file-like object open for reading and writing
    (``socket.makefile("rwb")``, ``io.BufferedRWPair``...) or a
    ``(reader, writer)`` pair such as ``asyncio.open_connection`` returns.
    A connection is returned as it is.
    """
    if isinstance(rw, Connection):
        return rw
    if isinstance(rw, tuple) and len(rw) == 2:
        return SourceReadWriter(rw[0], rw[1])
    return SourceReadWriter(rw, rw)


# -- file-like over a LinkBuffer ------------------------------------------------------


class LinkBufferIO(io.BufferedIOBase):
    """A synchronous binary file-like object over a LinkBuffer (Go's ``NewIOReader``/``NewIOWriter``).

    Reading consumes the buffer's readable data and releases its memory, as
    in Go; an empty buffer reads as end of file (``b""``), so ``read()``,
    ``json.load``, ``pickle.load``, ``gzip.GzipFile(fileobj=...)`` and
    ``tarfile.open(fileobj=..., mode="r|*")`` work. Writing appends and
    flushes at once (Go: Malloc + copy + Flush); ``bytes`` of 4 KiB or more
    are linked without copying.

    With ``seekable=True`` the views handed out by reading are kept (no
    copy) until ``close()``, so ``seek``/``tell`` work anywhere in what has
    been read so far and up to the end of the readable data; that is what
    ``tarfile.open(fileobj=...)`` with its default mode needs. Closing this
    object does not close the LinkBuffer.
    """

    def __init__(self, buf: BufferReader | BufferWriter | LinkBuffer, *,
                 readable: bool = True, writable: bool = True,
                 seekable: bool = False) -> None:
        super().__init__()
        self._buf: Any = buf
        self._readable = readable and callable(getattr(buf, "next", None))
        self._writable = writable and callable(getattr(buf, "write_binary", None))
        self._seekable = seekable and self._readable
        # seekable mode: the consumed data, as views, and where the reader is in it
        self._history: list[memoryview] = []
        self._starts: list[int] = []
        self._consumed = 0
        self._pos = 0

    # -- io plumbing ---------------------------------------------------------

    def readable(self) -> bool:
        """True unless made by new_io_writer."""
        return self._readable

    def writable(self) -> bool:
        """True unless made by new_io_reader."""
        return self._writable

    def seekable(self) -> bool:
        """True when made with ``seekable=True``."""
        return self._seekable

    def _check_readable(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if not self._readable:
            raise io.UnsupportedOperation("read: not readable")

    def close(self) -> None:
        """Close this file object (and drop the kept views); the LinkBuffer stays open."""
        self._history.clear()
        self._starts.clear()
        super().close()

    # -- reading -------------------------------------------------------------

    def _take(self, n: int) -> memoryview:
        """Up to n bytes from the current position (n < 0: all), consumed if new."""
        if self._pos < self._consumed:
            # seekable: replay from the kept views
            i = bisect.bisect_right(self._starts, self._pos) - 1
            kept = self._history[i]
            off = self._pos - self._starts[i]
            end = len(kept) if n < 0 else min(len(kept), off + n)
            self._pos += end - off
            return kept[off:end]
        buf = self._buf
        avail = len(buf)
        k = avail if n < 0 else min(n, avail)
        if k == 0:
            return memoryview(b"")
        view: memoryview = buf.next(k)
        if self._seekable:
            self._history.append(view)
            self._starts.append(self._consumed)
            self._consumed += k
            self._pos += k
        else:
            buf.release()
        return view

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes (all when -1 or None), consumed; ``b""`` when empty."""
        self._check_readable()
        n = -1 if size is None or size < 0 else size
        if n == 0:
            return b""
        parts = []
        while n != 0:
            view = self._take(n)
            if not view:
                break
            parts.append(view)
            if n > 0:
                n -= len(view)
        return b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        """Same as read: everything readable is already in memory."""
        return self.read(size)

    def readinto(self, b: Buffer) -> int:
        """Fill `b` with up to len(b) bytes, consumed; 0 when empty."""
        self._check_readable()
        out = memoryview(b).cast("B")
        done = 0
        while done < len(out):
            view = self._take(len(out) - done)
            if not view:
                break
            out[done:done + len(view)] = view
            done += len(view)
        return done

    def readinto1(self, b: Buffer) -> int:
        """Same as readinto."""
        return self.readinto(b)

    def readline(self, size: int | None = -1) -> bytes:
        """Bytes up to and including the next ``b"\\n"`` (or all that is left)."""
        self._check_readable()
        limit = -1 if size is None or size < 0 else size
        if self._pos < self._consumed or limit >= 0:
            # rare paths: byte-wise over views (replay) or bounded lines
            line = bytearray()
            while limit < 0 or len(line) < limit:
                c = self.read(1)
                if not c:
                    break
                line += c
                if c == b"\n":
                    break
            return bytes(line)
        buf = self._buf
        try:
            view: memoryview = buf.until(b"\n")
        except NotEnoughDataError:
            return self.read()
        if self._seekable:
            self._history.append(view)
            self._starts.append(self._consumed)
            self._consumed += len(view)
            self._pos += len(view)
        else:
            buf.release()
        return bytes(view)

    def peek(self, size: int = 0) -> bytes:
        """Bytes from the current position, not consumed (at least `size` if there; all if 0)."""
        self._check_readable()
        want = size if size > 0 else None
        parts: list[memoryview] = []
        total = 0
        if self._pos < self._consumed:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            off = self._pos - self._starts[i]
            for kept in self._history[i:]:
                parts.append(kept[off:])
                total += len(kept) - off
                off = 0
                if want is not None and total >= want:
                    return b"".join(parts)
        avail = len(self._buf)
        n = avail if want is None else min(want - total, avail)
        parts.append(self._buf.peek(n))
        return b"".join(parts)

    # -- seeking (seekable=True only) -----------------------------------------

    def tell(self) -> int:
        """Bytes read so far through this object (minus seeks back)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move within what was read and what is readable (seekable=True only)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if not self._seekable:
            raise io.UnsupportedOperation("seek: not seekable (new_io_reader(buf, seekable=True))")
        end = self._consumed + len(self._buf)
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = end + offset
        else:
            raise ValueError(f"seek: bad whence {whence}")
        if target < 0:
            raise ValueError(f"seek({offset}, {whence}): negative position {target}")
        target = min(target, end)
        if target > self._consumed:
            # consume (keeping views) up to the target
            self._pos = self._consumed
            while self._pos < target:
                if not self._take(target - self._pos):
                    break
        self._pos = target
        return target

    # -- writing -------------------------------------------------------------

    def write(self, b: Buffer) -> int:
        """Append `b` and make it readable at once; returns len(b)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if not self._writable:
            raise io.UnsupportedOperation("write: not writable")
        n: int = self._buf.write_binary(b)
        self._buf.flush()
        return n

    def flush(self) -> None:
        """Nothing to do: every write is flushed into the LinkBuffer at once."""
        if self.closed:
            raise ValueError("I/O operation on closed file")


# -- asyncio Streams-like over a connection --------------------------------------------


class StreamAdapter:
    """An asyncio ``StreamReader``/``StreamWriter``-like object over a netpoll Reader/Writer.

    Made by :func:`new_io_reader` / :func:`new_io_writer` /
    :func:`new_io_read_writer` from a connection (or any awaitable Reader /
    Writer). Reading: ``await read(n)``, ``readexactly(n)``,
    ``readuntil(sep)``, ``readline()``, ``at_eof()`` and ``async for line in
    stream``, with StreamReader's errors (``IncompleteReadError``,
    ``LimitOverrunError``, ``ValueError`` from ``readline``) and its `limit`.
    Writing: ``write``/``writelines`` buffer, ``await drain()`` flushes,
    ``close()``/``await wait_closed()`` flush what is pending and close the
    connection.
    """

    def __init__(self, conn: Any, *, limit: int = _STREAM_LIMIT,
                 reading: bool = True, writing: bool = True) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ValueError(f"limit must be a positive int, not {limit!r}")
        self._conn = conn
        self._limit = limit
        self._reading = reading
        self._writing = writing
        self._closing: asyncio.Future[None] | None = None
        self._eof = False

    # -- StreamReader ----------------------------------------------------------

    def _need_reader(self, op: str) -> Any:
        if not self._reading:
            raise io.UnsupportedOperation(f"{op}: this stream was made for writing only")
        return self._conn

    async def _wait(self, n: int) -> bool:
        """Wait until n bytes are buffered; False if the peer closed first."""
        conn = self._conn
        if len(conn) >= n:
            return True
        try:
            await conn.peek(n)
        except EndOfStreamError:
            self._eof = True
            return False
        return True

    async def read(self, n: int = -1) -> bytes:
        """Up to n bytes (at least 1, unless at EOF); n = -1 reads until EOF."""
        conn = self._need_reader("read")
        if n == 0:
            return b""
        if n < 0:
            parts = []
            while await self._wait(len(conn) + 1):
                pass
            if len(conn):
                parts.append(await conn.read_binary(len(conn)))
            return b"".join(parts)
        if not await self._wait(1):
            return b""
        data: bytes = await conn.read_binary(min(n, len(conn)))
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly n bytes; IncompleteReadError (with what came, consumed) at EOF."""
        conn = self._need_reader("readexactly")
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if n == 0:
            return b""
        if not await self._wait(n):
            partial = await conn.read_binary(len(conn))
            raise asyncio.IncompleteReadError(partial, n)
        data: bytes = await conn.read_binary(n)
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including `separator`.

        At EOF first: IncompleteReadError with everything left (consumed).
        No separator within `limit` bytes: LimitOverrunError, nothing consumed.
        """
        conn = self._need_reader("readuntil")
        sep = bytes(separator)
        seplen = len(sep)
        if seplen == 0:
            raise ValueError("Separator should be at least one-byte string")
        offset = 0
        while True:
            avail = len(conn)
            if avail - offset >= seplen:
                view = await conn.peek(avail)
                i = bytes(view[offset:]).find(sep) if offset else view.tobytes().find(sep)
                if i >= 0:
                    i += offset
                    if i > self._limit:
                        raise asyncio.LimitOverrunError(
                            "Separator is found, but chunk is longer than limit", i)
                    data: bytes = await conn.read_binary(i + seplen)
                    return data
                offset = avail + 1 - seplen
                if offset > self._limit:
                    raise asyncio.LimitOverrunError(
                        "Separator is not found, and chunk exceed the limit", offset)
            if not await self._wait(avail + 1):
                partial = await conn.read_binary(len(conn))
                raise asyncio.IncompleteReadError(partial, None)

    async def readline(self) -> bytes:
        """One line (with its ``b"\\n"``); at EOF what is left; ValueError past the limit."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except asyncio.LimitOverrunError as exc:
            conn = self._conn
            # as StreamReader: drop the over-long line (or what is buffered of it)
            head = await conn.peek(min(len(conn), exc.consumed + 1))
            if bytes(head[exc.consumed:exc.consumed + 1]) == b"\n":
                await conn.skip(exc.consumed + 1)
            else:
                await conn.skip(len(conn))
            raise ValueError(exc.args[0]) from None

    def _active(self) -> bool:
        conn = self._conn
        is_active = getattr(conn, "is_active", None)
        if is_active is not None:
            return bool(is_active())
        at_eof = getattr(conn, "at_eof", None)     # a SourceReader
        return not (at_eof is not None and at_eof())

    def at_eof(self) -> bool:
        """True when the peer closed (or the connection is closed) and nothing is buffered."""
        return len(self._conn) == 0 and (self._eof or not self._active())

    def __aiter__(self) -> AsyncIterator[bytes]:
        """``async for line in stream``: lines until the end of stream."""
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    # -- StreamWriter --------------------------------------------------------

    def _need_writer(self, op: str) -> Any:
        if not self._writing:
            raise io.UnsupportedOperation(f"{op}: this stream was made for reading only")
        return self._conn

    def write(self, data: Buffer) -> None:
        """Buffer `data`; ``await drain()`` sends it."""
        self._need_writer("write").write_binary(data)

    def writelines(self, data: Iterable[Buffer]) -> None:
        """Buffer every item of `data`."""
        write = self._need_writer("writelines").write_binary
        for item in data:
            write(item)

    async def drain(self) -> None:
        """Send everything buffered (waits under backpressure)."""
        await self._need_writer("drain").flush()

    def can_write_eof(self) -> bool:
        """False: netpoll connections do not half-close."""
        return False

    def write_eof(self) -> None:
        """Not supported (see can_write_eof)."""
        raise NotImplementedError("write_eof: netpoll connections do not half-close")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"peername"``, ``"sockname"``: the connection's addresses."""
        conn = self._conn
        if name == "peername":
            return getattr(conn, "remote_addr", default)
        if name == "sockname":
            return getattr(conn, "local_addr", default)
        return default

    def is_closing(self) -> bool:
        """True once close() was called or the connection is closed."""
        return self._closing is not None or not self._active()

    def close(self) -> None:
        """Send what is buffered (in the background), then close the connection."""
        if self._closing is not None:
            return
        conn = self._conn
        loop = asyncio.get_running_loop()
        self._closing = loop.create_future()
        if self._writing and self._active() and conn.malloc_len():
            task = loop.create_task(self._flush_and_close())
            task.add_done_callback(self._closed)
        else:
            conn.close()
            self._closing.set_result(None)

    async def _flush_and_close(self) -> None:
        try:
            await self._conn.flush()
        finally:
            self._conn.close()

    def _closed(self, task: asyncio.Task[None]) -> None:
        assert self._closing is not None
        if self._closing.done():
            return
        exc = None if task.cancelled() else task.exception()
        if exc is None:
            self._closing.set_result(None)
        else:
            self._closing.set_exception(exc)

    async def wait_closed(self) -> None:
        """Wait until close() has sent what was buffered and closed the connection."""
        if self._closing is None:
            raise RuntimeError("wait_closed: close() was not called")
        await asyncio.shield(self._closing)

    async def __aenter__(self) -> StreamAdapter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


# -- the Go-named constructors ---------------------------------------------------------


def _is_awaitable_reader(r: object) -> bool:
    return isinstance(r, Connection | SourceReader) or _is_async_method(r, "next")


@overload
def new_io_reader(r: _F, *, seekable: bool = ...) -> _F: ...
@overload
def new_io_reader(r: LinkBuffer | BufferReader, *, seekable: bool = ...) -> LinkBufferIO: ...
@overload
def new_io_reader(r: Reader | Connection, *, limit: int = ...) -> StreamAdapter: ...
def new_io_reader(r: Any, *, seekable: bool = False,
                  limit: int = _STREAM_LIMIT) -> LinkBufferIO | StreamAdapter | io.IOBase:
    """A Python reading object over a netpoll Reader (Go's ``NewIOReader``).

    Over a LinkBuffer (or any synchronous Reader): a binary file-like
    :class:`LinkBufferIO` that consumes it (``seekable=True`` keeps what was
    read so ``seek`` works). Over a connection (or any awaitable Reader): a
    StreamReader-like :class:`StreamAdapter` (``limit`` as StreamReader's).
    An object that is already a file (``io.IOBase``) is returned as it is.
    """
    if isinstance(r, io.IOBase):
        return r
    if _is_awaitable_reader(r):
        return StreamAdapter(r, limit=limit, writing=False)
    if not callable(getattr(r, "next", None)):
        raise TypeError(f"new_io_reader: expected a LinkBuffer or a netpoll Reader, "
                        f"not {type(r).__name__}")
    return LinkBufferIO(r, writable=False, seekable=seekable)


@overload
def new_io_writer(w: _F) -> _F: ...
@overload
def new_io_writer(w: LinkBuffer | BufferWriter) -> LinkBufferIO: ...
@overload
def new_io_writer(w: Writer | Connection) -> StreamAdapter: ...
def new_io_writer(w: Any) -> LinkBufferIO | StreamAdapter | io.IOBase:
    """A Python writing object over a netpoll Writer (Go's ``NewIOWriter``).

    Over a LinkBuffer: a binary file-like whose ``write`` appends and
    flushes. Over a connection (or any Writer with an awaitable flush): a
    StreamWriter-like :class:`StreamAdapter` (``write`` + ``await drain()``).
    An object that is already a file (``io.IOBase``) is returned as it is.
    """
    if isinstance(w, io.IOBase):
        return w
    if not callable(getattr(w, "write_binary", None)):
        raise TypeError(f"new_io_writer: expected a LinkBuffer or a netpoll Writer, "
                        f"not {type(w).__name__}")
    if isinstance(w, Connection | SinkWriter) or _is_async_method(w, "flush"):
        return StreamAdapter(w, reading=False)
    return LinkBufferIO(w, readable=False)


@overload
def new_io_read_writer(rw: _F, *, seekable: bool = ...) -> _F: ...
@overload
def new_io_read_writer(rw: LinkBuffer, *, seekable: bool = ...) -> LinkBufferIO: ...
@overload
def new_io_read_writer(rw: ReadWriter | Connection, *, limit: int = ...) -> StreamAdapter: ...
def new_io_read_writer(rw: Any, *, seekable: bool = False,
                       limit: int = _STREAM_LIMIT) -> LinkBufferIO | StreamAdapter | io.IOBase:
    """Both of the above in one object (Go's ``NewIOReadWriter``).

    Over a LinkBuffer: a file-like that reads (consuming) what was flushed
    and writes at the end. Over a connection: one StreamReader- and
    StreamWriter-like object (``reader = writer = new_io_read_writer(conn)``).
    """
    if isinstance(rw, io.IOBase):
        return rw
    if _is_awaitable_reader(rw):
        return StreamAdapter(rw, limit=limit)
    if not callable(getattr(rw, "next", None)):
        raise TypeError(f"new_io_read_writer: expected a LinkBuffer or a netpoll "
                        f"ReadWriter, not {type(rw).__name__}")
    return LinkBufferIO(rw, seekable=seekable)

