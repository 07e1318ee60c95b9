"""netpoll's error vocabulary.

One small hierarchy under :class:`NetpollError`. Each error also derives from
the stdlib class a Python user already catches for that situation
(``ConnectionError``, ``EOFError``, ``TimeoutError``, ``RuntimeError``), so
code written for asyncio streams keeps working. OS failures stay plain
``OSError`` subclasses, chained with ``raise ... from exc``.

Messages are lowercase, factual and carry the numbers involved, e.g.
``"next(10): only 4 bytes readable"``.
"""

from __future__ import annotations

__all__ = [
    "ConcurrentAccessError",
    "ConnectionClosedError",
    "DialTimeoutError",
    "EndOfStreamError",
    "NetpollError",
    "NotEnoughDataError",
    "ReadTimeoutError",
    "WriteTimeoutError",
]


class NetpollError(Exception):
    """Base class of every error netpoll raises itself."""


class NotEnoughDataError(NetpollError):
    """A LinkBuffer read asked for more than is readable; nothing was consumed."""


class ConnectionClosedError(NetpollError, ConnectionError):
    """The connection is closed (by this side, or by the peer)."""


class EndOfStreamError(ConnectionClosedError, EOFError):
    """The peer closed before enough data arrived; what did arrive stays readable."""


class ReadTimeoutError(NetpollError, TimeoutError):
    """A read waited past the read timeout; nothing was consumed, the connection stays open."""


class WriteTimeoutError(NetpollError, TimeoutError):
    """A flush waited past the write timeout; unsent data stays queued."""


class DialTimeoutError(NetpollError, TimeoutError):
    """Name resolution plus connect took longer than the dial timeout."""


class ConcurrentAccessError(NetpollError, RuntimeError):
    """Two flushes, or two reads, ran at once on one connection."""
