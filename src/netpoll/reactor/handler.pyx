# netpoll._core — the handler driver: a Task-like object per connection.
#
# Each connection that runs a handler owns one Handler (made on the first
# start, so an idle connection carries none). It drives the user's
# on_connect/on_request coroutines with PyIter_Send, entering the
# connection's contextvars Context and registering itself as the loop's
# current task for each step, so asyncio.current_task(), asyncio.timeout(),
# cancellation and contextvars behave as in a Task. The first step runs at
# once ("eager start"): a handler that finds its data buffered runs to
# completion without a loop round trip and without a Task. A plain-function
# handler is simply called: no coroutine, no current-task swap.
#
# The current-task swap on CPython 3.11 is two dict operations on asyncio's
# _current_tasks (insert the handler, then delete it again), ~500 instructions
# a step. Inside a poller's run_pending (Poller.task_slot) it is cheaper:
# - a step *replaces* the entry's value with its handler (nothing when the
#   value is that handler already), and at the end of an outermost step
#   (slot_depth 0) leaves it there: the next step overwrites it anyway;
# - before any other user code run_pending reaches (plain handlers, on_connect,
#   an on_request that is not an `async def` function, on_disconnect, close
#   callbacks, a handler error's logging) _task_slot_clear puts back the value
#   run_pending found (slot_base: None when there was no entry), so that code
#   sees no task, as before. Calling an `async def` function only makes the
#   coroutine: no user code runs, no clear is needed.
# - a step nested in another (user code in a handler started another
#   connection's handler inline) gives the outer one its entry back at once;
# - run_pending ends with _end_task_slot: the entry as it found it (deleted if
#   there was none), so no asyncio Task ever finds a stale handler (3.11 Tasks
#   step only from loop callbacks, never inside run_pending).
# asyncio.current_task() returns None for a None value exactly as for no
# entry. 3.12+ has _swap_current_task, one C call, and takes neither path.
#
# Invariants
# - The Handler never writes Connection state: it calls Connection.connected()
#   when on_connect is over and Connection.handler_done() when a chain ends.
# - Calls of one connection never overlap; on_request is called again only if
#   the last call consumed something or new data arrived (no busy loop).
# - release() (from finish_close) drops the cycles handler <-> connection and
#   handler -> bound method -> handler.

cdef object CancelledError = asyncio.CancelledError
# What a Streams read yields to its own Handler: "suspended on the stream"
# (reactor/streams.pyx); the StreamCore resumes the Handler when input comes.
cdef object _STREAM_MARK = object()
# Loop callbacks that resume a handler run in this empty Context: the step
# itself enters the connection's Context (entering it twice is an error).
cdef object _bare_context = contextvars.Context()
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


cdef class Handler:
    """The Task-like driver of one connection's callbacks.

    ``asyncio.current_task()`` returns it inside ``on_connect``/``on_request``;
    it supports what asyncio asks of a current task: ``cancel``,
    ``cancelling``, ``uncancel``, ``done``, ``get_coro``, ``get_loop``,
    ``get_name``, ``get_context``.
    """

    def __cinit__(self, Connection conn, loop):
        self.conn = conn
        self.loop = loop
        self.coro = None
        self.phase = PH_IDLE
        self.waiting = None
        self.wakeup = self._wakeup
        self.loop_hash = PyObject_Hash(loop)

    # asyncio's view of a task
    def get_loop(self):
        return self.loop

    def get_coro(self):
        return self.coro

    def get_name(self):
        return f"netpoll-handler-fd{self.conn.fd if self.conn is not None else -1}"

    def get_context(self):
        return self.conn.context if self.conn is not None else None

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
        if self.stream is not None and self.stream.hwait:
            # suspended in a Streams read (no Future to cancel): resume it soon,
            # as the cancelled Future's callback would
            self.stream.hwait = False
            self.loop.call_soon(self._resume, None, context=_bare_context)
        return True

    # Enough of a Future for asyncio.gather / wait / ensure_future: asyncio.run's
    # teardown cancels the Streams handlers it finds in all_tasks() and gathers
    # them (reactor/streams.pyx). A handler ends with None: its errors are
    # reported when it ends, as asyncio's client_connected_cb callback does.
    _asyncio_future_blocking = False

    def exception(self):
        return None

    def result(self):
        return None

    def add_done_callback(self, fn, *, context=None):
        if self.coro is None:
            self.loop.call_soon(fn, self, context=context)
            return
        if self.done_callbacks is None:
            self.done_callbacks = []
        self.done_callbacks.append((fn, context))

    def remove_done_callback(self, fn):
        cbs = self.done_callbacks or []
        kept = [(f, ctx) for f, ctx in cbs if f != fn]
        self.done_callbacks = kept
        return len(cbs) - len(kept)

    def __await__(self):
        if self.done_fut is None:
            self.done_fut = self.loop.create_future()
            if self.coro is None:
                self.done_fut.set_result(None)
        return self.done_fut.__await__()

    cdef int ended(self) except -1:
        fut = self.done_fut
        if fut is not None and not fut.done():
            fut.set_result(None)
        cbs = self.done_callbacks
        self.done_callbacks = None
        for fn, ctx in cbs or ():
            self.loop.call_soon(fn, self, context=ctx)
        return 0

    def __repr__(self):
        return f"<netpoll Handler fd={self.conn.fd if self.conn is not None else -1} " \
               f"phase={self.phase}>"

    # driving

    cdef bint suspended(self) noexcept:
        return self.coro is not None

    cdef int release(self) except -1:
        # The connection is finished: break handler -> bound method -> handler
        # and handler <-> connection, so buffers go without the cyclic GC.
        self.wakeup = None
        self.conn = None
        self.coro = None
        self.waiting = None
        return 0

    cdef int run(self) except -1:
        """Call on_connect / on_request until nothing is left to do or one suspends."""
        cdef int st
        if self.stream is not None:
            if self.coro is None:
                self.stream.task_done(self)
            return 0
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
        if c.connect_state == CS_NEW:
            if c.on_connect is not None and c.closed_by == OPEN:
                self.phase = PH_CONNECT
                _task_slot_clear(c.poller)
                try:
                    if _runner_of(c) is None:
                        res = c.on_connect(c.ctx, c)
                    else:
                        res = _via_runner(_runner_of(c), c.on_connect, c, self.loop)
                except BaseException as exc:
                    self.on_error(exc)
                    return True
                if PyCoro_CheckExact(res) or hasattr(res, "__await__"):
                    self.set_coro(res)
                else:
                    c.connected(res)
                return True
            c.connected(c.ctx)
        if self.phase == PH_REQUEST:
            # called again only if the last call consumed something, or data came
            if c.inbuf.gen == self.consumed_mark and c.rx_total == self.rx_mark:
                self.finish()
                return False
        if (c.closed_by == BY_USER or c.on_request is None or c.inbuf.length == 0
                or c.detached):
            self.finish()
            return False
        self.phase = PH_REQUEST
        self.consumed_mark = c.inbuf.gen
        self.rx_mark = c.rx_total
        if _runner_of(c) is not None or not _async_def(c.on_request):
            _task_slot_clear(c.poller)       # user code runs in the call itself
        try:
            if _runner_of(c) is None:
                res = c.on_request(c.ctx, c)
            else:
                res = _via_runner(_runner_of(c), c.on_request, c, self.loop)
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

    cdef int step(self, exc) except -1:
        """One step of the coroutine. Returns 1 if it suspended, 0 if it finished."""
        cdef PyObject* out = NULL
        cdef int st
        cdef object prev = None
        cdef Connection c = self.conn
        cdef Poller slot = None
        coro = self.coro
        if self.must_cancel:
            self.must_cancel = False
            if not isinstance(exc, CancelledError):
                exc = CancelledError(self.cancel_msg) if self.cancel_msg is not None \
                    else CancelledError()
        # become the loop's current task for this step
        if _swap_current_task is not None:
            prev = _swap_current_task(self.loop, self)
        elif c.poller.task_slot:
            # in run_pending (see the top): slot_task mirrors the entry's value
            slot = c.poller
            if slot.slot_depth:
                prev = slot.slot_task          # the outer step's handler
            if slot.slot_task is not self:
                _PyDict_SetItem_KnownHash(_current_tasks, self.loop, self, self.loop_hash)
                slot.slot_task = self
            slot.slot_depth += 1
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
            self.restore_task(prev, slot)
            self.coro = None
            self.on_error(err)
            return 0
        PyContext_Exit(c.context)
        self.restore_task(prev, slot)
        if st == 1:                 # PYGEN_NEXT: it yielded
            self.on_yield(result)
            return 1
        self.coro = None
        if self.phase == PH_CONNECT:
            c.connected(result)
        return 0

    cdef inline void restore_task(self, prev, Poller slot) noexcept:
        try:
            if slot is not None:
                slot.slot_depth -= 1
                if slot.slot_depth and slot.slot_task is not prev:
                    slot.slot_task = prev      # nested: the outer step is current again
                    _PyDict_SetItem_KnownHash(_current_tasks, self.loop, prev, self.loop_hash)
                # outermost: the entry keeps this handler until the next step or a clear
            elif _swap_current_task is not None:
                _swap_current_task(self.loop, prev)
            elif prev is None:
                PyDict_DelItem(_current_tasks, self.loop)
            else:
                _current_tasks[self.loop] = prev
        except Exception:
            pass

    cdef int on_yield(self, result) except -1:
        if result is _STREAM_MARK:
            return 0                  # a Streams read: its StreamCore resumes us
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
        cdef Connection c = self.conn
        if self.coro is None or c is None:
            return
        if self.step(exc) == 0:
            self.run()
        c.poller.run_pending()

    cdef int on_error(self, exc) except -1:
        cdef Connection c = self.conn
        self.coro = None
        _task_slot_clear(c.poller)
        if self.stream is not None:
            self.stream.task_failed(exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise exc
            return 0
        if isinstance(exc, CancelledError):
            config.logger.debug("netpoll: handler cancelled; closing fd %d", c.fd)
        elif isinstance(exc, ConnectionClosedError) and (c.closed_by or c.peer_eof):
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
            c.connected(c.ctx)
        c.close()
        return 0

    cdef int finish(self) except -1:
        self.phase = PH_IDLE
        self.num_cancels = 0
        self.must_cancel = False
        self.conn.handler_done()
        return 0




cdef object _task_slot_value(object loop):
    """Start of a run_pending: the loop's current task now (None if none)."""
    cdef PyObject* cur
    if not PyDict_GET_SIZE(_current_tasks):
        return None
    cur = _PyDict_GetItem_KnownHash(_current_tasks, loop, PyObject_Hash(loop))
    return <object>cur if cur != NULL else None


cdef inline bint _async_def(object f) noexcept:
    # calling a plain `async def` function runs no user code: it only makes the coroutine
    return PyFunction_Check(f) and ((<PyCodeObject*>PyFunction_GET_CODE(f)).co_flags & 0x80)


cdef int _task_slot_clear(Poller p) except -1:
    """Before user code that is not a handler step: the entry as run_pending found it."""
    if p is not None and p.task_slot and p.slot_depth == 0 and p.slot_task is not p.slot_base:
        p.slot_task = p.slot_base
        _PyDict_SetItem_KnownHash(_current_tasks, p.loop, p.slot_base, PyObject_Hash(p.loop))
    return 0


cdef int _end_task_slot(Poller p) except -1:
    """End of a run_pending: the entry as it found it (deleted if there was none)."""
    cdef PyObject* cur
    base = p.slot_base
    p.task_slot = False
    p.slot_task = p.slot_base = None
    p.slot_depth = 0
    if base is not None:
        _PyDict_SetItem_KnownHash(_current_tasks, p.loop, base, PyObject_Hash(p.loop))
    elif PyDict_GET_SIZE(_current_tasks):
        cur = _PyDict_GetItem_KnownHash(_current_tasks, p.loop, PyObject_Hash(p.loop))
        if cur != NULL and (cur == <PyObject*>None or type(<object>cur) is Handler):
            PyDict_DelItem(_current_tasks, p.loop)
    return 0


# -- runners (Go's Config.Runner) ------------------------------------------------------
#
# A runner decides how a handler call runs; the Handler still waits for the call
# to finish before the next one, so calls of one connection stay serial whatever
# the runner does. "task": each call in a real asyncio.Task. A callable
# runner(coro_or_fn, conn): for an async handler it gets the call's coroutine
# (wrapped so its end is seen here) and must get it run on the loop; for a
# plain handler it gets a zero-argument function to call.

cdef object _via_runner(object runner, object cb, Connection c, object loop):
    done = loop.create_future()
    if runner == "task":
        task = loop.create_task(_call_in_task(cb, c.ctx, c), context=c.context)
        return _await_future(task)
    if _is_async(cb):
        runner(_tracked(cb(c.ctx, c), done), c)
    else:
        runner(functools.partial(_call_tracked, cb, c.ctx, c, done), c)
    return _await_future(done)


cdef bint _is_async(object cb):
    return inspect.iscoroutinefunction(cb) or inspect.iscoroutinefunction(
        getattr(cb, "__call__", None))


async def _call_in_task(cb, ctx, conn):
    res = cb(ctx, conn)
    if inspect.isawaitable(res):
        res = await res
    return res


async def _await_future(fut):
    return await fut


async def _tracked(coro, done):
    try:
        res = await coro
    except BaseException as exc:
        if not done.done():
            done.set_exception(exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return None
    if not done.done():
        done.set_result(res)
    return res


def _call_tracked(cb, ctx, conn, done):
    try:
        res = cb(ctx, conn)
    except BaseException as exc:
        if not done.done():
            done.set_exception(exc)
        return None
    if not done.done():
        done.set_result(res)
    return res
