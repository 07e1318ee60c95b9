# netpoll._core — Connection: its state table, input/output paths, reader/writer.
#
# One owner of connection state
# -----------------------------
# Every state field below is written by Connection methods only; the Handler
# and EventLoop call these methods (h11 style: the transitions in one place).
#
#   field          moves                               by
#   closed_by      OPEN -> BY_USER | BY_PEER           close_by()  (first closer wins)
#   connect_state  CS_NEW -> CS_CONNECTED              connected() (on_connect over)
#                  CS_CONNECTED -> CS_DISCONNECTED     fire_disconnect() (peer close, once)
#   peer_eof       False -> True                       mark_eof()  (EOF, hang-up, socket error)
#   draining       False -> True                       begin_drain() (server shutdown)
#   processing     False <-> True                      start_handler() / handler_done()
#   finished       False -> True                       finish_close() / abandon()
#   close_error    None -> OSError                     mark_eof(), note_error() (the failed
#                                                      recv/send; the first one stays)
#
# A transport's connection (proto set, reactor/transport.pyx) never closes by
# itself: a peer EOF or a socket error is queued for its TransportCore, which
# tells the protocol and closes through close() as asyncio's transport does.
#
# Closing. close_by(who) does the I/O half at once: out of epoll, timers
# cancelled, waiting reads and flushes woken with the error that fits, and -
# if a handler still runs, e.g. suspended on a foreign awaitable - the socket
# is shut down (shutdown(2)) so the peer sees the close now. The user-code
# half, after_close(), runs on_disconnect (peer close) and, once no handler
# runs, finish_close(): close callbacks newest first, the server forgets the
# connection, the fd is closed, unsent output is freed and the handler's
# reference cycles are broken (so buffers go without the cyclic GC). Inside
# the poller's walk after_close is queued (reactor/poller.pyx says why).
#
# The idle timeout closes the connection and cancels a handler suspended on
# something else (it sees CancelledError at its await); a user close() lets a
# suspended handler run on (its netpoll reads and writes fail with
# ConnectionClosedError) and finishes the close when it returns. Shutdown
# (begin_drain) is its own transition, not a fake peer EOF: no new input is
# taken in, a waiting read ends with EndOfStreamError, and the connection
# closes once idle with its output drained; force_close() ends the rest.
#
# An object made with Connection.__new__ (never set up) is closed and finished
# from the start: every method behaves as on a closed connection.
#
# Idle connections carry no LinkBuffers. Until its first input, `inbuf` is the
# shared _NO_INPUT, and until its first write `outbuf` is _NO_OUTPUT: empty
# LinkBuffers that nothing ever writes. Their counters (length, pending, gen)
# read as an empty buffer's, so code that only reads them needs no check; code
# that writes or hands out a buffer first gives the connection its own
# (own_in/own_out): do_read, TLS start, the io_uring receive, every reader
# method, _writable (every writer method), conn.input. On an empty buffer
# c_flush, release_keep and release_all change nothing; c_close is skipped.
# The debug build checks the sentinels stay pristine (_check_no_bufs).
#
# Input: the poller books space in the input LinkBuffer and recv()s into it;
# a waiting read is woken when read_need bytes are there, else on_request is
# queued. Output: writes go to the output LinkBuffer; flush/flush_nowait send
# at once and arm EPOLLOUT only for what the socket did not take.

cdef class Connection:
    """A connection driven by the pollers.

    ``conn.reader`` and ``conn.writer`` are the connection itself (as in Go
    Netpoll): reader methods are awaitables, writer methods are synchronous
    and ``await writer.flush()`` sends.
    """

    def __cinit__(self):
        global live_connections
        # Until setup() a Connection is closed and finished: an object made
        # with Connection.__new__ behaves as a closed connection, never crashes.
        self.fd = -1
        self.closed_by = BY_USER
        self.finished = True
        self.close_callbacks = None      # made on the first add_close_callback
        self.inbuf = _NO_INPUT           # own buffers on first use (own_in / own_out)
        self.outbuf = _NO_OUTPUT
        if NETPOLL_DEBUG:
            live_connections += 1

    def __dealloc__(self):
        global live_connections
        if self.fd >= 0 and not self.finished and not self.detached:
            close(self.fd)
            self.fd = -1
        if NETPOLL_DEBUG:
            live_connections -= 1

    def __init__(self):
        raise TypeError("connections are made by EventLoop, dial_connection or new_fd_connection")

    cdef int setup(self, int fd, object loop, str network, EventLoop server) except -1:
        self.fd = fd
        self.network = network
        self.server = server
        self.poller = pick_poller(loop)
        # an accepted connection starts with its server's Context and copies it when
        # its first handler runs (an idle connection holds no Context of its own)
        self.context = server.context if server is not None else PyContext_CopyCurrent()
        self.closed_by = OPEN
        self.finished = False
        self.book_size = config.buffer_size
        self.max_size = config.buffer_size
        if network in ("tcp", "tcp4", "tcp6"):
            _set_nodelay(fd)
        return 0

    cdef int own_in(self) except -1:
        if self.inbuf is _NO_INPUT:
            self.inbuf = LinkBuffer.__new__(LinkBuffer)
            self.inbuf.owned = True
        return 0

    cdef int own_out(self) except -1:
        if self.outbuf is _NO_OUTPUT:
            self.outbuf = LinkBuffer.__new__(LinkBuffer)
        return 0

    # -- reader / writer views (Go: Reader() and Writer() return the connection) --

    @property
    def reader(self):
        """The connection's Reader (the connection itself)."""
        return self

    @property
    def writer(self):
        """The connection's Writer (the connection itself)."""
        return self

    # -- poller side ----------------------------------------------------------------

    cdef int on_event(self, unsigned int ev) except -1:
        if self.closed_by:
            return 0
        if ev & (EPOLLIN | HUP_EVENTS) and not self.peer_eof and not self.paused \
                and not self.wpaused and not self.draining and not self.rstop:
            self.do_read(ev)
        elif ev & (EPOLLHUP | EPOLLERR) and not self.writing:
            self.mark_eof(None)
        if ev & EPOLLOUT and self.writing and not self.closed_by:
            self.on_writable()
        return 0

    cdef int do_read(self, unsigned int ev, bint drain=False) except -1:
        cdef Py_ssize_t avail, n, got = 0
        cdef char* p
        cdef int err, reads = 0
        if self.tls_layer is not None:
            return tls_do_read(self, ev, drain)      # ciphertext in, plaintext out
        if self.poller.uring and self.poller.ring.recv and not self.uring_norecv:
            # io_uring backend: its multishot recv does the reading
            return uring_take_input(self.poller)
        if self.inbuf is _NO_INPUT:
            self.own_in()
        while True:
            p = self.inbuf.book(self.book_size, self.max_size, &avail)
            n = recv(self.fd, p, avail, 0)
            if n > 0:
                self.inbuf.book_ack(n)
                got += n
                reads += 1
                if n == self.book_size and self.book_size < BOOK_MAX:
                    self.book_size <<= 1
                if self.inbuf.length > self.max_size:
                    self.max_size = min(self.inbuf.length, BOOK_MAX)
                if ev & HUP_EVENTS or drain:
                    continue       # the peer is gone: read everything left first
                # A read that filled its booking likely left more behind: take it
                # now (up to 4 reads per event, for fairness) instead of paying
                # another epoll round per book-sized piece. Level-triggered
                # epoll reports whatever is still left.
                if n < avail or reads >= 4 or (self.read_limit
                                                and self.inbuf.length >= self.read_limit):
                    break
                continue
            self.inbuf.book_ack(0)
            if n == 0:
                self.mark_eof(None)
                break
            err = errno
            if err == EINTR:
                continue
            if err != EAGAIN:
                self.mark_eof(sockerror(err))
            elif ev & (EPOLLHUP | EPOLLERR):
                self.mark_eof(None)
            break
        if got:
            self.rx_total += got
            if self.idle_timeout > 0:
                self.last_active = monotonic()
            self.on_data()
        return 0

    cdef int on_data(self) except -1:
        cdef Py_ssize_t length = self.inbuf.length
        if self.proto is not None:
            return self.proto.queue()      # data_received after the pass
        if self.read_limit and not self.paused and length >= self.read_limit \
                and length >= self.read_need:
            self.paused = True
            self.update_events()
        if self.read_waiter is not None:
            if length >= self.read_need:
                w = self.read_waiter
                self.read_waiter = None
                (<Waiter>w).wake(None)
            return 0
        if self.on_request is not None and not self.processing and not self.queued:
            self.queued = True
            self.poller.ready.append(self)
        return 0

    cdef int mark_eof(self, exc) except -1:
        """The peer finished sending (or the socket failed)."""
        if self.peer_eof:
            return 0
        self.peer_eof = True
        if exc is not None and self.close_error is None:
            self.close_error = exc
        if self.registered:
            self.update_events()
        if self.proto is not None:
            return self.proto.queue()      # eof_received / the error, after the pass
        self.wake_reader()
        self.poller.hups.append(self)
        return 0

    cdef int wake_reader(self) except -1:
        # The waiting read re-checks: it takes its data, returns b"" (read) or
        # raises the error that fits the state, with its own op in the message.
        w = self.read_waiter
        if w is not None:
            self.read_waiter = None
            (<Waiter>w).wake(None)
        return 0

    cdef int on_peer_closed(self) except -1:
        # After this batch's handlers ran: close now unless one still runs.
        if self.proto is not None:
            return self.proto.deliver()    # a transport closes as its protocol says
        if self.closed_by or self.processing:
            return 0
        self.close_by(BY_PEER)
        return 0

    cdef unsigned int wanted(self) noexcept:
        cdef unsigned int want = 0
        if not self.peer_eof and not self.paused and not self.wpaused and not self.draining \
                and not self.rstop:
            want = READ_EVENTS
        if self.writing:
            want |= EPOLLOUT
        return want

    cdef int update_events(self) except -1:
        cdef unsigned int want = self.wanted()
        if want != self.events and self.registered and self.closed_by == OPEN:
            self.poller.modify(self, want)
        return 0

    cdef int set_reading(self, bint on) except -1:
        if self.rstop == (not on):
            return 0
        self.rstop = not on
        return self.update_events()

    cdef int set_writing(self, bint on) except -1:
        if self.writing == on:
            return 0
        self.writing = on
        return self.update_events()

    cdef object note_error(self, int err):
        if self.close_error is None:
            self.close_error = sockerror(err)
        return self.close_error

    cdef int drop_output(self) except -1:
        if self.outbuf.length:
            self.outbuf.consume(self.outbuf.length)
        self.outbuf.release_all()
        return 0

    cdef int on_writable(self) except -1:
        cdef int r
        if self.proto is not None:
            return self.proto.on_writable()
        r = self.send_out()
        if self.wpaused and self.outbuf.length + self.outbuf.pending <= self.write_limit // 2:
            self.wpaused = False
            if r == 1:
                self.update_events()
        if r == 1:
            return 0
        self.writing = False
        if self.write_timer is not None and self.flush_waiter is None:
            self.poller.timers.cancel(self.write_timer)      # a flush_nowait's deadline
            self.write_timer = None
        self.update_events()
        w = self.flush_waiter
        self.flush_waiter = None
        if r < 0:
            err = sockerror(-r)
            if w is not None:
                (<Waiter>w).wake(ConnectionClosedError(f"flush: {os.strerror(-r)} (errno {-r})"))
            self.mark_eof(err)
            return 0
        if w is not None:
            (<Waiter>w).wake(None)
        if self.close_when_done and not self.processing:
            self.close()
        return 0

    cdef int send_out(self) except? -2:
        """Write queued output: 0 all sent, 1 the socket is full, -errno on error."""
        cdef iovec iov[MAX_IOV]
        cdef msghdr msg
        cdef Py_ssize_t total, n
        cdef int cnt, err
        if self.tls_layer is not None:
            return tls_send_out(self)                # encrypt, then send
        if self.uring_sid:
            return 1          # io_uring: a SEND is in flight; its CQE continues (in order)
        memset(&msg, 0, sizeof(msg))
        while self.outbuf.length:
            cnt = self.outbuf.fill_iovecs(iov, MAX_IOV, &total)
            if cnt == 1:        # the common case: send() skips the kernel's msghdr copy
                n = send(self.fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT)
            else:
                msg.msg_iov = iov
                msg.msg_iovlen = cnt
                n = sendmsg(self.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)
            if n < 0:
                err = errno
                if err == EINTR:
                    continue
                if err == EAGAIN:
                    return 1
                return -err
            self.outbuf.consume(n)
            if n < total:
                return 1
        self.outbuf.release_all()
        if self.idle_timeout > 0:
            self.last_active = monotonic()
        return 0

    cdef int on_timer(self, int kind, object token) except -1:
        cdef double due
        if self.closed_by:
            return 0
        if kind == T_READ:
            if self.read_waiter is token and not token.done():
                self.read_waiter = None
                (<Waiter>token).wake(ReadTimeoutError(
                    f"{self.read_expired_msg()}: "
                    f"{self.inbuf.length} bytes readable, {self.read_need} needed"))
        elif kind == T_WRITE and token is _NOWAIT:
            self.write_timer = None
            if self.writing and self.flush_waiter is None:
                config.logger.debug(
                    "netpoll: closing fd %d: write %s with %d bytes unsent",
                    self.fd, self.write_expired_msg(), self.outbuf.length)
                self.close()
        elif kind == T_WRITE:
            if self.flush_waiter is token and not token.done():
                self.flush_waiter = None
                (<Waiter>token).wake(WriteTimeoutError(
                    f"flush {self.write_expired_msg()}: {self.outbuf.length} bytes unsent"))
        elif kind == T_TLS:
            if self.tls_layer is not None:
                tls_on_timer(self, self.tls_layer)
        elif kind == T_IDLE and self.idle_timeout > 0 and token == self.idle_timeout:
            due = self.last_active + self.idle_timeout
            if due <= monotonic() + 0.001:
                config.logger.debug("netpoll: closing fd %d after %.3gs idle",
                                    self.fd, self.idle_timeout)
                if self.handler is not None and self.handler.suspended():
                    self.handler.cancel()     # it waits on something else: stop it
                self.close()
            else:
                self.idle_timer = self.poller.timers.push(due, self, T_IDLE, token)
        return 0

    # -- handlers ---------------------------------------------------------------------

    cdef int start_handler(self) except -1:
        if self.proto is not None:
            return self.proto.deliver()    # a transport: the protocol, no handler
        if self.processing or self.closed_by or self.finished:
            return 0
        if self.on_request is None and (self.on_connect is None or self.connect_state):
            return 0
        if self.handler is None and self.connect_state == CS_CONNECTED and _runner_of(self) is None:
            return self.run_plain()
        if self.handler is None:
            if self.server is not None:
                self.context = self.context.copy()      # one Context per connection
            self.handler = Handler(self, self.poller.loop)
        self.processing = True
        self.handler.run()
        return 0

    cdef int run_plain(self) except -1:
        # The on_request loop without a Handler, for as long as on_request is a
        # plain function (same rules: serial, re-called while it consumes or
        # data arrives, no busy loop). A call that returns an awaitable hands
        # over to a Handler from that point on.
        cdef Py_ssize_t gen, rx
        cdef Handler h
        self.processing = True
        _task_slot_clear(self.poller)        # user code: no task is current
        while (self.closed_by != BY_USER and self.on_request is not None
               and self.inbuf.length and not self.detached):
            gen = self.inbuf.gen
            rx = self.rx_total
            try:
                res = self.on_request(self.ctx, self)
            except BaseException as exc:
                h = self.handler = Handler(self, self.poller.loop)
                h.phase = PH_REQUEST
                h.on_error(exc)
                h.finish()
                return 0
            if res is not None and (PyCoro_CheckExact(res) or hasattr(res, "__await__")):
                if self.server is not None:
                    self.context = self.context.copy()
                h = self.handler = Handler(self, self.poller.loop)
                h.phase = PH_REQUEST
                h.consumed_mark = gen
                h.rx_mark = rx
                h.set_coro(res)
                if h.step(None) == 0:
                    h.run()
                return 0
            if self.inbuf.gen == gen and self.rx_total == rx:
                break
        self.handler_done()
        return 0

    cdef int connected(self, object ctx) except -1:
        self.ctx = ctx
        if self.connect_state != CS_NEW:
            return 0
        self.connect_state = CS_CONNECTED
        if self.peer_eof or self.closed_by == BY_PEER:
            self.fire_disconnect()
        return 0

    cdef int handler_done(self) except -1:
        self.processing = False
        if self.closed_by:
            self.finish_close()
            return 0
        if self.peer_eof:
            self.close_by(BY_PEER)
            return 0
        if self.paused and self.inbuf.length < self.read_limit // 2:
            self.paused = False
            self.update_events()
        self.inbuf.release_keep(self.book_size)
        if self.close_when_done and self.output_drained():
            self.close()
        return 0

    cdef bint output_drained(self) noexcept:
        return (self.outbuf.length == 0 and self.flush_waiter is None and not self.writing)

    cdef bint is_idle(self) noexcept:
        return (not self.processing and self.inbuf.length == 0
                and self.outbuf.length == 0 and self.outbuf.pending == 0
                and self.flush_waiter is None and not self.writing)

    cdef int fire_disconnect(self) except -1:
        cdef object cb = self.on_disconnect
        if self.connect_state != CS_CONNECTED:
            return 0
        self.connect_state = CS_DISCONNECTED
        if cb is None:
            return 0
        _task_slot_clear(self.poller)
        try:
            res = cb(self.ctx, self)
            if res is not None and hasattr(res, "__await__"):
                task = asyncio.ensure_future(res, loop=self.poller.loop)
                task.add_done_callback(_log_task_error)
        except Exception as exc:
            config.logger.error("netpoll: on_disconnect raised (fd %d)", self.fd, exc_info=exc)
        return 0

    # -- closing --------------------------------------------------------------------

    cdef int close_by(self, int who) except -1:
        # The I/O half runs at once, even inside the poller's walk: the peer
        # sees the close now, waiters wake. The user-code half (after_close)
        # runs now, or after the walk when the walk started the close.
        if self.closed_by:
            return 0
        if self.tls_layer is not None:
            tls_close_notify(self, who)    # best effort, before the socket goes
        self.closed_by = who
        self.poller.remove(self)
        self.cancel_timers()
        if self.processing and not self.detached and self.fd >= 0:
            # a handler still runs (maybe waiting on something else): the fd
            # stays open until it returns, but the connection is closed now
            shutdown(self.fd, SHUT_RDWR)
        self.wake_reader()
        w = self.flush_waiter
        if w is not None:
            self.flush_waiter = None
            (<Waiter>w).wake(ConnectionClosedError(
                    f"connection closed by {'peer' if who == BY_PEER else 'user'} "
                    f"with {self.outbuf.length} bytes unsent"))
        if self.poller.in_batch:
            if not self.close_queued:
                self.close_queued = True
                self.poller.closes.append(self)
            return 0
        return self.after_close()

    cdef int after_close(self) except -1:
        if self.finished:
            return 0
        if self.closed_by == BY_PEER:
            self.fire_disconnect()
        if self.processing and self.handler is not None and self.handler.coro is not None \
                and self.handler.phase == PH_CONNECT:
            return 0      # on_connect is still running; it finishes the close
        if not self.processing:
            self.finish_close()
        return 0

    cdef int begin_drain(self) except -1:
        # Server shutdown: requests that arrive from now on are not taken in;
        # a read waiting for more input ends with EndOfStreamError (the input
        # is over for this connection); the connection closes once idle.
        self.close_when_done = True
        if self.closed_by == OPEN:
            self.draining = True
            self.update_events()
            self.wake_reader()
            if self.is_idle():
                self.close()
        elif not self.processing:
            self.finish_close()
        return 0

    cdef int force_close(self) except -1:
        # Shutdown's force phase: cancel a suspended handler, close, finish now.
        if self.handler is not None and self.handler.suspended():
            self.handler.cancel()
        self.close()
        if not self.finished:
            self.processing = False
            self.finish_close()
        return 0

    cdef int cancel_timers(self) except -1:
        if self.poller is not None:
            self.poller.timers.cancel(self.read_timer)
            self.poller.timers.cancel(self.write_timer)
            self.poller.timers.cancel(self.idle_timer)
            if self.tls_layer is not None:
                self.tls_layer.cancel_timer(self)
        self.read_timer = self.write_timer = self.idle_timer = None
        return 0

    cdef int abandon(self) except -1:
        # The loop is gone: release everything without running callbacks.
        self.closed_by = self.closed_by or BY_USER
        self.registered = False
        self.events = 0
        self.close_callbacks = None
        self.read_waiter = None
        self.flush_waiter = None
        if not self.finished:
            self.finished = True
            if not self.detached and self.fd >= 0:
                close(self.fd)
        if self.server is not None:
            self.server.conns.discard(self)
        self.proto = None
        if self.handler is not None:
            self.handler.release()
            self.handler = None
        if self.inbuf is not _NO_INPUT:
            self.inbuf.c_close()
        if self.outbuf is not _NO_OUTPUT:
            self.outbuf.c_close()
        return 0

    cdef int finish_close(self) except -1:
        cdef Connection keep = self     # the last reference may go below
        if self.finished:
            return 0
        self.finished = True
        cbs = self.close_callbacks
        self.close_callbacks = None
        if cbs:
            _task_slot_clear(self.poller)
        for cb in reversed(cbs or ()):
            try:
                cb(self)
            except Exception as exc:
                config.logger.error("netpoll: close callback raised (fd %d)", self.fd,
                                    exc_info=exc)
        if self.server is not None:
            self.server.forget(self)
        self.proto = None                # the TransportCore keeps the connection, not back
        self.cancel_timers()
        self.poller.forget(self)
        if not self.detached and self.fd >= 0:
            pair = self._addr_pair
            if pair is None or pair[0] is None or pair[1] is None:
                try:
                    self._addrs()
                except OSError:
                    pass
            close(self.fd)
        # unsent output goes now (views handed out stay valid); input stays
        # readable: data that arrived before a peer close can still be read
        if self.outbuf is not _NO_OUTPUT:
            self.outbuf.c_close()
        if NETPOLL_DEBUG:
            _check_no_bufs()
        if self.handler is not None:
            self.handler.release()
            self.handler = None
        return 0

    # -- public: state and options --------------------------------------------------

    def is_active(self):
        """False once closed by either side (a peer close is seen without reading)."""
        return self.closed_by == OPEN and not self.peer_eof

    def fileno(self):
        """The socket's file descriptor."""
        return self.fd

    @property
    def tls(self):
        """None on plaintext; else a TLSInfo (version, cipher, alpn_protocol, ...)."""
        return tls_info(self)

    def set_read_timeout(self, seconds):
        """Timeout of each read wait, in seconds; None or 0 turns it off."""
        self.read_timeout = _seconds("set_read_timeout", seconds)

    def set_write_timeout(self, seconds):
        """Timeout of a flush that must wait, in seconds; None or 0 turns it off."""
        self.write_timeout = _seconds("set_write_timeout", seconds)

    def set_idle_timeout(self, seconds):
        """Close the connection after this long without traffic; also sets TCP keepalive."""
        cdef double s = _seconds("set_idle_timeout", seconds)
        self.idle_timeout = s
        if s > 0:
            self.last_active = monotonic()
            if self.network in ("tcp", "tcp4", "tcp6"):
                _set_keepalive(self.fd, s)
            if self.closed_by == OPEN and self.poller is not None:
                self.poller.timers.cancel(self.idle_timer)
                self.idle_timer = self.poller.timers.push(self.last_active + s, self, T_IDLE, s)

    # -- deadlines (Go v0.7.2): absolute, in loop.time() units; they replace the timeouts --

    cdef double read_due(self) noexcept:
        if self.has_rdeadline:
            return self.rdeadline
        if self.read_timeout > 0:
            return self.read_wait_start + self.read_timeout
        return 0

    cdef double write_due(self) noexcept:
        if self.has_wdeadline:
            return self.wdeadline
        if self.write_timeout > 0:
            return self.write_wait_start + self.write_timeout
        return 0

    cdef str read_expired_msg(self):
        if self.has_rdeadline:
            return "read deadline passed"
        return f"read timed out after {self.read_timeout:g}s"

    cdef str write_expired_msg(self):
        if self.has_wdeadline:
            return "write deadline passed"
        return f"timed out after {self.write_timeout:g}s"

    cdef int rearm_read(self) except -1:
        cdef double due
        w = self.read_waiter
        if w is None or self.closed_by:
            return 0
        self.poller.timers.cancel(self.read_timer)
        self.read_timer = None
        due = self.read_due()
        if due > 0:
            self.read_timer = self.poller.timers.push(due, self, T_READ, w)
        return 0

    cdef int rearm_write(self) except -1:
        cdef double due
        if self.closed_by or not self.writing:
            return 0
        token = self.flush_waiter if self.flush_waiter is not None else _NOWAIT
        self.poller.timers.cancel(self.write_timer)
        self.write_timer = None
        due = self.write_due()
        if due > 0:
            self.write_timer = self.poller.timers.push(due, self, T_WRITE, token)
        return 0

    def set_read_deadline(self, t):
        """Reads fail with ReadTimeoutError once loop.time() passes t (None clears).

        While set, it replaces the read timeout; a deadline in the past fails the
        next wait (and a wait in progress) at once.
        """
        self.has_rdeadline, self.rdeadline = _deadline("set_read_deadline", t)
        self.rearm_read()

    def set_write_deadline(self, t):
        """Flushes that must wait fail with WriteTimeoutError once loop.time() passes t."""
        self.has_wdeadline, self.wdeadline = _deadline("set_write_deadline", t)
        self.rearm_write()

    def set_deadline(self, t):
        """Both the read and the write deadline (Go's SetDeadline); None clears both."""
        self.has_rdeadline, self.rdeadline = _deadline("set_deadline", t)
        self.has_wdeadline, self.wdeadline = self.has_rdeadline, self.rdeadline
        self.rearm_read()
        self.rearm_write()

    def set_read_buffer_limit(self, limit):
        """Stop reading the socket while this many unread bytes are buffered (None: off)."""
        if limit is None:
            self.read_limit = 0
        else:
            if not isinstance(limit, int) or limit < 0:
                raise ValueError(f"set_read_buffer_limit({limit!r}): must be an int >= 0")
            self.read_limit = limit
        if self.paused and (self.read_limit == 0 or self.inbuf.length < self.read_limit // 2):
            self.paused = False
            self.update_events()

    def set_on_request(self, handler):
        """Replace the request handler (None is ignored); buffered input runs it at once."""
        if handler is None:
            return
        if not callable(handler):
            raise TypeError(f"set_on_request: handler must be callable, not {type(handler).__name__}")
        self.on_request = handler
        if self.inbuf.length and not self.processing and not self.closed_by \
                and self.read_waiter is None and not self.queued:
            self.queued = True
            self.poller.ready.append(self)
            if not self.poller.in_batch:
                self.poller.kick()

    def set_on_connect(self, cb):
        """Replace EventLoop's on_connect for this connection (Go's SetOnConnect).

        Takes effect when called from on_prepare, or on a dialed connection
        before it is used; None removes it.
        """
        if cb is not None:
            _check_callback("set_on_connect", "on_connect", cb, 2)
        self.on_connect = cb
        if cb is not None and self.server is None and self.connect_state == CS_CONNECTED \
                and self.closed_by == OPEN and self.handler is None and not self.processing:
            # a dialed or wrapped connection: run it once, before any on_request
            self.connect_state = CS_NEW
            if not self.queued:
                self.queued = True
                self.poller.ready.append(self)
                if not self.poller.in_batch:
                    self.poller.kick()

    def set_on_disconnect(self, cb):
        """Replace EventLoop's on_disconnect for this connection (Go's SetOnDisconnect)."""
        if cb is not None:
            _check_callback("set_on_disconnect", "on_disconnect", cb, 2)
        self.on_disconnect = cb

    def add_close_callback(self, cb):
        """cb(conn) runs once after the close; callbacks run newest first."""
        if cb is None:
            return
        if not callable(cb):
            raise TypeError(f"add_close_callback: expected a callable, not {type(cb).__name__}")
        if self.finished:
            loop = self.poller.loop if self.poller is not None else None
            if loop is None or loop.is_closed():
                _run_close_callback(cb, self)
            else:
                loop.call_soon(_run_close_callback, cb, self)
        elif self.close_callbacks is None:
            self.close_callbacks = [cb]
        else:
            self.close_callbacks.append(cb)

    def close(self):
        """Close the connection (idempotent); waiters get ConnectionClosedError."""
        if self.closed_by == OPEN:
            self.close_by(BY_USER)

    def detach(self):
        """Close the connection but not its socket; returns the fd."""
        cdef int fd = self.fd
        if self.finished and not self.detached:
            raise ConnectionClosedError("detach: connection already closed")
        self.detached = True
        self.close_by(BY_USER)
        return fd

    cdef int _addrs(self) except -1:
        # both addresses live in one list made on first use (an idle connection has none)
        if self._addr_pair is None:
            self._addr_pair = [None, None]
        pair = self._addr_pair
        s = socket.socket(fileno=self.fd)
        try:
            if pair[0] is None:
                pair[0] = _addr(s.getsockname())
            if pair[1] is None:
                try:
                    pair[1] = _addr(s.getpeername())
                except OSError:
                    pair[1] = None
        finally:
            s.detach()
        return 0

    @property
    def local_addr(self):
        """(host, port) for TCP, the path for Unix sockets."""
        if (self._addr_pair is None or self._addr_pair[0] is None) and not self.finished:
            self._addrs()
        return self._addr_pair[0] if self._addr_pair is not None else None

    @property
    def remote_addr(self):
        """(host, port) for TCP, the path for Unix sockets."""
        if (self._addr_pair is None or self._addr_pair[1] is None) and not self.finished:
            self._addrs()
        return self._addr_pair[1] if self._addr_pair is not None else None

    def __repr__(self):
        state = "open" if self.closed_by == OPEN else ("closed by user" if self.closed_by == BY_USER
                                                     else "closed by peer")
        return f"<netpoll Connection fd={self.fd} {state}>"

    # -- reader -----------------------------------------------------------------------

    def __len__(self):
        return self.inbuf.length

    def len(self):
        """Readable bytes buffered."""
        return self.inbuf.length

    def release(self):
        """Give back the memory of consumed input."""
        self.inbuf.release_all()

    cdef inline int _after_read(self, Py_ssize_t n) except -1:
        if self.paused and self.inbuf.length < self.read_limit // 2:
            self.paused = False
            self.update_events()
        return 0

    def next(self, n):
        """Awaitable: the next n bytes as a read-only memoryview, consumed."""
        cdef Py_ssize_t k = _size("next", n)
        if self.inbuf is _NO_INPUT:
            self.own_in()
        if self.inbuf.length >= k and self.read_waiter is None:
            v = self.inbuf.c_next(k)
            self._after_read(k)
            return NpReady_New(v)
        return self._wait(OP_NEXT, k, None)

    def peek(self, n):
        """Awaitable: the next n bytes as a read-only memoryview, not consumed."""
        cdef Py_ssize_t k = _size("peek", n)
        if self.inbuf is _NO_INPUT:
            self.own_in()
        if self.inbuf.length >= k and self.read_waiter is None:
            return NpReady_New(self.inbuf.c_peek(k))
        return self._wait(OP_PEEK, k, None)

    def skip(self, n):
        """Awaitable: consume n bytes."""
        cdef Py_ssize_t k = _size("skip", n)
        if self.inbuf is _NO_INPUT:
            self.own_in()
        if self.inbuf.length >= k and self.read_waiter is None:
            if k:
                self.inbuf.consume(k)
                self._after_read(k)
            return NpReady_New(None)
        return self._wait(OP_SKIP, k, None)

    def read_binary(self, n):
        """Awaitable: an independent copy of the next n bytes, consumed."""
        cdef Py_ssize_t k = _size("read_binary", n)
        if self.inbuf is _NO_INPUT:
            self.own_in()
        if self.inbuf.length >= k and self.read_waiter is None:
            v = self.inbuf.c_read_binary(k)
            self._after_read(k)
            return NpReady_New(v)
        return self._wait(OP_READ_BINARY, k, None)

    def read_string(self, n, encoding="utf-8", errors="strict"):
        """Awaitable: the next n bytes decoded; on a decode error nothing is consumed."""
        cdef Py_ssize_t k = _size("read_string", n)
        if self.inbuf is _NO_INPUT:
            self.own_in()
        if self.inbuf.length >= k and self.read_waiter is None:
            try:
                return NpReady_New(self._op(OP_READ_STRING, k, (encoding, errors)))
            except Exception as exc:
                return NpReady_Fail(exc)
        return self._wait(OP_READ_STRING, k, (encoding, errors))

    def read_byte(self):
        """Awaitable: one byte as an int, consumed."""
        if self.inbuf is _NO_INPUT:
            self.own_in()
        if self.inbuf.length >= 1 and self.read_waiter is None:
            return NpReady_New(self._op(OP_READ_BYTE, 1, None))
        return self._wait(OP_READ_BYTE, 1, None)

    def slice(self, n):
        """Awaitable: a LinkBuffer of the next n bytes sharing their memory, consumed."""
        cdef Py_ssize_t k = _size("slice", n)
        if self.inbuf is _NO_INPUT:
            self.own_in()
        if self.inbuf.length >= k and self.read_waiter is None:
            v = self.inbuf.c_slice(k)
            self._after_read(k)
            return NpReady_New(v)
        return self._wait(OP_SLICE, k, None)

    def until(self, delim):
        """Awaitable: bytes up to and including the first delim, consumed.

        Waits for the delimiter, scanning only new bytes on each wakeup; if
        the peer closes first it raises EndOfStreamError and the bytes stay
        readable.
        """
        cdef bytes d
        if isinstance(delim, int) and not isinstance(delim, bool):
            if not 0 <= delim <= 255:
                raise ValueError(f"until({delim}): a delimiter byte must be in 0..255")
            d = bytes((delim,))
        elif isinstance(delim, (bytes, bytearray, memoryview)):
            d = bytes(delim)
            if not d:
                raise ValueError("until(b''): empty delimiter")
        else:
            raise TypeError(f"until: delimiter must be an int or bytes, not {type(delim).__name__}")
        cdef Py_ssize_t i
        if self.inbuf is _NO_INPUT:
            self.own_in()
        if self.read_waiter is None:
            i = self.inbuf.index_of(d, len(d), 0)
            if i >= 0:
                v = self.inbuf.c_next(i + len(d))
                self._after_read(i + len(d))
                return NpReady_New(v)
        return self._wait(OP_UNTIL, 0, d)

    def read(self, n=65536):
        """Awaitable, net.Conn style: waits for at least 1 byte, returns up to n (a copy).

        Returns b"" once the peer closed and nothing is left.
        """
        cdef Py_ssize_t k = _size("read", n)
        cdef Py_ssize_t m
        if self.inbuf is _NO_INPUT:
            self.own_in()
        if k == 0:
            return NpReady_New(b"")
        if self.inbuf.length and self.read_waiter is None:
            m = min(k, self.inbuf.length)
            v = self.inbuf.c_read_binary(m)
            self._after_read(m)
            return NpReady_New(v)
        return self._wait(OP_READ, k, None)

    cdef object _op(self, int op, Py_ssize_t n, object arg):
        cdef LinkBuffer b = self.inbuf
        if op == OP_NEXT:
            v = b.c_next(n)
        elif op == OP_PEEK:
            return b.c_peek(n)
        elif op == OP_SKIP:
            b.consume(n)
            v = None
        elif op == OP_READ_BINARY:
            v = b.c_read_binary(n)
        elif op == OP_READ_STRING:
            v = b.read_string(n, arg[0], arg[1])
        elif op == OP_READ_BYTE:
            v = b.read_byte()
        elif op == OP_SLICE:
            v = b.c_slice(n)
        elif op == OP_READ:
            n = min(n, b.length)
            v = b.c_read_binary(n)
        else:
            raise AssertionError(op)
        self._after_read(n)
        return v

    async def _wait(self, int op, Py_ssize_t n, object arg):
        cdef Py_ssize_t scanned = 0, i, need
        cdef double deadline = 0
        if self.read_waiter is not None:
            raise ConcurrentAccessError("a read is already waiting on this connection")
        self.read_wait_start = monotonic()
        while True:
            if op == OP_UNTIL:
                i = self.inbuf.index_of(arg, len(arg), scanned)
                if i >= 0:
                    v = self.inbuf.c_next(i + len(arg))
                    self._after_read(i + len(arg))
                    return v
                scanned = self.inbuf.length - len(arg) + 1
                if scanned < 0:
                    scanned = 0
                need = self.inbuf.length + 1
            elif op == OP_READ:
                if self.inbuf.length:
                    return self._op(op, n, arg)
                if (self.peer_eof or self.closed_by == BY_PEER or self.draining) and not (
                        self.tls_layer is not None and self.tls_layer.truncated):
                    return b""     # (a TLS stream cut without close_notify is no clean end)
                need = 1
            else:
                if self.inbuf.length >= n:
                    return self._op(op, n, arg)
                need = n
            if self.closed_by == BY_USER:
                raise ConnectionClosedError(
                    f"{_opname(op)}: connection closed; {self.inbuf.length} bytes readable, "
                    f"{need} needed")
            if self.peer_eof or self.closed_by == BY_PEER or self.draining:
                raise EndOfStreamError(
                    f"{_opname(op)}: peer closed the connection; {self.inbuf.length} "
                    f"bytes readable, {need} needed")
            fut = Waiter(self.poller)
            self.read_waiter = fut
            self.read_need = need
            if self.paused and need > self.inbuf.length:
                self.paused = False        # a wait for more than the limit may read up to it
                self.update_events()
            deadline = self.read_due()
            if deadline > 0:
                if monotonic() >= deadline:
                    self.read_waiter = None
                    raise ReadTimeoutError(f"{_opname(op)}: {self.read_expired_msg()}")
                self.read_timer = self.poller.timers.push(deadline, self, T_READ, fut)
            try:
                await fut
            except ReadTimeoutError as exc:
                raise ReadTimeoutError(f"{_opname(op)}: {exc}") from None
            finally:
                if self.read_waiter is fut:
                    self.read_waiter = None
                if self.read_timer is not None:
                    self.poller.timers.cancel(self.read_timer)
                    self.read_timer = None

    # -- writer -----------------------------------------------------------------------

    cdef inline int _writable(self, str op) except -1:
        if self.closed_by:
            raise ConnectionClosedError(f"{op}: connection closed")
        if self.outbuf is _NO_OUTPUT:
            self.own_out()
        return 0

    def malloc(self, n):
        """Reserve n contiguous bytes of output; returns a writable memoryview."""
        self._writable("malloc")
        return self.outbuf.malloc(n)

    def malloc_len(self):
        """Output bytes written or reserved since the last flush."""
        self._writable("malloc_len")
        return self.outbuf.pending

    def malloc_ack(self, n):
        """Keep the first n output bytes written since the last flush; drop the rest."""
        self._writable("malloc_ack")
        self.outbuf.malloc_ack(n)

    def write_binary(self, data):
        """Append a bytes-like object to the output; returns its length."""
        self._writable("write_binary")
        self.outbuf._check("write_binary")
        return self.outbuf.c_write(data)

    def write_string(self, s, encoding="utf-8"):
        """Append encoded text to the output; returns the bytes written."""
        self._writable("write_string")
        return self.outbuf.write_string(s, encoding)

    def write_byte(self, b):
        """Append one byte to the output."""
        self._writable("write_byte")
        self.outbuf.write_byte(b)

    def write_direct(self, data, remain_cap):
        """Link data in front of the last remain_cap malloc'd output bytes."""
        self._writable("write_direct")
        self.outbuf.write_direct(data, remain_cap)

    def write_buffer(self, LinkBuffer other not None):
        """Move all readable data of `other` to the output without copying; `other` is closed."""
        self._writable("write_buffer")
        other._check_write("write_buffer")
        self.outbuf.c_append(other)

    def append(self, LinkBuffer other not None):
        """Same as write_buffer."""
        self._writable("append")
        other._check_write("append")
        self.outbuf.c_append(other)

    def flush(self):
        """Awaitable: hand everything written to the kernel.

        Completes at once when the socket takes it all; waits under
        backpressure; raises WriteTimeoutError after the write timeout (the
        unsent data stays queued) and ConnectionClosedError once closed.
        """
        cdef int r
        if self.closed_by:
            return NpReady_Fail(ConnectionClosedError("flush: connection closed"))
        if self.flush_waiter is not None:
            return NpReady_Fail(ConcurrentAccessError("flush: another flush is in progress"))
        self.outbuf.c_flush()
        if self.writing:
            return self._flush_wait()
        r = self.send_out()
        if r == 0:
            return NpReady_New(None)
        if r < 0:
            err = sockerror(-r)
            self.mark_eof(err)
            self.poller.kick()
            exc = ConnectionClosedError(f"flush: {os.strerror(-r)} (errno {-r})")
            exc.__cause__ = err
            return NpReady_Fail(exc)
        self.writing = True
        self.update_events()
        self.check_write_limit()
        return self._flush_wait()

    cdef object _flush_wait(self):
        # The Waiter exists from the flush() call on, not from the first step of
        # the coroutine: a flush handed to wait_for/ensure_future/gather starts
        # a loop iteration later, and the output may drain before that.
        cdef double due
        fut = Waiter(self.poller)
        self.write_wait_start = monotonic()
        due = self.write_due()
        if due > 0:
            if due <= self.write_wait_start:
                return NpReady_Fail(WriteTimeoutError(
                    f"flush {self.write_expired_msg()}: {self.outbuf.length} bytes unsent"))
            self.write_timer = self.poller.timers.push(due, self, T_WRITE, fut)
        self.flush_waiter = fut
        return self._wait_flush(fut)

    async def _wait_flush(self, fut):
        try:
            await fut
        finally:
            if self.flush_waiter is fut:
                self.flush_waiter = None
            if self.write_timer is not None and self.flush_waiter is None:
                self.poller.timers.cancel(self.write_timer)
                self.write_timer = None

    async def write(self, data):
        """net.Conn style: write_binary + flush; returns the bytes written."""
        n = self.write_binary(data)
        await self.flush()
        return n


    # -- synchronous access (plain-function handlers) ----------------------------------

    @property
    def input(self):
        """The input LinkBuffer: synchronous reads that never wait; writes are refused."""
        if self.inbuf is _NO_INPUT:
            self.own_in()
        return self.inbuf

    def output_len(self):
        """Bytes written (flushed or not) and not yet taken by the kernel."""
        if self.finished:
            return 0
        return self.outbuf.length + self.outbuf.pending

    def flush_nowait(self):
        """Start sending everything written; the poller sends what the socket does not take.

        Never waits. What is still unsent when the write timeout passes closes
        the connection (logged at debug level).
        """
        cdef int r
        cdef double due
        if self.closed_by:
            raise ConnectionClosedError("flush_nowait: connection closed")
        self.outbuf.c_flush()
        if self.writing:
            self.check_write_limit()
            return None
        if self.poller.in_pass and self.poller.ring.send and self.tls_layer is None \
                and (self.uring_sid or self.outbuf.length < URING_GATHER_MAX
                     or uring_zc_fits(self.poller.ring, self.outbuf.length)):
            return uring_send(self.poller, self)     # io_uring: one submit for the pass
        r = self.send_out()
        if r == 0:
            return None
        if r < 0:
            err = sockerror(-r)
            self.mark_eof(err)
            if not self.poller.in_batch:
                self.poller.kick()
            return None
        self.writing = True
        self.update_events()
        if self.write_timer is None:
            self.write_wait_start = monotonic()
            due = self.write_due()
            if due > 0:
                self.write_timer = self.poller.timers.push(due, self, T_WRITE, _NOWAIT)
        self.check_write_limit()
        return None

    cdef int check_write_limit(self) except -1:
        if self.write_limit and not self.wpaused \
                and self.outbuf.length + self.outbuf.pending > self.write_limit:
            self.wpaused = True
            self.update_events()
        return 0

    def set_write_buffer_limit(self, limit):
        """Stop reading input while more than this many output bytes are unsent (None: off)."""
        if limit is None:
            self.write_limit = 0
        else:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ValueError(f"set_write_buffer_limit({limit!r}): must be an int >= 1")
            self.write_limit = limit
        if self.wpaused and (self.write_limit == 0
                             or self.outbuf.length + self.outbuf.pending <= self.write_limit // 2):
            self.wpaused = False
            self.update_events()
        elif self.writing:
            self.check_write_limit()


cdef object _NOWAIT = object()      # the token of a flush_nowait's write deadline

# The buffers of a connection that has had no input / no output yet (see the top):
# shared, empty, never written, never handed out.
cdef LinkBuffer _NO_INPUT = LinkBuffer.__new__(LinkBuffer)
cdef LinkBuffer _NO_OUTPUT = LinkBuffer.__new__(LinkBuffer)


cdef int _check_no_bufs() except -1:
    # debug build: nothing wrote the shared empty buffers
    for b in (_NO_INPUT, _NO_OUTPUT):
        if (b.rd != NULL or b.wr != NULL or b.fl != NULL or b.length or b.pending
                or b.gen or b.closed):
            raise AssertionError("netpoll: a connection wrote the shared empty buffer")
    return 0


cdef str _opname(int op):
    return {OP_NEXT: "next", OP_PEEK: "peek", OP_SKIP: "skip", OP_READ_BINARY: "read_binary",
            OP_READ_STRING: "read_string", OP_READ_BYTE: "read_byte", OP_SLICE: "slice",
            OP_UNTIL: "until", OP_READ: "read"}.get(op, "read")


cdef inline Py_ssize_t _size(str op, object n) except -1:
    cdef Py_ssize_t v
    if type(n) is not int:
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"{op}: size must be an int, not {type(n).__name__}")
    v = n
    if v < 0:
        raise ValueError(f"{op}({v}): negative size")
    return v


cdef double _seconds(str op, object s) except -1:
    # None or 0: off. NaN and negatives are errors; a huge value (up to inf)
    # means "practically never" and is clamped, so no C conversion overflows.
    cdef double v
    if s is None:
        return 0
    if not isinstance(s, (int, float)) or isinstance(s, bool):
        raise TypeError(f"{op}: seconds must be a number, not {type(s).__name__}")
    try:
        v = s
    except OverflowError:
        v = MAX_TIMEOUT           # an int too large for a double
    if v != v:
        raise ValueError(f"{op}({s}): timeout is NaN")
    if v < 0:
        raise ValueError(f"{op}({s}): negative timeout")
    if v > MAX_TIMEOUT:
        v = MAX_TIMEOUT
    return v


cdef _set_nodelay(int fd):
    cdef int one = 1
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))


cdef _set_keepalive(int fd, double seconds):
    # TCP_KEEPIDLE/KEEPINTVL take at most 32767 s; a huge idle timeout clamps
    cdef int one = 1
    cdef int secs = 1
    if seconds >= 32767:
        secs = 32767
    elif seconds >= 1:
        secs = <int>seconds
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one))
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &secs, sizeof(secs))
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &secs, sizeof(secs))


def _addr(a):
    if isinstance(a, tuple):
        return (a[0], a[1])
    if isinstance(a, bytes):
        return a.decode(errors="surrogateescape")
    return a


def _run_close_callback(cb, conn):
    try:
        cb(conn)
    except Exception as exc:
        config.logger.error("netpoll: close callback raised", exc_info=exc)


def _log_task_error(task):
    if not task.cancelled() and task.exception() is not None:
        config.logger.error("netpoll: on_disconnect raised", exc_info=task.exception())


cdef double MAX_TIMEOUT = 10.0 * 365 * 86400     # ten years: "practically never"


cdef tuple _deadline(str op, object t):
    # (is set, monotonic seconds). loop.time() is CLOCK_MONOTONIC on asyncio and uvloop.
    cdef double v
    if t is None:
        return (False, 0.0)
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        raise TypeError(f"{op}: a deadline is a loop.time() value or None, "
                        f"not {type(t).__name__}")
    try:
        v = t
    except OverflowError:
        v = 1e300
    if v != v:
        raise ValueError(f"{op}({t}): deadline is NaN")
    if v < 1e-9:
        v = 1e-9                  # far in the past, still "set"
    return (True, v)


cdef Connection make_connection(int fd, object loop, str network, EventLoop server):
    cdef Connection c = Connection.__new__(Connection)
    c.setup(fd, loop, network, server)
    return c




cdef inline object _runner_of(Connection c):
    # EventLoop(runner=): read from the server (a dialed connection has none)
    return c.server.runner if c.server is not None else None
