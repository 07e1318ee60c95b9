# netpoll._core — dialing: non-blocking connect, new_fd_connection.
#
# Invariants
# - A dial owns its fd until the Connection is made; every failure path
#   closes it. Errors name what was dialed ("dial tcp 127.0.0.1:1: connection
#   refused"), keep their stdlib class and errno, and chain the original.
# - new_fd_connection never closes or changes the caller's fd when it fails.

async def _connect_fd(int fd, object sockaddr, object loop):
    # Non-blocking connect: register the fd with EPOLLOUT on a poller and wait.
    sock = socket.socket(fileno=fd)
    try:
        err = sock.connect_ex(sockaddr)
    finally:
        sock.detach()
    if err == 0:
        return
    if err == _errno.EAGAIN and isinstance(sockaddr, (str, bytes)):
        # a unix listener with a full backlog: a blocking connect would wait,
        # so retry (with backoff) until it is taken or the dial times out
        delay = 0.001
        while err == _errno.EAGAIN:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            sock = socket.socket(fileno=fd)
            try:
                err = sock.connect_ex(sockaddr)
            finally:
                sock.detach()
        if err == 0:
            return
    if err not in (_errno.EINPROGRESS, _errno.EALREADY, _errno.EINTR):
        raise _os_error(err)
    fut = loop.create_future()
    # a module-level callback, not a closure: with binding=False a closure's
    # scope would outlive the dial (it is not collected)
    loop.add_writer(fd, _resolve_future, fut)
    try:
        await fut
    finally:
        loop.remove_writer(fd)
    cdef int soerr = 0
    cdef socklen_t sl = sizeof(soerr)
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl)
    if soerr:
        raise _os_error(soerr)


def _resolve_future(fut):
    if not fut.done():
        fut.set_result(None)


async def _dial(str network, object target, object family, double read_timeout,
                double write_timeout, double idle_timeout, Py_ssize_t write_limit,
                object ssl_ctx, object server_hostname, double ssl_timeout):
    loop = asyncio.get_running_loop()
    if network == "unix":
        candidates = [(socket.AF_UNIX, target)]
    else:
        host, port = target
        try:
            infos = await loop.getaddrinfo(host or None, port, family=family,
                                           type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise socket.gaierror(
                exc.errno, f"dial {network} {_fmt_addr(target)}: {exc.strerror}") from exc
        candidates = [(info[0], info[4]) for info in infos]
        if not candidates:
            raise OSError(f"dial {network} {host}:{port}: no address found")
    last = None
    for fam, sockaddr in candidates:
        sock = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        fd = sock.detach()
        try:
            await _connect_fd(fd, sockaddr, loop)
        except BaseException as exc:
            close(fd)
            if isinstance(exc, OSError):
                last = exc
                continue
            raise
        c = make_connection(fd, loop, network, None)
        c.connect_state = CS_CONNECTED
        c.read_timeout = read_timeout
        c.write_timeout = write_timeout
        c.write_limit = write_limit
        c.uring_norecv = ssl_ctx is not None     # TLS reads the socket itself
        c.poller.add(c)
        if idle_timeout > 0:
            c.set_idle_timeout(idle_timeout)
        if ssl_ctx is not None:
            # the dial returns after the handshake; its failure is the dial's
            await tls_client_handshake(c, ssl_ctx, server_hostname, ssl_timeout)
        return c
    # the error names what was dialed, keeps its class and errno, chains the original
    err = type(last)(last.errno, f"dial {network} {_fmt_addr(target)}: "
                                 f"{(last.strerror or str(last)).lower()}")
    raise err from last


async def dial(network, target, family, timeout, read_timeout, write_timeout, idle_timeout,
               write_limit=0, ssl=None, server_hostname=None, ssl_handshake_timeout=None):
    """Dial and wrap the socket in a Connection (internal; see netpoll.Dialer)."""
    cdef double ssl_timeout = 60.0
    if timeout is not None:
        timeout = _seconds("dial_connection(timeout)", timeout)
    if ssl is not None:
        _prepare_context(ssl, False)
        if ssl_handshake_timeout is not None:
            ssl_timeout = _seconds("dial_connection(ssl_handshake_timeout)",
                                   ssl_handshake_timeout)
    coro = _dial(network, target, family, read_timeout, write_timeout, idle_timeout,
                 write_limit or 0, ssl, server_hostname, ssl_timeout)
    if timeout is None or timeout <= 0:
        return await coro
    try:
        return await asyncio.wait_for(coro, timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise DialTimeoutError(
            f"dial {network} {_fmt_addr(target)}: timed out after {timeout:g}s") from None


cdef object _os_error(int err):
    return OSError(err, os.strerror(err))


def _fmt_addr(target):
    if isinstance(target, tuple):
        host, port = target[0], target[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(target, str) and target.startswith("\0"):
        return "@" + target[1:]
    return str(target)


@cython.binding(True)
def _new_fd_connection_raw_reads(fd):
    """new_fd_connection for a connection that will read its socket itself (TLS):
    on the io_uring backend it is polled, never given a kernel-side recv."""
    return _wrap_fd(fd, True)


@cython.binding(True)
def new_fd_connection(fd):
    """Wrap a connected stream socket's fd in a Connection driven by the pollers.

    Must be called with an asyncio loop running. The connection owns the fd
    from now on (closing the connection closes it; detach() gives it back).
    A call that fails leaves the caller's fd as it was (open, same flags).
    """
    return _wrap_fd(fd, False)


cdef Connection _wrap_fd(object fd, bint raw_reads, bint reading=True):
    cdef int flags, stype = 0
    cdef socklen_t sl = sizeof(stype)
    cdef Connection c
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"new_fd_connection: fd must be an int, not {type(fd).__name__}")
    if fd < 0:
        raise ValueError(f"new_fd_connection({fd}): negative fd")
    loop = asyncio.get_running_loop()
    if getsockopt(fd, SOL_SOCKET, SO_TYPE, &stype, &sl) < 0:
        err = errno
        raise OSError(err, f"new_fd_connection({fd}): not a socket: {os.strerror(err)}")
    if stype != SOCK_STREAM:
        raise ValueError(f"new_fd_connection({fd}): not a stream socket")
    ps = _pollers.get(loop)
    if ps is not None:
        for p in (<_PollerSet>ps).pollers:
            for other in (<Poller>p).conns:
                if (<Connection>other).fd == fd and not (<Connection>other).finished:
                    raise ValueError(
                        f"new_fd_connection({fd}): the fd belongs to a live netpoll connection")
    flags = fcntl(fd, F_GETFL)
    if flags < 0:
        raise oserror(errno, "fcntl(F_GETFL)")
    if fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0:
        raise oserror(errno, "fcntl(O_NONBLOCK)")
    c = make_connection(fd, loop, _fd_network(fd), None)
    c.uring_norecv = raw_reads
    c.rstop = not reading          # a transport reads once its protocol is connected
    try:
        c.poller.add(c)
    except BaseException:
        c.detached = True          # the fd stays the caller's
        c.closed_by = BY_USER
        c.finished = True
        fcntl(fd, F_SETFL, flags)
        raise
    c.connect_state = CS_CONNECTED
    return c


cdef str _fd_network(int fd):
    cdef int dom = 0
    cdef socklen_t sl = sizeof(dom)
    if getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &sl) == 0:
        if dom == AF_UNIX:
            return "unix"
        if dom == AF_INET:
            return "tcp4"
        if dom == AF_INET6:
            return "tcp6"
    return ""
