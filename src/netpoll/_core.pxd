# cython: language_level=3
#
# netpoll._core — the reactor's header: every class, field and cdef signature.
#
# The implementation is split by concern under src/netpoll/reactor/ and joined
# into this one extension by the include lines of _core.pyx (as uvloop does):
#
#   reactor/config.pyx      configure()/get_config(), poller sets per asyncio loop
#   reactor/timers.pyx      timer records and the per-poller timer heap
#   reactor/poller.pyx      the epoll I/O pass and its queues (data.ptr lifetime essay)
#   reactor/handler.pyx     the Task-like driver of async handlers
#   reactor/connection.pyx  Connection: its state table, input/output paths, reader/writer
#   reactor/tls.pyx         TLS between the socket and the LinkBuffers (SSLObject + MemoryBIO)
#   reactor/transport.pyx   TransportCore: an asyncio protocol driven from the pass's queues
#   reactor/server.pyx      EventLoop: accept, backoff, graceful shutdown
#   reactor/dialer.pyx      non-blocking connect, new_fd_connection
#
# Error specs: `except -1` on int returns that can raise, `except NULL` on
# pointers, `noexcept` where nothing can fail. A method without a spec
# returns an object (NULL on error).

cimport cython
from cpython.object cimport PyObject
from netpoll._buffer cimport LinkBuffer
from netpoll.includes.system cimport epoll_event
from netpoll.includes.openssl cimport NP_SSL, NP_BIO
from netpoll.includes.uring cimport io_uring_sqe, np_cqe, np_pbuf, np_ring


cdef enum CloseBy:
    OPEN = 0           # not closed
    BY_USER = 1        # close()/detach(), idle timeout, shutdown
    BY_PEER = 2        # the poller saw the peer go (EOF, hang-up, error)

cdef enum ConnectState:
    CS_NEW = 0         # on_connect has not finished
    CS_CONNECTED = 1   # on_request may run; on_disconnect may fire once
    CS_DISCONNECTED = 2

cdef enum:
    MAX_IOV = 64
    BOOK_MAX = 1 << 23          # 8 MiB: the book size stops doubling here
    ACCEPT_BATCH = 64

cdef enum TimerKind:
    T_READ = 1
    T_WRITE = 2
    T_IDLE = 3
    T_TLS = 4          # the TLS handshake timeout (reactor/tls.pyx)

cdef enum Phase:
    PH_IDLE = 0
    PH_CONNECT = 1
    PH_REQUEST = 2

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


cdef extern from "<stdbool.h>":
    # a one-byte C bool with bint's semantics (Connection's flags)
    ctypedef bint flag "bool"


cdef class Poller
cdef class Connection
cdef class EventLoop
cdef class TLSLayer
cdef class TransportCore
cdef class Waiter
cdef class StreamCore
cdef class _StreamRead


# -- config.pyx ---------------------------------------------------------------------

@cython.final
cdef class _Config:
    cdef public int poller_num
    cdef public Py_ssize_t buffer_size
    cdef public str load_balance
    cdef public object logger
    cdef public int spin            # epoll_wait rounds per loop callback (NETPOLL_SPIN)
    cdef public str backend         # "epoll" or "io_uring": the backend of new pollers


@cython.final
cdef class _PollerSet:
    """The pollers of one asyncio loop."""
    cdef list pollers
    cdef object loop
    cdef Py_ssize_t rr

    cdef Poller pick(self)
    # The poller for a new connection (round robin or random).
    cdef int resize(self, int n) except -1
    # Grow to n pollers, or stop new connections from picking the extra ones.


# -- uring.pyx ----------------------------------------------------------------------

@cython.final
cdef class _Ring:
    """One io_uring instance: its mmapped rings and a buffer for reaped CQEs."""
    cdef np_ring r
    cdef np_pbuf pb             # the provided-buffer ring (multishot recv model), when recv
    # provided buffer `bid`: a strong reference to the pool Chunk (8 KiB) now
    # published for that id (np_pbuf_put). The kernel may write the chunk while
    # it is in the ring; a CQE with the id makes it ours until the walk puts
    # the slot's chunk back (the same one after a copy, a fresh one after the
    # hand-over of the received one to an input LinkBuffer).
    cdef PyObject** bufs
    cdef unsigned int nbufs
    cdef Py_ssize_t adopt       # hand over completions of at least this many bytes (0: always copy)
    cdef bint recv              # multishot RECV + provided buffers, else poll-only
    cdef bint send              # flush_nowait inside the pass queues a SEND (gathered)
    cdef np_cqe* cqes
    cdef int ncqes
    # requests in flight (user_data -> owner): see _Ring.req_new
    cdef list reqs
    cdef unsigned long long* req_ids
    cdef unsigned int* free_slots
    cdef unsigned int nfree
    cdef unsigned int nslots
    cdef unsigned long long gen
    cdef readonly Py_ssize_t live      # requests in flight (0 once all ended)
    cdef Py_ssize_t parked             # of them, SENDs of finished connections
    cdef int naccept                   # of them, multishot ACCEPTs (a server's; see uring.pyx)
    cdef Py_ssize_t zc_min             # SEND_ZC for SENDs of at least this many bytes (0: off)
    cdef Py_ssize_t zlive              # of them, SEND_ZCs awaiting their notification CQE

    cdef unsigned long long req_new(self, object owner, unsigned int kind) except 0
    cdef object req_get(self, unsigned long long ud)
    cdef int req_set(self, unsigned long long ud, object owner) except -1
    cdef void req_end(self, unsigned long long ud) noexcept
    cdef int reqs_clear(self) except -1

    cdef void _teardown(self) noexcept
    cdef int bufs_init(self) except -1
    # One pool chunk per buffer id, each published to the kernel.
    cdef void buf_put(self, unsigned int bid) noexcept
    # Publish the chunk in slot bid (after its CQE) for the kernel to fill again.

    cdef io_uring_sqe* sqe(self) except NULL
    # The next free SQE (submits the queued ones first when the SQ is full).
    cdef int flush(self) except -1
    cdef int enter(self, unsigned int flags) except -1
    cdef int flush_removal(self) except -1
    # One io_uring_enter for every queued SQE (and the CQ overflow backlog).
    cdef int close(self) except -1


# -- timers.pyx ---------------------------------------------------------------------

@cython.final
cdef class _Timer:
    """A heap entry's target. Cancelling clears it, so a stale entry pins nothing."""
    cdef Connection conn
    cdef int kind
    cdef object token

    cdef void cancel(self) noexcept


@cython.final
cdef class TimerHeap:
    """Read/write/idle deadlines of one poller's connections; one loop timer for all."""
    cdef Poller poller
    cdef object loop
    cdef list heap              # (when, seq, _Timer)
    cdef object handle          # the loop timer for the earliest entry, or None
    cdef double when
    cdef long seq
    cdef Py_ssize_t stale       # cancelled entries still in the heap

    cdef _Timer push(self, double when, Connection c, int kind, object token)
    # Schedule c.on_timer(kind, token) at `when` (monotonic seconds).
    cdef int cancel(self, _Timer t) except -1
    # Cancel (None and already-fired timers are ignored).
    cdef int arm(self, double when) except -1
    cdef int clear(self) except -1
    # Drop every entry and the loop timer (the loop is closing).


# -- poller.pyx ---------------------------------------------------------------------

@cython.final
cdef class Poller:
    """One epoll fd registered on an asyncio loop; does the I/O of its connections."""
    cdef int epfd
    cdef int wfd                # the fd the loop watches: epfd, or a DEFER_TASKRUN ring's eventfd
    cdef object loop
    cdef epoll_event* events
    cdef int nevents
    cdef set conns              # strong references to every registered connection
    cdef list ready             # handler starts, run after the I/O pass
    cdef list hups              # peer closes seen during the pass
    cdef list closes            # closes begun during the pass; their user code runs after it
    cdef TimerHeap timers
    cdef bint in_batch          # inside the epoll walk: no user code may run
    cdef bint task_slot         # in run_pending (3.11): handler steps may leave
                                # _current_tasks[loop] = None; cleared when it ends
    cdef object slot_task       # while task_slot: the entry's value as the steps left it
    cdef object slot_base       # ... and as run_pending found it (None: no entry)
    cdef int slot_depth         # steps of this poller's handlers in progress
    cdef bint kicked
    cdef bint retired           # poller_num shrank: no new connections; closes when empty
    cdef int spin
    cdef set live_ptrs          # debug build: addresses of the registered connections
    # io_uring backend (reactor/uring.pyx); epfd is then the ring fd
    cdef bint uring
    cdef _Ring ring
    cdef dict polls             # poll id (CQE user_data) -> Connection, while armed
    cdef unsigned long long next_id
    cdef bint in_pass           # inside _on_ready: SQEs wait for the pass's one submit
    cdef list wakeups           # Waiters resolved in the pass: run_pending calls their callbacks
    cdef int pending_depth      # run_pending calls in progress
    cdef list accepted          # io_uring: accept CQEs (server, res, more, id) from the walk,
                                # set up by run_pending (never inside the walk)
    cdef object __weakref__

    cdef int close(self) except -1
    # The loop is closed: close the epoll fd and abandon every connection.
    cdef int add(self, Connection c) except -1
    cdef int modify(self, Connection c, unsigned int events) except -1
    # events == 0 takes the fd out of the epoll set.
    cdef void remove(self, Connection c) noexcept
    cdef int retire(self) except -1
    cdef int forget(self, Connection c) except -1
    # c is finished: drop the poller's strong reference (never inside the walk).
    cdef int kick(self) except -1
    # Run the queues soon, from a loop callback (never inside the pass).
    cdef int grow(self) except -1
    cdef int run_pending(self) except -1
    # Run the queues: handler starts, peer closes, deferred closes, wakeups (user code).
    cdef int hand_off_wakeups(self) except -1
    # Outside run_pending: the queued wakeups go to loop.call_soon.


# -- waiter.pyx ---------------------------------------------------------------------

@cython.final
cdef class Waiter:
    """The future of one read or flush wait, resolved by the poller."""
    cdef public bint _asyncio_future_blocking
    cdef Poller poller
    cdef object loop
    cdef int state
    cdef object value
    cdef object exc
    cdef object cancel_msg
    cdef object cb              # the first callback (a Task's wakeup) and its context
    cdef object cb_ctx
    cdef list more              # any further (callback, context)

    cdef object cancelled_error(self)
    cdef int wake(self, exc) except -1
    # set_result(None) (exc None) or set_exception(exc); nothing if already done.
    cdef int schedule(self) except -1
    cdef int call_soon(self) except -1
    cdef int run_callbacks(self) except -1


# -- handler.pyx --------------------------------------------------------------------

@cython.final
cdef class Handler:
    """The Task-like driver of one connection's async callbacks."""
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
    cdef Py_hash_t loop_hash      # hash(loop), for the 3.11 current-task slot
    cdef StreamCore stream        # set: drives a Streams client_connected_cb (reactor/streams.pyx)
    cdef object done_fut          # made when someone awaits the handler (asyncio.run's teardown)
    cdef list done_callbacks      # add_done_callback's (fn, context) pairs (Streams handlers)
    cdef object __weakref__

    cdef int run(self) except -1
    # Call on_connect / on_request until nothing is left or one suspends.
    cdef bint next_call(self) except -1
    # Start the next callback; False when processing is over.
    cdef int set_coro(self, object res) except -1
    cdef int step(self, object exc) except -1
    # One step of the coroutine: 1 suspended, 0 finished.
    cdef void restore_task(self, object prev, Poller slot) noexcept
    cdef int on_yield(self, object result) except -1
    cdef int on_error(self, object exc) except -1
    cdef int finish(self) except -1
    cdef bint suspended(self) noexcept
    cdef int ended(self) except -1
    # A Streams handler's coroutine is over: its done callbacks and awaiters.
    # A coroutine is in progress (waiting on something).
    cdef int release(self) except -1
    # The connection is finished: drop the references that form cycles.


# -- connection.pyx -----------------------------------------------------------------

@cython.final
cdef class Connection:
    cdef readonly int fd
    # the state table (connection.pyx): written by Connection methods only.
    # The small fields are packed together (flags are one-byte C bools): an idle
    # connection is mostly this object (benchmarks/idle.py)
    cdef unsigned int events
    cdef unsigned int uring_armed        # io_uring backend: the armed poll's mask (0: none)
    cdef int book_size            # input booking sizes; <= BOOK_MAX (config.buffer_size is too)
    cdef int max_size
    cdef unsigned char closed_by  # CloseBy (one byte: an idle connection is mostly this object)
    cdef unsigned char connect_state  # ConnectState
    cdef flag processing          # a handler chain is in progress
    cdef flag peer_eof            # the peer finished sending
    cdef flag draining            # server shutdown: no new input is taken in
    cdef flag close_when_done     # server shutdown: close once output drained and idle
    cdef flag finished            # close callbacks ran; fd closed (or handed back)
    cdef flag detached
    # poller bookkeeping
    cdef flag registered
    cdef flag writing             # EPOLLOUT armed
    cdef flag paused              # read backpressure: EPOLLIN off
    cdef flag wpaused             # write backpressure: EPOLLIN off while output is above the limit
    cdef flag queued              # on the poller's ready list
    cdef flag close_queued        # on the poller's closes list
    cdef flag uring_rstop                # its cancel is in flight (its CQEs still deliver)
    cdef flag uring_norecv               # reads with recv(2) itself (e.g. TLS): poll model;
                                         # set before Poller.add
    cdef flag has_rdeadline       # absolute deadlines replace the timeouts while set
    cdef flag has_wdeadline
    cdef flag rstop               # a transport's reader is off (not yet started, paused,
                                  # closing, EOF handed over): EPOLLIN off

    cdef Poller poller
    cdef LinkBuffer inbuf         # _NO_INPUT until the first input (reactor/connection.pyx)
    cdef LinkBuffer outbuf        # _NO_OUTPUT until the first write
    cdef Handler handler          # made on the first handler start (idle connections have none)
    cdef object context
    cdef public object ctx
    cdef object on_request
    cdef object on_connect
    cdef object on_disconnect
    cdef list close_callbacks
    cdef EventLoop server
    cdef str network

    cdef unsigned long long uring_id     # io_uring backend: the armed poll's user_data
    cdef unsigned long long uring_rid    # io_uring backend: the recv in flight's user_data
    cdef unsigned long long uring_sid    # io_uring backend: the SEND in flight's user_data
    cdef object uring_msg                # bytearray: the SEND's length, then msghdr + iovecs
    cdef TransportCore proto      # set: an asyncio transport's connection (reactor/transport.pyx)
    cdef readonly object close_error   # the OSError of the failed recv/send (e.g.
                                       # ConnectionResetError), else None

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
    cdef double rdeadline
    cdef double wdeadline
    cdef double read_wait_start
    cdef double write_wait_start
    cdef Py_ssize_t read_limit
    cdef Py_ssize_t write_limit
    cdef Py_ssize_t rx_total      # bytes received

    cdef list _addr_pair          # [local, remote] once looked up (None: not yet)
    cdef TLSLayer tls_layer       # None on plaintext (reactor/tls.pyx)
    cdef object __weakref__

    cdef int setup(self, int fd, object loop, str network, EventLoop server) except -1
    cdef int own_in(self) except -1
    cdef int own_out(self) except -1
    # Open a fresh Connection on fd (not yet registered with a poller).
    # poller side (inside the pass: I/O and queueing only)
    cdef int on_event(self, unsigned int ev) except -1
    cdef int do_read(self, unsigned int ev, bint drain=*) except -1
    cdef int on_data(self) except -1
    cdef int mark_eof(self, object exc) except -1
    cdef int wake_reader(self) except -1
    cdef unsigned int wanted(self) noexcept
    # The epoll mask the connection's state asks for (0: out of the epoll set).
    cdef int update_events(self) except -1
    cdef int set_reading(self, bint on) except -1
    # A transport's reader on/off (rstop): EPOLLIN follows at once.
    cdef int set_writing(self, bint on) except -1
    # EPOLLOUT armed or not (the output waits for the socket).
    cdef int drop_output(self) except -1
    # Free unsent output (abort, a failed send).
    cdef object note_error(self, int err)
    # A recv/send failed with err: close_error is set (if not yet); returns it.
    cdef object _flush_wait(self)
    # flush()'s wait: the Waiter and the write deadline now, the coroutine awaits it
    cdef int on_writable(self) except -1
    cdef int send_out(self) except? -2
    # Write queued output: 0 all sent, 1 the socket is full, -errno on error.
    cdef int check_write_limit(self) except -1
    cdef int on_timer(self, int kind, object token) except -1
    # state transitions
    cdef int on_peer_closed(self) except -1
    cdef int start_handler(self) except -1
    cdef int run_plain(self) except -1
    # on_request as a plain function, without a Handler (hands over if it returns an awaitable).
    cdef int connected(self, object ctx) except -1
    # on_connect finished (ctx is its result): CS_NEW -> CS_CONNECTED.
    cdef int handler_done(self) except -1
    # A handler chain ended: processing -> False, then whatever that allows.
    cdef int fire_disconnect(self) except -1
    cdef int close_by(self, int who) except -1
    cdef int after_close(self) except -1
    # The user-code half of a close: on_disconnect, then finish_close if no handler runs.
    cdef int begin_drain(self) except -1
    # Server shutdown: take no new input; close once idle and drained.
    cdef int force_close(self) except -1
    # Shutdown's force phase: cancel the handler, close, finish now.
    cdef int finish_close(self) except -1
    cdef int abandon(self) except -1
    cdef int cancel_timers(self) except -1
    cdef double read_due(self) noexcept
    # When the current read wait expires (deadline, else start + timeout; 0: never).
    cdef double write_due(self) noexcept
    cdef str read_expired_msg(self)
    cdef str write_expired_msg(self)
    cdef int rearm_read(self) except -1
    cdef int rearm_write(self) except -1
    cdef bint output_drained(self) noexcept
    cdef bint is_idle(self) noexcept
    cdef int _after_read(self, Py_ssize_t n) except -1
    cdef object _op(self, int op, Py_ssize_t n, object arg)
    cdef int _writable(self, str op) except -1
    cdef int _addrs(self) except -1


# -- tls.pyx ------------------------------------------------------------------------

@cython.final
cdef class TLSLayer:
    """One connection's TLS state: an ssl.SSLObject over two ssl.MemoryBIOs."""
    cdef object sslobj
    cdef object incoming          # MemoryBIO: ciphertext received, not yet decrypted
    cdef object outgoing          # MemoryBIO: ciphertext made, not yet taken out
    cdef bytes pending            # ciphertext taken out of `outgoing`, partly sent
    cdef Py_ssize_t pending_off
    cdef object waiter            # a dial/accept waiting for the handshake, or None
    cdef _Timer timer             # the handshake timeout
    cdef double timeout
    cdef object info              # TLSInfo, made on first use
    cdef bint server_side
    cdef bint handshake_done
    cdef bint failed              # the handshake failed (the connection is closed)
    cdef bint eof                 # the socket reached EOF or failed
    cdef bint close_notify        # the peer sent close_notify (a clean end)
    cdef bint truncated           # the stream ended without close_notify
    # the fast path: OpenSSL called directly on the SSL*/BIO*s the objects above own
    cdef bint fast
    cdef NP_SSL* ssl
    cdef NP_BIO* rbio
    cdef NP_BIO* wbio

    cdef int start(self, Connection c, object ctx, bint server_side, object server_hostname,
                   double timeout) except -1
    cdef int cancel_timer(self, Connection c) except -1
    cdef int send_pending(self, int fd) except? -2
    # Send the ciphertext waiting: 0 all sent, 1 the socket is full, -errno.
    cdef Py_ssize_t out_pending(self) except -1
    # Ciphertext bytes not yet sent (outgoing BIO + `pending`).
    cdef int feed(self, char* data, Py_ssize_t n) except -1
    # Ciphertext received -> the incoming BIO.


# -- transport.pyx ------------------------------------------------------------------

@cython.final
cdef class TransportCore:
    """The C half of an asyncio transport: a Connection driven by a protocol."""
    cdef readonly Connection conn
    cdef object protocol
    cdef object transport        # the Python NetpollTransport (callbacks get it)
    cdef object loop
    cdef bint buffered           # protocol is an asyncio.BufferedProtocol
    cdef bint reader_on          # asyncio's "reader registered": input goes to the protocol
    cdef bint paused             # pause_reading() (is_reading() False)
    cdef bint closing            # close() or a fatal error
    cdef bint eof                # write_eof() called
    cdef bint eof_seen           # the peer's EOF or read error was handed over
    cdef bint write_failed       # conn.close_error came from a send
    cdef readonly bint protocol_paused   # pause_writing() called, resume_writing() not yet
    cdef readonly Py_ssize_t conn_lost  # asyncio's _conn_lost: connection_lost is scheduled
    cdef Py_ssize_t high_water
    cdef Py_ssize_t low_water
    cdef StreamCore stream       # set: the input is a Streams reader's buffer (reactor/streams.pyx)
    # asyncio's _empty_waiter: set while loop.sendfile() uses the socket (writes are
    # refused); resolved when the output has drained (on_writable, or at once)
    cdef public object empty_waiter
    cdef object __weakref__

    cdef int deliver(self) except -1
    cdef int deliver_stream(self) except -1
    cdef int deliver_eof(self, Connection c) except -1
    cdef int deliver_end(self, Connection c) except -1
    # After the pass (or from a loop callback): hand the protocol what is due.
    cdef int deliver_buffered(self) except -1
    cdef int on_writable(self) except -1
    # EPOLLOUT, inside the walk: send, then queue what the protocol must hear.
    cdef int queue(self) except -1
    # Run deliver() after the pass (or soon, outside it).
    cdef int fail_write(self, int err) except -1
    cdef int send_now(self, object data) except -1
    cdef int c_write(self, object data) except -1
    cdef int c_writelines(self, object list_of_data) except -1
    cdef int c_pause_reading(self) except -1
    cdef int c_resume_reading(self) except -1
    # write/writelines/pause_reading/resume_reading (the def methods and the
    # transport's own, transport.pyx's _transport_* functions, call these)
    cdef int maybe_pause(self) except -1
    cdef int maybe_resume(self) except -1
    cdef int flow_error(self, str name, object exc) except -1
    cdef int c_fatal_error(self, object exc, str message) except -1
    cdef int force_close(self, object exc) except -1
    cdef int lose(self, object exc) except -1
    # Schedule transport._call_connection_lost(exc) (once).
    cdef Py_ssize_t buffer_size(self) noexcept


# -- server.pyx ---------------------------------------------------------------------

@cython.final
cdef class EventLoop:
    cdef object on_request
    cdef object on_prepare
    cdef object on_connect
    cdef object on_disconnect
    cdef double read_timeout
    cdef double write_timeout
    cdef double idle_timeout
    cdef Py_ssize_t read_limit
    cdef Py_ssize_t write_limit
    cdef object runner
    cdef object context          # copied at serve(); each connection copies it again
    cdef object loop
    cdef object listener
    cdef int lfd
    cdef str network
    cdef set conns
    cdef object stopped          # future: serve() returns when it is done
    cdef object drained          # future: the last connection went away
    cdef object watch_handle     # periodic check that the listener is still open
    cdef bint shutting_down
    cdef bint accepting
    cdef int backoff_step
    cdef object backoff_handle
    cdef double last_emfile_log
    cdef Poller apoller          # io_uring: the poller whose ring accepts (multishot), or None
    cdef unsigned long long aid  # its ACCEPT request's id (0: none armed; a cancelled one
                                 # may still post CQEs until its final one)
    cdef bint aseen              # that ring has handed this server a connection
    cdef bint hard_closed        # shutdown's force phase began: late fds are closed
    cdef bint accept_paused      # _pause_accepting (run_workers' hand-over): no re-arm
    cdef list late               # connections set up while shutting down, to drain
    cdef bint accept_grace_over  # shutdown stops waiting for the ACCEPT's final CQE

    cdef int stop_accepting(self) except -1
    cdef bint listener_closed(self) noexcept
    cdef object ssl_ctx          # the listener's ssl.SSLContext, or None
    cdef double ssl_timeout      # its handshake timeout (seconds; 0: none)

    cdef int accept_backoff(self, int err) except -1
    cdef int start_accepting(self) except -1
    # Accept through an io_uring poller's ring (multishot) or the loop's add_reader.
    cdef int take_fd(self, int fd) except -1
    # An accepted fd: set up its connection (both accept paths), errors logged.
    cdef int uring_accepted(self, int res, bint more, unsigned long long aid) except -1
    cdef int uring_accepted_cqe(self, int res, bint more, unsigned long long aid) except -1
    cdef int check_drained(self) except -1
    cdef int sweep_backlog(self) except -1
    cdef int drain_these(self, list conns) except -1
    cdef int quit_accepting(self) except -1
    # After the ring's ACCEPT is cancelled: accept4 what the listen queue holds.
    # Shutting down, no connection left and no ACCEPT of ours still to report: drained.
    # One ACCEPT CQE, after the walk (reactor/uring.pyx queues them on the poller).
    cdef int new_connection(self, int fd) except -1
    cdef int forget(self, Connection c) except -1
    cdef int listener_gone(self) except -1
    # The application closed the listener: stop accepting, let serve() return.


# -- streams.pyx --------------------------------------------------------------------

@cython.final
cdef class StreamCore:
    """The state of a netpoll asyncio.StreamReader (reactor/streams.pyx)."""
    cdef LinkBuffer buf           # the reader's buffer: the connection's input (fast) or its own
    cdef TransportCore tc         # the transport core it reads from (None until attached)
    cdef readonly object transport   # asyncio's StreamReader._transport
    cdef object loop
    cdef readonly Py_ssize_t limit
    cdef readonly bint eof
    cdef readonly bint paused     # it paused the transport (buffer above 2 * limit)
    cdef readonly bint fed        # data comes through feed_data (not attached, or after start_tls)
    cdef bint hwait               # the Handler is suspended in a read (no Future)
    cdef readonly object exc      # asyncio's StreamReader._exception
    cdef readonly object waiter   # the Future of a read awaited outside the Handler
    cdef Handler handler          # drives client_connected_cb (None: an asyncio Task does, or none)
    cdef Py_ssize_t rx_seen       # conn.rx_total at the last wakeup
    cdef object writer_ref        # weakref to the StreamWriter (drain's slow path)

    cdef int on_input(self) except -1
    cdef int wake(self, object exc, bint inline) except -1
    cdef int check_pause(self) except -1
    cdef int maybe_resume(self) except -1
    cdef bytes take(self, Py_ssize_t n)
    cdef int to_fed(self) except -1
    cdef object advance(self, _StreamRead r)
    cdef object run_op(self, _StreamRead r)
    cdef object begin_wait(self, _StreamRead r)
    cdef object start_op(self, int op, Py_ssize_t n, object seps)
    cdef int task_failed(self, object exc) except -1
    cdef int task_done(self, Handler h) except -1


@cython.final
cdef class _StreamRead:
    """A read that could not finish when it was called: the awaitable it returns."""
    cdef StreamCore s
    cdef int op
    cdef Py_ssize_t n
    cdef Py_ssize_t offset
    cdef object seps              # a list of bytes, shortest first (readuntil/readline)
    cdef list blocks
    cdef bint started
    cdef bint waiting
    cdef bint waited
    cdef object fut
    cdef int cleanup(self) except -1
