"""Listeners, addresses and the dialer.

Addresses are Go-style strings (``"host:port"``, ``"[::1]:80"``, ``":8080"``)
or ``(host, port)`` tuples; a Unix address is a filesystem path (a leading
``"@"`` names an abstract socket).

Errors name the address
-----------------------

A failure to resolve, bind or connect keeps its stdlib class and errno
(``socket.gaierror``, ``OSError`` with ``EADDRINUSE``,
``ConnectionRefusedError``...) and is re-raised, chained to the original,
with a Go-style message naming the operation and the address::

    listen tcp nosuchhost:80: name or service not known
    listen tcp 127.0.0.1:8080: address already in use
    dial tcp 127.0.0.1:1: connection refused

Unix socket files
-----------------

``create_listener("unix", path)`` refuses (``EADDRINUSE``) a path on which a
live listener accepts connections, as Go does; a socket file nobody listens
on (left by a process that died) is removed first. A listener removes, when
it closes, only the file it created itself: it remembers the file's device
and inode and leaves a file that has since been replaced alone.
"""

from __future__ import annotations

import asyncio
import errno as _errno
import logging
import math
import os
import socket
import ssl as _ssl
import stat
from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

from netpoll import _core
from netpoll._core import Connection, new_fd_connection
from netpoll.errors import ConnectionClosedError, NetpollError

__all__ = [
    "Address",
    "Dialer",
    "Listener",
    "TCPListener",
    "UnixListener",
    "convert_listener",
    "create_listener",
    "dial_connection",
    "parse_address",
]

NETWORKS = ("tcp", "tcp4", "tcp6", "unix")
_FAMILY = {"tcp": socket.AF_UNSPEC, "tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}

Address = str | tuple[str, int]
"""A Go-style ``"host:port"`` string or a ``(host, port)`` tuple; a path for unix."""

TCPNetwork = Literal["tcp", "tcp4", "tcp6"]

# "practically never": longer timeouts are clamped to this many seconds (about
# 31 years), so that no later conversion to a C integer or a timer can overflow
_FOREVER = 1e9



def _logger() -> logging.Logger:
    """The logger set with ``netpoll.configure(logger=)``."""
    try:
        logger: logging.Logger = _core.get_config()["logger"]
    except (AttributeError, KeyError):  # pragma: no cover - the core always has it
        logger = logging.getLogger("netpoll")
    return logger


def _check_network(network: object, what: str) -> str:
    if not isinstance(network, str):
        raise TypeError(f"{what}: network must be a str, not {type(network).__name__}")
    if network not in NETWORKS:
        raise ValueError(f"{what}: unsupported network {network!r} (expected one of "
                         f"{', '.join(NETWORKS)})")
    return network


def parse_address(network: str, address: object) -> tuple[str, int] | str:
    """Split a Go-style address for `network` into (host, port), or a path for unix."""
    what = f"address {address!r}"
    if network == "unix":
        if isinstance(address, bytes):
            address = os.fsdecode(address)
        if not isinstance(address, str) or not address:
            raise ValueError(f"{what}: a unix address must be a non-empty path")
        return address
    if isinstance(address, tuple):
        if len(address) < 2 or not isinstance(address[0], str) or not isinstance(address[1], int):
            raise ValueError(f"{what}: expected (host, port)")
        host, port = address[0], address[1]
    elif isinstance(address, str):
        if address.startswith("["):
            end = address.find("]")
            if end < 0 or address[end + 1:end + 2] != ":":
                raise ValueError(f"{what}: expected '[host]:port'")
            host, port_s = address[1:end], address[end + 2:]
        else:
            host, sep, port_s = address.rpartition(":")
            if not sep:
                raise ValueError(f"{what}: missing port (expected 'host:port')")
            if ":" in host:
                raise ValueError(f"{what}: an IPv6 host must be in brackets, as '[::1]:80'")
        try:
            port = int(port_s)
        except ValueError:
            try:
                port = socket.getservbyname(port_s, "tcp")
            except OSError:
                raise ValueError(f"{what}: bad port {port_s!r}") from None
    else:
        raise TypeError(f"{what}: expected a 'host:port' string or a (host, port) tuple")
    if not 0 <= port <= 65535:
        raise ValueError(f"{what}: port {port} out of range 0..65535")
    return host, port


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _named(exc: OSError, op: str) -> OSError | None:
    """`exc` again (same class, same errno) with a message naming `op`, or None
    when its message already names an operation ("dial tcp 127.0.0.1:1: ..."),
    e.g. because the core named it (perhaps with the resolved address)."""
    reason = exc.strerror if exc.strerror else str(exc)
    verb = op.split(" ", 1)[0]
    if reason.startswith(op) or reason.startswith(f"{verb} "):
        return None
    text = f"{op}: {reason[:1].lower()}{reason[1:]}"
    if exc.errno is None:
        return type(exc)(text)
    try:
        return type(exc)(exc.errno, text)
    except Exception:       # pragma: no cover - an OSError subclass with another __init__
        return OSError(exc.errno, text)


def _abstract_name(name: str) -> str:
    # the kernel's spelling of an abstract address ("\0name") as Go prints it ("@name")
    return "@" + name[1:] if name.startswith("\0") else name


class Listener:
    """A listening socket: served by an EventLoop, or accepted from with ``accept()``.

    ``addr`` is the bound address: ``(host, port)`` for TCP, the path for Unix
    (``"@name"`` for an abstract one). ``create_listener`` and
    ``convert_listener`` return a :class:`TCPListener` or a
    :class:`UnixListener`, whose ``addr`` is typed precisely.
    """

    network: str

    def __init__(self, sock: socket.socket, network: str) -> None:
        self._sock = sock
        self.network = network
        self._closed = False
        self._created: tuple[str, int, int] | None = None   # (path, st_dev, st_ino) to unlink
        self._close_callbacks: list[Callable[[Listener], object]] = []
        self._accept_waiters: list[asyncio.Future[None]] = []
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        # TLS (create_listener/convert_listener ssl=): EventLoop.serve and
        # accept() run the server handshake before any callback sees the connection
        self._ssl: _ssl.SSLContext | None = None
        self._ssl_handshake_timeout = 60.0
        sock.setblocking(False)
        name = sock.getsockname()
        self._addr: tuple[str, int] | str
        if network == "unix":
            if isinstance(name, bytes):
                name = name.decode(errors="surrogateescape")
            self._addr = _abstract_name(name)
        else:
            self._addr = (name[0], name[1])

    @property
    def addr(self) -> tuple[str, int] | str:
        """The bound address: ``(host, port)`` or a path."""
        return self._addr

    def _where(self) -> str:
        a = self._addr
        return a if isinstance(a, str) else _host_port(a[0], a[1])

    def fileno(self) -> int:
        """The listening socket's fd (-1 once closed)."""
        return self._sock.fileno()

    async def accept(self) -> Connection:
        """Wait for the next incoming connection (Go's ``Listener.Accept``).

        Returns a Connection driven by the pollers, as
        ``netpoll.new_fd_connection`` makes it (no EventLoop callbacks run for
        it). Several tasks may wait at once; each connection goes to one of
        them. Closing the listener wakes every waiting ``accept()`` with
        ``ConnectionClosedError``, and ``accept()`` on a closed listener raises
        it at once (Go: ``net.ErrClosed``). Other OS errors (e.g. ``EMFILE``)
        are raised with the listener's address in the message; the listener
        stays usable. Do not mix ``accept()`` with ``EventLoop.serve`` on one
        listener.
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._closed or self._sock.fileno() < 0:
                raise ConnectionClosedError(
                    f"accept {self.network} {self._where()}: listener closed")
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                await self._wait_readable(loop)
                continue
            except ConnectionAbortedError:
                continue            # the peer gave up while queued: take the next one
            except OSError as exc:
                if self._closed or self._sock.fileno() < 0:
                    raise ConnectionClosedError(
                        f"accept {self.network} {self._where()}: listener closed") from exc
                named = _named(exc, f"accept {self.network} {self._where()}")
                if named is None:
                    raise
                raise named from exc
            fd = sock.detach()
            try:
                # a TLS connection reads its socket itself (see the io_uring backend)
                conn = (new_fd_connection(fd) if self._ssl is None
                        else _core._new_fd_connection_raw_reads(fd))
            except BaseException:
                try:
                    os.close(fd)
                except OSError:
                    pass
                raise
            if self._ssl is None:
                return conn
            try:
                # a failed handshake is logged (debug) and closed; take the next one
                return await _core.tls_server_handshake(conn, self._ssl,
                                                        self._ssl_handshake_timeout)
            except (OSError, ValueError):
                continue

    async def _wait_readable(self, loop: asyncio.AbstractEventLoop) -> None:
        # One reader on the listening fd for all waiting accepts: when it fires,
        # every waiter is woken (and retries accept4) and the reader is removed,
        # so a backlog nobody waits for does not spin the loop.
        if self._reader_loop is not None and self._reader_loop is not loop:
            raise RuntimeError(f"accept {self.network} {self._where()}: "
                               "already waiting on another event loop")
        if self._reader_loop is None:
            loop.add_reader(self._sock.fileno(), self._on_readable)
            self._reader_loop = loop
        fut: asyncio.Future[None] = loop.create_future()
        self._accept_waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._accept_waiters:
                self._accept_waiters.remove(fut)
            if not self._accept_waiters:
                self._stop_reading()

    def _on_readable(self) -> None:
        waiters, self._accept_waiters = self._accept_waiters, []
        self._stop_reading()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _stop_reading(self) -> None:
        loop, self._reader_loop = self._reader_loop, None
        if loop is not None and not loop.is_closed() and self._sock.fileno() >= 0:
            loop.remove_reader(self._sock.fileno())

    def _add_close_callback(self, cb: Callable[[Listener], object]) -> None:
        """Run ``cb(listener)`` when this listener is closed (internal hook).

        For code that watches the listening fd, such as ``EventLoop.serve``:
        the callbacks run inside ``close()`` *before* the fd is closed, newest
        first, so a callback can still ``remove_reader(listener.fileno())``.
        An exception from a callback is logged on the ``netpoll`` logger and
        the next one runs. On a listener already closed, ``cb`` runs at once.
        Each registered callback runs at most once.
        """
        if self._closed:
            self._run_close_callback(cb)
            return
        self._close_callbacks.append(cb)

    def _remove_close_callback(self, cb: Callable[[Listener], object]) -> None:
        """Forget a callback given to ``_add_close_callback`` (no error if absent)."""
        try:
            self._close_callbacks.remove(cb)
        except ValueError:
            pass

    def _run_close_callback(self, cb: Callable[[Listener], object]) -> None:
        try:
            cb(self)
        except Exception as exc:
            _logger().error("netpoll: listener close callback raised", exc_info=exc)

    def close(self) -> None:
        """Stop listening (idempotent).

        Wakes every waiting ``accept()`` with ``ConnectionClosedError``, runs the
        close callbacks, then closes the fd; a Unix socket file this listener
        created is removed if it is still that file.
        """
        if self._closed:
            return
        self._closed = True
        callbacks, self._close_callbacks = self._close_callbacks, []
        for cb in reversed(callbacks):
            self._run_close_callback(cb)
        waiters, self._accept_waiters = self._accept_waiters, []
        self._stop_reading()
        for fut in waiters:
            if not fut.done():
                fut.set_exception(ConnectionClosedError(
                    f"accept {self.network} {self._where()}: listener closed"))
        self._sock.close()
        created, self._created = self._created, None
        if created is not None:
            path, dev, ino = created
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)
            except OSError:
                pass

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<netpoll {type(self).__name__} {self.network} {self._addr!r}>"


class TCPListener(Listener):
    """A TCP listener: ``addr`` is ``(host, port)``, so ``host, port = ln.addr`` type-checks."""

    @property
    def addr(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        a = self._addr
        assert isinstance(a, tuple)
        return a


class UnixListener(Listener):
    """A Unix stream listener: ``addr`` is the path (``"@name"`` when abstract)."""

    @property
    def addr(self) -> str:
        """The bound path."""
        a = self._addr
        assert isinstance(a, str)
        return a


def _unix_path_in_use(path: str) -> bool:
    """Whether a live listener accepts on the socket file `path` (probe by connecting)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        err = probe.connect_ex(path)
    # 0: accepted; EAGAIN: listening with a full backlog; ECONNREFUSED: nobody listens
    return err in (0, _errno.EAGAIN, _errno.EINPROGRESS)


def _listen_unix(path: str, backlog: int) -> UnixListener:
    op = f"listen unix {path}"
    abstract = path.startswith("@")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    created: tuple[str, int, int] | None = None
    try:
        if abstract:
            sock.bind("\0" + path[1:])
        else:
            try:
                st = os.stat(path)
            except OSError:
                pass
            else:
                if stat.S_ISSOCK(st.st_mode):
                    if _unix_path_in_use(path):
                        raise OSError(_errno.EADDRINUSE, f"{op}: address already in use")
                    os.unlink(path)      # a stale socket file: nobody listens on it
            sock.bind(path)
            st = os.stat(path)
            created = (path, st.st_dev, st.st_ino)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        named = _named(exc, op)
        if named is None:
            raise
        raise named from exc
    except BaseException:
        sock.close()
        raise
    ln = UnixListener(sock, "unix")
    ln._created = created
    if not abstract:
        ln._addr = path
    return ln


@overload
def create_listener(network: Literal["unix"], address: str | bytes, *, backlog: int = 1024,
                    reuse_port: bool = False, ssl: _ssl.SSLContext | None = None,
                    ssl_handshake_timeout: float | None = None) -> UnixListener: ...
@overload
def create_listener(network: TCPNetwork, address: Address, *, backlog: int = 1024,
                    reuse_port: bool = False, ssl: _ssl.SSLContext | None = None,
                    ssl_handshake_timeout: float | None = None) -> TCPListener: ...
@overload
def create_listener(network: str, address: Address | bytes, *, backlog: int = 1024,
                    reuse_port: bool = False, ssl: _ssl.SSLContext | None = None,
                    ssl_handshake_timeout: float | None = None) -> Listener: ...
def create_listener(network: str, address: Address | bytes, *, backlog: int = 1024,
                    reuse_port: bool = False, ssl: _ssl.SSLContext | None = None,
                    ssl_handshake_timeout: float | None = None) -> Listener:
    """Bind and listen: network "tcp", "tcp4", "tcp6" or "unix".

    ``reuse_port=True`` sets ``SO_REUSEPORT`` (several listeners, in this or
    other processes, share one port; the kernel spreads connections). A
    resolve or bind failure keeps its class and errno and names the address
    (``"listen tcp 127.0.0.1:80: address already in use"``).

    ``ssl=`` (an ``ssl.SSLContext``) serves TLS: handlers see plaintext, and
    on_connect/on_request run only after the handshake, which must finish
    within ``ssl_handshake_timeout`` seconds (default 60).
    """
    network = _check_network(network, "create_listener")
    tls_timeout = _check_ssl("create_listener", ssl, ssl_handshake_timeout)
    target = parse_address(network, address)
    if network == "unix":
        assert isinstance(target, str)
        return _with_ssl(_listen_unix(target, backlog), ssl, tls_timeout)
    assert isinstance(target, tuple)
    host, port = target
    op = f"listen {network} {_host_port(host, port)}"
    family = _FAMILY[network]
    if family == socket.AF_UNSPEC:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if host == "":
            family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except OSError as exc:
        named = _named(exc, op)
        if named is None:
            raise
        raise named from exc
    fam, _, _, _, sockaddr = infos[0]
    sock = socket.socket(fam, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                            1 if network == "tcp6" else 0)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        named = _named(exc, op)
        if named is None:
            raise
        raise named from exc
    except BaseException:
        sock.close()
        raise
    return _with_ssl(TCPListener(sock, network), ssl, tls_timeout)


_L = TypeVar("_L", bound="Listener")


def _check_ssl(what: str, ssl: object, timeout: float | None) -> float:
    if ssl is None:
        if timeout is not None:
            raise ValueError(f"{what}: ssl_handshake_timeout is only meaningful with ssl")
        return 60.0
    if not isinstance(ssl, _ssl.SSLContext):
        raise TypeError(f"{what}: ssl must be an ssl.SSLContext, not {type(ssl).__name__}")
    if timeout is None:
        return 60.0
    value = _seconds(f"{what}(ssl_handshake_timeout)", timeout)
    if value == 0:
        raise ValueError(f"{what}: ssl_handshake_timeout must be > 0, not {timeout!r}")
    return value


def _with_ssl(ln: _L, ssl: _ssl.SSLContext | None, timeout: float) -> _L:
    if ssl is not None:
        _core._prepare_context(ssl, True)      # OP_NO_RENEGOTIATION, SNI recorded
        ln._ssl = ssl
        ln._ssl_handshake_timeout = timeout
    return ln


def convert_listener(sock: socket.socket, *, ssl: _ssl.SSLContext | None = None,
                     ssl_handshake_timeout: float | None = None) -> Listener:
    """Wrap a bound, listening socket.socket (TCP or Unix stream); it is set non-blocking.

    The result is a :class:`TCPListener` or a :class:`UnixListener`; it
    shares the socket (closing either closes both) and never removes a Unix
    socket file, which it did not create. ``ssl=``/``ssl_handshake_timeout=``
    as for ``create_listener``.
    """
    tls_timeout = _check_ssl("convert_listener", ssl, ssl_handshake_timeout)
    if isinstance(sock, Listener):
        return _with_ssl(sock, ssl, tls_timeout)
    if not isinstance(sock, socket.socket):
        raise TypeError(f"convert_listener: expected a socket.socket, not {type(sock).__name__}")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError("convert_listener: only stream sockets can be served")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("convert_listener: the socket is not listening")
    if sock.family == socket.AF_UNIX:
        return _with_ssl(UnixListener(sock, "unix"), ssl, tls_timeout)
    if sock.family == socket.AF_INET:
        return _with_ssl(TCPListener(sock, "tcp4"), ssl, tls_timeout)
    if sock.family == socket.AF_INET6:
        return _with_ssl(TCPListener(sock, "tcp6"), ssl, tls_timeout)
    raise ValueError(f"convert_listener: unsupported address family {sock.family!r}")


def _seconds(what: str, value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what}: seconds must be a number, not {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{what}: timeout is nan")
    if value < 0:
        raise ValueError(f"{what}: negative timeout {value}")
    return min(float(value), _FOREVER)


class Dialer:
    """Makes client connections; its timeouts apply to every connection it makes."""

    def __init__(self, read_timeout: float | None = None, write_timeout: float | None = None,
                 idle_timeout: float | None = None,
                 write_buffer_limit: int | None = None) -> None:
        if write_buffer_limit is not None and (
                isinstance(write_buffer_limit, bool) or not isinstance(write_buffer_limit, int)
                or write_buffer_limit < 1):
            raise ValueError(
                f"Dialer(write_buffer_limit={write_buffer_limit!r}): must be an int >= 1")
        self.write_buffer_limit = write_buffer_limit
        self.read_timeout = _seconds("Dialer(read_timeout)", read_timeout)
        self.write_timeout = _seconds("Dialer(write_timeout)", write_timeout)
        self.idle_timeout = _seconds("Dialer(idle_timeout)", idle_timeout)

    async def dial_connection(self, network: str, address: Address,
                              timeout: float | None = None, *,
                              ssl: _ssl.SSLContext | None = None,
                              server_hostname: str | None = None,
                              ssl_handshake_timeout: float | None = None) -> Connection:
        """Connect without blocking; `timeout` covers resolution and connect.

        Raises DialTimeoutError past the timeout, ConnectionRefusedError when
        refused (``"dial tcp 127.0.0.1:1: connection refused"``),
        ``socket.gaierror`` naming the host when it does not resolve, and
        ValueError for a bad network or address or a NaN or negative timeout.
        A huge timeout means no timeout.

        ``ssl=`` (an ``ssl.SSLContext``) dials TLS: the call returns after the
        handshake; ``server_hostname`` (default: the host dialed) is sent as
        SNI and checked against the certificate; a verification failure
        raises ``ssl.SSLCertVerificationError``, a handshake that takes longer
        than ``ssl_handshake_timeout`` (default 60 s) ``DialTimeoutError``.
        """
        network = _check_network(network, "dial_connection")
        tls_timeout = _check_ssl("dial_connection", ssl, ssl_handshake_timeout)
        if server_hostname is not None and ssl is None:
            raise ValueError("dial_connection: server_hostname is only meaningful with ssl")
        target = parse_address(network, address)
        if ssl is not None and server_hostname is None and isinstance(target, tuple):
            server_hostname = target[0] or None
        if ssl is not None and server_hostname is None and ssl.check_hostname:
            raise ValueError("dial_connection: ssl with check_hostname needs server_hostname "
                             f"(the address {address!r} names no host)")
        if isinstance(target, str):
            op = f"dial unix {target}"
            if target.startswith("@"):
                target = "\0" + target[1:]
        else:
            op = f"dial {network} {_host_port(*target)}"
        if timeout is not None:
            timeout = _seconds("dial_connection(timeout)", timeout)
            if timeout == 0 or timeout >= _FOREVER:
                timeout = None
        family = _FAMILY.get(network, socket.AF_UNIX)
        try:
            conn: Connection = await _core.dial(network, target, family, timeout,
                                                self.read_timeout, self.write_timeout,
                                                self.idle_timeout, self.write_buffer_limit or 0,
                                                ssl, server_hostname, tls_timeout)
        except OSError as exc:
            if isinstance(exc, NetpollError | _ssl.SSLError):
                raise
            named = _named(exc, op)
            if named is None:
                raise
            raise named from exc
        return conn


_default_dialer = Dialer()


async def dial_connection(network: str, address: Address,
                          timeout: float | None = None, *,
                          ssl: _ssl.SSLContext | None = None,
                          server_hostname: str | None = None,
                          ssl_handshake_timeout: float | None = None) -> Connection:
    """Dial with the default Dialer (no read/write/idle timeouts); ssl= as Dialer's."""
    return await _default_dialer.dial_connection(
        network, address, timeout, ssl=ssl, server_hostname=server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout)

