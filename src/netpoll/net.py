"""Listeners, addresses and the dialer.

Addresses are Go-style strings (``"host:port"``, ``"[::1]:80"``, ``":8080"``)
or ``(host, port)`` tuples; a Unix address is a filesystem path (a leading
``"@"`` names an abstract socket).
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any

from netpoll import _core
from netpoll._core import Connection

__all__ = [
    "Dialer",
    "Listener",
    "convert_listener",
    "create_listener",
    "dial_connection",
    "parse_address",
]

NETWORKS = ("tcp", "tcp4", "tcp6", "unix")
_FAMILY = {"tcp": socket.AF_UNSPEC, "tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}

Address = str | tuple[str, int]


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


class Listener:
    """A listening socket served by an EventLoop.

    ``addr`` is the bound address: ``(host, port)`` or a path.
    """

    def __init__(self, sock: socket.socket, network: str) -> None:
        self._sock = sock
        self.network = network
        self._unlink: str | None = None
        sock.setblocking(False)
        name = sock.getsockname()
        if network == "unix":
            self.addr: tuple[str, int] | str = (
                name.decode(errors="surrogateescape") if isinstance(name, bytes) else name)
        else:
            self.addr = (name[0], name[1])

    def fileno(self) -> int:
        """The listening socket's fd (-1 once closed)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Stop listening (idempotent); a unix socket file created here is removed."""
        if self._sock.fileno() >= 0:
            self._sock.close()
            if self._unlink:
                try:
                    os.unlink(self._unlink)
                except OSError:
                    pass
                self._unlink = None

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<netpoll Listener {self.network} {self.addr!r}>"


def create_listener(network: str, address: Address, *, backlog: int = 1024,
                    reuse_port: bool = False) -> Listener:
    """Bind and listen: network "tcp", "tcp4", "tcp6" or "unix"."""
    network = _check_network(network, "create_listener")
    target = parse_address(network, address)
    if network == "unix":
        assert isinstance(target, str)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not target.startswith("@"):
                try:
                    if stat.S_ISSOCK(os.stat(target).st_mode):
                        os.unlink(target)     # a stale socket file from an earlier run
                except FileNotFoundError:
                    pass
                sock.bind(target)
            else:
                sock.bind("\0" + target[1:])
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        ln = Listener(sock, network)
        if not target.startswith("@"):
            ln._unlink = target
            ln.addr = target
        return ln
    assert isinstance(target, tuple)
    host, port = target
    family = _FAMILY[network]
    if family == socket.AF_UNSPEC:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if host == "":
            family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
    infos = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
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
    except BaseException:
        sock.close()
        raise
    return Listener(sock, network)


def convert_listener(sock: socket.socket) -> Listener:
    """Wrap a bound, listening socket.socket (TCP or Unix stream); it is set non-blocking."""
    if isinstance(sock, Listener):
        return sock
    if not isinstance(sock, socket.socket):
        raise TypeError(f"convert_listener: expected a socket.socket, not {type(sock).__name__}")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError("convert_listener: only stream sockets can be served")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("convert_listener: the socket is not listening")
    if sock.family == socket.AF_UNIX:
        network = "unix"
    elif sock.family == socket.AF_INET:
        network = "tcp4"
    elif sock.family == socket.AF_INET6:
        network = "tcp6"
    else:
        raise ValueError(f"convert_listener: unsupported address family {sock.family!r}")
    return Listener(sock, network)


def _seconds(what: str, value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what}: seconds must be a number, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what}: negative timeout {value}")
    return float(value)


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
                              timeout: float | None = None) -> Connection:
        """Connect without blocking; `timeout` covers resolution and connect.

        Raises DialTimeoutError past the timeout, ConnectionRefusedError when
        refused, ValueError for a bad network or address.
        """
        network = _check_network(network, "dial_connection")
        target = parse_address(network, address)
        if isinstance(target, str) and target.startswith("@"):
            target = "\0" + target[1:]
        if timeout is not None:
            timeout = _seconds("dial_connection(timeout)", timeout) or None
        family = _FAMILY.get(network, socket.AF_UNIX)
        conn: Connection = await _core.dial(network, target, family, timeout,
                                            self.read_timeout, self.write_timeout,
                                            self.idle_timeout, self.write_buffer_limit or 0)
        return conn


_default_dialer = Dialer()


async def dial_connection(network: str, address: Address,
                          timeout: float | None = None) -> Connection:
    """Dial with the default Dialer (no read/write/idle timeouts)."""
    return await _default_dialer.dial_connection(network, address, timeout)

