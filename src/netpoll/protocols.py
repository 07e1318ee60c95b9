"""The Reader and Writer contracts, as ``typing.Protocol`` classes (Go: ``nocopy.go``).

Go Netpoll has one ``Reader`` and one ``Writer`` interface, implemented by
the connection (blocking) and by ``LinkBuffer`` (never blocking). Python
cannot block, so each contract comes in two shapes:

* :class:`Reader` / :class:`Writer` / :class:`ReadWriter`: what a
  connection's ``reader`` and ``writer`` offer. The reading methods are
  awaitables that wait until enough data has arrived; ``flush()`` is an
  awaitable that hands the data on. ``netpoll.Connection`` and the adapters
  made by ``netpoll.new_reader`` / ``new_writer`` / ``new_read_writer`` have
  this shape.
* :class:`BufferReader` / :class:`BufferWriter`: the same methods,
  synchronous and never waiting: too little data raises
  ``NotEnoughDataError`` and consumes nothing. ``netpoll.LinkBuffer`` has
  this shape.

Meanings shared by both (the LinkBuffer table of API.md):

* ``next(n)`` returns the next n bytes as a read-only memoryview and consumes
  them; ``peek(n)`` does not consume; ``skip(n)`` consumes without
  returning; ``until(delim)`` returns up to and including the first
  ``delim``; ``read_binary``/``read_string`` return an independent copy;
  ``slice(n)`` returns a LinkBuffer sharing the memory; ``release()`` gives
  back consumed memory. n == 0 gives an empty result; a negative n is a
  ValueError.
* Views stay valid and unchanged for as long as the caller holds them (a
  stronger rule than Go's "valid until Release").
* Nothing written becomes readable (or is sent) before ``flush()``.

The protocols are structural: any object with these methods qualifies;
they are used for annotations (``def handle(r: netpoll.protocols.Reader)``)
and are not ``runtime_checkable``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

from netpoll._buffer import LinkBuffer

if TYPE_CHECKING:   # annotations only: typing_extensions is not a runtime dependency
    from typing_extensions import Buffer

__all__ = ["BufferReader", "BufferWriter", "ReadWriter", "Reader", "Writer"]

Delimiter = int | bytes | bytearray | memoryview


class Reader(Protocol):
    """Awaitable zero-copy reads (a connection's ``reader``; Go's ``Reader``)."""

    def __len__(self) -> int:
        """Bytes readable now, without waiting."""
        ...

    def len(self) -> int:
        """Bytes readable now, without waiting (Go's ``Len``)."""
        ...

    def release(self) -> None:
        """Give back the memory of consumed data."""
        ...

    def next(self, n: int) -> Awaitable[memoryview]:
        """The next n bytes, consumed, once they have arrived."""
        ...

    def peek(self, n: int) -> Awaitable[memoryview]:
        """The next n bytes, not consumed, once they have arrived."""
        ...

    def skip(self, n: int) -> Awaitable[None]:
        """Consume n bytes once they have arrived."""
        ...

    def until(self, delim: Delimiter) -> Awaitable[memoryview]:
        """Bytes up to and including the first `delim`, consumed."""
        ...

    def read_binary(self, n: int) -> Awaitable[bytes]:
        """An independent copy of the next n bytes, consumed."""
        ...

    def read_string(self, n: int, encoding: str = "utf-8",
                    errors: str = "strict") -> Awaitable[str]:
        """The next n bytes decoded, consumed (nothing consumed on a decode error)."""
        ...

    def read_byte(self) -> Awaitable[int]:
        """One byte, consumed."""
        ...

    def slice(self, n: int) -> Awaitable[LinkBuffer]:
        """A LinkBuffer sharing the memory of the next n bytes, consumed."""
        ...


class Writer(Protocol):
    """Zero-copy writes and an awaitable flush (a connection's ``writer``; Go's ``Writer``)."""

    def malloc(self, n: int) -> memoryview:
        """Reserve n writable bytes to fill in place."""
        ...

    def malloc_len(self) -> int:
        """Bytes written or reserved since the last flush."""
        ...

    def malloc_ack(self, n: int) -> None:
        """Keep the first n of those bytes, drop the rest."""
        ...

    def write_binary(self, data: Buffer) -> int:
        """Append any bytes-like object; returns its length."""
        ...

    def write_string(self, s: str, encoding: str = "utf-8") -> int:
        """Append encoded text; returns the bytes written."""
        ...

    def write_byte(self, b: int) -> None:
        """Append one byte."""
        ...

    def write_direct(self, data: Buffer, remain_cap: int) -> None:
        """Link `data` in front of the last `remain_cap` malloc'd bytes."""
        ...

    def write_buffer(self, other: LinkBuffer) -> None:
        """Move all readable data of `other` here without copying; `other` is closed."""
        ...

    def append(self, other: LinkBuffer) -> None:
        """Same as write_buffer (Go's ``Append``)."""
        ...

    def flush(self) -> Awaitable[None]:
        """Hand everything written so far on (to the kernel, the file, the stream)."""
        ...


class ReadWriter(Reader, Writer, Protocol):
    """Both :class:`Reader` and :class:`Writer` (Go's ``ReadWriter``)."""


class BufferReader(Protocol):
    """Synchronous reads that never wait (``LinkBuffer``; Go's ``Reader`` on a LinkBuffer)."""

    def __len__(self) -> int:
        """Readable bytes."""
        ...

    def len(self) -> int:
        """Readable bytes."""
        ...

    def release(self) -> None:
        """Give back the memory of consumed data."""
        ...

    def next(self, n: int) -> memoryview:
        """The next n bytes, consumed; NotEnoughDataError if fewer are readable."""
        ...

    def peek(self, n: int) -> memoryview:
        """The next n bytes, not consumed."""
        ...

    def skip(self, n: int) -> None:
        """Consume n bytes."""
        ...

    def until(self, delim: Delimiter) -> memoryview:
        """Bytes up to and including the first `delim`; NotEnoughDataError if absent."""
        ...

    def read_binary(self, n: int) -> bytes:
        """An independent copy of the next n bytes, consumed."""
        ...

    def read_string(self, n: int, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The next n bytes decoded, consumed."""
        ...

    def read_byte(self) -> int:
        """One byte, consumed."""
        ...

    def slice(self, n: int) -> LinkBuffer:
        """A LinkBuffer sharing the memory of the next n bytes, consumed."""
        ...


class BufferWriter(Protocol):
    """Synchronous writes (``LinkBuffer``): nothing is readable before ``flush()``."""

    def malloc(self, n: int) -> memoryview:
        """Reserve n writable bytes to fill in place."""
        ...

    def malloc_len(self) -> int:
        """Bytes written or reserved since the last flush."""
        ...

    def malloc_ack(self, n: int) -> None:
        """Keep the first n of those bytes, drop the rest."""
        ...

    def write_binary(self, data: Buffer) -> int:
        """Append any bytes-like object; returns its length."""
        ...

    def write_string(self, s: str, encoding: str = "utf-8") -> int:
        """Append encoded text; returns the bytes written."""
        ...

    def write_byte(self, b: int) -> None:
        """Append one byte."""
        ...

    def write_direct(self, data: Buffer, remain_cap: int) -> None:
        """Link `data` in front of the last `remain_cap` malloc'd bytes."""
        ...

    def write_buffer(self, other: LinkBuffer) -> None:
        """Move all readable data of `other` here without copying; `other` is closed."""
        ...

    def append(self, other: LinkBuffer) -> None:
        """Same as write_buffer."""
        ...

    def flush(self) -> None:
        """Make everything written so far readable."""
        ...
