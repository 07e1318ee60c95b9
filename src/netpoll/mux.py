"""Multiplexing helpers: many tasks writing to one connection (Go: ``netpoll/mux``).

``ShardQueue`` lets any number of tasks share one connection for writing.
Each task encodes its message into its own :class:`~netpoll.LinkBuffer` and
hands the queue a *getter*, a callable that returns that buffer (or None to
send nothing). The queue moves every getter's data to the connection's
writer without copying (``writer.write_buffer``) and sends a whole batch
with one ``flush()``.

Why it is built this way
------------------------

Go Netpoll spreads getters over ``size`` shards, each behind a spin lock, so
that goroutines on different cores do not contend; one runner goroutine then
drains the triggered shards. Under asyncio every ``add`` runs on the loop's
thread, so there is no contention to spread: the queue keeps one FIFO list,
which also gives the ordering guarantee below for free. ``size`` is accepted
(and checked) so code ported from Go keeps its shape.

The rules:

* ``add`` is synchronous and cheap: it appends the getters and, when the queue
  was idle, schedules one drain with ``loop.call_soon``. No task is created
  per ``add``, and none at all while flushes complete at once.
* The drain calls the getters in ``add`` order, appends each buffer whole, and
  then flushes **once** for the whole batch. Getters added while that flush
  waits (socket backpressure) form the next batch. There is never more than
  one flush in progress on the connection, so the queue must be the
  connection's only writer while it is in use.
* A connection that is no longer active (closed by either side) makes the
  queue drop what it holds; adders never see an error. A flush error closes
  the connection, as in Go (``WriteTimeoutError`` included: a peer that does
  not read would otherwise pile up output without bound).
* A getter that raises, or returns something other than a LinkBuffer, is
  logged on the ``netpoll`` logger and skipped; nothing of it was written, so
  the byte stream stays well framed.
* ``await close()`` stops accepting getters (later ones are dropped, as in
  Go), waits until everything queued has been flushed or dropped, and leaves
  the connection open. A second ``close()`` just waits for the same end.

``add`` must be called from the thread running the connection's event loop.

``configure(shard_size=n)`` sets the default ``size`` of queues made with
``ShardQueue(None, conn)`` (Go's ``mux.ShardSize``, which defaults to
GOMAXPROCS; here the CPU count).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

from netpoll._buffer import LinkBuffer
from netpoll.errors import ConcurrentAccessError, ConnectionClosedError

__all__ = ["MuxConnection", "MuxWriter", "ShardQueue", "WriterGetter", "configure",
           "get_config"]

SHARD_SIZE_MAX = 1 << 20
"""The largest shard_size configure() accepts (Go has no bound; the size only labels work here)."""

_shard_size = max(1, os.cpu_count() or 1)


def _check_size(what: str, size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{what}: size must be an int, not {type(size).__name__}")
    if not 1 <= size <= SHARD_SIZE_MAX:
        raise ValueError(f"{what}({size}): size must be between 1 and {SHARD_SIZE_MAX}")
    return size


def configure(shard_size: int | None = None) -> None:
    """Set the mux settings; None leaves a setting as it is (Go: ``mux.ShardSize = n``).

    ``shard_size``: the size of a ``ShardQueue(None, conn)``, 1 to
    ``SHARD_SIZE_MAX`` (default: the CPU count, as Go's GOMAXPROCS). A bad
    value raises TypeError or ValueError and changes nothing.
    """
    global _shard_size
    if shard_size is not None:
        _shard_size = _check_size("configure(shard_size)", shard_size)


def get_config() -> dict[str, int]:
    """The current mux settings: ``{"shard_size": n}``."""
    return {"shard_size": _shard_size}

WriterGetter = Callable[[], LinkBuffer | None]
"""A callable returning the LinkBuffer to send, or None to send nothing."""


class MuxWriter(Protocol):
    """The part of a connection's Writer the queue uses."""

    def write_buffer(self, other: LinkBuffer) -> None:
        """Move all readable data of `other` to the output; `other` is closed."""

    def flush(self) -> Awaitable[None]:
        """Send everything written so far."""


class MuxConnection(Protocol):
    """What ShardQueue needs of a connection (``netpoll.Connection`` has it)."""

    @property
    def writer(self) -> MuxWriter:
        """The connection's Writer."""

    def is_active(self) -> bool:
        """False once closed by either side."""

    def close(self) -> None:
        """Close the connection."""


def _logger() -> logging.Logger:
    try:
        logger: logging.Logger = importlib.import_module("netpoll._core").get_config()["logger"]
    except (ImportError, AttributeError, KeyError):  # pragma: no cover - core always present
        logger = logging.getLogger("netpoll")
    return logger


class ShardQueue:
    """Batches many tasks' writes to one connection (Go: ``mux.ShardQueue``).

    ``queue.add(*getters)`` queues callables that each return a LinkBuffer (or
    None). Their data is appended to ``conn.writer`` without copying, each
    getter's data whole and in the order of ``add`` calls, and flushed once
    per batch. ``await queue.close()`` flushes what is queued, then stops.
    """

    __slots__ = ("size", "_conn", "_writer", "_loop", "_queue", "_busy", "_closing",
                 "_idle", "_batches", "_flushes")

    def __init__(self, size: int | None, conn: MuxConnection) -> None:
        """Make a queue for `conn`; `size` is Go's shard count (an int >= 1), or
        None for the configured ``shard_size``."""
        if size is None:
            size = _shard_size
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"ShardQueue: size must be an int, not {type(size).__name__}")
        if size < 1:
            raise ValueError(f"ShardQueue({size}): size must be >= 1")
        self.size = size
        self._conn = conn
        self._writer = conn.writer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[WriterGetter] = []
        self._busy = False             # a drain is scheduled or a flush is in progress
        self._closing = False
        self._idle: asyncio.Future[None] | None = None   # close() waits on it
        self._batches = 0
        self._flushes = 0

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return (f"<netpoll ShardQueue {state} queued={len(self._queue)} "
                f"busy={self._busy} flushes={self._flushes}>")

    @property
    def closed(self) -> bool:
        """True once close() has been called."""
        return self._closing

    @property
    def flushes(self) -> int:
        """How many flushes the queue has started (one per batch)."""
        return self._flushes

    def add(self, *getters: WriterGetter) -> None:
        """Queue getters; their data is sent in a later batch, in add order.

        Dropped silently once close() was called or the connection is closed.
        """
        if self._closing:
            return
        self._queue.extend(getters)
        if not self._busy and self._queue:
            self._busy = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._drain)

    async def close(self) -> None:
        """Stop taking getters and wait until everything queued is flushed or dropped.

        The connection stays open. Calling it again waits for the same end.
        """
        self._closing = True
        if not self._busy:
            return
        if self._idle is None:
            loop = self._loop if self._loop is not None else asyncio.get_running_loop()
            self._idle = loop.create_future()
        await asyncio.shield(self._idle)

    # -- the drain ---------------------------------------------------------------------

    def _drain(self) -> None:
        """Append every queued getter's data and start one flush; repeat while it is instant."""
        while self._queue:
            batch = self._queue
            self._queue = []
            if not self._conn.is_active():
                break                      # dropped: batch and queue go with it
            self._batches += 1
            if not self._append(batch):
                continue
            self._flushes += 1
            try:
                it = self._writer.flush().__await__()
            except ConnectionClosedError:
                break
            except Exception as exc:
                self._flush_failed(exc)
                break
            if not self._step(it):
                return                     # waiting: _step resumes the drain later
        self._queue = []
        self._set_idle()

    def _append(self, batch: list[WriterGetter]) -> bool:
        """Move the batch's buffers to the writer; True when anything was written."""
        wrote = False
        write_buffer = self._writer.write_buffer
        for getter in batch:
            try:
                buf = getter()
                if buf is None:
                    continue
                if buf.malloc_len():
                    buf.flush()            # written but not yet made readable
                write_buffer(buf)
            except ConnectionClosedError:
                return wrote
            except Exception as exc:
                _logger().error("netpoll: ShardQueue getter %r failed; its data is skipped",
                                getter, exc_info=exc)
                continue
            wrote = True
        return wrote

    def _step(self, it: Generator[Any, None, None]) -> bool:
        """Drive a flush awaitable; True when it finished (or failed) at once.

        This is what an asyncio Task does for a coroutine, without making a
        Task: a flush that the socket takes at once (the common case) never
        suspends, and one that waits is resumed from its future's callback.
        """
        try:
            yielded = it.send(None)
        except StopIteration:
            return True
        except (ConnectionClosedError, asyncio.CancelledError):
            self._queue = []
            return True
        except ConcurrentAccessError:
            # Someone else flushed this connection; ours stays queued in the
            # writer. Retry a little later rather than closing their stream.
            self._retry_flush()
            return False
        except Exception as exc:
            self._flush_failed(exc)
            return True
        loop = self._loop
        assert loop is not None
        if yielded is None:                # a bare yield: run again on the next iteration
            loop.call_soon(self._resume, it)
        elif hasattr(yielded, "add_done_callback"):
            yielded._asyncio_future_blocking = False
            yielded.add_done_callback(lambda _: self._resume(it))
        else:                              # pragma: no cover - not an asyncio awaitable
            it.close()
            self._flush_failed(RuntimeError(f"flush yielded {yielded!r}"))
            return True
        return False

    def _resume(self, it: Generator[Any, None, None]) -> None:
        if self._step(it):
            self._drain()

    def _retry_flush(self) -> None:
        loop = self._loop
        assert loop is not None
        loop.call_later(0.001, self._retry_now)

    def _retry_now(self) -> None:
        if not self._conn.is_active():
            self._queue = []
            self._set_idle()
            return
        try:
            it = self._writer.flush().__await__()
        except Exception as exc:
            self._flush_failed(exc)
            self._drain()
            return
        self._resume(it)

    def _flush_failed(self, exc: BaseException) -> None:
        """A flush error (other than a close) closes the connection, as in Go."""
        if not isinstance(exc, ConnectionClosedError):
            _logger().debug("netpoll: ShardQueue flush failed (%s); closing the connection",
                            exc)
        self._queue = []
        self._conn.close()

    def _set_idle(self) -> None:
        self._busy = False
        idle = self._idle
        if idle is not None and not self._queue:
            self._idle = None
            if not idle.done():
                idle.set_result(None)
