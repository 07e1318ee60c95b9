"""netpoll: zero-copy buffers and an epoll reactor for asyncio servers and clients.

A Python port of CloudWeGo Netpoll. ``import netpoll`` is all a user needs;
``netpoll.mux`` holds the multiplexing helpers.
"""

from __future__ import annotations

from netpoll import mux, protocols, transports
from netpoll._buffer import LinkBuffer
from netpoll._core import Connection, EventLoop, configure, get_config, new_fd_connection
from netpoll._loop import loop_factory, run
from netpoll.adapters import (
    new_io_read_writer,
    new_io_reader,
    new_io_writer,
    new_read_writer,
    new_reader,
    new_writer,
)
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
from netpoll.net import (
    Address,
    Dialer,
    Listener,
    TCPListener,
    UnixListener,
    convert_listener,
    create_listener,
    dial_connection,
)
from netpoll.workers import run_workers  # stdlib imports only: cheap

__version__ = "0.1.0"

__all__ = [
    "Address",
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
    "TCPListener",
    "UnixListener",
    "WriteTimeoutError",
    "configure",
    "get_config",
    "convert_listener",
    "create_listener",
    "dial_connection",
    "loop_factory",
    "mux",
    "new_fd_connection",
    "new_io_read_writer",
    "new_io_reader",
    "new_io_writer",
    "new_read_writer",
    "new_reader",
    "new_writer",
    "protocols",
    "run_workers",
    "run",
    "transports",
]
