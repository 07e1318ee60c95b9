"""netpoll: zero-copy buffers and an epoll reactor for asyncio servers and clients."""

from __future__ import annotations

from netpoll._buffer import LinkBuffer
from netpoll.errors import (
    ConcurrentAccessError,
    ConnectionClosedError,
    DialTimeoutError,
    EndOfStreamError,
    NetpollError,
    NotEnoughDataError,
    ReadTimeoutError,
    WriteTimeoutError,
)

__version__ = "0.1.0"

__all__ = [
    "ConcurrentAccessError",
    "ConnectionClosedError",
    "DialTimeoutError",
    "EndOfStreamError",
    "LinkBuffer",
    "NetpollError",
    "NotEnoughDataError",
    "ReadTimeoutError",
    "WriteTimeoutError",
]
