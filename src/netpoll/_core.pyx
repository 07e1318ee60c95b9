# cython: language_level=3
"""netpoll._core — the reactor: pollers, connections, handlers, server, dialer.

How it runs inside asyncio
--------------------------
netpoll does not replace the event loop. Each Poller owns an epoll fd and
registers that one fd with the running loop (``add_reader``). When it turns
readable, ``Poller._on_ready`` drains ``epoll_wait`` and does the socket I/O of
every ready connection in C: ``recv`` into the input LinkBuffer (book /
book_ack, with Go's adaptive book size), ``sendmsg`` of queued output on
EPOLLOUT. Only then, in a second pass, does it run Python: handler starts
(batched after the I/O), then peer closes. Connection fds are level-triggered
and stay registered for their whole life; EPOLLOUT is added only after a flush
hit EAGAIN and dropped when the output drains.

Handlers without Tasks
----------------------
Each connection owns one ``Handler`` object, a small Task of its own: it
drives the user's ``on_request`` coroutine with ``PyIter_Send``, entering the
connection's contextvars Context and registering itself as the loop's current
task for the duration of each step, so ``asyncio.current_task()``,
``asyncio.timeout()``, cancellation and contextvars behave as in a Task. The
first step runs at once in the poller callback ("eager start"): a handler
that finds its data buffered runs to completion without an event-loop round
trip and without allocating a Task. Only a handler that really waits (on an
asyncio future) is resumed later, through the future's done callback.

Connection state
----------------
::

    closing:  NONE ──close()──▶ USER        (first closer wins; the other side
              NONE ──hup/err──▶ POLLER       only sees the result)
    peer_eof: the peer finished sending. Reads past the buffer raise
              EndOfStreamError; a running handler may still write its answer,
              and the connection closes (POLLER) when it returns.
    connect:  NONE ─▶ CONNECTED ─▶ DISCONNECTED   (on_connect before
              on_request; on_disconnect at most once and after on_connect)
    processing: a handler step chain is in progress (never two at once).

Close order: waiters woken with the matching error, fd detached from epoll,
on_disconnect (peer close only), then, once no handler runs, the close
callbacks newest first, then the fd is closed.

Reads wait through one asyncio future per wait (``read_waiter``) that the
poller resolves when ``read_need`` bytes are buffered; timeouts live in a heap
per poller driven by a single loop timer, not one handle per connection.
"""

cimport cython
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_XDECREF
from libc.stdlib cimport free, malloc as c_malloc
from libc.string cimport memset
from posix.uio cimport iovec

from netpoll._buffer cimport LinkBuffer, NETPOLL_DEBUG
from netpoll.includes.system cimport *

import asyncio
import contextvars
import errno as _errno
import heapq
import logging
import os
import random
import socket

from netpoll.errors import (
    ConcurrentAccessError,
    ConnectionClosedError,
    DialTimeoutError,
    EndOfStreamError,
    ReadTimeoutError,
    WriteTimeoutError,
)


cdef extern from "awaitable.h":
    object NpReady_New(object value)
    object NpReady_Fail(object exc)
    int NpReady_Init() except -1


cdef extern from "Python.h":
    int PyIter_Send(object it, object arg, PyObject** presult) except -1
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1
    bint PyCoro_CheckExact(object o)
    object PyContext_CopyCurrent()
    Py_ssize_t PyDict_GET_SIZE(object d)
    int PyDict_SetItem(object d, object k, object v) except -1
    int PyDict_DelItem(object d, object k) except -1


NpReady_Init()

NETPOLL_DEBUG_BUILD = bool(NETPOLL_DEBUG)

cdef object CancelledError = asyncio.CancelledError
# Loop callbacks that resume a handler run in this empty Context: the step
# itself enters the connection's Context (entering it twice is an error).
cdef object _bare_context = contextvars.Context()
cdef object ready_none = None
cdef dict _current_tasks = None
cdef object _swap_current_task = None
try:
    from _asyncio import _swap_current_task as _sct   # CPython >= 3.12
    _swap_current_task = _sct
except ImportError:
    try:
        from _asyncio import _current_tasks as _ct    # CPython 3.11
    except ImportError:                               # pure-Python asyncio
        from asyncio.tasks import _current_tasks as _ct
    _current_tasks = _ct

# -- constants --------------------------------------------------------------------

cdef enum:
    NONE = 0
    USER = 1
    POLLER = 2
    CONNECTED = 1
    DISCONNECTED = 2
    MAX_IOV = 64
    BOOK_MAX = 1 << 23          # 8 MiB: the book size stops doubling here
    ACCEPT_BATCH = 64

cdef enum TimerKind:
    T_READ = 1
    T_WRITE = 2
    T_IDLE = 3

cdef enum Op:
    OP_NEXT = 1
    OP_PEEK = 2
    OP_SKIP = 3
    OP_READ_BINARY = 4
    OP_READ_STRING = 5
    OP_READ_BYTE = 6
    OP_SLICE = 7
    OP_UNTIL = 8
    OP_READ = 9

cdef unsigned int READ_EVENTS = EPOLLIN | EPOLLRDHUP
cdef unsigned int HUP_EVENTS = EPOLLHUP | EPOLLRDHUP | EPOLLERR

cdef Py_ssize_t live_connections = 0
cdef Py_ssize_t live_pollers = 0

logger = logging.getLogger("netpoll")


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef object oserror(int err, str what):
    return OSError(err, f"{what}: {os.strerror(err)}")


cpdef dict _debug_counts():
    """Live connections and pollers (counted in the debug build only)."""
    return {"connections": live_connections}


# -- configuration and poller selection -------------------------------------------

cdef class _Config:
    cdef public int poller_num
    cdef public Py_ssize_t buffer_size
    cdef public str load_balance
    cdef public object logger

cdef _Config config = _Config()
config.poller_num = 1
config.buffer_size = 8192
config.load_balance = "round_robin"
config.logger = logger

cdef dict _pollers = {}      # loop -> _PollerSet; closed loops are purged


def configure(poller_num=None, buffer_size=None, load_balance=None, logger=None):
    """Set process-wide options; None leaves a setting as it is.

    poller_num: pollers per event loop (each one epoll fd on that loop);
    buffer_size: the first book size for connection input (bytes);
    load_balance: "round_robin" or "random", how connections spread over pollers;
    logger: a logging.Logger for netpoll's messages.
    """
    if poller_num is not None:
        if not isinstance(poller_num, int) or isinstance(poller_num, bool) or poller_num < 1:
            raise ValueError(f"configure(poller_num={poller_num!r}): must be an int >= 1")
        config.poller_num = poller_num
        _purge_closed_loops()
        for ps in list(_pollers.values()):
            (<_PollerSet>ps).resize(poller_num)
    if buffer_size is not None:
        if not isinstance(buffer_size, int) or isinstance(buffer_size, bool) or buffer_size < 1:
            raise ValueError(f"configure(buffer_size={buffer_size!r}): must be an int >= 1")
        config.buffer_size = min(buffer_size, BOOK_MAX)
    if load_balance is not None:
        if load_balance not in ("round_robin", "random"):
            raise ValueError(
                f"configure(load_balance={load_balance!r}): "
                "expected 'round_robin' or 'random'")
        config.load_balance = load_balance
    if logger is not None:
        if not isinstance(logger, logging.Logger):
            raise TypeError(
                f"configure(logger=...): expected a logging.Logger, not {type(logger).__name__}")
        config.logger = logger


def get_config():
    """The current settings as a dict."""
    return {"poller_num": config.poller_num, "buffer_size": config.buffer_size,
            "load_balance": config.load_balance, "logger": config.logger}


cdef class _PollerSet:
    cdef list pollers
    cdef object loop
    cdef Py_ssize_t rr

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

    cdef resize(self, int n):
        # Growing adds pollers; shrinking only stops new connections from
        # picking the extra ones (their connections keep being served).
        while len(self.pollers) < n:
            self.pollers.append(Poller(self.loop))
        if len(self.pollers) > n:
            del self.pollers[n:]


cdef int run_all_pending(object loop) except -1:
    ps = _pollers.get(loop)
    if ps is not None:
        for p in list((<_PollerSet>ps).pollers):
            (<Poller>p).run_pending()
    return 0


cdef Poller pick_poller(object loop):
    ps = _pollers.get(loop)
    if ps is None:
        _purge_closed_loops()
        ps = _PollerSet(loop)
        _pollers[loop] = ps
    return (<_PollerSet>ps).pick()


def _forget_closed_loops():
    """Release the pollers (and any connections left on them) of closed loops."""
    _purge_closed_loops()


cdef _purge_closed_loops():
    """Forget the pollers of closed loops and close their epoll fds."""
    for loop in [lp for lp in _pollers if lp.is_closed()]:
        ps = <_PollerSet>_pollers.pop(loop)
        for p in ps.pollers:
            (<Poller>p).close()
        ps.pollers = []


# -- timers -----------------------------------------------------------------------

@cython.final
@cython.freelist(64)
cdef class _Timer:
    """A heap entry's target. Cancelling clears it, so a stale entry pins nothing."""
    cdef Connection conn
    cdef int kind
    cdef object token

    cdef void cancel(self):
        self.conn = None
        self.token = None


# -- Poller -----------------------------------------------------------------------

@cython.final
cdef class Poller:
    """One epoll fd registered on an asyncio loop; does the I/O of its connections."""

    cdef int epfd
    cdef object loop
    cdef epoll_event* events
    cdef int nevents
    cdef set conns          # strong references to registered connections
    cdef list ready         # connections whose handler starts after the I/O pass
    cdef list hups          # connections the peer closed during the I/O pass
    cdef list timers        # heap of (when, seq, conn, kind, token)
    cdef object timer_handle
    cdef double timer_when
    cdef long timer_seq
    cdef Py_ssize_t timers_stale
    cdef bint in_batch
    cdef bint kicked
    cdef int spin             # epoll_wait rounds per loop callback
    cdef object __weakref__

    def __cinit__(self, loop):
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise oserror(errno, "epoll_create1")
        self.nevents = 128
        self.events = <epoll_event*>c_malloc(sizeof(epoll_event) * self.nevents)
        if self.events == NULL:
            close(self.epfd)
            raise MemoryError()
        self.loop = loop
        self.conns = set()
        self.ready = []
        self.hups = []
        self.timers = []
        self.timer_handle = None
        self.timer_when = 0
        self.timer_seq = 0
        self.spin = int(os.environ.get("NETPOLL_SPIN", "4"))
        loop.add_reader(self.epfd, self._on_ready)

    def __dealloc__(self):
        if self.events != NULL:
            free(self.events)
        if self.epfd >= 0:
            close(self.epfd)

    cdef close(self):
        """Its loop is closed: close the epoll fd and every connection still on it.

        No callback runs (there is no loop to run it); the fds are closed so
        nothing leaks past the loop's life.
        """
        cdef Connection c
        if self.epfd >= 0:
            close(self.epfd)
            self.epfd = -1
        self.timer_handle = None
        self.timers = []
        conns, self.conns = self.conns, set()
        self.ready = []
        self.hups = []
        for c in conns:
            c.abandon()

    cdef int add(self, Connection c) except -1:
        cdef epoll_event ev
        memset(&ev, 0, sizeof(ev))
        ev.events = READ_EVENTS
        ev.data.ptr = <void*>c
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, c.fd, &ev) < 0:
            raise oserror(errno, "epoll_ctl(ADD)")
        c.events = READ_EVENTS
        c.registered = True
        self.conns.add(c)
        return 0

    cdef int modify(self, Connection c, unsigned int events) except -1:
        # events == 0 takes the fd out of the epoll set (a paused or half-closed
        # socket would otherwise report EPOLLHUP on every wait)
        cdef epoll_event ev
        cdef int op
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
        if c.registered:
            c.registered = False
            if c.events:
                epoll_ctl(self.epfd, EPOLL_CTL_DEL, c.fd, &ev)
            c.events = 0

    cdef void kick(self):
        """Run pending handler starts and closes soon (outside the I/O pass)."""
        if not self.kicked:
            self.kicked = True
            self.loop.call_soon(self._kicked)

    def _kicked(self):
        self.kicked = False
        self.run_pending()

    def _on_ready(self):
        # Like Go's poller, poll again without blocking after a non-empty
        # batch: requests that arrived while handlers ran are served in this
        # callback instead of costing another trip through the asyncio loop.
        cdef int n, i, rounds = 0
        cdef Connection c
        while rounds < self.spin:
            n = epoll_wait(self.epfd, self.events, self.nevents, 0)
            if n <= 0:
                return
            rounds += 1
            self.in_batch = True
            try:
                for i in range(n):
                    c = <Connection>self.events[i].data.ptr
                    c.on_event(self.events[i].events)
            finally:
                self.in_batch = False
            if n == self.nevents and self.nevents < 65536:
                self._grow()
            self.run_pending()

    cdef _grow(self):
        cdef epoll_event* bigger = <epoll_event*>c_malloc(
            sizeof(epoll_event) * self.nevents * 2)
        if bigger != NULL:
            free(self.events)
            self.events = bigger
            self.nevents *= 2

    cdef int run_pending(self) except -1:
        cdef Connection c
        cdef list ready, hups
        while self.ready or self.hups:
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
        return 0

    # -- timers: one heap per poller, one loop timer for its earliest entry --

    cdef int cancel_timer(self, _Timer t) except -1:
        """Cancel a timer: its entry goes stale and no longer refers to anything.

        Entries are deleted lazily but never pile up: once stale entries
        outnumber live ones the heap is rebuilt without them.
        """
        if t is None or t.conn is None:
            return 0
        t.cancel()
        self.timers_stale += 1
        if self.timers_stale > 32 and self.timers_stale * 2 > len(self.timers):
            self.timers = [e for e in self.timers
                           if (<_Timer>(<tuple>e)[2]).conn is not None]
            heapq.heapify(self.timers)
            self.timers_stale = 0
        return 0

    cdef _Timer push_timer(self, double when, Connection c, int kind, object token):
        cdef _Timer t = _Timer.__new__(_Timer)
        t.conn = c
        t.kind = kind
        t.token = token
        self.timer_seq += 1
        heapq.heappush(self.timers, (when, self.timer_seq, t))
        if self.timer_handle is None or when < self.timer_when:
            self._arm(when)
        return t

    cdef _arm(self, double when):
        if self.timer_handle is not None:
            self.timer_handle.cancel()
        self.timer_when = when
        delay = when - monotonic()
        self.timer_handle = self.loop.call_later(delay if delay > 0 else 0, self._on_timer)

    def _on_timer(self):
        cdef double now = monotonic() + 0.0005
        cdef _Timer t
        cdef Connection c
        self.timer_handle = None
        timers = self.timers
        while timers and (<tuple>timers[0])[0] <= now:
            t = (<tuple>heapq.heappop(timers))[2]
            c = t.conn
            if c is None:
                if self.timers_stale > 0:
                    self.timers_stale -= 1
                continue
            token = t.token
            t.cancel()
            try:
                c.on_timer(t.kind, token)
            except Exception:
                config.logger.exception("netpoll: timer callback failed")
        if timers:
            self._arm((<tuple>timers[0])[0])
        self.run_pending()


# -- the handler driver -------------------------------------------------------------

cdef enum Phase:
    PH_IDLE = 0
    PH_CONNECT = 1
    PH_REQUEST = 2


@cython.final
cdef class Handler:
    """The Task-like driver of one connection's callbacks.

    ``asyncio.current_task()`` returns it inside ``on_connect``/``on_request``;
    it supports what asyncio asks of a current task: ``cancel``,
    ``cancelling``, ``uncancel``, ``done``, ``get_coro``, ``get_loop``,
    ``get_name``, ``get_context``.
    """

    cdef Connection conn
    cdef object loop
    cdef object coro
    cdef int phase
    cdef object waiting           # the future the coroutine waits on
    cdef bint must_cancel
    cdef object cancel_msg
    cdef int num_cancels
    cdef Py_ssize_t consumed_mark
    cdef Py_ssize_t rx_mark
    cdef object wakeup            # bound method, made once
    cdef object __weakref__

    def __cinit__(self, Connection conn, loop):
        self.conn = conn
        self.loop = loop
        self.coro = None
        self.phase = PH_IDLE
        self.waiting = None
        self.wakeup = self._wakeup

    # asyncio's view of a task
    def get_loop(self):
        return self.loop

    def get_coro(self):
        return self.coro

    def get_name(self):
        return f"netpoll-handler-fd{self.conn.fd}"

    def get_context(self):
        return self.conn.context

    def done(self):
        return self.coro is None

    def cancelled(self):
        return False

    def cancelling(self):
        return self.num_cancels

    def uncancel(self):
        if self.num_cancels > 0:
            self.num_cancels -= 1
        return self.num_cancels

    def cancel(self, msg=None):
        if self.coro is None:
            return False
        self.num_cancels += 1
        if self.waiting is not None and self.waiting.cancel(msg=msg):
            return True
        self.must_cancel = True
        self.cancel_msg = msg
        return True

    def __repr__(self):
        return f"<netpoll Handler fd={self.conn.fd} phase={self.phase}>"

    # driving

    cdef int run(self) except -1:
        """Call on_connect / on_request until nothing is left to do or one suspends."""
        cdef int st
        while True:
            if self.coro is None:
                if not self.next_call():
                    return 0
                if self.coro is None:
                    continue
            st = self.step(None)
            if st:
                return 0       # suspended

    cdef bint next_call(self) except -1:
        """Start the next callback. False when processing is over."""
        cdef Connection c = self.conn
        if c.connect_state == NONE:
            if c.on_connect is not None and c.closing == NONE:
                self.phase = PH_CONNECT
                try:
                    res = c.on_connect(c.ctx, c)
                except BaseException as exc:
                    self.on_error(exc)
                    return True
                if PyCoro_CheckExact(res) or hasattr(res, "__await__"):
                    self.set_coro(res)
                else:
                    self.connect_done(res)
                return True
            c.connect_state = CONNECTED
        if self.phase == PH_REQUEST:
            # called again only if the last call consumed something, or data came
            if c.inbuf.gen == self.consumed_mark and c.rx_total == self.rx_mark:
                self.finish()
                return False
        if (c.closing == USER or c.on_request is None or c.inbuf.length == 0
                or c.detached):
            self.finish()
            return False
        self.phase = PH_REQUEST
        self.consumed_mark = c.inbuf.gen
        self.rx_mark = c.rx_total
        try:
            res = c.on_request(c.ctx, c)
        except BaseException as exc:
            self.on_error(exc)
            return True
        if PyCoro_CheckExact(res) or (res is not None and hasattr(res, "__await__")):
            self.set_coro(res)
        return True

    cdef int set_coro(self, res) except -1:
        if PyCoro_CheckExact(res):
            self.coro = res
        else:
            self.coro = res.__await__()
        return 0

    cdef int connect_done(self, ctx) except -1:
        cdef Connection c = self.conn
        c.ctx = ctx
        c.connect_state = CONNECTED
        if c.peer_eof or c.closing == POLLER:
            c.fire_disconnect()
        return 0

    cdef int step(self, exc) except -1:
        """One step of the coroutine. Returns 1 if it suspended, 0 if it finished."""
        cdef PyObject* out = NULL
        cdef int st
        cdef object prev = None
        cdef Connection c = self.conn
        coro = self.coro
        if self.must_cancel:
            self.must_cancel = False
            if not isinstance(exc, CancelledError):
                exc = CancelledError(self.cancel_msg) if self.cancel_msg is not None \
                    else CancelledError()
        # become the loop's current task for this step
        if _swap_current_task is not None:
            prev = _swap_current_task(self.loop, self)
        else:
            # from a loop callback no task is current and the dict is empty:
            # skip the lookup of a task to restore
            if PyDict_GET_SIZE(_current_tasks):
                prev = _current_tasks.get(self.loop)
            PyDict_SetItem(_current_tasks, self.loop, self)
        try:
            PyContext_Enter(c.context)
            if exc is None:
                st = PyIter_Send(coro, None, &out)
                result = <object>out
                Py_DECREF(result)
            else:
                try:
                    result = coro.throw(exc)
                    st = 1
                except StopIteration as si:
                    result = si.value
                    st = 0
        except BaseException as err:
            try:
                PyContext_Exit(c.context)
            except RuntimeError:
                pass      # the enter itself failed
            self.restore_task(prev)
            self.coro = None
            self.on_error(err)
            return 0
        PyContext_Exit(c.context)
        self.restore_task(prev)
        if st == 1:                 # PYGEN_NEXT: it yielded
            self.on_yield(result)
            return 1
        self.coro = None
        if self.phase == PH_CONNECT:
            self.connect_done(result)
        return 0

    cdef inline void restore_task(self, prev) noexcept:
        try:
            if _swap_current_task is not None:
                _swap_current_task(self.loop, prev)
            elif prev is None:
                PyDict_DelItem(_current_tasks, self.loop)
            else:
                _current_tasks[self.loop] = prev
        except Exception:
            pass

    cdef int on_yield(self, result) except -1:
        blocking = getattr(result, "_asyncio_future_blocking", None)
        if blocking is not None:
            if blocking:
                result._asyncio_future_blocking = False
                result.add_done_callback(self.wakeup, context=_bare_context)
                self.waiting = result
                if self.must_cancel:
                    if result.cancel(msg=self.cancel_msg):
                        self.must_cancel = False
                return 0
            err = RuntimeError(f"yield was used instead of yield from in handler: {result!r}")
        elif result is None:
            self.loop.call_soon(self._resume, None, context=_bare_context)
            return 0
        else:
            err = RuntimeError(f"handler got bad yield: {result!r}")
        self.loop.call_soon(self._resume, err, context=_bare_context)
        return 0

    def _wakeup(self, fut):
        self.waiting = None
        try:
            fut.result()
        except BaseException as exc:
            self._resume(exc)
        else:
            self._resume(None)

    def _resume(self, exc):
        if self.coro is None:
            return
        if self.step(exc) == 0:
            self.run()
        self.conn.poller.run_pending()

    cdef int on_error(self, exc) except -1:
        cdef Connection c = self.conn
        self.coro = None
        if isinstance(exc, CancelledError):
            config.logger.debug("netpoll: handler cancelled; closing fd %d", c.fd)
        elif isinstance(exc, ConnectionClosedError) and (c.closing or c.peer_eof):
            config.logger.debug("netpoll: handler ended with the connection (fd %d): %s",
                                c.fd, exc)
        elif isinstance(exc, (KeyboardInterrupt, SystemExit)):
            c.close()
            raise exc
        else:
            config.logger.error(
                "netpoll: %s raised; closing the connection (fd %d)",
                "on_connect" if self.phase == PH_CONNECT else "on_request",
                c.fd, exc_info=exc)
        if self.phase == PH_CONNECT:
            c.connect_state = CONNECTED
        c.close()
        return 0

    cdef int finish(self) except -1:
        cdef Connection c = self.conn
        self.phase = PH_IDLE
        self.num_cancels = 0
        self.must_cancel = False
        c.processing = False
        c.after_processing()
        return 0


# -- Connection ---------------------------------------------------------------------

@cython.final
cdef class Connection:
    """A connection driven by the pollers.

    ``conn.reader`` and ``conn.writer`` are the connection itself (as in Go
    Netpoll): reader methods are awaitables, writer methods are synchronous
    and ``await writer.flush()`` sends.
    """

    cdef readonly int fd
    cdef Poller poller
    cdef object loop
    cdef LinkBuffer inbuf
    cdef LinkBuffer outbuf
    cdef Handler handler
    cdef object context
    cdef public object ctx
    cdef object on_request
    cdef object on_connect
    cdef object on_disconnect
    cdef list close_callbacks
    cdef EventLoop server
    cdef str network

    cdef int closing
    cdef int connect_state
    cdef bint processing
    cdef bint peer_eof
    cdef bint registered
    cdef bint writing            # EPOLLOUT armed
    cdef bint paused             # read backpressure: EPOLLIN off
    cdef bint wpaused            # write backpressure: EPOLLIN off while output is above the limit
    cdef bint detached
    cdef bint finished           # close callbacks ran, fd closed
    cdef bint queued             # on the poller's ready list
    cdef bint close_when_done    # graceful shutdown: close once idle
    cdef bint draining           # graceful shutdown: read nothing new
    cdef unsigned int events

    cdef object read_waiter
    cdef Py_ssize_t read_need
    cdef object flush_waiter
    cdef _Timer read_timer
    cdef _Timer write_timer
    cdef _Timer idle_timer

    cdef double read_timeout
    cdef double write_timeout
    cdef double idle_timeout
    cdef double last_active
    cdef Py_ssize_t read_limit
    cdef Py_ssize_t write_limit
    cdef Py_ssize_t book_size
    cdef Py_ssize_t max_size
    cdef Py_ssize_t rx_total     # bytes received
    cdef Py_ssize_t consumed     # bytes consumed by reads

    cdef object _local_addr
    cdef object _remote_addr
    cdef object __weakref__

    def __cinit__(self):
        global live_connections
        self.fd = -1
        self.close_callbacks = []
        self.inbuf = LinkBuffer.__new__(LinkBuffer)
        self.inbuf.owned = True
        self.outbuf = LinkBuffer.__new__(LinkBuffer)
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
        self.loop = loop
        self.network = network
        self.server = server
        self.poller = pick_poller(loop)
        self.handler = Handler(self, loop)
        self.context = PyContext_CopyCurrent()
        self.book_size = config.buffer_size
        self.max_size = config.buffer_size
        if network in ("tcp", "tcp4", "tcp6"):
            _set_nodelay(fd)
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
        if self.closing:
            return 0
        if ev & (EPOLLIN | HUP_EVENTS) and not self.peer_eof and not self.paused \
                and not self.wpaused and not self.draining:
            self.do_read(ev)
        elif ev & (EPOLLHUP | EPOLLERR) and not self.writing:
            self.mark_eof(None)
        if ev & EPOLLOUT and self.writing and not self.closing:
            self.on_writable()
        return 0

    cdef int do_read(self, unsigned int ev, bint drain=False) except -1:
        cdef Py_ssize_t avail, n, got = 0
        cdef char* p
        cdef int err, reads = 0
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
                self.mark_eof(oserror(err, "recv"))
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
        if self.read_limit and not self.paused and length >= self.read_limit \
                and length >= self.read_need:
            self.paused = True
            self.update_events()
        if self.read_waiter is not None:
            if length >= self.read_need:
                w = self.read_waiter
                self.read_waiter = None
                if not w.done():
                    w.set_result(None)
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
        if self.registered:
            self.update_events()
        self.wake_reader()
        self.poller.hups.append(self)
        return 0

    cdef int wake_reader(self) except -1:
        # The waiting read re-checks: it takes its data, returns b"" (read) or
        # raises the error that fits the state, with its own op in the message.
        w = self.read_waiter
        if w is not None:
            self.read_waiter = None
            if not w.done():
                w.set_result(None)
        return 0

    cdef int on_peer_closed(self) except -1:
        # After this batch's handlers ran: close now unless one still runs.
        if self.closing or self.processing:
            return 0
        self.close_by(POLLER)
        return 0

    cdef int update_events(self) except -1:
        cdef unsigned int want = 0
        if not self.peer_eof and not self.paused and not self.wpaused and not self.draining:
            want = READ_EVENTS
        if self.writing:
            want |= EPOLLOUT
        if want != self.events and self.registered and self.closing == NONE:
            self.poller.modify(self, want)
        return 0

    cdef int on_writable(self) except -1:
        cdef int r = self.send_out()
        if self.wpaused and self.outbuf.length + self.outbuf.pending <= self.write_limit // 2:
            self.wpaused = False
            if r == 1:
                self.update_events()
        if r == 1:
            return 0
        self.writing = False
        if self.write_timer is not None and self.flush_waiter is None:
            self.poller.cancel_timer(self.write_timer)      # a flush_nowait's deadline
            self.write_timer = None
        self.update_events()
        w = self.flush_waiter
        self.flush_waiter = None
        if r < 0:
            err = oserror(-r, "flush")
            if w is not None and not w.done():
                w.set_exception(ConnectionClosedError(f"flush: {os.strerror(-r)} (errno {-r})"))
            self.mark_eof(err)
            return 0
        if w is not None and not w.done():
            w.set_result(None)
        if self.close_when_done and not self.processing:
            self.close()
        return 0

    cdef int send_out(self) except? -2:
        """Write queued output: 0 all sent, 1 the socket is full, -errno on error."""
        cdef iovec iov[MAX_IOV]
        cdef msghdr msg
        cdef Py_ssize_t total, n
        cdef int cnt, err
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
        if self.closing:
            return 0
        if kind == T_READ:
            if self.read_waiter is token and not token.done():
                self.read_waiter = None
                token.set_exception(ReadTimeoutError(
                    f"read timed out after {self.read_timeout:g}s: "
                    f"{self.inbuf.length} bytes readable, {self.read_need} needed"))
        elif kind == T_WRITE and token is _NOWAIT:
            self.write_timer = None
            if self.writing and self.flush_waiter is None:
                config.logger.debug(
                    "netpoll: closing fd %d: write timed out after %gs with %d bytes unsent",
                    self.fd, self.write_timeout, self.outbuf.length)
                self.close()
        elif kind == T_WRITE:
            if self.flush_waiter is token and not token.done():
                self.flush_waiter = None
                token.set_exception(WriteTimeoutError(
                    f"flush timed out after {self.write_timeout:g}s: "
                    f"{self.outbuf.length} bytes unsent"))
        elif kind == T_IDLE and self.idle_timeout > 0 and token == self.idle_timeout:
            due = self.last_active + self.idle_timeout
            if due <= monotonic() + 0.001:
                config.logger.debug("netpoll: closing fd %d after %.3gs idle",
                                    self.fd, self.idle_timeout)
                self.close()
            else:
                self.idle_timer = self.poller.push_timer(due, self, T_IDLE, token)
        return 0

    # -- handlers ---------------------------------------------------------------------

    cdef int start_handler(self) except -1:
        if self.processing or self.closing or self.finished:
            return 0
        if self.on_request is None and (self.on_connect is None or self.connect_state):
            return 0
        self.processing = True
        self.handler.run()
        return 0

    cdef int after_processing(self) except -1:
        """A handler chain ended (or output drained during a graceful close)."""
        if self.closing:
            self.finish_close()
            return 0
        if self.peer_eof:
            self.close_by(POLLER)
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
        if self.connect_state != CONNECTED:
            return 0
        self.connect_state = DISCONNECTED
        if cb is None:
            return 0
        try:
            res = cb(self.ctx, self)
            if res is not None and hasattr(res, "__await__"):
                task = asyncio.ensure_future(res, loop=self.loop)
                task.add_done_callback(_log_task_error)
        except Exception as exc:
            config.logger.error("netpoll: on_disconnect raised (fd %d)", self.fd, exc_info=exc)
        return 0

    # -- closing --------------------------------------------------------------------

    cdef int close_by(self, int who) except -1:
        if self.closing:
            return 0
        self.closing = who
        self.poller.remove(self)
        self.cancel_timers()
        self.wake_reader()
        w = self.flush_waiter
        if w is not None:
            self.flush_waiter = None
            if not w.done():
                w.set_exception(ConnectionClosedError(
                    f"connection closed by {'peer' if who == POLLER else 'user'} "
                    f"with {self.outbuf.length} bytes unsent"))
        if who == POLLER:
            self.fire_disconnect()
        if self.processing and self.handler.coro is not None \
                and self.handler.phase == PH_CONNECT:
            return 0      # on_connect is still running; it finishes the close
        if not self.processing:
            self.finish_close()
        return 0

    cdef int cancel_timers(self) except -1:
        if self.poller is not None:
            self.poller.cancel_timer(self.read_timer)
            self.poller.cancel_timer(self.write_timer)
            self.poller.cancel_timer(self.idle_timer)
        self.read_timer = self.write_timer = self.idle_timer = None
        return 0

    cdef int abandon(self) except -1:
        # The loop is gone: release everything without running callbacks.
        self.closing = self.closing or USER
        self.registered = False
        self.events = 0
        self.close_callbacks = []
        self.read_waiter = None
        self.flush_waiter = None
        if not self.finished:
            self.finished = True
            if not self.detached and self.fd >= 0:
                close(self.fd)
        if self.server is not None:
            self.server.conns.discard(self)
        self.handler = None
        self.inbuf.c_close()
        self.outbuf.c_close()
        return 0

    cdef int finish_close(self) except -1:
        cdef Connection keep = self     # the last reference may go below
        if self.finished:
            return 0
        self.finished = True
        cbs = self.close_callbacks
        self.close_callbacks = []
        for cb in reversed(cbs):
            try:
                cb(self)
            except Exception as exc:
                config.logger.error("netpoll: close callback raised (fd %d)", self.fd,
                                    exc_info=exc)
        if self.server is not None:
            self.server.forget(self)
        self.cancel_timers()
        self.poller.conns.discard(self)
        if not self.detached and self.fd >= 0:
            if self._remote_addr is None or self._local_addr is None:
                try:
                    self._addrs()
                except OSError:
                    pass
            close(self.fd)
        self.outbuf.release_all()
        self.handler = None      # breaks the connection <-> handler cycle
        return 0

    # -- public: state and options --------------------------------------------------

    def is_active(self):
        """False once closed by either side (a peer close is seen without reading)."""
        return self.closing == NONE and not self.peer_eof

    def fileno(self):
        """The socket's file descriptor."""
        return self.fd

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
            if self.closing == NONE and self.poller is not None:
                self.poller.cancel_timer(self.idle_timer)
                self.idle_timer = self.poller.push_timer(self.last_active + s, self, T_IDLE, s)

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
        if self.inbuf.length and not self.processing and not self.closing \
                and self.read_waiter is None and not self.queued:
            self.queued = True
            self.poller.ready.append(self)
            if not self.poller.in_batch:
                self.poller.kick()

    def add_close_callback(self, cb):
        """cb(conn) runs once after the close; callbacks run newest first."""
        if cb is None:
            return
        if not callable(cb):
            raise TypeError(f"add_close_callback: expected a callable, not {type(cb).__name__}")
        if self.finished:
            self.loop.call_soon(_run_close_callback, cb, self)
        else:
            self.close_callbacks.append(cb)

    def close(self):
        """Close the connection (idempotent); waiters get ConnectionClosedError."""
        if self.closing == NONE:
            self.close_by(USER)

    def detach(self):
        """Close the connection but not its socket; returns the fd."""
        cdef int fd = self.fd
        if self.finished and not self.detached:
            raise ConnectionClosedError("detach: connection already closed")
        self.detached = True
        self.close_by(USER)
        return fd

    cdef _addrs(self):
        s = socket.socket(fileno=self.fd)
        try:
            if self._local_addr is None:
                self._local_addr = _addr(s.getsockname())
            if self._remote_addr is None:
                try:
                    self._remote_addr = _addr(s.getpeername())
                except OSError:
                    self._remote_addr = None
        finally:
            s.detach()

    @property
    def local_addr(self):
        """(host, port) for TCP, the path for Unix sockets."""
        if self._local_addr is None and not self.finished:
            self._addrs()
        return self._local_addr

    @property
    def remote_addr(self):
        """(host, port) for TCP, the path for Unix sockets."""
        if self._remote_addr is None and not self.finished:
            self._addrs()
        return self._remote_addr

    def __repr__(self):
        state = "open" if self.closing == NONE else ("closed by user" if self.closing == USER
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
        self.consumed += n
        if self.paused and self.inbuf.length < self.read_limit // 2:
            self.paused = False
            self.update_events()
        return 0

    def next(self, n):
        """Awaitable: the next n bytes as a read-only memoryview, consumed."""
        cdef Py_ssize_t k = _size("next", n)
        if self.inbuf.length >= k and self.read_waiter is None:
            v = self.inbuf.c_next(k)
            self._after_read(k)
            return NpReady_New(v)
        return self._wait(OP_NEXT, k, None)

    def peek(self, n):
        """Awaitable: the next n bytes as a read-only memoryview, not consumed."""
        cdef Py_ssize_t k = _size("peek", n)
        if self.inbuf.length >= k and self.read_waiter is None:
            return NpReady_New(self.inbuf.c_peek(k))
        return self._wait(OP_PEEK, k, None)

    def skip(self, n):
        """Awaitable: consume n bytes."""
        cdef Py_ssize_t k = _size("skip", n)
        if self.inbuf.length >= k and self.read_waiter is None:
            if k:
                self.inbuf.consume(k)
                self._after_read(k)
            return NpReady_New(None)
        return self._wait(OP_SKIP, k, None)

    def read_binary(self, n):
        """Awaitable: an independent copy of the next n bytes, consumed."""
        cdef Py_ssize_t k = _size("read_binary", n)
        if self.inbuf.length >= k and self.read_waiter is None:
            v = self.inbuf.c_read_binary(k)
            self._after_read(k)
            return NpReady_New(v)
        return self._wait(OP_READ_BINARY, k, None)

    def read_string(self, n, encoding="utf-8", errors="strict"):
        """Awaitable: the next n bytes decoded; on a decode error nothing is consumed."""
        cdef Py_ssize_t k = _size("read_string", n)
        if self.inbuf.length >= k and self.read_waiter is None:
            try:
                return NpReady_New(self._op(OP_READ_STRING, k, (encoding, errors)))
            except Exception as exc:
                return NpReady_Fail(exc)
        return self._wait(OP_READ_STRING, k, (encoding, errors))

    def read_byte(self):
        """Awaitable: one byte as an int, consumed."""
        if self.inbuf.length >= 1 and self.read_waiter is None:
            return NpReady_New(self._op(OP_READ_BYTE, 1, None))
        return self._wait(OP_READ_BYTE, 1, None)

    def slice(self, n):
        """Awaitable: a LinkBuffer of the next n bytes sharing their memory, consumed."""
        cdef Py_ssize_t k = _size("slice", n)
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
        if self.read_timeout > 0:
            deadline = monotonic() + self.read_timeout
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
                if self.peer_eof or self.closing == POLLER:
                    return b""
                need = 1
            else:
                if self.inbuf.length >= n:
                    return self._op(op, n, arg)
                need = n
            if self.closing == USER:
                raise ConnectionClosedError(
                    f"{_opname(op)}: connection closed; {self.inbuf.length} bytes readable, "
                    f"{need} needed")
            if self.peer_eof or self.closing == POLLER:
                raise EndOfStreamError(
                    f"{_opname(op)}: peer closed the connection; {self.inbuf.length} "
                    f"bytes readable, {need} needed")
            fut = self.loop.create_future()
            self.read_waiter = fut
            self.read_need = need
            if self.paused and need > self.inbuf.length:
                self.paused = False        # a wait for more than the limit may read up to it
                self.update_events()
            if deadline > 0:
                if monotonic() >= deadline:
                    self.read_waiter = None
                    raise ReadTimeoutError(f"{_opname(op)}: read timed out after "
                                           f"{self.read_timeout:g}s")
                self.read_timer = self.poller.push_timer(deadline, self, T_READ, fut)
            try:
                await fut
            except ReadTimeoutError as exc:
                raise ReadTimeoutError(f"{_opname(op)}: {exc}") from None
            finally:
                if self.read_waiter is fut:
                    self.read_waiter = None
                if self.read_timer is not None:
                    self.poller.cancel_timer(self.read_timer)
                    self.read_timer = None

    # -- writer -----------------------------------------------------------------------

    cdef inline int _writable(self, str op) except -1:
        if self.closing:
            raise ConnectionClosedError(f"{op}: connection closed")
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
        self.outbuf.write_buffer(other)

    def append(self, LinkBuffer other not None):
        """Same as write_buffer."""
        self._writable("append")
        self.outbuf.write_buffer(other)

    def flush(self):
        """Awaitable: hand everything written to the kernel.

        Completes at once when the socket takes it all; waits under
        backpressure; raises WriteTimeoutError after the write timeout (the
        unsent data stays queued) and ConnectionClosedError once closed.
        """
        cdef int r
        if self.closing:
            return NpReady_Fail(ConnectionClosedError("flush: connection closed"))
        if self.flush_waiter is not None:
            return NpReady_Fail(ConcurrentAccessError("flush: another flush is in progress"))
        self.outbuf.c_flush()
        if self.writing:
            return self._wait_flush()
        r = self.send_out()
        if r == 0:
            return NpReady_New(None)
        if r < 0:
            err = oserror(-r, "flush")
            self.mark_eof(err)
            self.poller.kick()
            exc = ConnectionClosedError(f"flush: {os.strerror(-r)} (errno {-r})")
            exc.__cause__ = err
            return NpReady_Fail(exc)
        self.writing = True
        self.update_events()
        self.check_write_limit()
        return self._wait_flush()

    async def _wait_flush(self):
        fut = self.loop.create_future()
        self.flush_waiter = fut
        if self.write_timeout > 0:
            self.write_timer = self.poller.push_timer(monotonic() + self.write_timeout, self,
                                                      T_WRITE, fut)
        try:
            await fut
        finally:
            if self.flush_waiter is fut:
                self.flush_waiter = None
            if self.write_timer is not None:
                self.poller.cancel_timer(self.write_timer)
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
        if self.closing:
            raise ConnectionClosedError("flush_nowait: connection closed")
        self.outbuf.c_flush()
        if self.writing:
            self.check_write_limit()
            return None
        r = self.send_out()
        if r == 0:
            return None
        if r < 0:
            err = oserror(-r, "flush")
            self.mark_eof(err)
            if not self.poller.in_batch:
                self.poller.kick()
            return None
        self.writing = True
        self.update_events()
        if self.write_timeout > 0 and self.write_timer is None:
            self.write_timer = self.poller.push_timer(monotonic() + self.write_timeout, self,
                                                      T_WRITE, _NOWAIT)
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
    if s is None:
        return 0
    if not isinstance(s, (int, float)) or isinstance(s, bool):
        raise TypeError(f"{op}: seconds must be a number, not {type(s).__name__}")
    if s < 0:
        raise ValueError(f"{op}({s}): negative timeout")
    return s


cdef _set_nodelay(int fd):
    cdef int one = 1
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))


cdef _set_keepalive(int fd, double seconds):
    cdef int one = 1
    cdef int secs = <int>seconds if seconds >= 1 else 1
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


cdef int _set_nonblocking(int fd) except -1:
    cdef int flags = fcntl(fd, F_GETFL)
    if flags < 0 or fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0:
        raise oserror(errno, "fcntl(O_NONBLOCK)")
    return 0


cdef Connection make_connection(int fd, object loop, str network, EventLoop server):
    cdef Connection c = Connection.__new__(Connection)
    c.setup(fd, loop, network, server)
    return c


def new_fd_connection(fd):
    """Wrap a connected stream socket's fd in a Connection driven by the pollers.

    Must be called with an asyncio loop running. The connection owns the fd
    from now on (closing the connection closes it; detach() gives it back).
    """
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"new_fd_connection: fd must be an int, not {type(fd).__name__}")
    if fd < 0:
        raise ValueError(f"new_fd_connection({fd}): negative fd")
    loop = asyncio.get_running_loop()
    _set_nonblocking(fd)
    cdef Connection c = make_connection(fd, loop, "", None)
    c.connect_state = CONNECTED
    c.poller.add(c)
    return c


# -- server -----------------------------------------------------------------------

@cython.final
cdef class EventLoop:
    """The server: accepts connections and runs the callbacks for each.

    ``EventLoop(on_request, on_prepare=None, on_connect=None,
    on_disconnect=None, read_timeout=None, write_timeout=None,
    idle_timeout=None, read_buffer_limit=None)``; ``await serve(listener)``
    serves until ``await shutdown(timeout)``.
    """

    cdef object on_request
    cdef object on_prepare
    cdef object on_connect
    cdef object on_disconnect
    cdef double read_timeout
    cdef double write_timeout
    cdef double idle_timeout
    cdef Py_ssize_t read_limit
    cdef Py_ssize_t write_limit
    cdef object loop
    cdef object listener
    cdef int lfd
    cdef str network
    cdef set conns
    cdef object stopped          # future: serve() returns when it is done
    cdef object drained          # future: the last connection went away
    cdef bint shutting_down
    cdef bint accepting
    cdef int backoff_step
    cdef object backoff_handle
    cdef double last_emfile_log

    def __init__(self, on_request, on_prepare=None, on_connect=None, on_disconnect=None,
                 read_timeout=None, write_timeout=None, idle_timeout=None,
                 read_buffer_limit=None, write_buffer_limit=None):
        for name, cb in (("on_request", on_request), ("on_prepare", on_prepare),
                         ("on_connect", on_connect), ("on_disconnect", on_disconnect)):
            if cb is not None and not callable(cb):
                raise TypeError(f"EventLoop: {name} must be callable, not {type(cb).__name__}")
        self.on_request = on_request
        self.on_prepare = on_prepare
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.read_timeout = _seconds("EventLoop(read_timeout)", read_timeout)
        self.write_timeout = _seconds("EventLoop(write_timeout)", write_timeout)
        self.idle_timeout = _seconds("EventLoop(idle_timeout)", idle_timeout)
        if read_buffer_limit is not None and (not isinstance(read_buffer_limit, int)
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
        self.conns = set()
        self.lfd = -1

    @property
    def connections(self):
        """The number of open connections."""
        return len(self.conns)

    async def serve(self, listener):
        """Serve connections from `listener` until shutdown(); returns None after it."""
        if self.stopped is not None:
            raise RuntimeError("EventLoop.serve: already serving")
        self.loop = asyncio.get_running_loop()
        self.listener = listener
        self.lfd = listener.fileno()
        self.network = listener.network
        self.stopped = self.loop.create_future()
        self.accepting = True
        self.loop.add_reader(self.lfd, self._on_accept)
        try:
            await asyncio.shield(self.stopped)
        except asyncio.CancelledError:
            try:
                await self.shutdown(0)
            except TimeoutError:
                pass
            raise
        return None

    cdef void stop_accepting(self):
        if self.accepting:
            self.accepting = False
            try:
                self.loop.remove_reader(self.lfd)
            except Exception:
                pass

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
                    self._accept_backoff(err)
                    return
                if err == EBADF or self.listener_closed():
                    self.stop_accepting()
                    if not self.shutting_down and not self.stopped.done():
                        self.stopped.set_result(None)
                    return
                config.logger.error("netpoll: accept failed: %s", os.strerror(err))
                return
            self.backoff_step = 0
            try:
                self._new_connection(fd)
            except Exception as exc:
                config.logger.error("netpoll: setting up accepted fd %d failed", fd,
                                    exc_info=exc)
        run_all_pending(self.loop)

    cdef bint listener_closed(self):
        try:
            return self.listener.fileno() < 0
        except Exception:
            return True

    cdef _accept_backoff(self, int err):
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

    def _resume_accept(self):
        self.backoff_handle = None
        if self.shutting_down or self.accepting:
            return
        self.accepting = True
        self.loop.add_reader(self.lfd, self._on_accept)

    cdef _new_connection(self, int fd):
        cdef Connection c
        if self.shutting_down:
            close(fd)
            return
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
                return
            if c.closing:
                return      # on_prepare closed it: never registered
        c.poller.add(c)
        if self.on_connect is not None:
            c.queued = True
            c.poller.ready.append(c)
        else:
            c.connect_state = CONNECTED

    cdef forget(self, Connection c):
        self.conns.discard(c)
        if self.shutting_down and not self.conns and self.drained is not None \
                and not self.drained.done():
            self.drained.set_result(None)

    async def shutdown(self, timeout=None):
        """Stop accepting, close idle connections, let running handlers finish.

        After `timeout` seconds (None: no limit) the rest are closed by force
        and TimeoutError is raised. serve() returns once this is over.
        """
        cdef Connection c
        if self.loop is None:
            return None
        if timeout is not None and timeout < 0:
            raise ValueError(f"shutdown(timeout={timeout}): negative timeout")
        first = not self.shutting_down
        self.shutting_down = True
        self.stop_accepting()
        if self.backoff_handle is not None:
            self.backoff_handle.cancel()
            self.backoff_handle = None
        if first:
            try:
                self.listener.close()
            except Exception:
                pass
        if self.drained is None:
            self.drained = self.loop.create_future()
        # Take in what the kernel already received, so those requests are answered.
        for c in list(self.conns):
            if c.closing == NONE and not c.peer_eof and not c.paused and c.registered:
                c.do_read(EPOLLIN, True)
        run_all_pending(self.loop)
        for c in list(self.conns):
            c.close_when_done = True
            if c.closing == NONE:
                # Requests that arrive from now on are not taken in; a read that
                # waits for more input ends as if the peer had stopped sending.
                c.draining = True
                c.update_events()
                if c.read_waiter is not None:
                    c.peer_eof = True
                    c.wake_reader()
            if c.is_idle() or c.closing:
                if c.closing == NONE:
                    c.close()
                elif not c.processing:
                    c.finish_close()
        if not self.conns and not self.drained.done():
            self.drained.set_result(None)
        try:
            if timeout is None:
                await asyncio.shield(self.drained)
            else:
                await asyncio.wait_for(asyncio.shield(self.drained), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            left = len(self.conns)
            for c in list(self.conns):
                if c.handler is not None and c.handler.coro is not None:
                    c.handler.cancel()
                c.close()
                if not c.finished:
                    c.processing = False
                    c.finish_close()
            raise TimeoutError(
                f"shutdown: {left} connections still busy after {timeout:g}s; closed by force")
        finally:
            if self.stopped is not None and not self.stopped.done():
                self.stopped.set_result(None)
        return None


# -- dialing --------------------------------------------------------------------------

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
        raise OSError(err, os.strerror(err))
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
        raise OSError(soerr, os.strerror(soerr))


def _resolve_future(fut):
    if not fut.done():
        fut.set_result(None)


async def _dial(str network, object target, object family, double read_timeout,
                double write_timeout, double idle_timeout, Py_ssize_t write_limit):
    loop = asyncio.get_running_loop()
    if network == "unix":
        candidates = [(socket.AF_UNIX, target)]
    else:
        host, port = target
        infos = await loop.getaddrinfo(host or None, port, family=family, type=socket.SOCK_STREAM,
                                       proto=socket.IPPROTO_TCP)
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
        c = make_connection(fd, loop, network if network != "unix" else "unix", None)
        c.connect_state = CONNECTED
        c.read_timeout = read_timeout
        c.write_timeout = write_timeout
        c.write_limit = write_limit
        c.poller.add(c)
        if idle_timeout > 0:
            c.set_idle_timeout(idle_timeout)
        return c
    if isinstance(last, ConnectionRefusedError):
        raise last
    raise last


async def dial(network, target, family, timeout, read_timeout, write_timeout, idle_timeout,
               write_limit=0):
    """Dial and wrap the socket in a Connection (internal; see netpoll.Dialer)."""
    coro = _dial(network, target, family, read_timeout, write_timeout, idle_timeout,
                 write_limit or 0)
    if timeout is None or timeout <= 0:
        return await coro
    try:
        return await asyncio.wait_for(coro, timeout)
    except (asyncio.TimeoutError, TimeoutError):
        raise DialTimeoutError(
            f"dial {network} {target!r}: timed out after {timeout:g}s") from None
