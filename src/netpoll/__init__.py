"""netpoll: zero-copy buffers and an epoll reactor for asyncio servers and clients.

A Python port of CloudWeGo Netpoll. ``import netpoll`` is all a user needs;
``netpoll.mux`` holds the multiplexing helpers.
"""

from __future__ import annotations

from netpoll import mux, transports
from netpoll._buffer import LinkBuffer
from netpoll._core import Connection, EventLoop, configure, new_fd_connection
from netpoll._loop import loop_factory, run
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
from netpoll.net import Dialer, Listener, convert_listener, create_listener, dial_connection

__version__ = "0.1.0"

__all__ = [
    "ConcurrentAccessError",
    "Connection",
    "ConnectionClosedError",
    "DialTimeoutError",
    "Dialer",
    "EndOfStreamError",
    "EventLoop",
    "LinkBuffer",
    "Listener",
    "NetpollError",
    "NotEnoughDataError",
    "ReadTimeoutError",
    "WriteTimeoutError",
    "configure",
    "convert_listener",
    "create_listener",
    "dial_connection",
    "loop_factory",
    "mux",
    "new_fd_connection",
    "run",
    "transports",
]
