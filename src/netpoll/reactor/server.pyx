# netpoll._core — EventLoop, the server: accept, backoff, graceful shutdown.
#
# Invariants
# - The server only calls Connection methods (connected, begin_drain,
#   force_close, close); it never writes a connection's state.
# - Two accept paths, one connection setup (take_fd -> new_connection):
#   io_uring pollers: a multishot ACCEPT on one poller's ring (reactor/uring.pyx,
#   "multishot accept"; NETPOLL_URING_ACCEPT=0 or a kernel refusing it: the
#   other path); epoll pollers: the listener's fd polled with loop.add_reader,
#   accept4 in batches of ACCEPT_BATCH. Either is stopped (reader removed,
#   ACCEPT cancelled at once) before the listener closes (Listener close hook),
#   so nothing outlives the fd; a plain socket.socket is watched every 0.5 s.
# - EMFILE/ENFILE/ENOBUFS/ENOMEM stop accepting with backoff (Go Netpoll
#   #230/#311), logged at most once a minute; the retry re-arms either path.
# - shutdown(timeout): stop accepting; take in what the kernel already
#   received (on io_uring: connections the ring accepted before its ACCEPT was
#   cancelled too - they are set up and drained like the others, and drained
#   waits for the ACCEPT's final CQE); every connection begins draining (closes
#   once idle, with its output sent); after `timeout` the rest are force-closed
#   (hard_closed: a late fd is closed unserved) and TimeoutError is raised.
#   serve() returns None when shutdown is over. A server serves once: serve()
#   after shutdown() raises RuntimeError.
# - _pause_accepting (run_workers' hand-over): stop taking connections, keep
#   the listener open and serve what was taken.

cdef class EventLoop:
    """The server: accepts connections and runs the callbacks for each.

    ``EventLoop(on_request, on_prepare=None, on_connect=None,
    on_disconnect=None, read_timeout=None, write_timeout=None,
    idle_timeout=None, read_buffer_limit=None, write_buffer_limit=None,
    runner=None)``; ``await serve(listener)`` serves until ``await shutdown(timeout)``.

    runner: how a handler call runs: None (inline, eager: the default), "task"
    (each call in a real asyncio.Task), or a callable ``runner(coro_or_fn, conn)``
    (Go's Config.Runner). Calls of one connection stay serial whatever the runner.
    """

    def __init__(self, on_request, on_prepare=None, on_connect=None, on_disconnect=None,
                 read_timeout=None, write_timeout=None, idle_timeout=None,
                 read_buffer_limit=None, write_buffer_limit=None, runner=None):
        _check_callback("EventLoop", "on_request", on_request, 2)
        _check_callback("EventLoop", "on_prepare", on_prepare, 1)
        _check_callback("EventLoop", "on_connect", on_connect, 2)
        _check_callback("EventLoop", "on_disconnect", on_disconnect, 2)
        self.on_request = on_request
        self.on_prepare = on_prepare
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.read_timeout = _seconds("EventLoop(read_timeout)", read_timeout)
        self.write_timeout = _seconds("EventLoop(write_timeout)", write_timeout)
        self.idle_timeout = _seconds("EventLoop(idle_timeout)", idle_timeout)
        if read_buffer_limit is not None and (not isinstance(read_buffer_limit, int)
                                              or isinstance(read_buffer_limit, bool)
                                              or read_buffer_limit < 1):
            raise ValueError(
                f"EventLoop(read_buffer_limit={read_buffer_limit!r}): must be an int >= 1")
        self.read_limit = read_buffer_limit or 0
        if write_buffer_limit is not None and (not isinstance(write_buffer_limit, int)
                                               or isinstance(write_buffer_limit, bool)
                                               or write_buffer_limit < 1):
            raise ValueError(
                f"EventLoop(write_buffer_limit={write_buffer_limit!r}): must be an int >= 1")
        self.write_limit = write_buffer_limit or 0
        if runner is not None and runner != "task" and not callable(runner):
            raise TypeError(f"EventLoop(runner={runner!r}): expected None, 'task' or a callable "
                            "runner(coro_or_fn, conn)")
        self.runner = runner
        self.conns = set()
        self.lfd = -1

    @property
    def connections(self):
        """The number of open connections."""
        return len(self.conns)

    async def serve(self, listener):
        """Serve connections from `listener` until shutdown(); returns None after it.

        `listener` is a netpoll Listener or a bound, listening socket.socket
        (converted as convert_listener does). Closing the listener from the
        application also ends serve() (connections already accepted stay).
        A server serves once: serve() after shutdown() raises RuntimeError.
        """
        if self.shutting_down:
            raise RuntimeError("EventLoop.serve: this server was shut down; make a new EventLoop")
        if self.stopped is not None:
            raise RuntimeError("EventLoop.serve: already serving")
        raw = isinstance(listener, socket.socket)
        if raw:
            from netpoll.net import convert_listener
            listener = convert_listener(listener)
        if not hasattr(listener, "fileno") or not hasattr(listener, "network"):
            raise TypeError(f"EventLoop.serve: expected a netpoll Listener or a listening "
                            f"socket.socket, not {type(listener).__name__}")
        lfd = listener.fileno()
        if lfd < 0:
            raise ValueError("EventLoop.serve: the listener is closed")
        self.loop = asyncio.get_running_loop()
        self.context = PyContext_CopyCurrent()
        self.listener = listener
        self.lfd = lfd
        self.network = listener.network
        self.ssl_ctx = getattr(listener, "_ssl", None)      # create_listener(..., ssl=ctx)
        if self.ssl_ctx is not None:
            _prepare_context(self.ssl_ctx, True)
            self.ssl_timeout = _seconds("ssl_handshake_timeout",
                                        getattr(listener, "_ssl_handshake_timeout", 60.0))
        self.stopped = self.loop.create_future()
        self.start_accepting()
        hook = getattr(listener, "_add_close_callback", None)
        if hook is not None:
            hook(self._listener_closing)
        if raw or hook is None:
            # the application holds the socket.socket and may close it directly
            self.watch_handle = self.loop.call_later(0.5, self._watch_listener)
        try:
            await asyncio.shield(self.stopped)
        except asyncio.CancelledError:
            try:
                await self.shutdown(0)
            except TimeoutError:
                pass
            raise
        finally:
            unhook = getattr(listener, "_remove_close_callback", None)
            if unhook is not None:
                unhook(self._listener_closing)
            if self.watch_handle is not None:
                self.watch_handle.cancel()
                self.watch_handle = None
        return None

    def _listener_closing(self, *args):
        # called by Listener.close() before the fd is closed
        self.listener_gone()

    def _watch_listener(self):
        # a plain socket.socket has no close hook: notice its close within 0.5 s
        self.watch_handle = None
        if self.listener_closed():
            self.listener_gone()
        elif not self.shutting_down and self.stopped is not None and not self.stopped.done():
            self.watch_handle = self.loop.call_later(0.5, self._watch_listener)

    cdef int listener_gone(self) except -1:
        self.stop_accepting()
        if self.backoff_handle is not None:
            self.backoff_handle.cancel()
            self.backoff_handle = None
        if not self.shutting_down and self.stopped is not None and not self.stopped.done() \
                and not self.loop.is_closed():
            self.stopped.set_result(None)
        return 0

    cdef int start_accepting(self) except -1:
        cdef Poller p
        self.accepting = True
        if uring_accept_wanted():
            p = pick_poller(self.loop)
            if p.uring and p.epfd >= 0:
                uring_accept_arm(p, self)
                return 0
        self.loop.add_reader(self.lfd, self._on_accept)
        return 0

    cdef int stop_accepting(self) except -1:
        if self.accepting:
            self.accepting = False
            if self.apoller is not None:
                uring_accept_cancel(self)     # at once: before the listener's fd closes
                return 0
            try:
                self.loop.remove_reader(self.lfd)
            except Exception:
                pass
        return 0

    cdef int uring_accepted(self, int res, bint more, unsigned long long aid) except -1:
        # One ACCEPT CQE (reactor/uring.pyx), run from the poller's queues.
        try:
            self.uring_accepted_cqe(res, more, aid)
        finally:
            if not more and self.shutting_down:
                self.check_drained()      # the last CQE shutdown may be waiting for
        return 0

    cdef int uring_accepted_cqe(self, int res, bint more, unsigned long long aid) except -1:
        global _accept_refused
        cdef bint current = aid == self.aid
        cdef int err = -res
        if current and not more:
            self.apoller = None       # the request ended (the walk dropped its id)
            self.aid = 0
        if res >= 0:
            self.aseen = True
            self.take_fd(res)         # set up, or closed if shutting down
        elif not current or err == _errno.ECANCELED:
            pass                      # a cancelled request's last words
        elif err in (EMFILE, ENFILE, ENOBUFS, ENOMEM):
            self.accept_backoff(err)  # stops; _resume_accept re-arms
            return 0
        elif err == _errno.EINVAL and not self.aseen:
            # a kernel without multishot accept: the loop's add_reader from now on
            _accept_refused = True
            config.logger.debug("netpoll: io_uring refused multishot accept (%s); "
                                "the listener is polled by the loop", os.strerror(err))
            if self.accepting and not more:
                self.loop.add_reader(self.lfd, self._on_accept)
            return 0
        elif err == EBADF or self.listener_closed():
            self.listener_gone()
            return 0
        elif err != EINTR and err != ECONNABORTED:
            config.logger.error("netpoll: accept failed: %s", os.strerror(err))
            if current and not more and self.accepting and self.backoff_handle is None:
                # re-armed at once, an error that persists would spin the loop
                self.stop_accepting()
                self.backoff_handle = self.loop.call_later(0.1, self._resume_accept)
            return 0
        if current and not more and self.accepting and not self.shutting_down:
            self.start_accepting()    # the multishot ended: re-arm
        return 0

    def _on_accept(self):
        cdef int fd, i, err
        cdef Connection c
        for i in range(ACCEPT_BATCH):
            if not self.accepting:
                return
            fd = accept4(self.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                err = errno
                if err == EAGAIN:
                    break
                if err == EINTR or err == ECONNABORTED:
                    continue
                if err in (EMFILE, ENFILE, ENOBUFS, ENOMEM):
                    self.accept_backoff(err)
                    return
                if err == EBADF or self.listener_closed():
                    self.listener_gone()
                    return
                config.logger.error("netpoll: accept failed: %s", os.strerror(err))
                return
            self.take_fd(fd)
        run_all_pending(self.loop)

    cdef int take_fd(self, int fd) except -1:
        # Both accept paths: the fd becomes a connection (or is closed).
        self.backoff_step = 0
        try:
            self.new_connection(fd)
        except Exception as exc:
            config.logger.error("netpoll: setting up accepted fd %d failed", fd,
                                exc_info=exc)
        return 0

    cdef bint listener_closed(self) noexcept:
        try:
            return self.listener.fileno() < 0
        except Exception:
            return True

    cdef int accept_backoff(self, int err) except -1:
        # Out of fds: stop polling the listener and retry later, with backoff,
        # logging at most once a minute (Go Netpoll #230 / #311).
        delays = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0)
        delay = delays[min(self.backoff_step, len(delays) - 1)]
        self.backoff_step += 1
        now = monotonic()
        if now - self.last_emfile_log > 60:
            self.last_emfile_log = now
            config.logger.warning("netpoll: accept: %s; retrying with backoff",
                                  os.strerror(err))
        self.stop_accepting()
        self.backoff_handle = self.loop.call_later(delay, self._resume_accept)
        return 0

    cdef int sweep_backlog(self) except -1:
        # After cancelling the ring's ACCEPT (shutdown, _pause_accepting): take
        # what the listen queue holds. The kernel wakes one ACCEPT per connection
        # (io_uring polls a listener EPOLLEXCLUSIVE); if that was ours and the
        # cancel came before its task work ran, the connection is still queued
        # and no other waiter - another worker's ring on the same socket - was
        # woken for it: left there, it would wait for the next connection.
        cdef int fd, i, err
        for i in range(4096):
            fd = accept4(self.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                err = errno
                if err == EINTR or err == ECONNABORTED:
                    continue
                break             # EAGAIN: empty; anything else: leave it to close()
            self.take_fd(fd)
        return 0

    def _resume_accept(self):
        self.backoff_handle = None
        if self.shutting_down or self.accept_paused or self.accepting or self.listener_closed():
            return
        self.start_accepting()

    cdef int new_connection(self, int fd) except -1:
        cdef Connection c
        if self.hard_closed:
            close(fd)         # after shutdown's force phase
            return 0
        c = make_connection(fd, self.loop, self.network, self)
        c.on_request = self.on_request
        c.on_connect = self.on_connect
        c.on_disconnect = self.on_disconnect
        c.read_timeout = self.read_timeout
        c.write_timeout = self.write_timeout
        c.read_limit = self.read_limit
        c.write_limit = self.write_limit
        self.conns.add(c)
        if self.idle_timeout > 0:
            c.set_idle_timeout(self.idle_timeout)
        if self.on_prepare is not None:
            try:
                c.ctx = self.on_prepare(c)
            except Exception as exc:
                config.logger.error("netpoll: on_prepare raised; closing fd %d", fd,
                                    exc_info=exc)
                c.close()
                return 0
            if c.closed_by:
                return 0      # on_prepare closed it: never registered
        c.uring_norecv = self.ssl_ctx is not None     # TLS reads the socket itself
        c.poller.add(c)
        if self.shutting_down:
            # the ring accepted it before its ACCEPT was cancelled: answer what it
            # sent, then close it once idle (at the next loop step: this may run
            # inside run_pending, which must not be re-entered)
            if self.late is None:
                self.late = []
                self.loop.call_soon(self._drain_late)
            self.late.append(c)
        if self.ssl_ctx is not None:
            # on_connect / CS_CONNECTED come when the handshake is over (tls.pyx)
            try:
                tls_start(c, self.ssl_ctx, True, None, self.ssl_timeout, False)
            except BaseException:
                c.close()
                raise
            return 0
        if c.on_connect is not None:     # EventLoop's, or set by on_prepare
            c.queued = True
            c.poller.ready.append(c)
        else:
            c.connected(c.ctx)
        return 0

    def _drain_late(self):
        late, self.late = self.late, None
        if late:
            self.drain_these(late)
        self.check_drained()

    cdef int drain_these(self, list conns) except -1:
        # Shutdown: take in what the kernel already received, so those requests
        # are answered, then every one of conns closes once idle.
        cdef Connection c
        for c in conns:
            if c.closed_by == OPEN and not c.peer_eof and not c.paused and c.registered:
                c.do_read(EPOLLIN, True)
        run_all_pending(self.loop)
        for c in conns:
            if not c.draining:
                c.begin_drain()
        return 0

    cdef int quit_accepting(self) except -1:
        # For good (shutdown) or until shutdown (_pause_accepting): stop either
        # accept path and its backoff; after a ring's ACCEPT, take the queue too.
        cdef bint ring = self.apoller is not None
        self.stop_accepting()
        if ring:
            self.sweep_backlog()
        if self.backoff_handle is not None:
            self.backoff_handle.cancel()
            self.backoff_handle = None
        return 0

    cdef int check_drained(self) except -1:
        if self.shutting_down and not self.conns and self.drained is not None \
                and not self.drained.done() and not self.late \
                and (self.accept_grace_over or not uring_accept_pending(self)):
            self.drained.set_result(None)
        return 0

    cdef int forget(self, Connection c) except -1:
        self.conns.discard(c)
        if self.shutting_down and not self.conns:
            self.check_drained()
        return 0

    def _accept_grace(self):
        self.accept_grace_over = True
        self.check_drained()

    def _pause_accepting(self):
        """Stop taking connections; the listener stays open and what was taken is
        served (run_workers' hand-over: what the kernel queues meanwhile stays in
        the shared socket's queue for the successor). Private; shutdown() ends it."""
        if self.shutting_down or self.loop is None:
            return
        self.accept_paused = True
        self.quit_accepting()

    async def shutdown(self, timeout=None):
        """Stop accepting, close idle connections, let running handlers finish.

        After `timeout` seconds (None: no limit) the rest are closed by force
        and TimeoutError is raised. serve() returns once this is over.
        """
        cdef Connection c
        if timeout is not None:
            timeout = _seconds("shutdown(timeout)", timeout)
        if self.loop is None:
            # never served: a later serve() raises instead of serving
            self.shutting_down = True
            return None
        first = not self.shutting_down
        self.shutting_down = True
        self.quit_accepting()         # (what it takes is drained below, with the others)
        if first:
            try:
                self.listener.close()
            except Exception:
                pass
        if self.drained is None:
            self.drained = self.loop.create_future()
        # Connections the ring accepted before the cancel: set up now (late).
        uring_take_all(self.loop)
        run_all_pending(self.loop)
        self.late = None           # (set up above: drained below with the others)
        self.drain_these(list(self.conns))
        self.check_drained()
        if not self.drained.done() and uring_accept_pending(self):
            # the ACCEPT's final CQE is due at once (the cancel was submitted and,
            # on a DEFER_TASKRUN ring, reaped): never let a lost one hold shutdown
            self.loop.call_later(1.0, self._accept_grace)
        try:
            if timeout is None:
                await asyncio.shield(self.drained)
            else:
                await asyncio.wait_for(asyncio.shield(self.drained), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self.hard_closed = True
            left = len(self.conns)
            for c in list(self.conns):
                c.force_close()
            raise TimeoutError(
                f"shutdown: {left} connections still busy after {timeout:g}s; closed by force")
        finally:
            if self.stopped is not None and not self.stopped.done():
                self.stopped.set_result(None)
        return None




cdef int _check_callback(str where, str name, object cb, int nargs) except -1:
    """A callback must be callable with nargs positional arguments (checked where
    Python can tell), and on_request must not be an async generator."""
    if cb is None:
        return 0
    if not callable(cb):
        raise TypeError(f"{where}: {name} must be callable, not {type(cb).__name__}")
    if inspect.isasyncgenfunction(cb) or inspect.isgeneratorfunction(cb):
        raise TypeError(f"{where}: {name} must be a plain or async function, "
                        f"not a generator function ({cb!r})")
    try:
        sig = inspect.signature(cb)
    except (TypeError, ValueError):
        return 0          # builtins and C callables: cannot tell
    try:
        sig.bind(*([None] * nargs))
    except TypeError:
        want = "(ctx, conn)" if nargs == 2 else "(conn)"
        raise TypeError(f"{where}: {name}{sig} cannot be called as {name}{want}") from None
    return 0
