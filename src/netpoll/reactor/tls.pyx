# netpoll._core — TLS between the socket and the LinkBuffers.
#
# Where it sits
# -------------
#     socket ──recv──▶ ciphertext ──incoming BIO──▶ SSL_read ──▶ input LinkBuffer
#     output LinkBuffer ──SSL_write──▶ outgoing BIO ──▶ (pending) ciphertext ──send──▶ socket
#
# A TLS connection is an ordinary Connection with a TLSLayer in `tls_layer`.
# Connection.do_read and Connection.send_out hand over to tls_do_read and
# tls_send_out when it is set; everything above (waiters, handlers, the
# Reader/Writer API, read/write backpressure, timeouts) sees plaintext and
# does not know.
#
# Two paths, one state machine. The objects are always Python's: an
# ssl.SSLObject (ctx.wrap_bio) over two ssl.MemoryBIOs, so _ssl configures
# and frees everything. The fast path (`fast`) calls SSL_read/SSL_write/
# BIO_read/BIO_write on their SSL* and BIO*s directly from C, resolved from
# the libssl _ssl is linked against (includes/np_openssl.h; docs/design.md
# says why that is sound); the fallback calls SSLObject.read/write and
# MemoryBIO.write/read. Any result of the fast path other than data,
# WANT_READ or close_notify falls through to the SSLObject call, which
# raises the right ssl.SSLError. The handshake and unwrap() always go
# through SSLObject.
#
# The handshake
# -------------
# is driven by the poller: every recv feeds the incoming BIO and calls
# do_handshake(); what it wrote to the outgoing BIO is sent at once (EPOLLOUT
# when the socket is full). A server connection stays in CS_NEW (no
# on_connect, no on_request) until the handshake is over; then on_connect is
# queued (or the connection becomes CS_CONNECTED) exactly as an accepted
# plaintext connection would be. A dial waits on `waiter`, resolved when the
# handshake ends (its exception, e.g. ssl.SSLCertVerificationError, is the
# dial's). A failed handshake is logged once at debug level and closes the
# connection; no user callback ran for it. The handshake timeout is a T_TLS
# timer in the poller's heap (not an asyncio handle per connection).
#
# Rules kept inside the epoll walk: SSLObject/MemoryBIO calls are Python
# calls but never user code (an SNI callback is the user's, and OpenSSL runs
# it inside do_handshake: it must not close other netpoll connections - the
# same rule as on_prepare); failures only set flags, resolve futures and
# close_by() (whose user-code half the poller queues).
#
# End of stream. A peer's close_notify makes SSLObject.read() return 0: a
# normal end of stream (peer_eof). A socket EOF or error without it marks the
# stream `truncated`: a read that needs more data raises EndOfStreamError,
# read() included (a truncation attack must not look like a clean end).
#
# Close. close_by() calls tls_close_notify() first: SSL_shutdown (unwrap)
# writes close_notify into the outgoing BIO and one non-blocking send tries
# to deliver it with what is pending; best effort, as asyncio's abort().
#
# Renegotiation. OP_NO_RENEGOTIATION is set on every context handed to
# netpoll (TLS 1.3 has none; a TLS 1.2 peer asking for one is refused).

from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.memoryview cimport PyMemoryView_FromMemory
from netpoll.includes.openssl cimport *

import ssl as _ssl
import sys as _sys

cdef enum:
    TLS_RX = 65536              # ciphertext taken per recv
    TLS_TX = 65536              # ciphertext taken out of the outgoing BIO per send
    TLS_ENCRYPT_BATCH = 262144  # plaintext encrypted per round of tls_send_out

cdef char _tls_rx[TLS_RX]      # the GIL serialises all users (one call at a time)
cdef char _tls_tx[TLS_TX]

# The fast path (np_openssl.h): OpenSSL's SSL_read/SSL_write/BIO_* called from C
# on the SSL* and BIO*s of the objects Python's _ssl made. Resolved once, here.
cdef bint _tls_fast_enabled = False
cdef object _SSLSocketType = None
cdef object _MemoryBIOType = None


@cython.binding(True)
def _tls_find_libs():
    """Where to resolve OpenSSL from: the _ssl extension module itself.

    dlsym() on the handle of _ssl searches _ssl and then the libraries it was
    linked against, in load order: exactly the libssl/libcrypto whose SSL
    objects _ssl makes - never another copy some other extension brought into
    the process (a path found in /proc/self/maps could be one). When _ssl has
    OpenSSL linked in statically and does not export it, nothing resolves and
    the fast path stays off.
    """
    import _ssl as _ssl_c
    path = getattr(_ssl_c, "__file__", "") or ""
    return path, ""


@cython.binding(True)
def _tls_init_fast():
    global _tls_fast_enabled, _SSLSocketType, _MemoryBIOType
    import _ssl as _ssl_c
    if _sys.implementation.name != "cpython" or not ((3, 11) <= _sys.version_info[:2] <= (3, 14)):
        return False        # the PySSLSocket/PySSLMemoryBIO prefixes are checked for these
    if os.environ.get("NETPOLL_TLS_FAST", "1") == "0":
        return False
    libssl, libcrypto = _tls_find_libs()
    if not np_ssl_init(os.fsencode(libssl), os.fsencode(libcrypto)):
        return False
    _SSLSocketType = _ssl_c._SSLSocket
    _MemoryBIOType = _ssl_c.MemoryBIO
    _tls_fast_enabled = True
    return True


_tls_init_fast()


@cython.binding(True)
def _tls_set_fast(flag):
    """Turn the OpenSSL fast path on or off for new connections (tests, benchmarks).

    Returns the previous setting; turning it on where it cannot work keeps it off.
    """
    global _tls_fast_enabled
    prev = _tls_fast_enabled
    _tls_fast_enabled = bool(flag) and np_ssl_ready != 0 and _SSLSocketType is not None
    return prev

cdef object _SSLWantReadError = _ssl.SSLWantReadError
cdef object _SSLError = _ssl.SSLError


class TLSInfo:
    """What a TLS connection negotiated (``conn.tls``)."""

    __slots__ = ("version", "cipher", "alpn_protocol", "server_hostname", "peer_certificate")

    def __init__(self, version, cipher, alpn_protocol, server_hostname, peer_certificate):
        self.version = version
        self.cipher = cipher
        self.alpn_protocol = alpn_protocol
        self.server_hostname = server_hostname
        self.peer_certificate = peer_certificate

    def __repr__(self):
        return (f"TLSInfo(version={self.version!r}, cipher={self.cipher!r}, "
                f"alpn_protocol={self.alpn_protocol!r}, "
                f"server_hostname={self.server_hostname!r})")


class _SNIRecorder:
    """An sni_callback that records the name on the SSLObject, then calls the user's."""

    __slots__ = ("user",)

    def __init__(self, user):
        self.user = user

    def __call__(self, sslobj, name, ctx):
        try:
            sslobj._netpoll_sni = name
        except AttributeError:
            pass
        if self.user is not None:
            return self.user(sslobj, name, ctx)
        return None


def _prepare_context(ctx, bint server_side):
    """Check an ssl= argument; set OP_NO_RENEGOTIATION; record SNI on servers."""
    if not isinstance(ctx, _ssl.SSLContext):
        raise TypeError(f"ssl: expected an ssl.SSLContext, not {type(ctx).__name__}")
    no_reneg = getattr(_ssl, "OP_NO_RENEGOTIATION", 0)
    if no_reneg and not (ctx.options & no_reneg):
        ctx.options |= no_reneg
    if server_side and not isinstance(ctx.sni_callback, _SNIRecorder):
        ctx.sni_callback = _SNIRecorder(ctx.sni_callback)
    return ctx


cdef class TLSLayer:

    def __cinit__(self):
        self.handshake_done = False

    cdef int start(self, Connection c, object ctx, bint server_side, object server_hostname,
                   double timeout) except -1:
        self.incoming = _ssl.MemoryBIO()
        self.outgoing = _ssl.MemoryBIO()
        self.server_side = server_side
        if server_side:
            self.sslobj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        else:
            self.sslobj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=False,
                                       server_hostname=server_hostname)
        self.timeout = timeout
        if _tls_fast_enabled:
            inner = getattr(self.sslobj, "_sslobj", None)
            if (type(inner) is _SSLSocketType and type(self.incoming) is _MemoryBIOType
                    and type(self.outgoing) is _MemoryBIOType):
                self.fast = np_ssl_check(inner, self.incoming, self.outgoing,
                                         &self.ssl, &self.rbio, &self.wbio) == 1
        c.tls_layer = self
        c.own_in()            # TLS code uses both buffers from the handshake on
        c.own_out()
        if timeout > 0:
            self.timer = c.poller.timers.push(monotonic() + timeout, c, T_TLS, None)
        return 0

    cdef int cancel_timer(self, Connection c) except -1:
        if self.timer is not None:
            c.poller.timers.cancel(self.timer)
            self.timer = None
        return 0

    cdef Py_ssize_t out_pending(self) except -1:
        cdef Py_ssize_t n = 0
        if self.pending is not None:
            n = len(self.pending) - self.pending_off
        if self.fast:
            return n + np_BIO_pending(self.wbio)
        return n + self.outgoing.pending

    cdef int feed(self, char* data, Py_ssize_t n) except -1:
        if self.fast:
            if np_BIO_write(self.rbio, data, <int>n) != n:
                raise MemoryError("tls: BIO_write failed")
            return 0
        self.incoming.write(PyMemoryView_FromMemory(data, n, PyBUF_READ))
        return 0

    cdef int send_pending(self, int fd) except? -2:
        """Send the ciphertext waiting: 0 all sent, 1 the socket is full, -errno."""
        cdef Py_ssize_t n, size
        cdef const char* p
        cdef int err, k
        cdef Py_ssize_t off
        if self.fast:
            # straight from the outgoing BIO through a static buffer; only a
            # partial send leaves bytes behind (in `pending`)
            while self.pending is None:
                k = np_BIO_read(self.wbio, _tls_tx, TLS_TX)
                if k <= 0:
                    return 0
                off = 0
                while off < k:
                    n = send(fd, _tls_tx + off, k - off, MSG_NOSIGNAL | MSG_DONTWAIT)
                    if n < 0:
                        err = errno
                        if err == EINTR:
                            continue
                        self.pending = PyBytes_FromStringAndSize(_tls_tx + off, k - off)
                        self.pending_off = 0
                        if err == EAGAIN:
                            return 1
                        return -err
                    off += n
        while True:
            if self.pending is None:
                if self.fast:
                    return self.send_pending(fd)
                if self.outgoing.pending == 0:
                    return 0
                self.pending = self.outgoing.read()
                self.pending_off = 0
            size = len(self.pending)
            p = self.pending
            while self.pending_off < size:
                n = send(fd, p + self.pending_off, size - self.pending_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT)
                if n < 0:
                    err = errno
                    if err == EINTR:
                        continue
                    if err == EAGAIN:
                        return 1
                    return -err
                self.pending_off += n
            self.pending = None


cdef TLSLayer tls_start(Connection c, object ctx, bint server_side, object server_hostname,
                        double timeout, bint wait):
    """Put a TLS layer under c (registered with its poller) and start the handshake.

    wait: a dial or accept() waits for the handshake on t.waiter.
    """
    cdef TLSLayer t = TLSLayer.__new__(TLSLayer)
    t.start(c, ctx, server_side, server_hostname, timeout)
    if wait:
        t.waiter = c.poller.loop.create_future()
    if not server_side:
        tls_handshake(c, t)  # a client sends its ClientHello now; a server waits for
    return t                 # one (OpenSSL's ~34 KiB of record buffers come with it)


cdef int tls_send(Connection c, TLSLayer t) except -1:
    # Send what the SSL object wrote outside send_out (handshake, alerts,
    # session tickets); arm EPOLLOUT for what the socket does not take.
    cdef int r
    if c.closed_by or c.writing or t.failed:
        return 0
    r = tls_send_out(c)       # after the handshake: also output written before it ended
    if r == 1:
        c.writing = True
        c.update_events()
    elif r < 0:
        t.eof = True
        if not t.handshake_done:
            tls_handshake_failed(c, t, oserror(-r, "ssl handshake: send"))
        else:
            t.truncated = True
            c.mark_eof(sockerror(-r))
    return 0


cdef int tls_handshake(Connection c, TLSLayer t) except -1:
    try:
        t.sslobj.do_handshake()
    except _SSLWantReadError:
        tls_send(c, t)
        if t.eof and not t.failed:
            tls_handshake_failed(c, t, ConnectionResetError(
                "ssl handshake: the peer closed the connection during the handshake"))
        return 0
    except (_SSLError, OSError, ValueError) as exc:
        tls_handshake_failed(c, t, exc)
        return 0
    t.handshake_done = True
    t.cancel_timer(c)
    tls_send(c, t)
    if t.waiter is not None:
        w = t.waiter
        t.waiter = None
        if not w.done():
            w.set_result(None)
    elif c.connect_state == CS_NEW:
        # an accepted connection: now it is what a plaintext one is at accept
        if c.on_connect is not None:
            if not c.queued:
                c.queued = True
                c.poller.ready.append(c)
        else:
            c.connected(c.ctx)
    tls_read_plain(c, t)
    return 0


cdef int tls_handshake_failed(Connection c, TLSLayer t, object exc) except -1:
    if t.failed:
        return 0
    t.failed = True
    t.cancel_timer(c)
    config.logger.debug("netpoll: tls handshake failed on fd %d: %s", c.fd, exc)
    # the alert OpenSSL wrote, best effort
    if not c.closed_by and t.out_pending():
        t.send_pending(c.fd)
    w = t.waiter
    t.waiter = None
    if w is not None and not w.done():
        w.set_exception(exc)
    c.close()
    return 0


cdef int tls_do_read(Connection c, unsigned int ev, bint drain) except -1:
    """Connection.do_read for a TLS connection: ciphertext in, plaintext out."""
    cdef TLSLayer t = c.tls_layer
    cdef Py_ssize_t n
    cdef int err, reads = 0
    cdef object sockerr = None
    while True:
        n = recv(c.fd, _tls_rx, TLS_RX, 0)
        if n > 0:
            t.feed(_tls_rx, n)
            reads += 1
            if ev & HUP_EVENTS or drain or (n == TLS_RX and reads < 4):
                continue
            break
        if n == 0:
            t.eof = True
            break
        err = errno
        if err == EINTR:
            continue
        if err != EAGAIN:
            t.eof = True
            sockerr = sockerror(err)
        elif ev & (EPOLLHUP | EPOLLERR):
            t.eof = True
        break
    if t.eof:
        t.incoming.write_eof()
    if not t.handshake_done:
        if t.failed:
            return 0
        tls_handshake(c, t)        # when it completes, it reads the plaintext that came along
        if not t.handshake_done or c.closed_by:
            return 0
    else:
        tls_read_plain(c, t)
    if t.eof and not c.peer_eof:
        if not t.close_notify:
            t.truncated = True
        c.mark_eof(sockerr)
    return 0


cdef int tls_read_plain(Connection c, TLSLayer t) except -1:
    # Decrypt everything the incoming BIO holds into the input LinkBuffer
    # (all of it: ciphertext left in the BIO would have no event to wake it).
    cdef Py_ssize_t avail, n, got = 0
    cdef char* p
    cdef int r, e
    if t.fast:
        # One clear per pass: only a failure leaves errors in the queue, and a
        # failure ends the pass (ERR_clear_error is not free in OpenSSL 3)
        np_ERR_clear_error()
        while not c.closed_by:
            p = c.inbuf.book(c.book_size, c.max_size, &avail)
            r = np_SSL_read(t.ssl, p, <int>min(avail, 1 << 30))
            if r > 0:
                c.inbuf.book_ack(r)
                got += r
                if r == c.book_size and c.book_size < BOOK_MAX:
                    c.book_size <<= 1
                if c.inbuf.length > c.max_size:
                    c.max_size = min(c.inbuf.length, BOOK_MAX)
                continue
            c.inbuf.book_ack(0)
            e = np_SSL_get_error(t.ssl, r)
            if e == NP_SSL_ERROR_WANT_READ:
                break
            if e == NP_SSL_ERROR_ZERO_RETURN:
                t.close_notify = True
                t.eof = True
                if not c.peer_eof:
                    c.mark_eof(None)
                break
            break          # an error: the SSLObject call below raises it, with its reason
        else:
            return tls_plain_done(c, t, got)
        if e == NP_SSL_ERROR_WANT_READ or e == NP_SSL_ERROR_ZERO_RETURN:
            return tls_plain_done(c, t, got)
    while not c.closed_by:
        p = c.inbuf.book(c.book_size, c.max_size, &avail)
        try:
            n = t.sslobj.read(avail, PyMemoryView_FromMemory(p, avail, PyBUF_WRITE))
        except _SSLWantReadError:
            c.inbuf.book_ack(0)
            break
        except (_SSLError, OSError) as exc:
            c.inbuf.book_ack(0)
            if not t.eof:
                config.logger.debug("netpoll: tls error on fd %d: %s", c.fd, exc)
            t.eof = True
            t.truncated = not t.close_notify
            if not c.peer_eof:
                c.mark_eof(exc)
            break
        c.inbuf.book_ack(n)
        if n == 0:
            t.close_notify = True     # the peer's close_notify: a clean end of stream
            t.eof = True
            if not c.peer_eof:
                c.mark_eof(None)
            break
        got += n
        if n == c.book_size and c.book_size < BOOK_MAX:
            c.book_size <<= 1
        if c.inbuf.length > c.max_size:
            c.max_size = min(c.inbuf.length, BOOK_MAX)
    return tls_plain_done(c, t, got)


cdef int tls_plain_done(Connection c, TLSLayer t, Py_ssize_t got) except -1:
    if t.out_pending():
        tls_send(c, t)          # e.g. a key update's answer
    if got:
        c.rx_total += got
        if c.idle_timeout > 0:
            c.last_active = monotonic()
        c.on_data()
    return 0


cdef int tls_send_out(Connection c) except? -2:
    """Connection.send_out for TLS: 0 all sent, 1 the socket is full, -errno on error."""
    cdef TLSLayer t = c.tls_layer
    cdef iovec iov[MAX_IOV]
    cdef Py_ssize_t total, done, n
    cdef int cnt, i, r
    while True:
        r = t.send_pending(c.fd)
        if r:
            return r
        if not t.handshake_done or c.outbuf.length == 0:
            break
        cnt = c.outbuf.fill_iovecs(iov, MAX_IOV, &total)
        done = 0
        if t.fast:
            np_ERR_clear_error()
            for i in range(cnt):
                r = np_SSL_write(t.ssl, iov[i].iov_base, <int>iov[i].iov_len)
                if r <= 0:
                    break      # an error: the SSLObject call below raises it
                done += r
                if r < <Py_ssize_t>iov[i].iov_len or done >= TLS_ENCRYPT_BATCH:
                    break
            else:
                c.outbuf.consume(done)
                continue
            if r > 0:
                c.outbuf.consume(done)
                continue
            if done:
                c.outbuf.consume(done)
                continue
        try:
            for i in range(cnt):
                n = t.sslobj.write(PyMemoryView_FromMemory(
                    <char*>iov[i].iov_base, iov[i].iov_len, PyBUF_READ))
                done += n
                if n < <Py_ssize_t>iov[i].iov_len or done >= TLS_ENCRYPT_BATCH:
                    break
        except (_SSLError, OSError) as exc:
            config.logger.debug("netpoll: tls write failed on fd %d: %s", c.fd, exc)
            if done:
                c.outbuf.consume(done)
            return -EPIPE
        c.outbuf.consume(done)
    if c.outbuf.length == 0:
        c.outbuf.release_all()
    if c.idle_timeout > 0:
        c.last_active = monotonic()
    return 0


cdef int tls_close_notify(Connection c, int who) except -1:
    """Best effort: write close_notify and try one send (from close_by).

    A local close sends it; a peer close only when the peer sent its own
    close_notify (the answer that completes a clean shutdown).
    """
    cdef TLSLayer t = c.tls_layer
    if not t.handshake_done or t.failed or t.truncated or c.detached or c.fd < 0:
        return 0
    if who == BY_PEER and not t.close_notify:
        return 0
    try:
        t.sslobj.unwrap()
    except (_SSLError, OSError, ValueError):
        pass
    t.send_pending(c.fd)
    return 0


cdef int tls_on_timer(Connection c, TLSLayer t) except -1:
    # the handshake did not finish in time
    t.timer = None
    if t.handshake_done or t.failed or c.closed_by:
        return 0
    msg = f"ssl handshake timed out after {t.timeout:g}s"
    tls_handshake_failed(c, t, TimeoutError(msg) if t.server_side else DialTimeoutError(msg))
    return 0


async def tls_client_handshake(Connection c, object ctx, object server_hostname,
                               double timeout):
    """Start the client handshake on a registered connection and wait for it."""
    return await _tls_wait(c, ctx, False, server_hostname, timeout)


async def tls_server_handshake(Connection c, object ctx, double timeout):
    """Start the server handshake on a registered connection and wait for it."""
    return await _tls_wait(c, ctx, True, None, timeout)


async def _tls_wait(Connection c, object ctx, bint server_side, object server_hostname,
                    double timeout):
    cdef TLSLayer t
    try:
        # (wrap_bio raises ValueError e.g. for check_hostname without a name)
        t = tls_start(c, ctx, server_side, server_hostname, timeout, True)
        w = t.waiter
        if w is not None:
            await w
    except BaseException:
        c.close()
        raise
    return c


cdef object tls_info(Connection c):
    cdef TLSLayer t = c.tls_layer
    if t is None:
        return None
    if t.info is None and t.handshake_done:
        so = t.sslobj
        cipher = so.cipher()
        if t.server_side:
            name = getattr(so, "_netpoll_sni", None)
        else:
            name = so.server_hostname
        t.info = TLSInfo(so.version(), cipher[0] if cipher else None,
                         so.selected_alpn_protocol(), name, so.getpeercert())
    return t.info


@cython.binding(True)
def _tls_is_fast(Connection c):
    """True when c's TLS runs on the OpenSSL fast path (tests, benchmarks)."""
    return c.tls_layer is not None and c.tls_layer.fast
