# asyncio's scheduling in C, for netpoll loops over stock asyncio.
#
# A netpoll loop over stock asyncio (netpoll.loop_factory()) keeps asyncio's
# own event loop: its transports are netpoll's, but every callback still goes
# through BaseEventLoop's Python code - call_soon makes an events.Handle in
# Python, call_later a TimerHandle pushed on a heap whose comparisons are
# Python __lt__ calls, _run_once polls through selectors.EpollSelector and
# runs each Handle through its Python _run. Under a framework (uvicorn: a Task,
# two call_soon, a keep-alive call_later and its cancel per request) that is
# about 45 Python calls per request that uvloop makes in C.
#
# These functions are those methods, in C, with asyncio's behaviour: the same
# objects (genuine events.Handle / events.TimerHandle instances, their slots
# filled as their __init__ fills them), the same heap (heapq's algorithm on
# the loop's _scheduled list, ordered by _when), the same order of callbacks,
# the same exception-handler context for a failing callback. transports.py
# puts them on the netpoll loop class (_sched_methods) only where the base
# class has not overridden the method, and only for selector loops; in debug
# mode (loop.set_debug(True)) each one calls asyncio's own Python method, so
# source tracebacks, thread checks and slow-callback warnings are asyncio's.
# NETPOLL_LOOP_SCHED=0 leaves asyncio's methods in place (for comparison).

cdef extern from "np_sched.h":
    Py_ssize_t np_slot_offset(object descr)
    PyObject* np_slot(object o, Py_ssize_t off)          # borrowed, NULL = unset
    void np_slot_set(object o, Py_ssize_t off, object v)
    object np_alloc(object t)  # a new reference
    PyObject* np_iattr(object o, object name) except? NULL   # borrowed, NULL = not there
    int np_iattr_set(object o, object name, object v) except -1
    PyObject* np_iattr_c(object o, int idx, object name) except? NULL   # cached np_iattr
    int np_iattr_set_int(object o, int idx, object name, object v) except -1
    bint np_type_fresh(object t, PyObject* ct, unsigned int tag)
    unsigned int np_type_tag(object t)
    bint np_sole_ref(object o)

cdef extern from "Python.h":
    # the singletons themselves (a C cast of True/False would be 1/0, not these)
    PyObject* Py_True
    PyObject* Py_False
    double PyFloat_AS_DOUBLE(object o)
    bint PyFloat_CheckExact(object o)

from asyncio import base_events as _aio_base
from asyncio import events as _aio_events
from asyncio import format_helpers as _aio_format
from asyncio import selector_events as _aio_selector
import selectors as _selectors

cdef type _Handle = _aio_events.Handle
cdef type _TimerHandle = _aio_events.TimerHandle
cdef object _Task = asyncio.Task
cdef object _Future = asyncio.Future
cdef object _EpollSelector = getattr(_selectors, "EpollSelector", None)
cdef object _format_callback_source = _aio_format._format_callback_source
cdef bint _format_takes_debug = "debug" in inspect.signature(_format_callback_source).parameters
cdef Py_ssize_t _MIN_SCHEDULED = _aio_base._MIN_SCHEDULED_TIMER_HANDLES
cdef double _MIN_CANCELLED_FRACTION = _aio_base._MIN_CANCELLED_TIMER_HANDLES_FRACTION
cdef double _MAX_SELECT_TIMEOUT = _aio_base.MAXIMUM_SELECT_TIMEOUT

# asyncio's own methods: the fallbacks (debug mode, unusual objects)
cdef object _base_call_soon = _aio_base.BaseEventLoop.call_soon
cdef object _base__call_soon = _aio_base.BaseEventLoop._call_soon
cdef object _base_call_at = _aio_base.BaseEventLoop.call_at
cdef object _base_call_later = _aio_base.BaseEventLoop.call_later
cdef object _base_create_task = _aio_base.BaseEventLoop.create_task
cdef object _base_run_once = _aio_base.BaseEventLoop._run_once
cdef object _base_time = _aio_base.BaseEventLoop.time
cdef object _base_get_debug = _aio_base.BaseEventLoop.get_debug
cdef object _base_create_future = _aio_base.BaseEventLoop.create_future
cdef object _base_timer_cancelled = _aio_base.BaseEventLoop._timer_handle_cancelled
cdef object _base_process_events = _aio_selector.BaseSelectorEventLoop._process_events
cdef object _base_add_callback = _aio_base.BaseEventLoop._add_callback

cdef Py_ssize_t OFF_CALLBACK = -1, OFF_ARGS = -1, OFF_CANCELLED = -1, OFF_LOOP = -1
cdef Py_ssize_t OFF_TB = -1, OFF_REPR = -1, OFF_CONTEXT = -1, OFF_WHEN = -1, OFF_SCHEDULED = -1
cdef bint sched_usable = False


cdef void _sched_init():
    global OFF_CALLBACK, OFF_ARGS, OFF_CANCELLED, OFF_LOOP, OFF_TB, OFF_REPR, OFF_CONTEXT
    global OFF_WHEN, OFF_SCHEDULED, sched_usable
    cdef dict hd = dict(_Handle.__dict__)
    cdef dict td = dict(_TimerHandle.__dict__)
    OFF_CALLBACK = np_slot_offset(hd.get("_callback"))
    OFF_ARGS = np_slot_offset(hd.get("_args"))
    OFF_CANCELLED = np_slot_offset(hd.get("_cancelled"))
    OFF_LOOP = np_slot_offset(hd.get("_loop"))
    OFF_TB = np_slot_offset(hd.get("_source_traceback"))
    OFF_REPR = np_slot_offset(hd.get("_repr"))
    OFF_CONTEXT = np_slot_offset(hd.get("_context"))
    OFF_WHEN = np_slot_offset(td.get("_when"))
    OFF_SCHEDULED = np_slot_offset(td.get("_scheduled"))
    # Handle's slots are exactly those (plus __weakref__): anything else means a
    # Python whose Handle we do not know how to fill, so asyncio's code stays.
    sched_usable = (
        OFF_CALLBACK >= 0 and OFF_ARGS >= 0 and OFF_CANCELLED >= 0 and OFF_LOOP >= 0
        and OFF_TB >= 0 and OFF_REPR >= 0 and OFF_CONTEXT >= 0 and OFF_WHEN >= 0
        and OFF_SCHEDULED >= 0
        and set(_Handle.__slots__) == {"_callback", "_args", "_cancelled", "_loop",
                                       "_source_traceback", "_repr", "__weakref__", "_context"}
        and set(_TimerHandle.__slots__) == {"_scheduled", "_when"}
        and _EpollSelector is not None
    )

_sched_init()


# -- the loop's own attributes -------------------------------------------------------------
#
# BaseEventLoop keeps its state in the instance __dict__ (_ready, _scheduled,
# _debug, ...). A generic getattr walks the type first (for data descriptors);
# these read the dict directly, which _sched_methods allows only for classes
# where no class in the MRO defines one of these names and attribute access is
# not customised.

cdef tuple _LOOP_ATTRS = ("_ready", "_scheduled", "_debug", "_closed", "_stopping",
                          "_timer_cancelled_count", "_clock_resolution", "_task_factory",
                          "_selector")
# their numbers in _LOOP_ATTRS (and in np_sched.h's cache)
cdef enum:
    A_READY = 0
    A_SCHEDULED = 1
    A_DEBUG = 2
    A_CLOSED = 3
    A_STOPPING = 4
    A_CANCELLED = 5
    A_RESOLUTION = 6
    A_FACTORY = 7
    A_SELECTOR = 8


cdef inline object _la(object self, int idx):
    cdef str name = <str>_LOOP_ATTRS[idx]
    cdef PyObject* v = np_iattr_c(self, idx, name)
    if v != NULL:
        return <object>v
    return getattr(self, name)


cdef inline bint _ltrue(object self, int idx) except -1:
    # a flag attribute (_debug, _closed, _stopping), True/False read without a call
    cdef str name = <str>_LOOP_ATTRS[idx]
    cdef PyObject* v = np_iattr_c(self, idx, name)
    if v == Py_False:
        return False
    if v == Py_True:
        return True
    if v != NULL:
        return bool(<object>v)
    return bool(getattr(self, name))


cdef int _count_cancelled(object self) except -1:
    # self._timer_cancelled_count += 1
    n = _la(self, A_CANCELLED) + 1
    if np_iattr_set_int(self, A_CANCELLED, "_timer_cancelled_count", n) == 0:
        self._timer_cancelled_count = n
    return 0


cdef bint _plain_attrs(type cls) except -1:
    # may _la read these names from the instance dict of cls's instances? (not
    # if a class defines one as a data descriptor, or customises getattr)
    if cls.__getattribute__ is not object.__getattribute__:
        return False
    for klass in cls.__mro__:
        d = klass.__dict__
        for name in _LOOP_ATTRS:
            if name in d and hasattr(type(d[name]), "__set__"):
                return False
    return True


# -- what the loop's class uses (checked per call; cached per class version) ----------------
#
# call_later, _run_once and TimerHandle.cancel take their C path only while the
# loop's class still has our methods (a subclass or a patch may replace them);
# reading that from the class is a few type lookups per call, so the answer is
# kept for the last class seen, while its version tag says it is unchanged.

cdef enum:
    CF_CALL_AT = 1          # cls.call_at is loop_call_at
    CF_BASE_CLOCK = 2       # cls.time is asyncio's or ours (time.monotonic())
    CF_TIMER_CANCEL = 4     # cls._timer_handle_cancelled and cls.get_debug are ours

cdef PyObject* _flags_cls = NULL    # compared only
cdef unsigned int _flags_tag = 0
cdef int _flags_val = 0


cdef int _cls_flags(object cls) except -1:
    global _flags_cls, _flags_tag, _flags_val
    cdef int f = 0
    if np_type_fresh(cls, _flags_cls, _flags_tag):
        return _flags_val
    if cls.call_at is loop_call_at:
        f |= CF_CALL_AT
    t = cls.time
    if t is loop_time or t is _base_time:
        f |= CF_BASE_CLOCK
    if (cls._timer_handle_cancelled is loop_timer_handle_cancelled
            and cls.get_debug is loop_get_debug):
        f |= CF_TIMER_CANCEL
    tag = np_type_tag(cls)
    if tag:
        _flags_cls = <PyObject*>cls
        _flags_tag = tag
        _flags_val = f
    return f


# -- TimerHandle with cancel() in C -------------------------------------------------------
#
# uvicorn cancels and re-arms a keep-alive timer per request: asyncio's
# TimerHandle.cancel is two Python frames (TimerHandle.cancel, Handle.cancel)
# and a bound-method call into the loop. call_at/call_later make instances of
# this subclass (no new state, __slots__ = (); isinstance(h, asyncio.TimerHandle)
# holds, repr is asyncio's); its cancel does what asyncio's does, in C.

class TimerHandle(_aio_events.TimerHandle):
    """asyncio's ``TimerHandle``, with ``cancel()`` in C (netpoll loops over asyncio)."""
    __slots__ = ()


cdef type _NPTimerHandle = TimerHandle


@cython.binding(True)
def _timer_cancel(self):
    """Cancel the call (asyncio's ``TimerHandle.cancel``)."""
    cdef PyObject* v
    cdef PyObject* lp
    if type(self) is not _NPTimerHandle:
        return _TimerHandle.cancel(self)
    v = np_slot(self, OFF_CANCELLED)
    if v == Py_True:
        return None
    lp = np_slot(self, OFF_LOOP)
    if v != Py_False or lp == NULL:
        return _TimerHandle.cancel(self)
    loop = <object>lp
    if not (_cls_flags(type(loop)) & CF_TIMER_CANCEL) or _ltrue(loop, A_DEBUG):
        return _TimerHandle.cancel(self)
    v = np_slot(self, OFF_SCHEDULED)
    if v == Py_True:
        _count_cancelled(loop)
    elif v != Py_False:
        loop_timer_handle_cancelled(loop, self)
    np_slot_set(self, OFF_CANCELLED, True)
    np_slot_set(self, OFF_CALLBACK, None)
    np_slot_set(self, OFF_ARGS, None)
    return None


TimerHandle.cancel = _timer_cancel


# -- handles -----------------------------------------------------------------------------

# Handles whose run is over and that nobody else holds are kept for reuse
# (_recycle), as CPython keeps freed floats and tuples: a call_soon then costs
# no allocation and no deallocation. A kept handle's slots are cleared when it
# is kept (its callback, arguments and context go at the moment the handle
# would have been freed) and filled again by _new_handle as __init__ fills them.
# (3.11 only in effect: from 3.12 a Handle's weakref list is managed by CPython and
# cannot be read, so np_sole_ref refuses and spent handles are freed as usual.)
cdef enum:
    _FREE_MAX = 256
cdef list _free_handles = []
cdef list _free_timers = []


cdef int _recycle(object h) except -1:
    # h: the run_once's own reference (borrowed here), maybe the last one
    cdef list free
    if type(h) is _Handle:
        free = _free_handles
    elif type(h) is _NPTimerHandle:
        free = _free_timers
    else:
        return 0
    if len(free) >= _FREE_MAX or not np_sole_ref(h):
        return 0
    np_slot_set(h, OFF_CALLBACK, None)
    np_slot_set(h, OFF_ARGS, None)
    np_slot_set(h, OFF_CONTEXT, None)
    np_slot_set(h, OFF_LOOP, None)
    np_slot_set(h, OFF_REPR, None)
    np_slot_set(h, OFF_TB, None)
    if np_sole_ref(h):          # (clearing ran code: did it take a reference?)
        free.append(h)
    return 0


cdef object _new_handle(type cls, object callback, object args, object loop, object context):
    # events.Handle.__init__ (and TimerHandle's first part) outside debug mode
    if context is None:
        context = PyContext_CopyCurrent()
    if cls is _Handle and _free_handles:
        h = _free_handles.pop()
    elif cls is _NPTimerHandle and _free_timers:
        h = _free_timers.pop()
    else:
        h = np_alloc(cls)
    np_slot_set(h, OFF_CONTEXT, context)
    np_slot_set(h, OFF_LOOP, loop)
    np_slot_set(h, OFF_CALLBACK, callback)
    np_slot_set(h, OFF_ARGS, args)
    np_slot_set(h, OFF_CANCELLED, False)
    np_slot_set(h, OFF_REPR, None)
    np_slot_set(h, OFF_TB, None)
    return h


cdef inline bint _known_timer(object h) noexcept:
    return type(h) is _NPTimerHandle or type(h) is _TimerHandle


cdef inline bint _known(object h) noexcept:
    return type(h) is _Handle or _known_timer(h)


cdef inline bint _cancelled(object h) except -1:
    cdef PyObject* v
    if _known(h):
        v = np_slot(h, OFF_CANCELLED)
        if v == Py_True:
            return True
        if v == Py_False:
            return False
    return bool(h._cancelled)


cdef inline void _set_scheduled(object h, bint value) except *:
    if _known_timer(h):
        np_slot_set(h, OFF_SCHEDULED, value)
    else:
        h._scheduled = value


cdef inline object _when(object h):
    cdef PyObject* v
    if _known_timer(h):
        v = np_slot(h, OFF_WHEN)
        if v != NULL:
            return <object>v
    return h._when


# -- the heap (heapq's algorithm, compared as TimerHandle.__lt__ compares) ---------------

cdef inline int _timer_lt(object a, object b) except -1:
    cdef PyObject* wa
    cdef PyObject* wb
    if _known_timer(a) and _known_timer(b):
        wa = np_slot(a, OFF_WHEN)
        wb = np_slot(b, OFF_WHEN)
        if wa != NULL and wb != NULL:
            if PyFloat_CheckExact(<object>wa) and PyFloat_CheckExact(<object>wb):
                return PyFloat_AS_DOUBLE(<object>wa) < PyFloat_AS_DOUBLE(<object>wb)
            return (<object>wa) < (<object>wb)
    return a < b


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _siftdown(list heap, Py_ssize_t startpos, Py_ssize_t pos) except -1:
    cdef Py_ssize_t parentpos, size = len(heap)
    newitem = heap[pos]
    while pos > startpos:
        parentpos = (pos - 1) >> 1
        parent = heap[parentpos]
        lt = _timer_lt(newitem, parent)
        if len(heap) != size:
            raise RuntimeError("list changed size during iteration")
        if lt:
            heap[pos] = parent
            pos = parentpos
            continue
        break
    heap[pos] = newitem
    return 0


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _siftup(list heap, Py_ssize_t pos) except -1:
    cdef Py_ssize_t endpos = len(heap), startpos = pos, childpos, rightpos
    newitem = heap[pos]
    childpos = 2 * pos + 1
    while childpos < endpos:
        rightpos = childpos + 1
        if rightpos < endpos and not _timer_lt(heap[childpos], heap[rightpos]):
            childpos = rightpos
        if len(heap) != endpos:
            raise RuntimeError("list changed size during iteration")
        heap[pos] = heap[childpos]
        pos = childpos
        childpos = 2 * pos + 1
    heap[pos] = newitem
    return _siftdown(heap, startpos, pos)


cdef inline int _heappush(list heap, object item) except -1:
    heap.append(item)
    return _siftdown(heap, 0, len(heap) - 1)


cdef int _heapify_c(list heap) except -1:
    cdef Py_ssize_t i
    for i in range(len(heap) // 2 - 1, -1, -1):
        _siftup(heap, i)
    return 0


cdef object _heappop(list heap):
    last = heap.pop()
    if not heap:
        return last
    item = heap[0]
    heap[0] = last
    _siftup(heap, 0)
    return item


# -- running a handle ----------------------------------------------------------------------

cdef void _report(object loop, object h, object exc) except *:
    # events.Handle._run's except branch
    cb = h._callback
    args = h._args
    if _format_takes_debug:
        src = _format_callback_source(cb, args, debug=loop.get_debug())
    else:
        src = _format_callback_source(cb, args)
    context = {"message": f"Exception in callback {src}", "exception": exc, "handle": h}
    tb = h._source_traceback
    if tb:
        context["source_traceback"] = tb
    h._loop.call_exception_handler(context)


cdef int _run_handle(object loop, object h) except -1:
    # events.Handle._run: context.run(callback, *args), errors to the loop's handler
    cdef PyObject* p
    if not _known(h):
        h._run()
        return 0
    p = np_slot(h, OFF_ARGS)
    if p == NULL or type(<object>p) is not tuple or np_slot(h, OFF_CONTEXT) == NULL \
            or np_slot(h, OFF_CALLBACK) == NULL:
        h._run()
        return 0
    args = <tuple>p
    ctx = <object>np_slot(h, OFF_CONTEXT)
    cb = <object>np_slot(h, OFF_CALLBACK)
    try:
        PyContext_Enter(ctx)
        try:
            cb(*args)
        finally:
            PyContext_Exit(ctx)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        _report(loop, h, exc)
    return 0


# -- the loop's methods ----------------------------------------------------------------------

@cython.binding(True)
def loop_call_soon(self, callback, *args, context=None):
    """asyncio's ``call_soon``, in C (netpoll loops over stock asyncio)."""
    if _ltrue(self, A_DEBUG):
        return _base_call_soon(self, callback, *args, context=context)
    if _ltrue(self, A_CLOSED):
        raise RuntimeError("Event loop is closed")
    h = _new_handle(_Handle, callback, args, self, context)
    _la(self, A_READY).append(h)
    return h


@cython.binding(True)
def loop__call_soon(self, callback, args, context):
    """asyncio's ``_call_soon`` (``call_soon_threadsafe`` uses it), in C."""
    if _ltrue(self, A_DEBUG):
        return _base__call_soon(self, callback, args, context)
    h = _new_handle(_Handle, callback, args, self, context)
    _la(self, A_READY).append(h)
    return h


cdef inline bint _base_clock(object cls) except -1:
    return (_cls_flags(cls) & CF_BASE_CLOCK) != 0


cdef object _call_at(object self, object when, object callback, object args, object context):
    if _ltrue(self, A_CLOSED):
        raise RuntimeError("Event loop is closed")
    t = _new_handle(_NPTimerHandle, callback, args, self, context)
    np_slot_set(t, OFF_WHEN, when)
    np_slot_set(t, OFF_SCHEDULED, False)
    _heappush(_la(self, A_SCHEDULED), t)
    np_slot_set(t, OFF_SCHEDULED, True)
    return t


@cython.binding(True)
def loop_call_at(self, when, callback, *args, context=None):
    """asyncio's ``call_at``, in C."""
    if when is None:
        raise TypeError("when cannot be None")
    if _ltrue(self, A_DEBUG):
        return _base_call_at(self, when, callback, *args, context=context)
    return _call_at(self, when, callback, args, context)


@cython.binding(True)
def loop_call_later(self, delay, callback, *args, context=None):
    """asyncio's ``call_later``, in C."""
    if delay is None:
        raise TypeError("delay must not be None")
    cls = type(self)
    if _ltrue(self, A_DEBUG) or not (_cls_flags(cls) & CF_CALL_AT):
        return _base_call_later(self, delay, callback, *args, context=context)
    now = monotonic() if _base_clock(cls) else self.time()
    return _call_at(self, now + delay, callback, args, context)


@cython.binding(True)
def loop_timer_handle_cancelled(self, handle):
    """asyncio's ``_timer_handle_cancelled``, in C."""
    cdef PyObject* v
    if _known_timer(handle):
        v = np_slot(handle, OFF_SCHEDULED)
        if v == Py_False:
            return
        if v == Py_True:
            _count_cancelled(self)
            return
    if handle._scheduled:
        _count_cancelled(self)


@cython.binding(True)
def loop_create_task(self, coro, *, name=None, context=None):
    """asyncio's ``create_task``, in C."""
    if _ltrue(self, A_CLOSED):
        raise RuntimeError("Event loop is closed")
    if _ltrue(self, A_DEBUG) or _la(self, A_FACTORY) is not None:
        return _base_create_task(self, coro, name=name, context=context)
    if name is None and context is None:
        return _Task(coro, loop=self)       # (the same call, fewer keywords to parse)
    return _Task(coro, loop=self, name=name, context=context)


@cython.binding(True)
def loop_time(self):
    """asyncio's ``time`` (``time.monotonic()``), in C."""
    return monotonic()


@cython.binding(True)
def loop_get_debug(self):
    """asyncio's ``get_debug``, in C (every Future and Task asks it)."""
    return _la(self, A_DEBUG)


@cython.binding(True)
def loop_create_future(self):
    """asyncio's ``create_future``, in C."""
    return _Future(loop=self)


# One entry per loop class: may _run_once poll the EpollSelector and dispatch its
# events itself (the class keeps asyncio's _process_events and _add_callback)?
cdef dict _direct_select = {}


cdef bint _may_select_directly(object self, object sel) except -1:
    if type(sel) is not _EpollSelector:
        return False
    cls = type(self)
    ok = _direct_select.get(cls)
    if ok is None:
        ok = (getattr(cls, "_process_events", None) is _base_process_events
              and getattr(cls, "_add_callback", None) is _base_add_callback)
        _direct_select[cls] = ok
    return ok


cdef int _select_and_dispatch(object self, object sel, object timeout, object ready) except -1:
    # selectors.EpollSelector.select(timeout) + BaseSelectorEventLoop._process_events
    cdef int ev, events, mask
    if timeout is None:
        t = -1
    elif timeout <= 0:
        t = 0
    else:
        t = math.ceil(timeout * 1e3) * 1e-3
    cdef dict fd_to_key = sel._fd_to_key
    cdef Py_ssize_t max_ev = len(fd_to_key)
    if max_ev < 1:
        max_ev = 1
    try:
        fd_event_list = sel._selector.poll(t, max_ev)
    except InterruptedError:
        return 0
    for fd, event in fd_event_list:
        ev = event
        events = 0
        if ev & ~EPOLLIN:
            events |= 2         # EVENT_WRITE
        if ev & ~EPOLLOUT:
            events |= 1         # EVENT_READ
        key = fd_to_key.get(fd)
        if not key:
            continue
        mask = events & <int>key.events
        fileobj = key.fileobj
        reader, writer = key.data
        if mask & 1 and reader is not None:
            if _cancelled(reader):
                self._remove_reader(fileobj)
            else:
                ready.append(reader)
        if mask & 2 and writer is not None:
            if _cancelled(writer):
                self._remove_writer(fileobj)
            else:
                ready.append(writer)
    return 0


cdef int _requeue(object ready, Py_ssize_t at, list items, Py_ssize_t done) except -1:
    # a BaseException left the iteration: what it had taken but not run goes back
    # into _ready where asyncio would have left it (before what was scheduled since)
    cdef Py_ssize_t i, n = len(items)
    for i in range(done, n):
        ready.insert(at + i - done, items[i])
    return 0


@cython.binding(True)
def loop_run_once(self):
    """asyncio's ``_run_once``, in C, in libuv's order.

    asyncio polls, then runs what was ready before the poll, what the poll made
    ready and the timers that are due, in that order. This runs the same callbacks
    in the same order, but polls *after* the ones that were ready before it (as
    uvloop does): a reply written by one of them is on the wire before the poll,
    so the peer's next request can be in this poll's events rather than the next
    iteration's, and a coroutine that resumes after its reply often finds it
    already buffered instead of parking on a Future.
    """
    cdef Py_ssize_t sched_count, i, ntodo, n_io, n_due
    cdef list scheduled, kept, due, io
    cdef double dt
    if _ltrue(self, A_DEBUG):
        return _base_run_once(self)
    cls = type(self)
    base_time = _base_clock(cls)
    scheduled = _la(self, A_SCHEDULED)
    sched_count = len(scheduled)
    if (sched_count > _MIN_SCHEDULED and
            _la(self, A_CANCELLED) / sched_count > _MIN_CANCELLED_FRACTION):
        # drop the cancelled timers when they are the majority
        kept = []
        for h in scheduled:
            if _cancelled(h):
                _set_scheduled(h, False)
            else:
                kept.append(h)
        _heapify_c(kept)
        self._scheduled = kept
        self._timer_cancelled_count = 0
    else:
        # drop the cancelled timers at the head
        while True:
            scheduled = _la(self, A_SCHEDULED)
            if not scheduled or not _cancelled(scheduled[0]):
                break
            n = _la(self, A_CANCELLED) - 1
            if np_iattr_set_int(self, A_CANCELLED, "_timer_cancelled_count", n) == 0:
                self._timer_cancelled_count = n
            h = _heappop(scheduled)
            _set_scheduled(h, False)
            _recycle(h)

    # the timers that are due (taken before anything runs, as asyncio takes them
    # before it runs the iteration: a call_later(0) made below runs next time)
    ready = _la(self, A_READY)
    due = None
    n_due = 0
    scheduled = _la(self, A_SCHEDULED)
    if scheduled:
        end_time = (monotonic() if base_time else self.time()) + _la(self, A_RESOLUTION)
        while True:
            scheduled = _la(self, A_SCHEDULED)
            if not scheduled:
                break
            h = scheduled[0]
            if _when(h) >= end_time:
                break
            h = _heappop(scheduled)
            _set_scheduled(h, False)
            if due is None:
                due = []
            due.append(h)
        if due is not None:
            n_due = len(due)

    # 1. what was ready before this iteration
    ntodo = len(ready)
    popleft = ready.popleft
    i = 0
    try:
        while i < ntodo:
            h = popleft()
            i += 1
            if not _cancelled(h):
                _run_handle(self, h)
            _recycle(h)
    except BaseException:
        if due is not None:
            _requeue(ready, ntodo - i, due, 0)
        raise
    h = None

    # 2. one poll: block only if nothing is ready, due or stopping
    timeout = None
    if ready or n_due or _ltrue(self, A_STOPPING):
        timeout = 0
    else:
        scheduled = _la(self, A_SCHEDULED)
        if scheduled:
            when = _when(scheduled[0])
            now = monotonic() if base_time else self.time()
            if PyFloat_CheckExact(when) and type(now) is float:
                dt = <double>when - <double>now
                if dt > _MAX_SELECT_TIMEOUT:
                    dt = _MAX_SELECT_TIMEOUT
                elif dt < 0:
                    dt = 0
                timeout = dt
            else:
                timeout = min(max(0, when - now), _MAX_SELECT_TIMEOUT)

    # what the poll makes ready lands at the end of _ready, after what step 1
    # scheduled: take it from there, it runs now, before those
    n_before = len(ready)
    sel = _la(self, A_SELECTOR)
    try:
        if _may_select_directly(self, sel):
            _select_and_dispatch(self, sel, timeout, ready)
        else:
            event_list = sel.select(timeout)
            self._process_events(event_list)
            event_list = None
    except BaseException:
        if due is not None:
            _requeue(ready, 0, due, 0)
        raise
    n_io = len(ready) - n_before
    io = None
    if n_io > 0:
        io = [None] * n_io
        pop = ready.pop
        for i in range(n_io - 1, -1, -1):
            io[i] = pop()
        if due is not None:
            io.extend(due)
    else:
        io = due
    if io is None:
        return
    due = None

    # 3. the poll's callbacks, then the due timers
    ntodo = len(io)
    i = 0
    try:
        while i < ntodo:
            h = io[i]
            io[i] = None
            i += 1
            if not _cancelled(h):
                _run_handle(self, h)
            _recycle(h)
    except BaseException:
        _requeue(ready, 0, io, i)
        raise
    h = None
    io = None


def _sched_methods(cls: type) -> dict:
    """The methods above that ``cls`` (an asyncio selector loop class) may take.

    Only those whose asyncio original ``cls`` still uses (a base class that
    overrides ``call_soon`` keeps its own), and none if ``NETPOLL_LOOP_SCHED=0``
    or this Python's Handle is not the one these functions fill.
    """
    if not sched_usable or os.environ.get("NETPOLL_LOOP_SCHED", "1") == "0":
        return {}
    if not issubclass(cls, _aio_selector.BaseSelectorEventLoop) or not _plain_attrs(cls):
        return {}
    ours = {
        "call_soon": (loop_call_soon, _base_call_soon),
        "_call_soon": (loop__call_soon, _base__call_soon),
        "call_at": (loop_call_at, _base_call_at),
        "call_later": (loop_call_later, _base_call_later),
        "_timer_handle_cancelled": (loop_timer_handle_cancelled, _base_timer_cancelled),
        "create_task": (loop_create_task, _base_create_task),
        "_run_once": (loop_run_once, _base_run_once),
        "time": (loop_time, _base_time),
        "get_debug": (loop_get_debug, _base_get_debug),
        "create_future": (loop_create_future, _base_create_future),
    }
    return {name: fast for name, (fast, orig) in ours.items() if getattr(cls, name, None) is orig}
