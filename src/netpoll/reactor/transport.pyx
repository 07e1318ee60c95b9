# netpoll._core — TransportCore: the C half of an asyncio transport.
#
# A transport is a Connection with a protocol instead of a handler
# ----------------------------------------------------------------
# netpoll.transports.NetpollTransport (Python: extra info, the Server, the
# socket object, connection_lost) owns one TransportCore, which owns one
# Connection whose `proto` points back at it. No second buffer layer: input
# is the connection's input LinkBuffer, unsent output its output LinkBuffer.
#
#     socket ──recv (the pass)──▶ conn.inbuf ──deliver (after the pass)──▶ data_received(bytes)
#                                                          or get_buffer(-1) + copy + buffer_updated(n)
#     write(data) ──send() now──▶ socket; what it did not take ──▶ conn.outbuf ──EPOLLOUT──▶ send
#
# The semantics are asyncio's _SelectorSocketTransport's, state by state
# (asyncio's names on the right):
#
#   reader_on        the reader is registered (_add_reader/_remove_reader): EPOLLIN on
#                    and input handed over. Off until start_reading() (scheduled after
#                    connection_made), off while paused or closing, off once a peer
#                    EOF was handed over and eof_received() kept the transport open.
#   conn.writing     the writer is registered: EPOLLOUT on while output is queued.
#   paused, closing, eof, conn_lost, protocol_paused, high/low_water: as asyncio's.
#
# Where each callback runs. The pass (inside the epoll walk) only does I/O and
# queues the connection on the poller's ready list (Connection.on_data,
# mark_eof, on_writable -> queue()); deliver() runs from that list after the
# walk and makes every protocol call that is due: data_received/buffer_updated,
# eof_received, the fatal error of a failed recv/send, connection_lost(None)
# once a close() has sent its output, resume_writing() at the low-water mark.
# Protocol calls made by user calls (pause_writing from write(), the fatal
# error of a send that failed in write()) run at once, as in asyncio.
# connection_made and connection_lost are loop callbacks (call_soon), as in
# asyncio; connection_lost runs Python (NetpollTransport._call_connection_lost),
# which ends with finish(): the connection closes and its fd with it.
#
# Re-entrancy: a protocol callback may call anything on any transport (write,
# close, abort, pause/resume, set_protocol) or close the server. deliver()
# re-checks the state after every call it makes; a connection never closes
# inside deliver() except through _call_connection_lost, and the poller's
# queues hold strong references, so no object goes away under the walk.

from asyncio import BufferedProtocol as _BufferedProtocol
from asyncio.constants import LOG_THRESHOLD_FOR_CONNLOST_WRITES as _LOG_THRESHOLD
from asyncio.log import logger as _aio_logger

cdef inline Py_ssize_t _send_some(int fd, const char* p, Py_ssize_t n) noexcept:
    # send(2) once: bytes taken (0 when the socket is full), or -errno
    cdef Py_ssize_t r
    while True:
        r = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT)
        if r >= 0:
            return r
        if errno == EINTR:
            continue
        if errno == EAGAIN:
            return 0
        return -errno


@cython.final
cdef class TransportCore:
    """The C half of a netpoll.transports.NetpollTransport (see reactor/transport.pyx).

    Made by ``new_transport_core``; its methods are the transport's, with
    asyncio's semantics.
    """

    def __cinit__(self):
        global live_transports
        self.high_water = 64 * 1024
        self.low_water = 16 * 1024
        if NETPOLL_DEBUG:
            live_transports += 1

    def __dealloc__(self):
        global live_transports
        if NETPOLL_DEBUG:
            live_transports -= 1

    def __init__(self):
        raise TypeError("transport cores are made by new_transport_core")

    # -- the pass and its queues -----------------------------------------------------

    cdef int queue(self) except -1:
        cdef Connection c = self.conn
        cdef Poller p = c.poller
        if c.queued or c.finished or p is None:
            return 0
        c.queued = True
        p.ready.append(c)
        if not p.in_batch:
            p.kick()
        return 0

    cdef int on_writable(self) except -1:
        # Inside the walk: I/O and queueing only.
        cdef Connection c = self.conn
        cdef int r = c.send_out()
        if r < 0:
            return self.fail_write(-r)
        if r == 0:
            c.set_writing(False)
            if self.empty_waiter is not None and not self.empty_waiter.done():
                self.empty_waiter.set_result(None)     # schedules its callbacks only
            if self.closing:
                self.queue()                 # connection_lost(None), after the pass
            elif self.eof:
                shutdown(c.fd, SHUT_WR)
        if self.protocol_paused and self.buffer_size() <= self.low_water:
            self.queue()                     # resume_writing()
        return 0

    cdef int fail_write(self, int err) except -1:
        # A send failed (maybe inside the walk): drop the output, report after the pass.
        cdef Connection c = self.conn
        c.drop_output()
        c.set_writing(False)
        c.note_error(err)
        self.write_failed = True
        if self.empty_waiter is not None and not self.empty_waiter.done():
            self.empty_waiter.set_exception(c.close_error)
        return self.queue()

    cdef int deliver(self) except -1:
        cdef TransportCore keep = self          # a callback may drop every other reference
        cdef Connection c = self.conn
        cdef Py_ssize_t n
        if self.conn_lost or self.protocol is None or c.finished:
            return 0
        _task_slot_clear(c.poller)              # protocol callbacks run with no current task
        if self.write_failed:
            self.write_failed = False
            return self.c_fatal_error(c.close_error, "Fatal write error on socket transport")
        if self.stream is not None:
            return self.deliver_stream()
        if self.reader_on:
            n = c.inbuf.length
            if n and c.peer_eof and not self.eof_seen:
                # asyncio reads the data and the EOF in two loop iterations; so
                # does a transport: the EOF (or the read error) waits for the next
                self.loop.call_soon(self._deliver_soon)
            if n:
                if self.buffered:
                    self.deliver_buffered()
                else:
                    data = c.inbuf.c_read_binary(n)
                    try:
                        self.protocol.data_received(data)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self.c_fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                        return 0
                if c.finished or self.conn_lost:
                    return 0
                if c.inbuf.length == 0:
                    c.inbuf.release_keep(c.book_size)
            if self.reader_on and c.peer_eof and not self.eof_seen and c.inbuf.length == 0 \
                    and not n:
                if self.deliver_eof(c):
                    return 0
        return self.deliver_end(c)

    cdef int deliver_eof(self, Connection c) except -1:
        # The peer's EOF (or the read error) once every byte before it is handed
        # over: eof_received(), then half-open or close. 1: deliver() stops there.
        self.eof_seen = True
        exc = c.close_error
        if exc is not None:
            self.c_fatal_error(exc, "Fatal read error on socket transport")
            return 1
        if self.loop.get_debug():
            _aio_logger.debug("%r received EOF", self.transport)
        try:
            keep_open = self.protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.c_fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return 1
        if self.conn_lost:
            return 1
        if keep_open:
            self.reader_on = False       # writing goes on; nothing more to read
            c.set_reading(False)
            return 0
        self.close()
        return 1

    cdef int deliver_end(self, Connection c) except -1:
        # after the input: resume a paused protocol, finish a close that waited
        if self.protocol_paused:
            self.maybe_resume()              # (may write more)
        if self.closing and not c.writing and c.outbuf.length == 0 and not self.conn_lost \
                and not c.finished:
            # close() waited for the output; it is sent (asyncio calls
            # connection_lost right from its writer callback, too)
            self.conn_lost += 1
            self.transport._call_connection_lost(None)
        return 0

    cdef int deliver_stream(self) except -1:
        # deliver() for a Streams reader whose buffer is conn.inbuf (reactor/streams.pyx):
        # no data_received - the bytes stay where recv put them and the waiting
        # read resumes. The rest (EOF, errors, flow control, the close) as deliver().
        cdef TransportCore keep = self
        cdef Connection c = self.conn
        cdef StreamCore s = self.stream
        cdef Py_ssize_t n = 0
        if self.reader_on:
            n = c.rx_total - s.rx_seen
            if n:
                s.rx_seen = c.rx_total
                if c.peer_eof and not self.eof_seen:
                    self.loop.call_soon(self._deliver_soon)     # the EOF: next iteration
                s.on_input()
                if c.finished or self.conn_lost:
                    return 0
            if self.reader_on and c.peer_eof and not self.eof_seen and not n:
                if self.deliver_eof(c):
                    return 0
        return self.deliver_end(c)

    def _deliver_soon(self):
        # (a loop callback: the peer's EOF after the data that came with it)
        if not self.conn.poller.in_batch:
            self.deliver()

    cdef int deliver_buffered(self) except -1:
        # BufferedProtocol: get_buffer(-1), copy, buffer_updated(n), while input is left.
        cdef Connection c = self.conn
        cdef Py_buffer pb
        cdef Py_ssize_t m
        while self.reader_on and c.inbuf.length and not self.conn_lost and not c.finished:
            try:
                buf = self.protocol.get_buffer(-1)
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                return self.c_fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
            try:
                PyObject_GetBuffer(buf, &pb, PyBUF_WRITABLE)
            except (TypeError, ValueError, BufferError) as exc:
                # what socket.recv_into says of such a buffer
                err = TypeError(f"recv_into() argument 'buffer' must be read-write "
                                f"bytes-like object, not {type(buf).__name__}")
                err.__cause__ = exc
                return self.c_fatal_error(err, "Fatal read error on socket transport")
            try:
                m = pb.len if pb.len < c.inbuf.length else c.inbuf.length
                c.inbuf._copy_out(<char*>pb.buf, m)
                c.inbuf.consume(m)
            finally:
                PyBuffer_Release(&pb)
            buf = None
            try:
                self.protocol.buffer_updated(m)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                return self.c_fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
        return 0

    # -- writing ----------------------------------------------------------------------

    cdef Py_ssize_t buffer_size(self) noexcept:
        if self.conn.finished:
            return 0
        return self.conn.outbuf.length

    def get_write_buffer_size(self):
        """Bytes written and not yet taken by the kernel."""
        return self.buffer_size()

    def write(self, data):
        """asyncio's Transport.write: send at once, queue what the socket does not take."""
        self.c_write(data)

    cdef int c_write(self, object data) except -1:
        cdef Connection c = self.conn
        if type(data) is not bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if self.eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self.empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if type(data) is bytes:
            if PyBytes_GET_SIZE(data) == 0:
                return 0
        elif not data:
            return 0
        if self.conn_lost or c.closed_by:
            if self.conn_lost >= _LOG_THRESHOLD:
                _aio_logger.warning("socket.send() raised exception.")
            self.conn_lost += 1
            return 0
        if c.writing or c.outbuf.length:
            c.own_out()
            c.outbuf.c_write(data)               # behind earlier output
            c.outbuf.c_flush()
        elif self.send_now(data) != 1:
            return 0                             # all sent, or failed (fatal error done)
        return self.maybe_pause()

    cdef int send_now(self, object data) except -1:
        # The socket has nothing queued: send from the caller's memory. Returns
        # 0 when it took everything, 1 when the rest is queued (copied, or
        # linked if it is a large bytes object), 2 on a failed send (reported).
        cdef Connection c = self.conn
        cdef Py_buffer pb
        cdef Py_ssize_t n, sent
        if type(data) is bytes:
            n = PyBytes_GET_SIZE(data)
            sent = _send_some(c.fd, PyBytes_AS_STRING(data), n)
        else:
            try:
                PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE)
            except BaseException as exc:         # e.g. a non-contiguous memoryview
                self.c_fatal_error(exc, "Fatal write error on socket transport")
                return 2
            n = pb.len
            sent = _send_some(c.fd, <const char*>pb.buf, n)
            PyBuffer_Release(&pb)
        if sent == n:
            return 0
        if sent < 0:
            self.c_fatal_error(c.note_error(<int>-sent), "Fatal write error on socket transport")
            return 2
        c.own_out()                              # the first write may be this one
        if type(data) is bytes:
            c.outbuf.c_write(data)               # large bytes are linked, not copied
            c.outbuf.c_flush()
            c.outbuf.consume(sent)
        else:
            c.outbuf.c_write(memoryview(data).cast("B")[sent:])
            c.outbuf.c_flush()
        c.set_writing(True)
        return 1

    def writelines(self, list_of_data):
        """Write every buffer of an iterable; sent together (sendmsg) when the socket is idle."""
        self.c_writelines(list_of_data)

    cdef int c_writelines(self, object list_of_data) except -1:
        cdef Connection c = self.conn
        cdef int r
        if self.eof:
            raise RuntimeError(_WRITELINES_AFTER_EOF)
        if self.empty_waiter is not None:
            raise RuntimeError("unable to writelines; sendfile is in progress")
        items = list(list_of_data)
        for data in items:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"data argument must be a bytes-like object, "
                                f"not {type(data).__name__!r}")
        if not items:
            return 0
        if self.conn_lost or c.closed_by:
            if self.conn_lost >= _LOG_THRESHOLD:
                _aio_logger.warning("socket.send() raised exception.")
            self.conn_lost += 1
            return 0
        c.own_out()
        for data in items:
            c.outbuf.c_write(data)
        c.outbuf.c_flush()
        if not c.writing and c.outbuf.length:
            r = c.send_out()
            if r < 0:
                c.drop_output()
                self.c_fatal_error(c.note_error(-r), "Fatal write error on socket transport")
                return 0
            if r == 1:
                c.set_writing(True)
        return self.maybe_pause()

    def write_eof(self):
        """Shut down the sending side once the queued output is sent."""
        if self.closing or self.eof:
            return
        self.eof = True
        if not self.conn.writing and not self.conn.closed_by:
            if shutdown(self.conn.fd, SHUT_WR) < 0:
                raise sockerror(errno)

    def can_write_eof(self):
        return True

    cdef int maybe_pause(self) except -1:
        if self.buffer_size() <= self.high_water or self.protocol_paused:
            return 0
        self.protocol_paused = True
        try:
            self.protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.flow_error("pause_writing", exc)
        return 0

    cdef int maybe_resume(self) except -1:
        if not self.protocol_paused or self.buffer_size() > self.low_water:
            return 0
        self.protocol_paused = False
        try:
            self.protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.flow_error("resume_writing", exc)
        return 0

    cdef int flow_error(self, str name, object exc) except -1:
        # asyncio's report of a failed pause_writing()/resume_writing(): logged, not fatal
        self.loop.call_exception_handler({
            "message": f"protocol.{name}() failed",
            "exception": exc,
            "transport": self.transport,
            "protocol": self.protocol,
        })
        return 0

    def set_write_buffer_limits(self, high=None, low=None):
        """asyncio's water marks (defaults 64 KiB / a quarter of high); may pause writing."""
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high_water = high
        self.low_water = low
        self.maybe_pause()

    def get_write_buffer_limits(self):
        return (self.low_water, self.high_water)

    # -- reading ----------------------------------------------------------------------

    def start_reading(self):
        """The reader starts (scheduled after connection_made, as asyncio's _add_reader)."""
        if self.closing or self.paused or self.conn_lost:
            return
        self.reader_on = True
        self.conn.set_reading(True)
        if self.conn.inbuf.length or (self.conn.peer_eof and not self.eof_seen):
            self.queue()

    def is_reading(self):
        return not self.closing and not self.paused

    def pause_reading(self):
        """No data_received from now on (EPOLLIN off at once)."""
        self.c_pause_reading()

    cdef int c_pause_reading(self) except -1:
        if self.closing or self.paused:
            return 0
        self.paused = True
        self.reader_on = False
        self.conn.set_reading(False)
        if self.loop.get_debug():
            _aio_logger.debug("%r pauses reading", self.transport)
        return 0

    def resume_reading(self):
        self.c_resume_reading()

    cdef int c_resume_reading(self) except -1:
        if self.closing or not self.paused:
            return 0
        self.paused = False
        self.reader_on = True
        self.conn.set_reading(True)
        if self.loop.get_debug():
            _aio_logger.debug("%r resumes reading", self.transport)
        if self.conn.inbuf.length or (self.conn.peer_eof and not self.eof_seen):
            self.queue()
        return 0

    # -- protocol ---------------------------------------------------------------------

    def set_protocol(self, protocol):
        self.buffered = isinstance(protocol, _BufferedProtocol)
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    # -- closing ----------------------------------------------------------------------

    def is_closing(self):
        return self.closing

    def close(self):
        """Stop reading, send what is queued, then connection_lost(None) (a loop callback)."""
        cdef Connection c = self.conn
        if self.closing:
            return
        self.closing = True
        self.reader_on = False
        c.set_reading(False)
        if not c.writing and c.outbuf.length == 0:
            self.lose(None)

    def abort(self):
        """Drop queued output and close; connection_lost(None) follows (a loop callback)."""
        self.force_close(None)

    def force_close_with(self, exc):
        """asyncio's _force_close(exc): drop output, close, connection_lost(exc)."""
        self.force_close(exc)

    def fatal_error(self, exc, message="Fatal error on transport"):
        """asyncio's _fatal_error: log (OSError: debug only) and force the close."""
        self.c_fatal_error(exc, message)

    cdef int c_fatal_error(self, object exc, str message) except -1:
        if isinstance(exc, OSError):
            if self.loop.get_debug():
                _aio_logger.debug("%r: %s", self.transport, message, exc_info=exc)
        else:
            self.loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self.transport,
                "protocol": self.protocol,
            })
        return self.force_close(exc)

    cdef int force_close(self, object exc) except -1:
        cdef Connection c = self.conn
        if self.conn_lost:
            return 0
        if c.writing or c.outbuf.length:
            c.drop_output()
            c.set_writing(False)
        if not self.closing:
            self.closing = True
            self.reader_on = False
            c.set_reading(False)
        return self.lose(exc)

    cdef int lose(self, object exc) except -1:
        self.conn_lost += 1
        self.loop.call_soon(self.transport._call_connection_lost, exc)
        return 0

    def finish(self):
        """The end of connection_lost: close the connection (and its fd); drop the protocol."""
        cdef Connection c = self.conn
        self.protocol = None
        self.transport = None
        self.stream = None
        self.reader_on = False
        if self.conn_lost == 0:
            self.conn_lost = 1
        if c.closed_by == OPEN:
            c.close()


cdef str _WRITELINES_AFTER_EOF = (
    "Cannot call writelines() after write_eof()" if sys.version_info >= (3, 12)
    else "Cannot call write() after write_eof()")


@cython.binding(True)
def new_transport_core(fd, transport, protocol):
    """The TransportCore of a new transport over a connected stream socket's fd.

    Call with the loop running; the core's connection owns the fd from now on
    (the transport's socket object must detach before the connection closes
    it). Reading starts with ``start_reading()``.
    """
    cdef Connection c = _wrap_fd(fd, False, False)
    cdef TransportCore t = TransportCore.__new__(TransportCore)
    t.conn = c
    t.loop = c.poller.loop
    t.transport = transport
    t.set_protocol(protocol)
    c.proto = t
    return t


# -- the transport's per-request methods -------------------------------------------------
#
# Frameworks call transport.write / is_closing (and the rest of _CORE_METHODS in
# transports.py) once or more per request. These functions are those methods
# of NetpollTransport's class: the core is read from the instance's `_npc` slot
# (a __slots__ entry of its base class, at a fixed offset), so the call costs no
# Python frame, and since nothing shadows the class attribute in the instance
# dict, CPython's specialised method call (LOAD_METHOD_WITH_VALUES) applies.

cdef extern from "np_sched.h":
    Py_ssize_t _tr_slot_offset "np_slot_offset"(object descr)
    PyObject* _tr_slot "np_slot"(object o, Py_ssize_t off)

cdef Py_ssize_t _npc_off = -1
cdef type _npc_base = None


cdef inline TransportCore _tcore(object self):
    # the core in self's `_npc` slot, or None (not a transport, or no core yet)
    cdef PyObject* p
    if _npc_base is None or not PyObject_TypeCheck(self, <PyTypeObject*>_npc_base):
        return None
    p = _tr_slot(self, _npc_off)
    if p == NULL or type(<object>p) is not TransportCore:
        return None
    return <TransportCore>p


@cython.binding(True)
def _transport_write(self, data):
    """Write data (asyncio's ``Transport.write``): sent at once, the rest queued."""
    cdef TransportCore c = _tcore(self)
    if c is None:
        return self._core.write(data)
    c.c_write(data)


@cython.binding(True)
def _transport_writelines(self, list_of_data):
    """Write every buffer of an iterable (asyncio's ``Transport.writelines``)."""
    cdef TransportCore c = _tcore(self)
    if c is None:
        return self._core.writelines(list_of_data)
    c.c_writelines(list_of_data)


@cython.binding(True)
def _transport_get_write_buffer_size(self):
    """Bytes written and not yet taken by the kernel."""
    cdef TransportCore c = _tcore(self)
    if c is None:
        return self._core.get_write_buffer_size()
    return c.buffer_size()


@cython.binding(True)
def _transport_is_closing(self):
    """True once the transport is closing or closed."""
    cdef TransportCore c = _tcore(self)
    if c is None:
        return self._core.is_closing()
    return c.closing


@cython.binding(True)
def _transport_pause_reading(self):
    """Stop calling data_received until resume_reading() (asyncio's ``pause_reading``)."""
    cdef TransportCore c = _tcore(self)
    if c is None:
        return self._core.pause_reading()
    c.c_pause_reading()


@cython.binding(True)
def _transport_resume_reading(self):
    """Call data_received again (asyncio's ``resume_reading``)."""
    cdef TransportCore c = _tcore(self)
    if c is None:
        return self._core.resume_reading()
    c.c_resume_reading()


def _transport_methods(base):
    """The per-request methods for the subclasses of ``base`` (whose ``__slots__``
    has ``_npc``, where the transport keeps its core): name -> function."""
    global _npc_off, _npc_base
    off = _tr_slot_offset(base.__dict__.get("_npc"))
    if off < 0 or not isinstance(base, type):
        raise TypeError("_transport_methods: base has no _npc slot")
    _npc_off = off
    _npc_base = base
    return {
        "write": _transport_write,
        "writelines": _transport_writelines,
        "get_write_buffer_size": _transport_get_write_buffer_size,
        "is_closing": _transport_is_closing,
        "pause_reading": _transport_pause_reading,
        "resume_reading": _transport_resume_reading,
    }
