"""asyncio transports on the netpoll reactor.

Code written for asyncio — Protocols, Streams, servers and clients such as
uvicorn, aiohttp or redis-py — runs on netpoll's reactor unchanged: the
functions here have the signatures of the asyncio loop methods of the same
name, minus ``loop``, and return asyncio's own ``Server`` and a Transport that
behaves as asyncio's socket transport.

How a transport is built
------------------------
A transport is a netpoll ``Connection`` with a protocol instead of a handler::

    socket ──epoll (netpoll poller, C)──▶ conn.input ──plain on_request──▶ protocol.data_received
    protocol ──transport.write──▶ socket.send() now ── EAGAIN: the rest ──▶ loop writer ──▶ send

* Reading is the core's: a poller drains ``epoll_wait`` and ``recv`` in C for
  every ready connection, then calls the transport's plain-function
  ``on_request`` once per connection with new input; that call hands the bytes
  to ``data_received`` (or copies them into ``get_buffer()`` memory for a
  ``BufferedProtocol``). No asyncio reader callback and no loop iteration per
  connection.
* Writing is asyncio's own algorithm (send at once, buffer the rest, a loop
  writer callback drains it, ``pause_writing``/``resume_writing`` at the water
  marks). It is kept in Python until the core reports write errors and drain
  levels to the transport (see "core hooks" in docs/asyncio.md): asyncio's
  error semantics (``BrokenPipeError``/``ConnectionResetError`` into
  ``connection_lost``) and exact water marks need the errno and the drain
  events, which the core's ``flush_nowait`` does not report today.
* The socket is shared: the transport's ``socket.socket`` and the core's
  connection use one fd. The core owns it while the connection lives; when the
  peer closes, the core closes its fd, so the transport takes a ``dup`` of it
  first (in the close callback, which runs before the core's ``close``) and
  keeps writing on it — that is how ``eof_received()`` returning True
  (half-close, used by every ``StreamReaderProtocol``) and unsent output after
  a peer EOF keep asyncio's meaning.

Loops
-----
``_RouteMixin`` overrides the two factory methods through which every asyncio
selector loop makes its socket transports (``_make_socket_transport`` and
``_make_ssl_transport``): on a stock asyncio loop that is enough to route
``create_server``, ``create_connection``, the Unix variants,
``connect_accepted_socket``, ``start_tls`` and the Streams built on them.
uvloop implements those methods in C over libuv, so ``_BorrowedMixin``
supplies asyncio's own Python implementations of them (bound to the uvloop
loop) and the few private helpers they use. ``_LoopProxy`` does the same for
a running loop that was not made by ``netpoll.loop_factory``, which is how the
module-level functions below work on any loop.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import socket
import warnings
from asyncio import base_events as _base_events
from asyncio import constants
from asyncio import selector_events as _selector_events
from asyncio import sslproto as _sslproto
from asyncio import transports as _transports
from asyncio import trsock as _trsock
from asyncio import unix_events as _unix_events
from asyncio.log import logger
from collections.abc import Callable
from typing import Any

from netpoll._core import Connection, new_fd_connection

__all__ = [
    "NetpollTransport",
    "connect_accepted_socket",
    "create_connection",
    "create_server",
    "create_unix_connection",
    "create_unix_server",
    "is_netpoll_loop",
    "new_event_loop",
    "new_uvloop_event_loop",
    "open_connection",
    "open_unix_connection",
    "start_server",
    "start_tls",
    "start_unix_server",
]

# asyncio's private parts this module builds on (typeshed does not declare them)
base_events: Any = _base_events
selector_events: Any = _selector_events
sslproto: Any = _sslproto
trsock: Any = _trsock
unix_events: Any = _unix_events
_FlowControlMixin: Any = _transports._FlowControlMixin

# Python 3.13's Server keeps its transports (close_clients/abort_clients):
# _attach(transport) / _detach(transport); before, a bare count.
_SERVER_TRACKS_TRANSPORTS = len(inspect.signature(base_events.Server._attach).parameters) > 1

_TCP_CLOSE = 7  # include/net/tcp_states.h: the state a reset leaves a socket in
_DEFAULT_LIMIT = 2**16  # asyncio.streams._DEFAULT_LIMIT


def _peer_reset(sock: socket.socket) -> bool:
    """True if a TCP socket that has not sent its FIN was reset.

    The core reads the socket and does not report the errno of a failed
    ``recv``; the TCP state tells a reset (CLOSE) from an orderly FIN
    (CLOSE_WAIT). Only valid before this side sent its FIN: after both FINs
    the socket is in TIME_WAIT, which also shows as CLOSE.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return False
    return info[0] == _TCP_CLOSE


class NetpollTransport(_FlowControlMixin, asyncio.Transport):  # type: ignore[misc]
    """An asyncio stream transport whose reads are done by netpoll's pollers.

    Behaves as asyncio's ``_SelectorSocketTransport`` (the same callbacks in
    the same order, the same errors and log messages); see the module
    docstring for how the work is split between the core and this class.
    """

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK
    _sock: socket.socket | None = None  # read by __del__ even if __init__ failed
    _conn: Connection | None = None

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        super().__init__(extra, loop)  # type: ignore[call-arg]
        self._loop: asyncio.AbstractEventLoop = loop
        self._tsock = trsock.TransportSocket(sock)
        self._extra["socket"] = self._tsock
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._sock_fd = sock.fileno()
        self._protocol_connected = False
        self._buffered = False
        self.set_protocol(protocol)
        self._server = server
        self._buffer = bytearray()
        self._conn_lost = 0  # set when the call to connection_lost is scheduled
        self._closing = False  # close() called
        self._paused = False  # pause_reading() called
        self._eof = False  # write_eof() called
        self._writing = False  # a loop writer callback is registered
        self._reading = False  # connection_made ran: input may be delivered
        self._local_close = False  # the core connection is being closed by us
        self._peer_closed: Connection | None = None  # closed by the peer: its leftover input
        self._peer_reset = False
        if server is not None:
            if _SERVER_TRACKS_TRANSPORTS:
                server._attach(self)
            else:
                server._attach()
        base_events._set_nodelay(sock)
        conn = new_fd_connection(self._sock_fd)
        self._sock = sock
        self._conn = conn
        conn.add_close_callback(self._on_conn_closed)
        loop.call_soon(self._protocol.connection_made, self)
        # only start reading when connection_made() has been called
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        info.append("read=idle" if self._paused or self._conn is None else "read=polling")
        state = "polling" if self._writing else "idle"
        info.append(f"write=<{state}, bufsize={len(self._buffer)}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        sock = self._sock
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            if self._conn is not None:
                sock.detach()  # the core owns the fd
                self._conn.close()
            else:
                sock.close()

    # -- protocol ------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol: Any = protocol
        self._protocol_connected = True

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    # -- reading ---------------------------------------------------------------------

    def _start_reading(self) -> None:
        self._reading = True
        if self._closing or self._paused:
            return
        conn = self._conn
        if conn is not None:
            conn.set_on_request(self._on_request)  # buffered input runs it at once
        elif self._peer_closed is not None:
            self._finish_peer_close()

    def pause_reading(self) -> None:
        if not self.is_reading():
            return
        self._paused = True
        if self._conn is not None:
            # the poller stops reading the socket once one read is buffered
            self._conn.set_read_buffer_limit(1)
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)
        if not self._reading:
            return  # _start_reading is still to come
        conn = self._conn
        if conn is not None:
            conn.set_read_buffer_limit(None)
            conn.set_on_request(self._on_request)  # delivers input buffered while paused
        elif self._peer_closed is not None:
            self._loop.call_soon(self._finish_peer_close)

    def _on_request(self, ctx: Any, conn: Connection) -> None:
        # A plain-function handler: the poller calls it after its I/O pass when
        # new input is buffered; input not consumed here stays buffered.
        if self._paused or self._closing:
            return
        if self._buffered:
            self._deliver_buffered(conn.input)
            return
        buf = conn.input
        data = buf.read_binary(len(buf))
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _deliver(self, buf: Any) -> None:
        n = len(buf)
        if not n:
            return
        data = buf.read_binary(n)
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _deliver_buffered(self, buf: Any) -> None:
        n = len(buf)
        while n and not self._paused and not self._closing:
            try:
                dst = self._protocol.get_buffer(-1)
                if not len(dst):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
            try:
                with memoryview(dst) as view, view.cast("B") as flat:
                    m = min(len(flat), n)
                    flat[:m] = buf.next(m)
            except (TypeError, ValueError) as exc:  # e.g. a read-only buffer, as recv_into says
                self._fatal_error(exc, "Fatal read error on socket transport")
                return
            n -= m
            try:
                self._protocol.buffer_updated(m)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return

    # -- the core connection closes --------------------------------------------------

    def _on_conn_closed(self, conn: Connection) -> None:
        """The core's close callback: runs before the core closes its fd."""
        self._conn = None
        sock = self._sock
        if self._local_close or sock is None:
            return
        if self._conn_lost:
            # connection_lost is already scheduled; the socket goes with the core's fd
            self._release_sock()
            return
        # The peer closed (EOF or reset). Keep the socket: the core closes its fd
        # after this callback, the transport may still have to write.
        self._peer_reset = not self._eof and _peer_reset(sock)
        self._adopt_sock()
        self._peer_closed = conn
        if self._reading and not self._paused:
            self._finish_peer_close()

    def _adopt_sock(self) -> None:
        """Replace the shared fd by a dup owned by the transport alone."""
        old = self._sock
        assert old is not None
        fd = os.dup(old.fileno())
        new = socket.socket(old.family, old.type, old.proto, fileno=fd)
        old.detach()
        self._tsock._sock = new
        if self._writing:
            self._remove_writer()
            self._sock = new
            self._sock_fd = fd
            self._add_writer()
        else:
            self._sock = new
            self._sock_fd = fd

    def _release_sock(self) -> None:
        """The core closes the fd: the socket object lets go of it."""
        if self._writing:
            self._remove_writer()
        if self._sock is not None:
            self._sock.detach()

    def _finish_peer_close(self) -> None:
        conn = self._peer_closed
        if conn is None or self._conn_lost or self._paused:
            return
        if not self._closing and not self._peer_reset:
            # input that arrived before the FIN (buffered while paused, or in the same read)
            if self._buffered:
                self._deliver_buffered(conn.input)
            else:
                self._deliver(conn.input)
            if self._paused or self._conn_lost:
                return
        self._peer_closed = None
        if self._closing:
            return
        if self._peer_reset:
            exc = ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # -- closing ---------------------------------------------------------------------

    def abort(self) -> None:
        self._force_close(None)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._conn is not None:
            self._conn.set_read_buffer_limit(1)  # as asyncio: stop reading
        if not self._buffer:
            self._conn_lost += 1
            if self._writing:
                self._remove_writer()
            self._loop.call_soon(self._call_connection_lost, None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        if self._buffer:
            self._buffer.clear()
            if self._writing:
                self._remove_writer()
        if not self._closing:
            self._closing = True
            if self._conn is not None:
                self._conn.set_read_buffer_limit(1)
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            if self._writing:
                self._remove_writer()
            conn = self._conn
            sock = self._sock
            if conn is not None:
                self._local_close = True
                self._conn = None
                if sock is not None:
                    sock.detach()  # the core closes the fd
                conn.close()
            elif sock is not None:
                sock.close()
            self._sock = None
            self._peer_closed = None
            self._protocol = None
            server = self._server
            if server is not None:
                if _SERVER_TRACKS_TRANSPORTS:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None

    # -- writing (asyncio's algorithm) ---------------------------------------------

    def _add_writer(self) -> None:
        self._writing = True
        self._loop.add_writer(self._sock_fd, self._write_ready)

    def _remove_writer(self) -> None:
        self._writing = False
        self._loop.remove_writer(self._sock_fd)

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if not self._buffer:
            sock = self._sock
            assert sock is not None
            try:
                n = sock.send(data)
            except (BlockingIOError, InterruptedError):
                pass
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            else:
                if n == len(data):
                    return
                data = memoryview(data)[n:]
            self._add_writer()
        self._buffer.extend(data)
        self._maybe_pause_protocol()

    def _write_ready(self) -> None:
        if self._conn_lost or not self._buffer or self._sock is None:
            return
        try:
            n = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            pass
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._remove_writer()
            self._buffer.clear()
            self._fatal_error(exc, "Fatal write error on socket transport")
        else:
            if n:
                del self._buffer[:n]
            self._maybe_resume_protocol()  # may append to the buffer
            if not self._buffer:
                self._remove_writer()
                if self._closing:
                    self._call_connection_lost(None)
                elif self._eof:
                    self._sock.shutdown(socket.SHUT_WR)

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._buffer and self._sock is not None:
            self._sock.shutdown(socket.SHUT_WR)

    def can_write_eof(self) -> bool:
        return True


def _set_result_unless_cancelled(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.cancelled():
        fut.set_result(result)


# -- loops -----------------------------------------------------------------------------


class _RouteMixin:
    """Makes a loop's socket transports netpoll transports."""

    @property
    def _np_loop(self) -> Any:
        return self

    def _make_socket_transport(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        *,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> NetpollTransport:
        return NetpollTransport(self._np_loop, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: asyncio.BaseProtocol,
        sslcontext: Any,
        waiter: asyncio.Future[Any] | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
        **kw: Any,
    ) -> Any:
        ssl_protocol = sslproto.SSLProtocol(
            self._np_loop,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            **kw,
        )
        NetpollTransport(self._np_loop, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport


_Base = base_events.BaseEventLoop
_Sel = selector_events.BaseSelectorEventLoop
_Unix = unix_events._UnixSelectorEventLoop


class _BorrowedMixin(_RouteMixin):
    """asyncio's own Python implementations, for loops that implement them in C.

    Each is the stdlib function bound to this loop, so argument checks, address
    resolution, Happy Eyeballs, the ``Server`` object and every error message
    are exactly those of the running Python's asyncio.
    """

    create_connection: Any = _Base.create_connection
    create_server: Any = _Base.create_server
    connect_accepted_socket: Any = _Base.connect_accepted_socket
    start_tls: Any = _Base.start_tls
    sendfile: Any = _Base.sendfile  # uvloop has none; asyncio's fallback over the transport
    _sendfile_native: Any = _Base._sendfile_native
    _sendfile_fallback: Any = _Base._sendfile_fallback
    create_unix_connection: Any = _Unix.create_unix_connection
    create_unix_server: Any = _Unix.create_unix_server
    _create_connection_transport: Any = _Base._create_connection_transport
    _create_server_getaddrinfo: Any = _Base._create_server_getaddrinfo
    _ensure_resolved: Any = _Base._ensure_resolved
    _connect_sock: Any = _Base._connect_sock
    _start_serving: Any = _Sel._start_serving
    _accept_connection: Any = _Sel._accept_connection
    _accept_connection2: Any = _Sel._accept_connection2
    def _stop_serving(self, sock: socket.socket) -> None:
        # asyncio's selector _stop_serving, plus what Python 3.13's unix loop adds: a
        # unix socket file made by create_unix_server is removed at close if it is
        # still the one it made (its inode); unix_events' own version calls super(),
        # which a borrowed method cannot.
        path = sock.getsockname() if sock in self._unix_server_sockets else None
        _Sel._stop_serving(self, sock)
        if path is not None:
            prev_ino = self._unix_server_sockets.pop(sock)
            try:
                if os.stat(path).st_ino == prev_ino:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                asyncio.log.logger.error(
                    "Unable to clean up listening UNIX socket %r: %r", path, err)

    @property
    def _debug(self) -> bool:
        return bool(self._np_loop.get_debug())

    @property
    def _unix_server_sockets(self) -> dict[Any, Any]:
        # Python 3.13's create_unix_server/_stop_serving record the socket paths
        # to unlink at close here.
        found: dict[Any, Any] | None = self.__dict__.get("_np_unix_server_sockets")
        if found is None:
            found = self.__dict__["_np_unix_server_sockets"] = {}
        return found

    def _add_reader(self, fd: int, callback: Callable[..., object], *args: Any) -> None:
        self._np_loop.add_reader(fd, callback, *args)

    def _remove_reader(self, fd: int) -> bool:
        return bool(self._np_loop.remove_reader(fd))


class _LoopProxy(_BorrowedMixin):
    """A running loop seen through netpoll's routing (module-level functions)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._real = loop

    @property
    def _np_loop(self) -> Any:
        return self._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_classes: dict[type, type] = {}


def _netpoll_class(cls: type) -> type:
    """The netpoll subclass of a loop class (made once per class)."""
    sub = _classes.get(cls)
    if sub is None:
        if issubclass(cls, _RouteMixin):
            return cls
        if issubclass(cls, selector_events.BaseSelectorEventLoop):
            mixin: type = _RouteMixin
        else:
            mixin = _BorrowedMixin
        sub = type(f"Netpoll{cls.__name__.lstrip('_')}", (mixin, cls), {"__module__": __name__})
        _classes[cls] = sub
    return sub


def is_netpoll_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """True if the loop's transports are netpoll's (made by ``netpoll.loop_factory``)."""
    return isinstance(loop, _RouteMixin)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new netpoll loop over stock asyncio (``netpoll.loop_factory()()``).

    Importable by name where a tool takes a loop factory, e.g.
    ``uvicorn app:app --loop netpoll.transports:new_event_loop``.
    """
    from netpoll._loop import loop_factory

    return loop_factory()()


def new_uvloop_event_loop() -> asyncio.AbstractEventLoop:
    """A new netpoll loop over uvloop (``netpoll.loop_factory(uvloop.new_event_loop)()``)."""
    import uvloop

    from netpoll._loop import loop_factory

    return loop_factory(uvloop.new_event_loop)()


def _route() -> Any:
    loop = asyncio.get_running_loop()
    if isinstance(loop, _RouteMixin):
        return loop
    return _LoopProxy(loop)


# -- module-level functions: asyncio's loop methods minus ``loop`` ------------------------


async def create_server(protocol_factory: Callable[[], asyncio.BaseProtocol],
                        host: Any = None, port: Any = None, **kwds: Any) -> asyncio.Server:
    """``loop.create_server`` on the running loop, with netpoll transports."""
    return await _route().create_server(protocol_factory, host, port, **kwds)  # type: ignore[no-any-return]


async def create_connection(protocol_factory: Callable[[], asyncio.BaseProtocol],
                            host: Any = None, port: Any = None,
                            **kwds: Any) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """``loop.create_connection`` on the running loop, with a netpoll transport."""
    return await _route().create_connection(protocol_factory, host, port, **kwds)  # type: ignore[no-any-return]


async def create_unix_server(protocol_factory: Callable[[], asyncio.BaseProtocol],
                             path: Any = None, **kwds: Any) -> asyncio.Server:
    """``loop.create_unix_server`` on the running loop, with netpoll transports."""
    return await _route().create_unix_server(protocol_factory, path, **kwds)  # type: ignore[no-any-return]


async def create_unix_connection(protocol_factory: Callable[[], asyncio.BaseProtocol],
                                 path: Any = None,
                                 **kwds: Any) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """``loop.create_unix_connection`` on the running loop, with a netpoll transport."""
    return await _route().create_unix_connection(protocol_factory, path, **kwds)  # type: ignore[no-any-return]


async def connect_accepted_socket(protocol_factory: Callable[[], asyncio.BaseProtocol],
                                  sock: socket.socket,
                                  **kwds: Any) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """``loop.connect_accepted_socket`` on the running loop, with a netpoll transport."""
    return await _route().connect_accepted_socket(protocol_factory, sock, **kwds)  # type: ignore[no-any-return]


async def start_tls(transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol,
                    sslcontext: Any, **kwds: Any) -> asyncio.Transport:
    """``loop.start_tls``: TLS over a netpoll transport (asyncio's ``SSLProtocol``).

    Works today through asyncio's Python TLS layer; netpoll's own TLS (in the
    core, API.md "TLS") will replace it without changing this signature.
    """
    return await _route().start_tls(transport, protocol, sslcontext, **kwds)  # type: ignore[no-any-return]


def _stream_pair(limit: int, loop: asyncio.AbstractEventLoop,
                 cb: Any = None) -> tuple[asyncio.StreamReader, asyncio.StreamReaderProtocol]:
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    return reader, asyncio.StreamReaderProtocol(reader, cb, loop=loop)


async def open_connection(host: Any = None, port: Any = None, *, limit: int = _DEFAULT_LIMIT,
                          **kwds: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` over a netpoll transport."""
    loop = asyncio.get_running_loop()
    reader, protocol = _stream_pair(limit, loop)
    transport, _ = await create_connection(lambda: protocol, host, port, **kwds)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def start_server(client_connected_cb: Any, host: Any = None, port: Any = None, *,
                       limit: int = _DEFAULT_LIMIT, **kwds: Any) -> asyncio.Server:
    """``asyncio.start_server`` with netpoll transports."""
    loop = asyncio.get_running_loop()
    return await create_server(lambda: _stream_pair(limit, loop, client_connected_cb)[1],
                               host, port, **kwds)


async def open_unix_connection(path: Any = None, *, limit: int = _DEFAULT_LIMIT,
                               **kwds: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_unix_connection`` over a netpoll transport."""
    loop = asyncio.get_running_loop()
    reader, protocol = _stream_pair(limit, loop)
    transport, _ = await create_unix_connection(lambda: protocol, path, **kwds)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def start_unix_server(client_connected_cb: Any, path: Any = None, *,
                            limit: int = _DEFAULT_LIMIT, **kwds: Any) -> asyncio.Server:
    """``asyncio.start_unix_server`` with netpoll transports."""
    loop = asyncio.get_running_loop()
    return await create_unix_server(lambda: _stream_pair(limit, loop, client_connected_cb)[1],
                                    path, **kwds)
