# netpoll._core — timers: read/write/idle deadlines kept in the core.
#
# One binary heap per poller and one asyncio timer for its earliest entry,
# instead of one asyncio TimerHandle per connection and wait.
#
# Invariants
# - A heap entry is (when, seq, _Timer); seq keeps equal deadlines FIFO and
#   keeps tuples from comparing _Timer objects.
# - Cancelling clears the _Timer (conn and token become None) and leaves the
#   entry in the heap: a stale entry pins no connection. Stale entries are
#   dropped when they reach the top, and the heap is rebuilt without them as
#   soon as they outnumber the live ones, so they never pile up.
# - Timer callbacks run from a loop callback, never inside the I/O pass; the
#   poller's queues are run after them.

@cython.freelist(64)
cdef class _Timer:

    cdef void cancel(self) noexcept:
        self.conn = None
        self.token = None


cdef class TimerHeap:

    def __cinit__(self, Poller poller, loop):
        self.poller = poller
        self.loop = loop
        self.heap = []
        self.handle = None

    cdef _Timer push(self, double when, Connection c, int kind, object token):
        cdef _Timer t = _Timer.__new__(_Timer)
        t.conn = c
        t.kind = kind
        t.token = token
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, t))
        if self.handle is None or when < self.when:
            self.arm(when)
        return t

    cdef int cancel(self, _Timer t) except -1:
        if t is None or t.conn is None:
            return 0
        t.cancel()
        self.stale += 1
        if self.stale > 32 and self.stale * 2 > len(self.heap):
            self.heap = [e for e in self.heap if (<_Timer>(<tuple>e)[2]).conn is not None]
            heapq.heapify(self.heap)
            self.stale = 0
        return 0

    cdef int arm(self, double when) except -1:
        if self.handle is not None:
            self.handle.cancel()
        self.when = when
        delay = when - monotonic()
        self.handle = self.loop.call_later(delay if delay > 0 else 0, self._on_timer)
        return 0

    cdef int clear(self) except -1:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.heap = []
        self.stale = 0
        return 0

    def _on_timer(self):
        cdef double now = monotonic() + 0.0005
        cdef _Timer t
        cdef Connection c
        self.handle = None
        # self.heap, not a local: a callback's cancel may rebuild the heap
        while self.heap and (<tuple>self.heap[0])[0] <= now:
            t = (<tuple>heapq.heappop(self.heap))[2]
            c = t.conn
            if c is None:
                if self.stale > 0:
                    self.stale -= 1
                continue
            token = t.token
            t.cancel()
            try:
                c.on_timer(t.kind, token)
            except Exception:
                config.logger.exception("netpoll: timer callback failed")
        if self.heap and self.handle is None:
            self.arm((<tuple>self.heap[0])[0])
        self.poller.run_pending()
