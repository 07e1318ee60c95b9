# netpoll._core — Waiter: the future a read or a flush waits on.
#
# A Connection's read that needs more bytes, and a flush that must wait for
# the socket, wait on a Waiter. To the code awaiting it (an asyncio Task, or
# a netpoll Handler) it is a future: it speaks asyncio's future protocol
# (_asyncio_future_blocking, add_done_callback, result, cancel, get_loop),
# like uvloop's and asyncio's own futures, so a Task suspends on it as on any
# asyncio.Future.
#
# What differs is *when* the waiting Task resumes. Resolved inside the
# poller's pass (the data arrived, the output drained), a Waiter does not
# hand its callbacks to loop.call_soon; it queues itself on the poller, and
# run_pending calls the callbacks -- the Task's wakeup -- at the end of the
# pass, in their contexts, the way asyncio's Handle would. The response is
# consumed in the same loop callback that read it, instead of one trip
# through the event loop later: on stock asyncio that trip (call_soon, a
# Handle, an iteration of the Python _run_once) is ~7,700 instructions of a
# pooled client's ~34,000 per request.
#
# Rules that keep this asyncio's semantics:
# - callbacks never run inside set_result/set_exception/cancel themselves:
#   either at the end of the pass (queued on Poller.wakeups) or via call_soon
#   when resolved outside a pass (a timer, user code in a Task);
# - they run only when no task is current on the loop (a Task cannot be
#   entered while another one runs); otherwise they go through call_soon;
# - an exception from a callback goes to the loop's exception handler, as in
#   Handle._run; SystemExit/KeyboardInterrupt propagate after the remaining
#   wakeups are handed to call_soon, so nothing is lost.

cdef object _copy_context = contextvars.copy_context
cdef object _current_task_of = None
try:
    from _asyncio import current_task as _ct_c
    _current_task_of = _ct_c
except ImportError:
    _current_task_of = asyncio.current_task

cdef enum WaiterState:
    W_PENDING = 0
    W_DONE = 1
    W_CANCELLED = 2


@cython.final
@cython.freelist(16)
cdef class Waiter:
    """A future resolved by the poller (see the top of reactor/waiter.pyx)."""

    def __cinit__(self, Poller poller):
        self.poller = poller
        self.loop = poller.loop
        self.state = W_PENDING
        self._asyncio_future_blocking = False

    # -- asyncio's future protocol ----------------------------------------------------

    def get_loop(self):
        return self.loop

    def done(self):
        return self.state != W_PENDING

    def cancelled(self):
        return self.state == W_CANCELLED

    def result(self):
        if self.state == W_CANCELLED:
            raise self.cancelled_error()
        if self.state == W_PENDING:
            raise asyncio.InvalidStateError("Result is not ready.")
        if self.exc is not None:
            raise self.exc
        return self.value

    def exception(self):
        if self.state == W_CANCELLED:
            raise self.cancelled_error()
        if self.state == W_PENDING:
            raise asyncio.InvalidStateError("Exception is not set.")
        return self.exc

    def add_done_callback(self, fn, *, context=None):
        if context is None:
            context = _copy_context()
        if self.state != W_PENDING:
            self.loop.call_soon(fn, self, context=context)
        elif self.cb is None:
            self.cb = fn
            self.cb_ctx = context
        else:
            if self.more is None:
                self.more = []
            self.more.append((fn, context))

    def remove_done_callback(self, fn):
        cdef Py_ssize_t n = 0
        if self.cb is not None and self.cb == fn:
            self.cb = self.cb_ctx = None
            n += 1
        if self.more:
            keep = [(f, ctx) for f, ctx in self.more if f != fn]
            n += len(self.more) - len(keep)
            self.more = keep
        return n

    def cancel(self, msg=None):
        if self.state != W_PENDING:
            return False
        self.state = W_CANCELLED
        self.cancel_msg = msg
        self.schedule()
        return True

    def set_result(self, result):
        if self.state != W_PENDING:
            raise asyncio.InvalidStateError(f"invalid state: {self!r}")
        self.value = result
        self.state = W_DONE
        self.schedule()

    def set_exception(self, exc):
        if self.state != W_PENDING:
            raise asyncio.InvalidStateError(f"invalid state: {self!r}")
        if isinstance(exc, type):
            exc = exc()
        if isinstance(exc, StopIteration):
            raise TypeError("StopIteration interacts badly with generators "
                            "and cannot be raised into a Future")
        self.exc = exc
        self.state = W_DONE
        self.schedule()

    def __await__(self):
        if self.state == W_PENDING:
            self._asyncio_future_blocking = True
            yield self
        if self.state == W_PENDING:
            raise RuntimeError("await wasn't used with future")
        return self.result()

    def __iter__(self):
        return self.__await__()

    def __repr__(self):
        state = ("pending", "finished", "cancelled")[self.state]
        return f"<netpoll Waiter {state}>"

    # -- resolving ----------------------------------------------------------------------

    cdef object cancelled_error(self):
        if self.cancel_msg is None:
            return asyncio.CancelledError()
        return asyncio.CancelledError(self.cancel_msg)

    cdef int wake(self, exc) except -1:
        """set_result(None) or set_exception(exc) from the core; nothing if already done."""
        if self.state != W_PENDING:
            return 0
        if exc is not None:
            self.exc = exc
        self.state = W_DONE
        return self.schedule()

    cdef int schedule(self) except -1:
        cdef Poller p = self.poller
        if self.cb is None and not self.more:
            return 0
        if p.in_batch or p.pending_depth:
            p.wakeups.append(self)          # run_pending calls them at the end of the pass
            return 0
        return self.call_soon()

    cdef int call_soon(self) except -1:
        # asyncio's way: each callback from the loop, later
        cb, ctx, more = self.cb, self.cb_ctx, self.more
        self.cb = self.cb_ctx = self.more = None
        if cb is not None:
            self.loop.call_soon(cb, self, context=ctx)
        if more:
            for fn, fctx in more:
                self.loop.call_soon(fn, self, context=fctx)
        return 0

    cdef int run_callbacks(self) except -1:
        cb, ctx, more = self.cb, self.cb_ctx, self.more
        self.cb = self.cb_ctx = self.more = None
        if cb is not None:
            _run_callback(self.loop, cb, ctx, self)
        if more:
            for fn, fctx in more:
                _run_callback(self.loop, fn, fctx, self)
        return 0


cdef int _run_callback(loop, fn, ctx, Waiter w) except -1:
    # Handle._run: the callback in its context; an error goes to the loop's handler
    try:
        PyContext_Enter(ctx)
        try:
            fn(w)
        finally:
            PyContext_Exit(ctx)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        loop.call_exception_handler({
            "message": f"Exception in callback {fn!r}({w!r})",
            "exception": exc,
        })
    return 0


cdef int _run_wakeups(Poller p) except -1:
    """Call the callbacks of the Waiters resolved during the pass (in run_pending)."""
    cdef Waiter w
    cdef Py_ssize_t i
    cdef bint slot = False
    cdef list wakeups = p.wakeups
    p.wakeups = []
    if _current_tasks is not None and p.task_slot:
        # 3.11: run_pending's current-task slot (handler.pyx) keeps an entry for
        # the loop, which asyncio's _enter_task refuses. Inside a handler step,
        # or when run_pending itself runs inside a Task: call_soon. Otherwise
        # end the slot (the entry goes) and set it up again afterwards, so a
        # run_pending nested in the Task's step records the Task as its base.
        slot = p.slot_depth == 0 and p.slot_base is None
        if not slot:
            for w in wakeups:
                w.call_soon()
            return 0
        _end_task_slot(p)
    elif _current_tasks is None and _current_task_of(p.loop) is not None:
        for w in wakeups:
            w.call_soon()
        return 0
    try:
        for i in range(len(wakeups)):
            w = <Waiter>wakeups[i]
            try:
                w.run_callbacks()
            except BaseException:
                for w in wakeups[i + 1:]:
                    w.call_soon()
                raise
    finally:
        if slot:
            p.task_slot = True
            p.slot_task = p.slot_base = _task_slot_value(p.loop)
            p.slot_depth = 0
    return 0


@cython.binding(True)
def _debug_wakeups(loop):
    """Per poller of loop: (in_batch, pending_depth, queued wakeups) -- for tests."""
    ps = _pollers.get(loop)
    if ps is None:
        return []
    return [((<Poller>p).in_batch, (<Poller>p).pending_depth, len((<Poller>p).wakeups))
            for p in (<_PollerSet>ps).pollers]
