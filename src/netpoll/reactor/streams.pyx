# netpoll._core — StreamCore: asyncio Streams read from the connection's input.
#
# netpoll.transports.start_server / open_connection (and the Unix variants)
# hand out a NetpollStreamReader and a NetpollStreamWriter: Python subclasses
# of asyncio.StreamReader / StreamWriter whose hot methods are this core's
# bound methods, set on the instance (no Python frame per call).
#
#     socket ──recv (the pass)──▶ conn.inbuf ══ the reader's buffer (no data_received, no copy)
#                                     │
#     deliver (after the pass) ──▶ StreamCore.on_input ──▶ the waiting read resumes
#
# The reader's buffer *is* the connection's input LinkBuffer while the stream
# is attached to a TransportCore ("fast" mode): TransportCore.deliver_stream
# calls on_input() instead of protocol.data_received(bytes). Everything else
# (eof_received, connection_lost, pause/resume_writing, start_tls) goes
# through asyncio's own StreamReaderProtocol, which calls the reader's
# feed_eof / set_exception / feed_data. feed_data (a user's, or the TLS
# layer's after writer.start_tls) switches the stream to "fed" mode: a
# LinkBuffer of its own, and the transport hands data to the protocol again.
#
# Waiting. A read that finds what it needs returns a Ready awaitable (no
# coroutine, no Future). A read that must wait returns a _StreamRead, which
# re-checks when it is first awaited (asyncio's reads are coroutines: they
# look at the buffer when awaited) and then waits in one of two ways:
# - awaited by the connection's own Handler (the Task-like driver of
#   client_connected_cb, reactor/handler.pyx), checked as "the loop's current
#   task is that Handler": it yields _STREAM_MARK, which the Handler takes as
#   "suspended on the stream". New input resumes it from deliver (the
#   poller's pass, after the walk): no Future, no call_soon, no loop round.
#   Cancellation (Handler.cancel: asyncio.timeout, wait_for on 3.12+,
#   asyncio.run's teardown), an EOF or an exception resume it through a
#   loop callback, as a Future's done callback would.
# - awaited by anything else (an asyncio Task: the client side, wait_for's
#   inner task on 3.11, gather): a Future, exactly as asyncio's
#   _wait_for_data, woken by on_input / feed_eof / set_exception.
#
# Semantics are asyncio's StreamReader's, method by method (Lib/asyncio/
# streams.py): the same checks in the same order, the same exceptions and
# messages, the limit (pause the transport above 2 * limit, resume at or below
# limit). One difference: a read that can finish at once takes its data when
# it is called, not when it is awaited (asyncio.md, "Streams").

from asyncio import IncompleteReadError as _IncompleteReadError
from asyncio import LimitOverrunError as _LimitOverrunError

cdef object _aio_drain = asyncio.StreamWriter.drain
cdef object _register_task = asyncio.tasks._register_task
cdef object _aio_current_task = asyncio.current_task
cdef bint _SEP_TUPLES = sys.version_info >= (3, 13)
cdef object _PENDING = object()

cdef enum StreamOp:
    S_READ = 1
    S_READALL = 2
    S_EXACTLY = 3
    S_UNTIL = 4
    S_LINE = 5

cdef list _LINE_SEPS = [b"\n"]


cdef inline bint _handler_is_current(Handler h):
    cdef PyObject* cur
    if h is None or h.coro is None:
        return False
    if _current_tasks is not None:
        if not PyDict_GET_SIZE(_current_tasks):
            return False
        cur = _PyDict_GetItem_KnownHash(_current_tasks, h.loop, h.loop_hash)
        return cur == <PyObject*>h
    return _aio_current_task(h.loop) is h


@cython.final
cdef class StreamCore:
    """The state and the reads of a netpoll asyncio.StreamReader (reactor/streams.pyx)."""

    def __cinit__(self):
        self.buf = LinkBuffer.__new__(LinkBuffer)
        self.fed = True

    def __init__(self):
        raise TypeError("stream cores are made by new_stream_core")

    # -- asyncio's StreamReader: state ---------------------------------------------

    def exception(self):
        return self.exc

    def set_exception(self, exc):
        self.exc = exc
        self.wake(exc, False)

    def set_transport(self, transport):
        assert self.transport is None, 'Transport already set'
        self.transport = transport

    def feed_eof(self):
        self.eof = True
        self.wake(None, False)

    def at_eof(self):
        """Return True if the buffer is empty and 'feed_eof' was called."""
        return self.eof and self.buf.length == 0

    def feed_data(self, data):
        assert not self.eof, 'feed_data after feed_eof'
        if not data:
            return
        if not self.fed:
            self.to_fed()
        self.buf.c_write(data)
        self.buf.c_flush()
        self.wake(None, False)
        self.check_pause()

    def buffer_copy(self):
        """The buffered bytes (a copy), for the reader's ``_buffer``."""
        return bytearray(self.buf.c_peek(self.buf.length)) if self.buf.length else bytearray()

    def switch_to_feed(self):
        """Data comes through feed_data from now on (writer.start_tls)."""
        self.to_fed()

    @property
    def attached(self):
        """The buffer is the transport's input (fast mode)."""
        return not self.fed

    # -- the fast path: new input in conn.inbuf ------------------------------------

    cdef int on_input(self) except -1:
        # asyncio's feed_data without the copy: the limit check, then the reader
        # (woken only if something is there to read: with the buffer shared, a
        # read may already have taken what the wakeup is about, and a woken
        # read(n) returns what it finds, as asyncio's)
        self.check_pause()
        if self.buf.length:
            self.wake(None, True)
        return 0

    cdef int wake(self, object exc, bint inline) except -1:
        cdef Handler h
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.cancelled():
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(exc)
            return 0
        if self.hwait:
            self.hwait = False
            h = self.handler
            if inline and exc is None:
                # from deliver, after the pass: resume the handler now
                if h.step(None) == 0:
                    h.run()
            else:
                self.loop.call_soon(h._resume, exc, context=_bare_context)
        return 0

    cdef int check_pause(self) except -1:
        if self.transport is not None and not self.paused and self.buf.length > 2 * self.limit:
            try:
                self.transport.pause_reading()
            except NotImplementedError:
                self.transport = None
            else:
                self.paused = True
        return 0

    cdef int maybe_resume(self) except -1:
        if self.buf.length == 0:
            if self.fed:
                self.buf.release_all()
            else:
                self.buf.release_keep(self.tc.conn.book_size)
        if self.paused and self.buf.length <= self.limit:
            self.paused = False
            self.transport.resume_reading()
        return 0

    cdef bytes take(self, Py_ssize_t n):
        cdef Py_ssize_t m = self.buf.length
        if n < m:
            m = n
        if m <= 0:
            data = b""
        else:
            data = self.buf.c_read_binary(m)
        self.maybe_resume()
        return data

    cdef int to_fed(self) except -1:
        # From now on data comes through feed_data: a buffer of its own, and the
        # transport calls its protocol's data_received again.
        cdef LinkBuffer nb
        if self.fed:
            return 0
        nb = LinkBuffer.__new__(LinkBuffer)
        if self.buf.length:
            nb.c_write(self.buf.c_read_binary(self.buf.length))
            nb.c_flush()
        self.buf = nb
        self.fed = True
        if self.tc is not None and self.tc.stream is self:
            self.tc.stream = None
        return 0

    # -- reads ------------------------------------------------------------------------

    def read(self, Py_ssize_t n=-1):
        if self.exc is None and n > 0 and (self.buf.length or self.eof):
            return NpReady_New(self.take(n))
        return self.start_op(S_READ if n >= 0 else S_READALL, n, None)

    def readexactly(self, Py_ssize_t n):
        if self.exc is None and n > 0 and self.buf.length >= n:
            v = self.buf.c_read_binary(n)
            self.maybe_resume()
            return NpReady_New(v)
        return self.start_op(S_EXACTLY, n, None)

    def readline(self):
        return self.start_op(S_LINE, 0, _LINE_SEPS)

    def readuntil(self, separator=b'\n'):
        if _SEP_TUPLES and isinstance(separator, tuple):
            seps = sorted(separator, key=len)
        else:
            seps = [separator]
        return self.start_op(S_UNTIL, 0, seps)

    cdef object start_op(self, int op, Py_ssize_t n, object seps):
        cdef _StreamRead r = _StreamRead.__new__(_StreamRead)
        r.s = self
        r.op = op
        r.n = n
        r.seps = seps
        try:
            res = self.run_op(r)
        except BaseException as exc:
            return NpReady_Fail(exc)
        if res is _PENDING:
            return r           # re-checks and waits when awaited
        return NpReady_New(res)

    cdef object run_op(self, _StreamRead r):
        cdef Py_ssize_t consumed
        if r.op != S_LINE:
            return self.advance(r)
        try:
            return self.advance(r)
        except _IncompleteReadError as e:
            return e.partial
        except _LimitOverrunError as e:
            consumed = e.consumed
            if self.buf.index_of(b"\n", 1, consumed) == consumed:
                self.buf.consume(consumed + 1)
            elif self.buf.length:
                self.buf.consume(self.buf.length)
            self.maybe_resume()
            raise ValueError(e.args[0])

    cdef object advance(self, _StreamRead r):
        # asyncio's StreamReader methods as a state machine: the result, or
        # _PENDING when it must wait for data (r keeps where it was)
        cdef LinkBuffer b = self.buf
        cdef int op = r.op
        cdef Py_ssize_t n = r.n, buflen, isep, end, match_start, match_end, limit = self.limit
        cdef Py_ssize_t min_seplen, max_seplen
        cdef bytes sep
        if op == S_READ:
            if not r.started:
                r.started = True
                if self.exc is not None:
                    raise self.exc
                if n == 0:
                    return b""
                if not b.length and not self.eof:
                    return _PENDING
            elif not r.waited and not b.length and not self.eof:
                return _PENDING
            return self.take(n)
        if op == S_READALL:
            if not r.started:
                r.started = True
                r.blocks = []
            while True:
                if not r.waited:
                    if self.exc is not None:
                        raise self.exc
                    if not b.length and not self.eof:
                        return _PENDING
                r.waited = False
                block = self.take(limit)
                if not block:
                    return b"".join(r.blocks)
                r.blocks.append(block)
        if op == S_EXACTLY:
            if not r.started:
                r.started = True
                if n < 0:
                    raise ValueError('readexactly size can not be less than zero')
                if self.exc is not None:
                    raise self.exc
                if n == 0:
                    return b""
            while b.length < n:
                if self.eof:
                    incomplete = b.c_read_binary(b.length) if b.length else b""
                    raise _IncompleteReadError(incomplete, n)
                return _PENDING
            data = b.c_read_binary(n)
            self.maybe_resume()
            return data
        # S_UNTIL, S_LINE
        seps = r.seps
        if not r.started:
            r.started = True
            if op == S_UNTIL:
                if not seps:
                    raise ValueError('Separator should contain at least one element')
                for x in seps:
                    if not isinstance(x, (bytes, bytearray, memoryview)):
                        # what bytearray.find says (asyncio's readuntil calls it)
                        raise TypeError(f"argument should be integer or bytes-like object, "
                                        f"not '{type(x).__name__}'")
                r.seps = seps = [bytes(x) for x in seps]
                if len(<bytes>seps[0]) == 0:
                    raise ValueError('Separator should be at least one-byte string')
            if self.exc is not None:
                raise self.exc
        min_seplen = len(<bytes>seps[0])
        max_seplen = len(<bytes>seps[len(seps) - 1])
        while True:
            buflen = b.length
            if buflen - r.offset >= min_seplen:
                match_start = -1
                match_end = -1
                for sep in seps:
                    isep = b.index_of(sep, len(sep), r.offset)
                    if isep != -1:
                        end = isep + len(sep)
                        if match_end == -1 or end < match_end:
                            match_end = end
                            match_start = isep
                if match_end != -1:
                    break
                r.offset = buflen + 1 - max_seplen
                if r.offset < 0:
                    r.offset = 0
                if r.offset > limit:
                    raise _LimitOverrunError(
                        'Separator is not found, and chunk exceed the limit', r.offset)
            if self.eof:
                chunk = b.c_read_binary(b.length) if b.length else b""
                raise _IncompleteReadError(chunk, None)
            return _PENDING
        if match_start > limit:
            raise _LimitOverrunError(
                'Separator is found, but chunk is longer than limit', match_start)
        chunk = b.c_read_binary(match_end)
        self.maybe_resume()
        return chunk

    cdef object begin_wait(self, _StreamRead r):
        # asyncio's _wait_for_data: what the awaitable yields (the marker or a Future)
        cdef Handler h
        if self.waiter is not None or self.hwait:
            raise RuntimeError(
                f'{"read" if r.op <= S_READALL else "readexactly" if r.op == S_EXACTLY else "readuntil"}'
                f'() called while another coroutine is already waiting for incoming data')
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        r.waiting = True
        h = self.handler
        if h is not None and _handler_is_current(h):
            self.hwait = True
            return _STREAM_MARK
        fut = self.loop.create_future()
        self.waiter = fut
        r.fut = fut
        fut._asyncio_future_blocking = True
        return fut

    # -- the writer's drain ------------------------------------------------------------

    def set_writer(self, writer):
        self.writer_ref = weakref.ref(writer)

    def drain(self):
        """StreamWriter.drain: at once while nothing is wrong and writing is not paused."""
        cdef TransportCore tc = self.tc
        if self.exc is None and not self.fed and tc is not None and not tc.closing \
                and not tc.protocol_paused:
            return NpReady_New(None)
        return _aio_drain(self.writer_ref())

    # -- attaching and the handler -------------------------------------------------------

    def attach(self, TransportCore tc not None):
        """Read from the transport's input from now on (its connection_made)."""
        cdef Connection c = tc.conn
        if not self.fed or self.buf.length or self.eof or tc.stream is not None \
                or tc.conn_lost or c.finished:
            return False
        c.own_in()
        self.tc = tc
        self.buf = c.inbuf
        self.rx_seen = c.rx_total - c.inbuf.length
        self.fed = False
        tc.stream = self
        return True

    def start(self, coro):
        """Drive client_connected_cb's coroutine with the connection's Handler (eager start)."""
        cdef Handler h
        cdef TransportCore tc = self.tc
        h = Handler(tc.conn, tc.loop)
        h.stream = self
        h.phase = PH_REQUEST
        h.set_coro(coro)
        self.handler = h
        _register_task(h)
        if h.step(None) == 0:
            h.run()
        return h

    cdef int task_failed(self, object exc) except -1:
        # asyncio (3.12+)'s done callback of the client_connected_cb task
        transport = self.transport
        if isinstance(exc, CancelledError):
            if transport is not None:
                transport.close()
            return 0
        self.loop.call_exception_handler({
            'message': 'Unhandled exception in client_connected_cb',
            'exception': exc,
            'transport': transport,
        })
        if transport is not None:
            transport.close()
        return 0

    cdef int task_done(self, Handler h) except -1:
        self.handler = None
        self.hwait = False
        h.wakeup = None
        return h.ended()


@cython.final
cdef class _StreamRead:
    """The awaitable of a read that must wait (reactor/streams.pyx)."""

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        cdef StreamCore s = self.s
        if self.waiting:
            self.waiting = False
            self.waited = True
            fut = self.fut
            if fut is not None:
                self.fut = None
                s.waiter = None
                fut.result()
            else:
                s.hwait = False
        try:
            res = s.run_op(self)
        finally:
            self.waited = False
        if res is _PENDING:
            return s.begin_wait(self)
        raise StopIteration(res)

    def send(self, value):
        return self.__next__()

    def throw(self, typ, val=None, tb=None):
        self.cleanup()
        if isinstance(typ, BaseException):
            exc = typ
        elif isinstance(val, BaseException):
            exc = val
        elif val is None:
            exc = typ()
        else:
            exc = typ(val)
        if tb is not None:
            raise exc.with_traceback(tb)
        raise exc

    def close(self):
        self.cleanup()

    cdef int cleanup(self) except -1:
        # asyncio's `finally: self._waiter = None`
        if self.waiting:
            self.waiting = False
            if self.fut is not None:
                self.fut = None
                self.s.waiter = None
            else:
                self.s.hwait = False
        return 0


@cython.binding(True)
def new_stream_core(loop, Py_ssize_t limit):
    """The StreamCore of a new netpoll StreamReader (fed mode until attach())."""
    cdef StreamCore s = StreamCore.__new__(StreamCore)
    s.loop = loop
    s.limit = limit
    return s
