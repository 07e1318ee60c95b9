"""asyncio transports on the netpoll reactor.

Code written for asyncio — Protocols, Streams, servers and clients such as
uvicorn, aiohttp or redis-py — runs on netpoll's reactor unchanged: the
functions here have the signatures of the asyncio loop methods of the same
name, minus ``loop``, and return asyncio's own ``Server`` and a Transport that
behaves as asyncio's socket transport.

How a transport is built
------------------------
A transport is a netpoll ``Connection`` with a protocol instead of a handler;
the work is the core's (``TransportCore``, ``reactor/transport.pyx``)::

    socket ──recv (the poller's I/O pass, C)──▶ conn input ──after the pass──▶ protocol.data_received
    protocol ──transport.write (C)──▶ send() now ── what the socket did not take ──▶ conn output ──EPOLLOUT──▶ send

* Reading: a poller drains ``epoll_wait`` and calls ``recv`` in C for every ready
  connection, then, after the pass, calls ``data_received(bytes)`` once per
  connection with everything that arrived (or ``get_buffer(-1)`` + copy +
  ``buffer_updated(n)`` for a ``BufferedProtocol``) - no asyncio reader
  callback, no Python trampoline, no loop iteration per connection. The reader
  starts after ``connection_made`` (as asyncio's); ``pause_reading()`` takes
  the socket out of the epoll set at once.
* Writing: ``write()`` sends at once from the caller's memory; what the
  socket does not take goes to the connection's output LinkBuffer (a large
  ``bytes`` is linked, not copied) and the poller sends it on EPOLLOUT.
  ``pause_writing``/``resume_writing`` at asyncio's water marks,
  ``write_eof`` after the queued output, ``close()`` sends what is queued,
  then ``connection_lost(None)``.
* Peer EOF: the core stops reading and calls ``eof_received()``; the
  connection stays open for writing until the transport closes. A failed
  ``recv``/``send`` gives ``connection_lost`` its ``OSError``
  (``conn.close_error``: ``ConnectionResetError``, ``BrokenPipeError``...).
* Python here: the transport object itself (extra info, the ``Server``, the
  socket object, ``connection_lost``). The methods called per request
  (``write``, ``is_closing``...) are C functions on the class that read the
  core from a slot of the instance, so they cost no Python frame.

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
import inspect
import os
import socket
import warnings
import weakref
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

from netpoll._core import (
    StreamCore,
    TransportCore,
    _sched_methods,
    _transport_methods,
    new_stream_core,
    new_transport_core,
)

__all__ = [
    "NetpollStreamReader",
    "NetpollStreamReaderProtocol",
    "NetpollStreamWriter",
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

_DEFAULT_LIMIT = 2**16  # asyncio.streams._DEFAULT_LIMIT


class _CoreSlot(_FlowControlMixin, asyncio.Transport):  # type: ignore[misc]
    """NetpollTransport's base: the slot where the transport keeps its core.

    A slot has a fixed offset, so the core's C functions that are the
    transport's per-request methods find the core without a dict lookup; the
    subclass keeps an ordinary instance dict (CPython's shared-key, inline
    values), so calls of those methods stay specialised.
    """

    __slots__ = ("_npc",)


class NetpollTransport(_CoreSlot):
    """An asyncio stream transport whose I/O and protocol calls are netpoll's core.

    Behaves as asyncio's ``_SelectorSocketTransport`` (the same callbacks in
    the same order, the same errors and log messages). The state and the work
    live in a ``TransportCore`` (C, ``reactor/transport.pyx``); this class
    keeps what asyncio's transport does in Python (extra info, the ``Server``,
    the socket object, ``connection_lost``). The methods called per request
    (``write``, ``writelines``, ``get_write_buffer_size``, ``is_closing``,
    ``pause_reading``, ``resume_reading``) are C functions (the core's
    ``_transport_methods``) set on the class after it is made; they find the
    core in the ``_npc`` slot, so a call costs no Python frame.
    """

    _start_tls_compatible = True
    # loop.sendfile(): os.sendfile (asyncio's _sendfile_native: reading paused, the
    # output drained, then sock_sendfile on the socket; borrowed over uvloop below)
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _sock: socket.socket | None = None  # read by __del__ even if __init__ failed
    _core: TransportCore | None = None

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
    ) -> None:
        # not _FlowControlMixin.__init__: the water marks are the core's
        asyncio.Transport.__init__(self, extra)
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
        self._protocol_connected = True
        self._server = server
        if server is not None:
            if _SERVER_TRACKS_TRANSPORTS:
                server._attach(self)
            else:
                server._attach()
        core = new_transport_core(self._sock_fd, self, protocol)
        self._sock = sock
        self._core = core
        self._npc = core
        # as asyncio's selector transports do: add_reader/add_writer (and their
        # removal) on this fd then raise RuntimeError instead of polling it a second time
        transports = getattr(loop, "_transports", None)
        if transports is not None:
            transports[self._sock_fd] = self
        loop.call_soon(protocol.connection_made, self)
        # only start reading when connection_made() has been called
        loop.call_soon(core.start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        core = self._core
        if self._sock is None:
            info.append("closed")
        elif core is not None and core.is_closing():
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if core is not None and self._sock is not None:
            info.append("read=polling" if core.is_reading() else "read=idle")
            size = core.get_write_buffer_size()
            info.append(f"write=<{'polling' if size else 'idle'}, bufsize={size}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        sock = self._sock
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock = None
            sock.detach()  # the core's connection owns the fd
            if self._core is not None:
                self._core.finish()

    # -- protocol ------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol_connected = True
        if self._core is not None:
            self._core.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._core.get_protocol() if self._core is not None else None  # type: ignore[return-value]

    @property
    def _protocol(self) -> Any:
        return self._core.get_protocol() if self._core is not None else None

    # -- the core's methods (write ... resume_reading: the C functions set on the
    #    class below replace these) -----------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._core.write(data)  # type: ignore[union-attr]

    def writelines(self, list_of_data: Any) -> None:
        self._core.writelines(list_of_data)  # type: ignore[union-attr]

    def get_write_buffer_size(self) -> int:
        return self._core.get_write_buffer_size()  # type: ignore[union-attr]

    def is_closing(self) -> bool:
        return self._core.is_closing()  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        self._core.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        self._core.resume_reading()  # type: ignore[union-attr]

    def is_reading(self) -> bool:
        return self._core.is_reading()  # type: ignore[union-attr]

    def close(self) -> None:
        self._core.close()  # type: ignore[union-attr]

    def abort(self) -> None:
        self._core.abort()  # type: ignore[union-attr]

    def write_eof(self) -> None:
        self._core.write_eof()  # type: ignore[union-attr]

    def can_write_eof(self) -> bool:
        return True

    # -- flow control: asyncio's _FlowControlMixin surface, on the core's state -------

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._core.get_write_buffer_limits()  # type: ignore[union-attr]

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._core.set_write_buffer_limits(high, low)  # type: ignore[union-attr]

    def _set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._core.set_write_buffer_limits(high, low)  # type: ignore[union-attr]

    def _maybe_pause_protocol(self) -> None:
        pass  # the core pauses the protocol itself (write, set_write_buffer_limits)

    def _maybe_resume_protocol(self) -> None:
        pass  # the core resumes it when its output drains

    @property
    def _protocol_paused(self) -> bool:  # read by asyncio's sendfile fallback
        return bool(self._core.protocol_paused) if self._core is not None else False

    @property
    def _high_water(self) -> int:
        return self.get_write_buffer_limits()[1]

    @property
    def _low_water(self) -> int:
        return self.get_write_buffer_limits()[0]

    @property
    def _conn_lost(self) -> int:
        return self._core.conn_lost if self._core is not None else 1

    # -- errors and the end --------------------------------------------------------

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        self._core.fatal_error(exc, message)  # type: ignore[union-attr]

    def _force_close(self, exc: BaseException | None) -> None:  # asyncio's SSLProtocol calls it
        self._core.force_close_with(exc)  # type: ignore[union-attr]

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        # scheduled by the core (close, abort, a fatal error) or called from its
        # queue once a close() has sent the output; runs once
        core = self._core
        assert core is not None
        try:
            if self._protocol_connected:
                core.get_protocol().connection_lost(exc)
        finally:
            sock = self._sock
            self._sock = None
            if sock is not None:
                sock.detach()  # the core closes the fd
            core.finish()
            server = self._server
            if server is not None:
                if _SERVER_TRACKS_TRANSPORTS:
                    server._detach(self)
                else:
                    server._detach()
                self._server = None
            waiter = core.empty_waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError("Connection is closed by peer"))

    # -- loop.sendfile(): asyncio's hooks (selector_events._SelectorSocketTransport) --

    def _make_empty_waiter(self) -> asyncio.Future[None]:
        core = self._core
        assert core is not None
        if core.empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        waiter: asyncio.Future[None] = self._loop.create_future()
        core.empty_waiter = waiter
        if core.get_write_buffer_size() == 0:
            waiter.set_result(None)
        return waiter

    def _reset_empty_waiter(self) -> None:
        if self._core is not None:
            self._core.empty_waiter = None


# the methods called per request: C functions that read the core from the _npc slot
for _name, _fn in _transport_methods(_CoreSlot).items():
    setattr(NetpollTransport, _name, _fn)
del _name, _fn


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
    ) -> Any:
        if type(sock.fileno()) is not int:
            # not an OS socket (a test double such as a mock): the reactor polls file
            # descriptors, so the base selector loop's own transport takes it
            base = getattr(super(), "_make_socket_transport", None)
            if base is not None:
                return base(sock, protocol, waiter, extra=extra, server=server)
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
    # uvloop has no sendfile for transports nor sock_sendfile: asyncio's, whose native
    # path is os.sendfile with the loop's add_writer (the transport paused and drained;
    # the netpoll poller does not watch the fd meanwhile)
    sendfile: Any = _Base.sendfile
    _sendfile_native: Any = _Sel._sendfile_native
    _sendfile_fallback: Any = _Base._sendfile_fallback
    sock_sendfile: Any = _Base.sock_sendfile
    _check_sendfile_params: Any = _Base._check_sendfile_params
    _sock_sendfile_fallback: Any = _Base._sock_sendfile_fallback
    _sock_sendfile_native: Any = _Unix._sock_sendfile_native
    _sock_sendfile_native_impl: Any = _Unix._sock_sendfile_native_impl
    _sock_sendfile_update_filepos: Any = _Unix._sock_sendfile_update_filepos
    _sock_add_cancellation_callback: Any = _Unix._sock_add_cancellation_callback
    create_unix_connection: Any = _Unix.create_unix_connection
    create_unix_server: Any = _Unix.create_unix_server
    _create_connection_transport: Any = _Base._create_connection_transport
    _create_server_getaddrinfo: Any = _Base._create_server_getaddrinfo
    _ensure_resolved: Any = _Base._ensure_resolved
    _connect_sock: Any = _Base._connect_sock
    # asyncio's own accept (add_reader + sock.accept), not EventLoop's: these servers
    # never use the io_uring multishot ACCEPT (netpoll only drives their connections)
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
                logger.error(
                    "Unable to clean up listening UNIX socket %r: %r", path, err)

    @property
    def _debug(self) -> bool:
        return bool(self._np_loop.get_debug())

    def _own(self, name: str, make: Callable[[], Any]) -> Any:
        # an attribute asyncio's borrowed code expects on the loop, made on first use
        found = self.__dict__.get(name)
        if found is None:
            found = self.__dict__[name] = make()
        return found

    @property
    def _transports(self) -> Any:
        # asyncio's fd -> transport map (NetpollTransport registers; _sendfile_native
        # takes the transport out while os.sendfile uses its socket)
        return self._own("_np_transports", weakref.WeakValueDictionary)

    @property
    def _unix_server_sockets(self) -> dict[Any, Any]:
        # Python 3.13's create_unix_server/_stop_serving record the socket paths
        # to unlink at close here.
        found: dict[Any, Any] = self._own("_np_unix_server_sockets", dict)
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
        # Over stock asyncio the loop's scheduling (call_soon, call_later,
        # _run_once...) is also the core's, in C (reactor/sched.pyx).
        ns: dict[str, Any] = {"__module__": __name__}
        if mixin is _RouteMixin:
            ns.update(_sched_methods(cls))
        sub = type(f"Netpoll{cls.__name__.lstrip('_')}", (mixin, cls), ns)
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


# -- Streams on the core ---------------------------------------------------------------
#
# start_server / open_connection (and the Unix variants) hand out asyncio's
# StreamReader/StreamWriter as subclasses whose hot methods are a StreamCore's
# (reactor/streams.pyx): the reader's buffer is the connection's input, and
# the client_connected_cb coroutine is driven by the core's Task-like Handler,
# so a read that finds its data returns it with no Future, no Task step and
# no loop callback, and a read that waits is resumed from the poller's pass.
# ssl= connections keep asyncio's own classes (_stream_pair).

# the reader's methods: the core's bound methods, set on the instance
_READER_METHODS = ("read", "readline", "readuntil", "readexactly", "at_eof", "exception",
                   "set_exception", "set_transport", "feed_eof", "feed_data")


class NetpollStreamReader(asyncio.StreamReader):
    """An ``asyncio.StreamReader`` whose buffer and reads are netpoll's core (``StreamCore``).

    Same methods, semantics and errors as asyncio's; asyncio's private state is
    readable as properties (``_buffer`` is a copy of the buffered bytes).
    """

    _source_traceback = None
    _np: StreamCore

    def __init__(self, limit: int = _DEFAULT_LIMIT, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if limit <= 0:
            raise ValueError("Limit cannot be <= 0")
        if loop is None:
            loop = asyncio.get_running_loop()
        self._loop = loop
        core = new_stream_core(loop, limit)
        d = self.__dict__
        d["_np"] = core
        for name in _READER_METHODS:
            d[name] = getattr(core, name)

    # asyncio's private attributes, read from the core
    @property
    def _buffer(self) -> bytearray:
        return self._np.buffer_copy()

    @property
    def _limit(self) -> int:
        return self._np.limit

    @property
    def _eof(self) -> bool:
        return self._np.eof

    @property
    def _waiter(self) -> Any:
        return self._np.waiter

    @property
    def _exception(self) -> Any:
        return self._np.exc

    @property
    def _transport(self) -> Any:
        return self._np.transport

    @property
    def _paused(self) -> bool:
        return self._np.paused


class NetpollStreamWriter(asyncio.StreamWriter):
    """An ``asyncio.StreamWriter``; over a netpoll transport ``write`` is the core's own
    and ``drain`` returns at once unless asyncio's would wait or raise."""

    def __init__(self, transport: Any, protocol: Any, reader: Any,
                 loop: asyncio.AbstractEventLoop, core: StreamCore | None = None) -> None:
        super().__init__(transport, protocol, reader, loop)
        if core is not None and core.attached:
            d = self.__dict__
            d["write"] = transport._core.write  # the transport core's bound method
            d["drain"] = core.drain
            d["_np"] = core
            core.set_writer(self)

    async def start_tls(self, sslcontext: Any, **kwds: Any) -> None:
        """asyncio's StreamWriter.start_tls, through netpoll's start_tls (any loop)."""
        w: Any = self
        core = w.__dict__.pop("_np", None)
        if core is not None:
            # from now on data goes through the TLS layer and the protocol's data_received
            core.switch_to_feed()
            w.__dict__.pop("write", None)
            w.__dict__.pop("drain", None)
        protocol: Any = w._protocol
        server_side = protocol._client_connected_cb is not None
        await self.drain()
        w._transport = await start_tls(w._transport, protocol, sslcontext,
                                       server_side=server_side, **kwds)
        if hasattr(protocol, "_replace_transport"):  # Python 3.13+
            protocol._replace_transport(w._transport)
        else:
            protocol._replace_writer(self)


class NetpollStreamReaderProtocol(asyncio.StreamReaderProtocol):
    """asyncio's StreamReaderProtocol; over a netpoll transport the reader reads the
    connection's input and client_connected_cb runs on the core's Handler."""

    def connection_made(self, transport: Any) -> None:
        p: Any = self  # asyncio's private attributes
        reader = p._stream_reader
        core = reader._np if isinstance(reader, NetpollStreamReader) else None
        if (p._reject_connection or core is None
                or not isinstance(transport, NetpollTransport) or transport._core is None):
            super().connection_made(transport)
            return
        p._transport = transport
        reader.set_transport(transport)
        p._over_ssl = transport.get_extra_info("sslcontext") is not None
        core.attach(transport._core)
        if p._client_connected_cb is not None:
            writer = NetpollStreamWriter(transport, self, reader, p._loop, core)
            p._stream_writer = writer
            res = p._client_connected_cb(reader, writer)
            if asyncio.iscoroutine(res):
                if core.attached:
                    p._task = core.start(res)
                else:
                    p._task = p._loop.create_task(res)
            p._strong_reader = None


def _core_stream_pair(limit: int, loop: asyncio.AbstractEventLoop,
                      cb: Any = None) -> tuple[NetpollStreamReader, NetpollStreamReaderProtocol]:
    reader = NetpollStreamReader(limit=limit, loop=loop)
    return reader, NetpollStreamReaderProtocol(reader, cb, loop=loop)


def _stream_pair(limit: int, loop: asyncio.AbstractEventLoop,
                 cb: Any = None) -> tuple[asyncio.StreamReader, asyncio.StreamReaderProtocol]:
    # asyncio's own objects (ssl= connections)
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    return reader, asyncio.StreamReaderProtocol(reader, cb, loop=loop)


def _pair_for(kwds: dict[str, Any]) -> Any:
    return _stream_pair if kwds.get("ssl") else _core_stream_pair


def _writer(transport: Any, protocol: Any, reader: Any,
            loop: asyncio.AbstractEventLoop) -> asyncio.StreamWriter:
    if isinstance(reader, NetpollStreamReader):
        return NetpollStreamWriter(transport, protocol, reader, loop, reader._np)
    return asyncio.StreamWriter(transport, protocol, reader, loop)


async def open_connection(host: Any = None, port: Any = None, *, limit: int = _DEFAULT_LIMIT,
                          **kwds: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` over a netpoll transport (the reader and writer on the core)."""
    loop = asyncio.get_running_loop()
    reader, protocol = _pair_for(kwds)(limit, loop)
    transport, _ = await create_connection(lambda: protocol, host, port, **kwds)
    return reader, _writer(transport, protocol, reader, loop)


async def start_server(client_connected_cb: Any, host: Any = None, port: Any = None, *,
                       limit: int = _DEFAULT_LIMIT, **kwds: Any) -> asyncio.Server:
    """``asyncio.start_server`` with netpoll transports; each client_connected_cb runs
    on the core (reactor/streams.pyx)."""
    loop = asyncio.get_running_loop()
    pair = _pair_for(kwds)
    return await create_server(lambda: pair(limit, loop, client_connected_cb)[1],
                               host, port, **kwds)


async def open_unix_connection(path: Any = None, *, limit: int = _DEFAULT_LIMIT,
                               **kwds: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_unix_connection`` over a netpoll transport."""
    loop = asyncio.get_running_loop()
    reader, protocol = _pair_for(kwds)(limit, loop)
    transport, _ = await create_unix_connection(lambda: protocol, path, **kwds)
    return reader, _writer(transport, protocol, reader, loop)


async def start_unix_server(client_connected_cb: Any, path: Any = None, *,
                            limit: int = _DEFAULT_LIMIT, **kwds: Any) -> asyncio.Server:
    """``asyncio.start_unix_server`` with netpoll transports."""
    loop = asyncio.get_running_loop()
    pair = _pair_for(kwds)
    return await create_unix_server(lambda: pair(limit, loop, client_connected_cb)[1],
                                    path, **kwds)
