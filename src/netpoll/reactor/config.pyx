# netpoll._core — configuration and the pollers of each asyncio loop.
#
# Invariants
# - configure() validates every argument before applying any: a call that
#   raises changes nothing (pollers it created for the change are closed again).
# - Each running asyncio loop has one _PollerSet, made on first use; a closed
#   loop's set is purged (its epoll fds closed) the next time a set is made
#   or configure() runs.
# - Shrinking poller_num retires the extra pollers: they take no new
#   connections, serve the ones they have, and close their epoll fd once the
#   last one is gone (so toggling poller_num leaks no fd).

cdef int MAX_POLLERS = 1024

cdef _Config config = _Config()
config.poller_num = 1
config.buffer_size = 8192
config.load_balance = "round_robin"
config.logger = logger
config.spin = 4
config.backend = "epoll"

cdef dict _pollers = {}      # loop -> _PollerSet; closed loops are purged


cdef int _env_int(str name, int default, int lo, int hi) except? -1:
    # an integer knob from the environment, lo..hi; ValueError names it
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: must be an int {lo}..{hi}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name}={raw!r}: must be an int {lo}..{hi}")
    return v


cdef int _env_spin() except -1:
    return _env_int("NETPOLL_SPIN", 4, 1, 64)


# NETPOLL_EPOLL_BATCH: events taken per epoll_wait before their handlers run
# (0: all that are ready, up to a buffer that grows to 65,536). The walk reads
# every connection of a batch before any handler answers, so the first answer
# of a batch of n waits for n reads: 8 keeps that wait short (echo 1 KiB x 50:
# p99 ~520 us instead of ~750, uvloop ~700; docs/benchmarks.md) for one more
# epoll_wait per 8 ready connections.
cdef int _EPOLL_BATCH = _env_int("NETPOLL_EPOLL_BATCH", 8, 0, 65536)


cdef str _resolve_backend(str backend):
    # "io_uring" -> "io_uring" or OSError saying why not; "auto" -> the one to use
    if backend == "epoll":
        return backend
    err, why = uring_unavailable()
    if backend == "io_uring":
        if err:
            raise OSError(err, f"configure(backend='io_uring'): io_uring cannot be set up "
                               f"here: {why}")
        return backend
    if err:
        config.logger.debug("netpoll: backend 'auto' picks epoll: %s", why)
        return "epoll"
    config.logger.debug("netpoll: backend 'auto' picks io_uring")
    return "io_uring"


cdef object _int_arg(str name, object v, Py_ssize_t lo, Py_ssize_t hi):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"configure({name}={v!r}): must be an int, not {type(v).__name__}")
    if not lo <= v <= hi:
        raise ValueError(f"configure({name}={v!r}): must be an int in {lo}..{hi}")
    return v


@cython.binding(True)
def configure(poller_num=None, buffer_size=None, load_balance=None, logger=None,
              link_buffer_cap=None, backend=None):
    """Set process-wide options; None leaves a setting as it is.

    poller_num: pollers per event loop (each one epoll fd on that loop), 1..1024;
    buffer_size: the first book size for connection input (bytes);
    load_balance: "round_robin" or "random", how connections spread over pollers;
    logger: a logging.Logger for netpoll's messages;
    link_buffer_cap: the minimum capacity of a LinkBuffer node (Go's LinkBufferCap);
    backend: "epoll" (the default), "io_uring" or "auto". "auto" picks io_uring
    when a ring can be set up and probed here, else epoll; "io_uring" raises
    OSError saying why when it cannot be set up. Pollers made from then on use
    it; the loops' existing pollers are retired (they serve the connections
    they have, take no new ones). The NETPOLL_BACKEND environment variable
    sets it at import.

    All arguments are checked before any is applied: a call that raises
    changes nothing.
    """
    from netpoll import _buffer
    if poller_num is not None:
        _int_arg("poller_num", poller_num, 1, MAX_POLLERS)
    if buffer_size is not None:
        _int_arg("buffer_size", buffer_size, 1, 1 << 40)
    if load_balance is not None and load_balance not in ("round_robin", "random"):
        raise ValueError(
            f"configure(load_balance={load_balance!r}): expected 'round_robin' or 'random'")
    if logger is not None and not isinstance(logger, logging.Logger):
        raise TypeError(
            f"configure(logger=...): expected a logging.Logger, not {type(logger).__name__}")
    if link_buffer_cap is not None:
        _int_arg("link_buffer_cap", link_buffer_cap, 1, BOOK_MAX)
    if backend is not None:
        if backend not in ("epoll", "io_uring", "auto"):
            raise ValueError(
                f"configure(backend={backend!r}): expected 'epoll', 'io_uring' or 'auto'")
        backend = _resolve_backend(backend)
    spin = _env_spin()
    if poller_num is not None:
        _forget_closed_loops()
        sets = list(_pollers.values())
        done = []
        try:
            for ps in sets:
                done.append((ps, len((<_PollerSet>ps).pollers)))
                (<_PollerSet>ps).resize(poller_num)
        except BaseException:
            for ps, n in done:
                (<_PollerSet>ps).resize(n)
            raise
        config.poller_num = poller_num
    if buffer_size is not None:
        config.buffer_size = min(buffer_size, BOOK_MAX)
    if load_balance is not None:
        config.load_balance = load_balance
    if logger is not None:
        config.logger = logger
    if link_buffer_cap is not None:
        _buffer._set_link_buffer_cap(link_buffer_cap)
    if backend is not None and backend != config.backend:
        config.backend = backend
        _forget_closed_loops()
        for ps in list(_pollers.values()):
            old_pollers = (<_PollerSet>ps).pollers
            (<_PollerSet>ps).pollers = []        # pick() makes new ones
            for p in old_pollers:
                (<Poller>p).retire()
    config.spin = spin


@cython.binding(True)
def get_config():
    """The current settings as a dict ("backend" names the poller backend in use)."""
    from netpoll import _buffer
    return {"poller_num": config.poller_num, "buffer_size": config.buffer_size,
            "load_balance": config.load_balance, "logger": config.logger,
            "link_buffer_cap": _buffer._get_link_buffer_cap(), "backend": config.backend}


cdef class _PollerSet:

    def __cinit__(self, loop):
        self.loop = loop
        self.pollers = []
        self.rr = 0

    cdef Poller pick(self):
        cdef Py_ssize_t n = len(self.pollers)
        if n == 0:
            self.resize(config.poller_num)
            n = len(self.pollers)
        if n == 1:
            return self.pollers[0]
        if config.load_balance == "random":
            return self.pollers[random.randrange(n)]
        self.rr += 1
        return self.pollers[self.rr % n]

    cdef int resize(self, int n) except -1:
        cdef Poller p
        made = []
        try:
            while len(self.pollers) + len(made) < n:
                made.append(Poller(self.loop))
        except BaseException:
            for p in made:
                p.close()
            raise
        self.pollers.extend(made)
        if len(self.pollers) > n:
            extra = self.pollers[n:]
            del self.pollers[n:]
            for p in extra:
                p.retire()
        return 0


cdef int run_all_pending(object loop) except -1:
    ps = _pollers.get(loop)
    if ps is not None:
        for p in list((<_PollerSet>ps).pollers):
            (<Poller>p).run_pending()
    return 0


cdef Poller pick_poller(object loop):
    ps = _pollers.get(loop)
    if ps is None:
        _forget_closed_loops()
        ps = _PollerSet(loop)
        _pollers[loop] = ps
    return (<_PollerSet>ps).pick()


@cython.binding(True)
def _forget_closed_loops():
    """Release the pollers of closed loops: close their epoll fds and any connections."""
    for loop in [lp for lp in _pollers if lp.is_closed()]:
        ps = <_PollerSet>_pollers.pop(loop)
        for p in ps.pollers:
            (<Poller>p).close()
        ps.pollers = []


config.spin = _env_spin()


cdef int _env_backend() except -1:
    raw = os.environ.get("NETPOLL_BACKEND")
    if raw:
        if raw not in ("epoll", "io_uring", "auto"):
            raise ValueError(f"NETPOLL_BACKEND={raw!r}: expected 'epoll', 'io_uring' or 'auto'")
        config.backend = _resolve_backend(raw)
    return 0


_env_backend()


@cython.binding(True)
def _uring_ring_flags(loop):
    """The IORING_SETUP_* flag names of each io_uring poller of `loop` (tests)."""
    ps = _pollers.get(loop)
    if ps is None:
        return []
    return [_uring_setup_names((<Poller>p).ring.r.setup_flags)
            for p in (<_PollerSet>ps).pollers if (<Poller>p).uring]
