# netpoll._core — the poller: one epoll fd on the running asyncio loop.
# (The io_uring backend swaps the epoll fd for a ring behind the same methods:
# add/modify/remove and _on_ready branch to reactor/uring.pyx.)
#
# The I/O pass
# ------------
# The poller registers its epoll fd with the asyncio loop (add_reader). When
# it turns readable, _on_ready runs the *I/O pass*: epoll_wait(timeout=0),
# then for every ready fd the connection's on_event, which does recv/send in
# C and fills the poller's queues:
#
#     ready   connections whose handler should start (new input, on_connect)
#     hups    connections whose peer finished sending
#     closes  connections closed during the pass (e.g. a graceful close once
#             the output drained): the user-code half of their close waits here
#
# After the walk, run_pending empties the queues; that is where user code
# runs: plain and async handlers, on_disconnect, close callbacks. Then the
# pass may poll again (config.spin rounds) to serve requests that arrived
# while handlers ran, without another trip through the loop.
#
# Why no user code may run inside the walk: data.ptr is borrowed
# ----------------------------------------------------------------
# epoll hands back the epoll_event.data.ptr we stored at EPOLL_CTL_ADD: a
# *borrowed* pointer to the Connection. The kernel keeps no reference, and a
# batch returned by epoll_wait may hold events for several connections. The
# pointer is valid only while the Connection object is alive, and what keeps
# it alive is the poller's `conns` set, which holds a strong reference to
# every registered connection until finish_close drops it.
#
# So the walk must never run anything that could reach finish_close, or
# otherwise drop the last reference to a connection whose event is still
# later in the same batch: close callbacks, on_disconnect and handlers are
# user code that may close *other* connections, drop them from a dict, or
# trigger the cyclic GC. (Before this rule, a close callback run from
# on_writable in the middle of a batch closed and freed another connection;
# the walk then did Py_INCREF on its stale pointer: a heap-use-after-free
# under ASan, silent memory corruption without it.)
#
# The rule, enforced here and in Connection:
#   1. `in_batch` is True for the whole walk.
#   2. Inside the walk, on_event only does I/O, sets flags and appends to the
#      queues (which hold strong references). Futures are resolved with
#      set_result/set_exception, whose callbacks asyncio schedules for later.
#   3. Connection.close_by, when in_batch, does the I/O half of the close at
#      once (epoll removal, shutdown(2), waking waiters) and queues the
#      user-code half (after_close) on `closes`.
#   4. Between two epoll_wait rounds the queues are run, and the next round
#      gets fresh pointers from the kernel; a connection removed from epoll
#      (EPOLL_CTL_DEL on close) can no longer appear.
# The debug build checks, for every event, that its connection is still in
# `conns` (the strong reference that makes the pointer valid).

cdef class Poller:

    def __cinit__(self, loop):
        self.epfd = -1
        self.wfd = -1
        if config.backend == "io_uring":
            # the io_uring backend (reactor/uring.pyx): epfd is the ring fd
            self.ring = _Ring(URING_ENTRIES, _recv_model_wanted())
            self.uring = True
            self.polls = {}
            self.next_id = 4          # a multiple of 4; the low two bits say the kind (ID_POLL...)
            self.epfd = self.ring.r.fd
            self.wfd = self.ring.r.efd if self.ring.r.efd >= 0 else self.epfd
        else:
            self.epfd = epoll_create1(EPOLL_CLOEXEC)
            if self.epfd < 0:
                raise oserror(errno, "epoll_create1")
            self.nevents = _EPOLL_BATCH if _EPOLL_BATCH else 128
            self.events = <epoll_event*>c_malloc(sizeof(epoll_event) * self.nevents)
            if self.events == NULL:
                close(self.epfd)
                self.epfd = -1
                raise MemoryError()
        if self.wfd < 0:
            self.wfd = self.epfd
        self.loop = loop
        self.conns = set()
        self.ready = []
        self.hups = []
        self.closes = []
        self.wakeups = []
        self.accepted = []
        self.live_ptrs = set()
        self.timers = TimerHeap(self, loop)
        self.spin = config.spin
        loop.add_reader(self.wfd, self._on_ready)

    def __dealloc__(self):
        if self.events != NULL:
            free(self.events)
        if self.epfd >= 0 and not self.uring:
            close(self.epfd)          # a ring closes itself (_Ring.__dealloc__)

    cdef int close(self) except -1:
        """Close the epoll fd and every connection still on it, without callbacks.

        Used when the loop is closed (there is no loop to run callbacks on) and
        when a retired poller's last connection is gone (then it has none).
        """
        cdef Connection c
        if self.epfd >= 0:
            if not self.loop.is_closed():
                try:
                    self.loop.remove_reader(self.wfd)
                except Exception:
                    pass
            if self.uring:
                uring_accept_detach(self)     # before the ring goes: fds queued are closed
                self.ring.close()
                self.polls = {}
            else:
                close(self.epfd)
            self.epfd = -1
        self.timers.clear()
        conns, self.conns = self.conns, set()
        self.live_ptrs = set()
        self.ready = []
        self.hups = []
        self.closes = []
        self.wakeups = []
        for c in conns:
            c.abandon()
        return 0

    cdef int retire(self) except -1:
        """Take no new connections; close once the last one is gone."""
        self.retired = True
        if self.uring and self.epfd >= 0:
            uring_accept_retire(self)     # servers accepting here move to the new pollers
        if not self.conns and not (self.uring and self.ring.naccept):
            self.close()                  # (else when the last one, or ACCEPT, ends)
        return 0

    cdef int add(self, Connection c) except -1:
        # Registered for the connection's whole life; in the epoll set while it
        # wants events (a transport's reader starts off: none yet).
        cdef epoll_event ev
        cdef unsigned int want = c.wanted()
        if self.uring:
            c.events = want
            uring_arm(self, c)
            c.registered = True
            self.conns.add(c)
            return 0
        if want:
            memset(&ev, 0, sizeof(ev))
            ev.events = want
            ev.data.ptr = <void*>c
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, c.fd, &ev) < 0:
                raise oserror(errno, "epoll_ctl(ADD)")
        c.events = want
        c.registered = True
        self.conns.add(c)
        if NETPOLL_DEBUG:
            self.live_ptrs.add(<Py_ssize_t><void*>c)
        return 0

    cdef int modify(self, Connection c, unsigned int events) except -1:
        # events == 0 takes the fd out of the epoll set (a paused or half-closed
        # socket would otherwise report EPOLLHUP on every wait)
        cdef epoll_event ev
        cdef int op
        if self.uring:
            return uring_modify(self, c, events)
        memset(&ev, 0, sizeof(ev))
        ev.events = events
        ev.data.ptr = <void*>c
        if events == 0:
            op = EPOLL_CTL_DEL
        elif c.events == 0:
            op = EPOLL_CTL_ADD
        else:
            op = EPOLL_CTL_MOD
        if epoll_ctl(self.epfd, op, c.fd, &ev) < 0:
            raise oserror(errno, "epoll_ctl")
        c.events = events
        return 0

    cdef void remove(self, Connection c) noexcept:
        cdef epoll_event ev
        if c.registered and self.uring:
            c.registered = False
            c.events = 0
            try:
                # at once, before the caller's close(2): until the poll is
                # cancelled the kernel keeps the socket open
                uring_disarm(self, c)
                uring_cancel_recv(self, c)
                self.ring.flush_removal()
            except Exception as exc:
                config.logger.error("netpoll: io_uring poll removal failed (fd %d)",
                                    c.fd, exc_info=exc)
        elif c.registered:
            c.registered = False
            if c.events and self.epfd >= 0:
                epoll_ctl(self.epfd, EPOLL_CTL_DEL, c.fd, &ev)
            c.events = 0

    cdef int forget(self, Connection c) except -1:
        """c is finished: drop the strong reference (never inside the walk)."""
        self.conns.discard(c)
        if c.uring_sid:
            uring_park_send(self, c)      # its output stays alive until the SEND's CQE
        if NETPOLL_DEBUG:
            self.live_ptrs.discard(<Py_ssize_t><void*>c)
        if self.retired and not self.conns and not (self.uring and self.ring.naccept):
            self.close()
        return 0

    cdef int kick(self) except -1:
        if not self.kicked:
            self.kicked = True
            self.loop.call_soon(self._kicked)
        return 0

    def _kicked(self):
        self.kicked = False
        self.run_pending()

    def _on_ready(self):
        # Like Go's poller, poll again without blocking after a non-empty
        # batch: requests that arrived while handlers ran are served in this
        # callback instead of costing another trip through the asyncio loop.
        cdef int n, i, rounds = 0, subs = 0
        cdef Connection c
        if self.uring:
            uring_pass(self)
            return
        while rounds < self.spin and self.epfd >= 0:
            n = epoll_wait(self.epfd, self.events, self.nevents, 0)
            if n <= 0:
                return
            if _EPOLL_BATCH and n == self.nevents and subs < 64:
                # a capped batch (NETPOLL_EPOLL_BATCH): more are ready, and the
                # handlers of these run before they are read; not a new round
                # (64 x 8 events at most: about what 4 rounds of 128 took)
                subs += 1
            else:
                rounds += 1
            self.in_batch = True
            try:
                for i in range(n):
                    if NETPOLL_DEBUG:
                        _check_alive(self, self.events[i].data.ptr)
                    c = <Connection>self.events[i].data.ptr
                    c.on_event(self.events[i].events)
            except BaseException:
                self.in_batch = False
                if self.wakeups and not self.pending_depth:
                    self.hand_off_wakeups()      # no run_pending follows a walk that raised
                raise
            finally:
                self.in_batch = False
            if n == self.nevents and self.nevents < 65536 and not _EPOLL_BATCH:
                self.grow()
            self.run_pending()

    cdef int grow(self) except -1:
        cdef epoll_event* bigger = <epoll_event*>c_malloc(
            sizeof(epoll_event) * self.nevents * 2)
        if bigger != NULL:
            free(self.events)
            self.events = bigger
            self.nevents *= 2
        return 0

    cdef int run_pending(self) except -1:
        cdef Connection c
        cdef list ready, hups, closes
        if self.in_batch:
            return 0          # never user code inside the walk; the pass runs them after
        if not self.task_slot and _current_tasks is not None:
            # 3.11: handler steps in here replace asyncio's current-task entry
            # instead of inserting and deleting it (reactor/handler.pyx)
            self.task_slot = True
            self.slot_task = self.slot_base = _task_slot_value(self.loop)
            self.slot_depth = 0
            try:
                self.run_pending()
            finally:
                _end_task_slot(self)
            return 0
        self.pending_depth += 1
        try:
            if self.accepted:
                uring_run_accepts(self)      # io_uring: connections the ring accepted
            while self.ready or self.hups or self.closes or self.wakeups:
                closes = self.closes
                if closes:
                    self.closes = []
                    for c in closes:
                        c.close_queued = False
                        c.after_close()
                ready = self.ready
                if ready:
                    self.ready = []
                    for c in ready:
                        c.queued = False
                        c.start_handler()
                hups = self.hups
                if hups:
                    self.hups = []
                    for c in hups:
                        c.on_peer_closed()
                if self.wakeups:
                    _run_wakeups(self)       # Tasks waiting on reads/flushes (waiter.pyx)
        finally:
            self.pending_depth -= 1
            if self.wakeups and not self.pending_depth:
                self.hand_off_wakeups()      # something raised: the rest via call_soon
        return 0

    cdef int hand_off_wakeups(self) except -1:
        cdef Waiter w
        wakeups, self.wakeups = self.wakeups, []
        for w in wakeups:
            w.call_soon()
        return 0


cdef int _check_alive(Poller p, void* ptr) except -1:
    # Debug build: the event's connection must still be held by the poller
    # (checked by address, without touching the object).
    if <Py_ssize_t>ptr not in p.live_ptrs:
        raise AssertionError("netpoll: epoll event for a connection the poller no longer holds")
    return 0
