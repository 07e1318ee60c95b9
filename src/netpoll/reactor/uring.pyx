# netpoll._core — the io_uring backend: one ring per poller, readiness through it.
#
# The seam
# --------
# A Poller is either an epoll poller or an io_uring poller (config.backend when
# it is made). Everything above the poller — Connection.on_event, do_read,
# send_out, the queues, the rule that no user code runs inside the walk — is
# the same. What the io_uring poller changes is how readiness reaches on_event
# and what one I/O pass costs in system calls:
#
#   epoll     epoll_ctl per interest change; epoll_wait per round
#   io_uring  a POLL_ADD SQE per armed interest, queued in user memory; one
#             io_uring_enter per round submits all of them; completions are
#             read from the mmapped CQ ring without a system call
#
# The loop watches the ring (add_reader), exactly like the epoll fd. Setup flags
# (NETPOLL_URING_SETUP; _env_setup_flags): by default DEFER_TASKRUN with
# SINGLE_ISSUER, TASKRUN_FLAG and SUBMIT_ALL. Completion work then runs only
# inside our io_uring_enter(GETEVENTS), and queued work does not make the ring
# fd readable, so the loop watches an eventfd registered with the ring instead
# (uring_pass: np_ring_evfd_begin/end). Without DEFER_TASKRUN the ring fd
# itself is watched: it polls readable while the CQ ring holds completions.
# docs/design.md, "Setup flags, and who runs completions".
#
# The completion model (this build): one-shot POLL_ADD, re-armed
# ----------------------------------------------------------------
# Every registered connection whose interest mask (c.events) is not 0 has one
# POLL_ADD in flight with that mask. Its CQE carries the ready mask (same bit
# values as epoll's); the walk hands it to c.on_event and, if the connection
# still wants events, queues a new POLL_ADD. A one-shot poll checks readiness
# when it is armed, so this is level-triggered, like our epoll use: do_read may
# stop after 4 reads and rely on being told again. (Multishot poll is
# edge-triggered and would lose that.) An interest change (update_events ->
# modify) queues a POLL_REMOVE for the old poll and a POLL_ADD for the new mask.
#
# Lifetime: no borrowed pointers
# ------------------------------
# With epoll, EPOLL_CTL_DEL is synchronous; with io_uring a removed poll's CQE
# (-ECANCELED) can arrive a pass later, after the connection is gone. So the
# CQE user_data is not a pointer but a request id: the ring's request table
# (_Ring.req_new) holds the Connection (a strong reference) while the request
# is armed. A CQE whose id is no longer in the table (a removed or replaced
# request) is dropped without touching any connection. Poll requests reference no user memory, so cancellation needs no
# waiting: the kernel only holds a reference to the *file*. That is why
# Poller.remove submits its POLL_REMOVE at once, before close(2): until the
# poll is cancelled the socket stays open in the kernel.
#
# Overflow: the ring is made with 4096 SQ entries (CQ 8192). SQ full: the
# queued SQEs are submitted and the SQE taken again. CQ full: the kernel keeps
# the extra CQEs in its backlog (IORING_FEAT_NODROP) and sets
# IORING_SQ_CQ_OVERFLOW; the next flush enters with GETEVENTS to move them in.
#
# The recv model (the default where provided-buffer rings work, Linux >= 6.0;
# NETPOLL_URING_RECV=0 keeps the poll-only model above): input comes from a
# RECV with IOSQE_BUFFER_SELECT (multishot; one-shot for connections with a
# read limit) into a provided-buffer ring whose buffers are LinkBuffer pool
# chunks (_Ring.bufs). A completion of at least _Ring.adopt bytes - or a
# smaller one for an empty input whose tail node has no room for it - hands
# its chunk to the input LinkBuffer as a sealed node and the ring gets a
# fresh chunk for that id (no copy); otherwise it is copied into the tail
# node and the same chunk goes back at once (uring_deliver). Polls are armed
# only for EPOLLOUT. Output: flush_nowait inside the pass queues a SEND (see
# "gathered sends" below), submitted with the round's one
# io_uring_enter. Request ids, buffer and output ownership, cancellation and
# teardown: docs/design.md, "The io_uring backend". A server's listener is
# accepted through a ring too (multishot ACCEPT; "multishot accept" at the end
# of this file). Opt-in: SEND_ZC for large outputs ("zero-copy sends" below).

cdef enum:
    # the low two bits of a request's user_data say what it is (0 is a cancel's)
    ID_POLL = 0
    ID_RECV = 1
    ID_SEND = 2
    ID_ACCEPT = 3               # a server's multishot ACCEPT (its owner is the EventLoop)
    ID_KIND = 3
    URING_ENTRIES = 4096
    URING_REAP = 256
    # provided buffers per poller (a power of two). 128, not more: with 512 pool
    # chunks held by the ring, 2,000 idle connections then cost 586 B of RSS each
    # instead of 385 (benchmarks/idle.py; glibc places the connections' memory
    # differently), and 128/512 made no difference to throughput (benchmarks.md)
    URING_NBUFS = 128
    URING_BUFSZ = 8192          # bytes each (a pool chunk): 1 MiB per poller
    # a completion of at least this many bytes hands its chunk to the input
    # LinkBuffer; a smaller one is copied unless the input is empty and the copy
    # would need a new node
    # (NETPOLL_URING_ADOPT; measured in docs/benchmarks.md, "round 5")
    URING_ADOPT = 4096
    # flush_nowait gathers outputs below this into the pass's SENDs; a larger one
    # goes out with send(2) at once (its syscall is amortised over the bytes, and
    # at 16 KiB x 500 gathered SENDs measured 0.65x epoll, this 0.89x)
    URING_GATHER_MAX = 16384
    # NETPOLL_URING_SEND_ZC=1: outputs of at least this many bytes go out with
    # SEND_ZC (NETPOLL_URING_SEND_ZC_MIN); "zero-copy sends" below
    URING_ZC_MIN = 16384
    # ring teardown waits this many ms at most for SEND_ZC notifications
    URING_ZC_DRAIN_MS = 250

cdef tuple _uring_status = None        # (errno, reason) or (0, "") once probed


cdef tuple uring_unavailable():
    """(0, "") when an io_uring poller can be made here, else (errno, why)."""
    global _uring_status
    cdef np_ring r
    cdef unsigned char ops[2]
    cdef int rc
    if _uring_status is not None:
        return _uring_status
    rc = np_ring_init(&r, 8, IORING_SETUP_CLAMP)
    if rc < 0:
        err = -rc
        hint = ""
        if err in (_errno.EPERM, _errno.ENOSYS, _errno.EACCES):
            hint = " (blocked by seccomp, kernel.io_uring_disabled or an old kernel)"
        status = (err, f"io_uring_setup: {os.strerror(err)}{hint}")
    else:
        ops[0] = IORING_OP_POLL_ADD
        ops[1] = IORING_OP_POLL_REMOVE
        rc = np_ring_probe(&r, ops, 2)
        np_ring_exit(&r)
        if rc < 0:
            status = (-rc, f"IORING_REGISTER_PROBE: {os.strerror(-rc)}")
        elif rc == 0:
            status = (_errno.ENOSYS, "the kernel's io_uring lacks POLL_ADD/POLL_REMOVE")
        else:
            status = (0, "")
    _uring_status = status
    return status


@cython.binding(True)
def _uring_probe(forbid=None):
    """(errno, reason) why io_uring cannot be used here, (0, "") when it can.

    Tests only: forbid=(errno, reason) makes the probe report that from now on
    (as seccomp would), forbid=() probes again.
    """
    global _uring_status
    if forbid is not None:
        _uring_status = tuple(forbid) if forbid else None
    return uring_unavailable()


cdef bint _recv_model_wanted():
    # NETPOLL_URING_RECV=0 keeps the poll-only model (for comparison); multishot
    # recv needs Linux 6.0
    if os.environ.get("NETPOLL_URING_RECV", "1") == "0":
        return False
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 0)


cdef Py_ssize_t uring_requests = 0     # requests in flight, over all rings
cdef Py_ssize_t uring_parked = 0       # outputs of finished connections awaiting a SEND's CQE
cdef Py_ssize_t uring_enobufs = 0      # RECVs ended by an empty provided-buffer ring (re-armed)
cdef Py_ssize_t uring_adopted = 0      # provided buffers handed to an input LinkBuffer
cdef Py_ssize_t uring_copied = 0       # provided buffers copied out (below the threshold)
cdef Py_ssize_t uring_bufs = 0         # chunks held by buffer rings, over all rings
cdef Py_ssize_t uring_leaked = 0       # chunks leaked by rings torn down under live requests

# SEND_ZC (opt-in; "zero-copy sends" below)
cdef bint _zc_refused = False          # the kernel refused SEND_ZC (EOPNOTSUPP): plain SENDs
cdef Py_ssize_t uring_zc_sends = 0     # SEND_ZC/SENDMSG_ZC requests submitted
cdef Py_ssize_t uring_zc_notifs = 0    # their notification CQEs
cdef Py_ssize_t uring_zc_copied = 0    # notifications saying the kernel copied after all
cdef Py_ssize_t uring_zc_pending = 0   # SEND_ZCs awaiting their notification, over all rings
cdef Py_ssize_t uring_zc_leaked = 0    # chunks leaked by a teardown that could not wait
cdef Py_ssize_t uring_zc_drained = 0   # SEND_ZCs a ring teardown waited for


@cython.final
cdef class _ZcSend:
    """The owner of a SEND_ZC request in the ring's table, until its notification."""
    cdef Connection c      # the connection, until the result CQE (None once parked)
    cdef LinkBuffer held   # the bytes the kernel may still read: a slice of the
                           # output after the result CQE, the whole output if parked
    cdef bint parked       # counted in parked_outputs


cdef Py_ssize_t _zc_setup(np_ring* r) except -1:
    # NETPOLL_URING_SEND_ZC=1 (default 0): SEND_ZC for outputs of at least
    # NETPOLL_URING_SEND_ZC_MIN bytes (default 16 KiB). 0: off.
    cdef unsigned char ops[2]
    raw = os.environ.get("NETPOLL_URING_SEND_ZC", "0")
    if raw in ("", "0"):
        return 0
    if raw != "1":
        raise ValueError(f"NETPOLL_URING_SEND_ZC={raw!r}: expected 0 or 1")
    n = _env_int("NETPOLL_URING_SEND_ZC_MIN", URING_ZC_MIN, 1, 1 << 30)
    ops[0] = IORING_OP_SEND_ZC
    ops[1] = IORING_OP_SENDMSG_ZC
    if np_ring_probe(r, ops, 2) != 1:
        config.logger.debug("netpoll: io_uring SEND_ZC unsupported by this kernel: plain SENDs")
        return 0
    return n


@cython.binding(True)
def _uring_zc_debug(reset=False):
    """Counters of the SEND_ZC path (tests): pending returns to zero once every
    connection is gone and its notifications came (or its ring is torn down).
    reset=True forgets an earlier refusal (EOPNOTSUPP)."""
    global _zc_refused
    if reset:
        _zc_refused = False
    return {"sends": uring_zc_sends, "notifs": uring_zc_notifs, "copied": uring_zc_copied,
            "pending": uring_zc_pending,
            "drained": uring_zc_drained, "leaked_chunks": uring_zc_leaked,
            "refused": _zc_refused}


@cython.binding(True)
def _uring_debug():
    """Counters (tests): requests and parked_outputs return to zero once every
    connection is gone, ring_chunks once every ring is torn down; enobufs,
    adopted, copied and leaked_chunks only grow."""
    return {"requests": uring_requests, "parked_outputs": uring_parked,
            "enobufs": uring_enobufs, "adopted": uring_adopted, "copied": uring_copied,
            "ring_chunks": uring_bufs, "leaked_chunks": uring_leaked}


_SETUP_NAMES = {
    "coop_taskrun": IORING_SETUP_COOP_TASKRUN,
    "taskrun_flag": IORING_SETUP_TASKRUN_FLAG,
    "single_issuer": IORING_SETUP_SINGLE_ISSUER,
    "submit_all": IORING_SETUP_SUBMIT_ALL,
    "no_sqarray": IORING_SETUP_NO_SQARRAY,
    "defer_taskrun": IORING_SETUP_DEFER_TASKRUN,    # implies single_issuer, taskrun_flag
}
# DEFER_TASKRUN + SUBMIT_ALL by default: 5-30 % faster than CLAMP only, and at
# 500 connections x 16 KiB 1.2x epoll where CLAMP only is 0.68x with a p99 of
# ~200 ms (docs/benchmarks.md, round 5). Its cost: a single-issuer ring released
# from another thread than its own cannot be cancelled there and leaks its
# provided buffers (docs/design.md). NETPOLL_URING_SETUP=none for CLAMP only.
_SETUP_DEFAULT = "defer_taskrun,submit_all"


cdef unsigned int _env_setup_flags() except? 0:
    # NETPOLL_URING_SETUP: the ring's IORING_SETUP_* flags beyond CLAMP, as
    # comma-separated names (_SETUP_NAMES); "" or "none" for CLAMP only.
    cdef unsigned int flags = IORING_SETUP_CLAMP
    spec = os.environ.get("NETPOLL_URING_SETUP", _SETUP_DEFAULT)
    for name in spec.replace(" ", "").lower().split(","):
        if name in ("", "none"):
            continue
        if name not in _SETUP_NAMES:
            raise ValueError(f"NETPOLL_URING_SETUP: unknown flag {name!r} "
                             f"(known: {', '.join(sorted(_SETUP_NAMES))})")
        flags |= <unsigned int>_SETUP_NAMES[name]
    if flags & IORING_SETUP_DEFER_TASKRUN:
        flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_TASKRUN_FLAG
    return flags


def _uring_env_setup():
    """The flag names NETPOLL_URING_SETUP asks for (ValueError for an unknown name)."""
    return _uring_setup_names(_env_setup_flags())


def _uring_setup_names(unsigned int flags):
    """The names of the IORING_SETUP_* flags in `flags` (tests, debugging)."""
    names = [n for n, f in _SETUP_NAMES.items() if flags & <unsigned int>f]
    if flags & IORING_SETUP_CLAMP:
        names.insert(0, "clamp")
    return names


cdef unsigned int _uring_refused = 0   # tests: setup flags to treat as unknown to the kernel


def _uring_refuse(flags):
    """Tests: make io_uring_setup fail with EINVAL while any of these flag names is asked."""
    global _uring_refused
    cdef unsigned int m = 0
    for name in flags:
        m |= <unsigned int>_SETUP_NAMES[name]
    _uring_refused = m


cdef inline int _ring_try(np_ring* r, unsigned int entries, unsigned int flags) noexcept:
    if flags & _uring_refused:
        return -_errno.EINVAL
    return np_ring_init(r, entries, flags)


cdef int _ring_init(np_ring* r, unsigned int entries, unsigned int flags) except? -1:
    # A kernel that does not know a flag refuses the whole setup with EINVAL:
    # drop the optional flags one at a time (newest first), then CLAMP only.
    cdef int rc = _ring_try(r, entries, flags)
    cdef unsigned int f
    for f in (IORING_SETUP_NO_SQARRAY, IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SINGLE_ISSUER,
              IORING_SETUP_SUBMIT_ALL, IORING_SETUP_TASKRUN_FLAG, IORING_SETUP_COOP_TASKRUN):
        if rc != -_errno.EINVAL or not (flags & f):
            continue
        flags &= ~f
        if f == IORING_SETUP_SINGLE_ISSUER:
            flags &= ~IORING_SETUP_DEFER_TASKRUN     # needs SINGLE_ISSUER
        if not (flags & (IORING_SETUP_COOP_TASKRUN | IORING_SETUP_DEFER_TASKRUN)):
            flags &= ~IORING_SETUP_TASKRUN_FLAG      # needs COOP_TASKRUN or DEFER_TASKRUN
        rc = _ring_try(r, entries, flags)
    if rc == -_errno.EINVAL and flags != IORING_SETUP_CLAMP:
        rc = _ring_try(r, entries, IORING_SETUP_CLAMP)
    return rc


cdef unsigned int _env_nbufs() except 0:
    # NETPOLL_URING_BUFS: provided buffers per poller (a power of two, 1..32768);
    # tests use a tiny ring to make it run dry (ENOBUFS)
    raw = os.environ.get("NETPOLL_URING_BUFS", "")
    if not raw:
        return URING_NBUFS
    n = int(raw)
    if n < 1 or n > 32768 or n & (n - 1):
        raise ValueError(f"NETPOLL_URING_BUFS={raw!r}: expected a power of two, 1..32768")
    return n


cdef Py_ssize_t _env_adopt() except -1:
    # NETPOLL_URING_ADOPT: completions of at least this many bytes are handed to
    # the input LinkBuffer without a copy (smaller ones too when the input is
    # empty and its tail has no room for them); 0 copies every one, 1 copies none
    raw = os.environ.get("NETPOLL_URING_ADOPT", "")
    if not raw:
        return URING_ADOPT
    n = int(raw)
    if n < 0:
        raise ValueError(f"NETPOLL_URING_ADOPT={raw!r}: expected a byte count >= 0")
    return n


cdef bint _send_model_wanted():
    # NETPOLL_URING_SEND=0: flush_nowait sends with send(2) at once (for comparison)
    return os.environ.get("NETPOLL_URING_SEND", "1") != "0"


@cython.final
cdef class _Ring:

    def __cinit__(self, unsigned int entries, bint want_recv=False):
        cdef int rc = _ring_init(&self.r, entries, _env_setup_flags())
        if rc < 0:
            raise oserror(-rc, "io_uring_setup")
        self.send = _send_model_wanted()
        if self.send:
            self.zc_min = _zc_setup(&self.r)
        self.ncqes = URING_REAP
        self.cqes = <np_cqe*>c_malloc(sizeof(np_cqe) * self.ncqes)
        if self.cqes == NULL:
            np_ring_exit(&self.r)
            raise MemoryError()
        if want_recv:
            self.adopt = _env_adopt()
            rc = np_pbuf_init(&self.r, &self.pb, _env_nbufs(), URING_BUFSZ)
            if rc == 0:
                self.recv = True
                self.bufs_init()     # on MemoryError __dealloc__ tears the ring down
            else:
                config.logger.debug("netpoll: io_uring provided-buffer ring unavailable (%s): "
                                    "poll-only model", os.strerror(-rc))

    def __dealloc__(self):
        self._teardown()         # before `reqs` (owners of memory in use) goes
        if self.cqes != NULL:
            free(self.cqes)
            self.cqes = NULL
        free(self.req_ids)
        free(self.free_slots)
        self.req_ids = NULL
        self.free_slots = NULL

    cdef void _teardown(self) noexcept:
        # Never unmap (or let go of) memory the kernel may still use - a provided
        # buffer it writes, a send's output it reads: cancel every request
        # synchronously and close the ring first (np_pbuf_teardown), in both models.
        # Only then do the ring's chunks go back to the pool - unless the cancel
        # could not be waited for (a single-issuer ring closed from another
        # thread): their blocks are leaked then (chunk_leak), never reused.
        global uring_bufs, uring_leaked
        cdef int leak
        cdef unsigned int i
        cdef PyObject* o
        if self.naccept:
            _uring_accept_teardown(self)    # fds accepted but not yet reaped are closed
        if self.zlive:
            _uring_zc_drain(self)           # SEND_ZC bytes the kernel may still read
        leak = np_pbuf_teardown(&self.r, &self.pb)
        self.recv = False
        if self.bufs != NULL:
            for i in range(self.nbufs):
                o = self.bufs[i]
                if o != NULL:
                    self.bufs[i] = NULL
                    uring_bufs -= 1
                    if leak:
                        chunk_leak(<Chunk>o)
                        uring_leaked += 1
                    Py_XDECREF(o)
            free(self.bufs)
            self.bufs = NULL

    cdef int bufs_init(self) except -1:
        global uring_bufs
        cdef unsigned int i, n = self.pb.nbufs
        cdef Chunk c
        self.bufs = <PyObject**>calloc(n, sizeof(PyObject*))
        if self.bufs == NULL:
            raise MemoryError()
        self.nbufs = n
        for i in range(n):
            c = chunk_new(URING_BUFSZ)
            Py_INCREF(c)
            self.bufs[i] = <PyObject*>c
            uring_bufs += 1
            np_pbuf_put(&self.pb, i, c.data)
        return 0

    cdef void buf_put(self, unsigned int bid) noexcept:
        bid &= self.pb.mask
        np_pbuf_put(&self.pb, bid, (<Chunk>self.bufs[bid]).data)

    cdef io_uring_sqe* sqe(self) except NULL:
        cdef io_uring_sqe* s
        if self.r.fd < 0:
            raise OSError(_errno.EBADF, "io_uring: the ring is closed")
        s = np_ring_sqe(&self.r)
        if s == NULL:
            self.flush()         # SQ full: hand the batch to the kernel first
            s = np_ring_sqe(&self.r)
            if s == NULL:
                raise OSError(_errno.EBUSY, "io_uring: the submission queue is full")
        return s

    cdef int flush(self) except -1:
        cdef unsigned int flags = 0
        if self.r.fd < 0:
            return 0
        if np_ring_overflowed(&self.r) or (self.r.efd >= 0 and np_ring_taskrun(&self.r)):
            # CQ backlog to move in, or (DEFER_TASKRUN) completion work to run
            flags = IORING_ENTER_GETEVENTS
        elif np_ring_pending(&self.r) == 0:
            return 0
        return self.enter(flags)

    cdef int enter(self, unsigned int flags) except -1:
        # io_uring_enter for what is queued; EBUSY/EAGAIN (the kernel cannot take
        # it now) leaves it queued for the next submit
        cdef int rc = np_ring_submit(&self.r, 0, flags)
        if rc < 0:
            if rc != -_errno.EBUSY and rc != -_errno.EAGAIN:
                raise oserror(-rc, "io_uring_enter")
            return 0
        return rc

    cdef int flush_removal(self) except -1:
        # Poller.remove, before the caller's close(2). The request a cancel ends
        # keeps its reference to the socket's file until its completion has run,
        # and on a DEFER_TASKRUN ring that completion is task work deferred to our
        # next io_uring_enter(GETEVENTS): a close(2) in between would leave the
        # socket open (no FIN for the peer) until the loop's next pass. So enter
        # with GETEVENTS here: the cancel and the completions it queues run in
        # this one system call. (Without DEFER_TASKRUN they run on the way out
        # of the submitting system call anyway.)
        if self.r.fd < 0 or self.r.efd < 0:
            return self.flush()
        return self.enter(IORING_ENTER_GETEVENTS)

    cdef int close(self) except -1:
        self._teardown()
        self.reqs_clear()        # after the synchronous cancel: nothing is in use now
        return 0

    # -- the request table ---------------------------------------------------------
    # A request's user_data is generation << 32 | slot << 2 | kind. The slot
    # holds a strong reference to the request's owner (its Connection, or a
    # parked output LinkBuffer) until the request's final CQE or its removal; a
    # late CQE of a removed request finds another generation in its slot (or
    # a free slot) and is dropped. A C array and a list instead of a dict keyed
    # by ever-growing ids: no int objects, no rehashing.

    cdef unsigned long long req_new(self, object owner, unsigned int kind) except 0:
        global uring_requests
        cdef unsigned int slot, i, n
        cdef unsigned long long* ids
        cdef unsigned int* free_
        cdef unsigned long long ud
        if self.nfree == 0:
            n = self.nslots * 2 if self.nslots else 256
            if n > (1u << 29):
                raise MemoryError("io_uring: too many requests in flight")
            ids = <unsigned long long*>realloc(self.req_ids, sizeof(unsigned long long) * n)
            if ids == NULL:
                raise MemoryError()
            self.req_ids = ids
            free_ = <unsigned int*>realloc(self.free_slots, sizeof(unsigned int) * n)
            if free_ == NULL:
                raise MemoryError()
            self.free_slots = free_
            if self.reqs is None:
                self.reqs = []
            self.reqs.extend([None] * (n - self.nslots))
            i = n
            while i > self.nslots:       # lowest slots handed out first
                i -= 1
                self.req_ids[i] = 0
                self.free_slots[self.nfree] = i
                self.nfree += 1
            self.nslots = n
        self.nfree -= 1
        slot = self.free_slots[self.nfree]
        self.gen += 1
        ud = ((self.gen & 0xffffffffULL) << 32) | (<unsigned long long>slot << 2) | kind
        if ud >> 32 == 0:
            self.gen += 1
            ud |= (self.gen & 0xffffffffULL) << 32
        self.req_ids[slot] = ud
        self.reqs[slot] = owner
        self.live += 1
        uring_requests += 1
        return ud

    cdef object req_get(self, unsigned long long ud):
        cdef unsigned int slot = <unsigned int>((ud >> 2) & 0x3fffffff)
        if slot >= self.nslots or self.req_ids[slot] != ud:
            return None
        return <object>PyList_GET_ITEM(self.reqs, slot)

    cdef int req_set(self, unsigned long long ud, object owner) except -1:
        # only uring_park_send: the owner becomes a parked output LinkBuffer
        global uring_parked
        cdef unsigned int slot = <unsigned int>((ud >> 2) & 0x3fffffff)
        if slot < self.nslots and self.req_ids[slot] == ud:
            self.reqs[slot] = owner
            uring_parked += 1
            self.parked += 1
        return 0

    cdef void req_end(self, unsigned long long ud) noexcept:
        global uring_requests, uring_parked, uring_zc_pending
        cdef unsigned int slot = <unsigned int>((ud >> 2) & 0x3fffffff)
        if ud == 0 or slot >= self.nslots or self.req_ids[slot] != ud:
            return
        self.req_ids[slot] = 0
        owner = <object>PyList_GET_ITEM(self.reqs, slot)
        if type(owner) is LinkBuffer:
            uring_parked -= 1
            self.parked -= 1
        elif type(owner) is _ZcSend:
            uring_zc_pending -= 1
            self.zlive -= 1
            if (<_ZcSend>owner).parked:
                uring_parked -= 1
                self.parked -= 1
        self.reqs[slot] = None
        self.free_slots[self.nfree] = slot
        self.nfree += 1
        self.live -= 1
        uring_requests -= 1

    cdef int reqs_clear(self) except -1:
        global uring_requests, uring_parked, uring_zc_pending
        cdef unsigned int i
        uring_requests -= self.live
        uring_parked -= self.parked
        uring_zc_pending -= self.zlive
        self.parked = 0
        self.zlive = 0
        for i in range(self.nslots):
            if self.req_ids[i]:
                self.req_ids[i] = 0
                self.free_slots[self.nfree] = i
                self.nfree += 1
        self.live = 0
        if self.reqs is not None:
            self.reqs[:] = [None] * len(self.reqs)
        return 0


cdef int uring_sync(Poller p, Connection c) except -1:
    """Make c's requests in flight match its interest mask c.events.

    Poll-only model: one POLL_ADD with the whole mask. Recv model: a multishot
    RECV while EPOLLIN is wanted, and a POLL_ADD for EPOLLOUT while writing.
    Submitted with the pass, or at once outside it.
    """
    cdef io_uring_sqe* sqe
    cdef unsigned int want = c.events
    cdef unsigned int pollmask = want
    cdef unsigned long long pid
    if p.ring.recv and not c.uring_norecv:
        pollmask = want & EPOLLOUT
        if want & EPOLLIN:
            if not c.uring_rid:
                sqe = p.ring.sqe()
                pid = p.ring.req_new(c, ID_RECV)
                if c.read_limit:
                    np_sqe_recv_once(sqe, c.fd, pid)      # bounded input: a buffer per arm
                else:
                    np_sqe_recv_multishot(sqe, c.fd, pid)
                c.uring_rid = pid
        elif c.uring_rid and not c.uring_rstop:
            # reading paused: cancel, but keep the id until the final CQE, so
            # data the kernel received before the cancel landed is still taken
            # in (in order); no new recv is armed before that CQE
            sqe = p.ring.sqe()
            np_sqe_cancel(sqe, c.uring_rid, 0)
            c.uring_rstop = True
    if c.uring_sid:
        pollmask &= ~EPOLLOUT     # a SEND is in flight: its CQE is the writable event
    if c.uring_armed != pollmask:
        uring_disarm(p, c)
        if pollmask:
            sqe = p.ring.sqe()
            pid = p.ring.req_new(c, ID_POLL)
            np_sqe_poll_add(sqe, c.fd, pollmask, pid)
            c.uring_id = pid
            c.uring_armed = pollmask
    if not p.in_pass:
        p.ring.flush()
    return 0


cdef int uring_cancel_recv(Poller p, Connection c) except -1:
    # The connection is closing: ASYNC_CANCEL of its recv. CQEs it posts until
    # the cancel lands (data in provided buffers) find no connection: their
    # buffers go back to the ring and the bytes are dropped, like unread input
    # of a closing socket.
    cdef io_uring_sqe* sqe
    cdef unsigned long long rid = c.uring_rid
    if rid:
        p.ring.req_end(rid)
        c.uring_rid = 0
        if p.ring.r.fd >= 0 and not c.uring_rstop:
            sqe = p.ring.sqe()
            np_sqe_cancel(sqe, rid, 0)
        c.uring_rstop = False
    return 0


cdef int uring_disarm(Poller p, Connection c) except -1:
    """Queue a POLL_REMOVE for c's armed poll; its late CQEs find no connection."""
    cdef io_uring_sqe* sqe
    if c.uring_armed:
        p.ring.req_end(c.uring_id)
        c.uring_armed = 0
        if p.ring.r.fd >= 0:
            sqe = p.ring.sqe()
            np_sqe_poll_remove(sqe, c.uring_id, 0)
        c.uring_id = 0
    return 0


cdef int uring_arm(Poller p, Connection c) except -1:
    return uring_sync(p, c)


cdef int uring_modify(Poller p, Connection c, unsigned int events) except -1:
    c.events = events
    return uring_sync(p, c)


cdef int uring_deliver(_Ring ring, Connection c, unsigned int bid, Py_ssize_t n) except -1:
    # A completed receive of n bytes in provided buffer bid into the input
    # LinkBuffer; what do_read does after its recv(2). At or above ring.adopt
    # bytes, or when the input is empty and a copy would need a new node anyway
    # (one chunk and one node allocated either way, so the hand-over only saves
    # the memcpy), the buffer's chunk itself becomes the buffer's tail node
    # (sealed: nothing is written after the received bytes) and slot bid gets a
    # fresh pool chunk; otherwise the bytes are copied into the tail's room and
    # the chunk stays. Only an empty input takes a small completion's chunk: a
    # sealed node has no room, so a peer trickling small segments to a handler
    # that waits for more would otherwise pin a whole 8 KiB chunk per segment. Either way the caller (the walk) then
    # publishes slot bid's chunk to the kernel. (A pending booking is never
    # there - only book/book_ack and adopt write an input buffer - but would
    # make us copy.)
    global uring_adopted, uring_copied
    cdef Py_ssize_t avail, k, off = 0
    cdef char* dst
    cdef char* data
    cdef Chunk got, fresh
    if c.closed_by or c.draining or c.finished or ring.bufs == NULL:
        return 0                  # not taken in: the connection is closing or draining
    if c.inbuf is _NO_INPUT:
        c.own_in()
    bid &= ring.pb.mask
    got = <Chunk>ring.bufs[bid]
    if ring.adopt and c.inbuf.pending == 0 and (
            n >= ring.adopt or (c.inbuf.length == 0 and not c.inbuf.book_fits(n))):
        # the kernel is done with `got` (this CQE) and gets `fresh` in its place
        fresh = chunk_new(URING_BUFSZ)
        c.inbuf.adopt(got, n)
        Py_INCREF(fresh)
        ring.bufs[bid] = <PyObject*>fresh
        Py_DECREF(got)            # the slot's reference; the node holds its own
        uring_adopted += 1
    else:
        data = got.data
        while off < n:
            dst = c.inbuf.book(n - off, c.max_size, &avail)
            k = avail if avail < n - off else n - off
            memcpy(dst, data + off, k)
            c.inbuf.book_ack(k)
            off += k
        uring_copied += 1
    c.rx_total += n
    if c.inbuf.length > c.max_size:
        c.max_size = min(c.inbuf.length, BOOK_MAX)
    if c.idle_timeout > 0:
        c.last_active = monotonic()
    c.on_data()
    return 0


cdef Connection _uring_take(_Ring ring, np_cqe* cq):
    # The connection a CQE is for (None: a cancel's or POLL_REMOVE's own CQE, or
    # a removed or replaced request); a final CQE ends its request.
    cdef unsigned long long pid = cq.user_data
    cdef unsigned int kind
    cdef Connection c
    if pid == 0:
        return None
    obj = ring.req_get(pid)
    if obj is None:
        return None
    if type(obj) is not Connection:
        if type(obj) is _ZcSend:
            return _uring_zc_take(ring, <_ZcSend>obj, cq)
        # the output of a connection finished while its SEND was in flight
        # (uring_park_send): the kernel is done reading it now
        ring.req_end(pid)
        return None
    c = <Connection>obj
    if not (cq.flags & IORING_CQE_F_MORE):
        ring.req_end(pid)
        kind = pid & ID_KIND
        if kind == ID_RECV:
            c.uring_rid = 0
            c.uring_rstop = False
        elif kind == ID_SEND:
            c.uring_sid = 0
        else:
            c.uring_armed = 0
            c.uring_id = 0
    return c


cdef int _uring_complete(Poller p, Connection c, np_cqe* cq) except -1:
    # One CQE of c: a send, a receive or a poll (the kind bits of its id).
    global uring_enobufs
    cdef unsigned int ev
    cdef int res = cq.res
    if cq.user_data & ID_KIND == ID_SEND:
        if cq.flags & IORING_CQE_F_MORE:
            return _uring_zc_sent(p, c, cq)    # a SEND_ZC's result: its notification follows
        if res == -EOPNOTSUPP and p.ring.zc_min and not _zc_refused:
            # (C constants: errno's module attributes cost ~100 instructions per CQE)
            return _uring_zc_refused(p, c)
        return _uring_sent(p, c, res)
    if cq.user_data & ID_KIND == ID_RECV:
        if cq.flags & IORING_CQE_F_BUFFER:
            if res > 0:
                uring_deliver(p.ring, c, cq.flags >> IORING_CQE_BUFFER_SHIFT, res)
        elif c.closed_by:
            pass
        elif res == 0:
            c.mark_eof(None)
        elif res < 0 and res != -ENOBUFS and res != -ECANCELED:
            c.mark_eof(sockerror(-res))
        elif res == -ENOBUFS:
            # the ring ran dry: this CQE ended the RECV; the walk gives the
            # buffers of this batch back, then uring_sync re-arms it
            uring_enobufs += 1
        return 0
    if res < 0:
        if res == -ECANCELED:
            return 0
        ev = EPOLLERR
    else:
        ev = <unsigned int>res
    if p.ring.recv and not c.uring_norecv:
        # input, EOF and input errors come from the recv; the poll is for EPOLLOUT
        if ev & (EPOLLERR | EPOLLHUP):
            ev |= EPOLLOUT        # the send reports the error
        ev &= EPOLLOUT
    c.on_event(ev)
    return 0


cdef int uring_walk(Poller p) except -1:
    """Reap one batch of CQEs and do its I/O (no user code: the caller runs the
    queues). Returns how many CQEs there were."""
    cdef _Ring ring = p.ring
    cdef np_cqe* cq
    cdef Connection c
    cdef int i = 0
    cdef int n = np_ring_reap(&ring.r, ring.cqes, ring.ncqes)
    if n <= 0:
        return 0
    p.in_batch = True
    try:
        while i < n:
            cq = &ring.cqes[i]
            i += 1
            if cq.user_data & ID_KIND == ID_ACCEPT:
                _uring_accept_cqe(p, cq)       # queued for run_pending
                continue
            c = _uring_take(ring, cq)
            try:
                if c is not None:
                    _uring_complete(p, c, cq)
            finally:
                if cq.flags & IORING_CQE_F_BUFFER and ring.recv:
                    # the buffer is ours since this CQE: give its id back, always
                    # (the same chunk, or a fresh one if this one was handed over)
                    ring.buf_put(cq.flags >> IORING_CQE_BUFFER_SHIFT)
            if c is not None and c.registered and p.epfd >= 0:
                uring_sync(p, c)       # re-arm what ended and is still wanted
    finally:
        p.in_batch = False
        # something raised: the rest of the batch left the CQ ring already; give
        # their buffers back and re-arm their requests (data in them is lost
        # only in this failure case, e.g. MemoryError)
        while i < n:
            cq = &ring.cqes[i]
            i += 1
            if cq.user_data & ID_KIND == ID_ACCEPT:
                _uring_accept_cqe(p, cq)
                continue
            c = _uring_take(ring, cq)
            if cq.flags & IORING_CQE_F_BUFFER and ring.recv:
                ring.buf_put(cq.flags >> IORING_CQE_BUFFER_SHIFT)
            if c is not None and c.registered and p.epfd >= 0:
                uring_sync(p, c)
    return n


cdef int uring_take_input(Poller p) except -1:
    """Server shutdown: take in what the ring already received (no user code)."""
    if p.in_batch or p.in_pass or p.epfd < 0:
        return 0
    p.in_pass = True
    try:
        np_ring_submit(&p.ring.r, 0, IORING_ENTER_GETEVENTS)    # runs pending task work
        while uring_walk(p):
            p.ring.flush()
    finally:
        p.in_pass = False
        p.ring.flush()
        if p.wakeups and not p.pending_depth:
            p.hand_off_wakeups()       # no run_pending follows this walk
        if p.accepted:
            p.kick()                   # connections accepted meanwhile: set up soon
    return 0


cdef int uring_pass(Poller p) except -1:
    """The I/O pass of an io_uring poller (Poller._on_ready says why it spins)."""
    cdef int rounds = 0, submitted
    cdef bint deferred = p.ring.r.efd >= 0
    p.in_pass = True
    if deferred:
        np_ring_evfd_begin(&p.ring.r)
    try:
        while p.epfd >= 0:
            # the previous round's SENDs, re-arms and changes, in one io_uring_enter
            # (DEFER_TASKRUN: with GETEVENTS while completion work waits, which
            # runs it: the only place it runs)
            submitted = p.ring.flush()
            if rounds >= p.spin and submitted == 0 and not (deferred and np_ring_cq_ready(&p.ring.r)):
                return 0
            # A SEND (MSG_DONTWAIT) completes inside that io_uring_enter: reap its
            # CQE now, in this pass - left in the ring it would wake the loop
            # again just for the bookkeeping (a second wake-up per request).
            if not uring_walk(p):
                return 0
            rounds += 1
            p.run_pending()
            if rounds >= p.spin + 4:
                return 0          # fairness: the rest waits for the next pass
    finally:
        p.in_pass = False
        if p.wakeups and not p.pending_depth:
            p.hand_off_wakeups()   # a walk raised before its run_pending
        if p.epfd >= 0:
            p.ring.flush()         # re-arms and changes queued by the handlers
            if deferred:
                np_ring_evfd_end(&p.ring.r)     # wakes the loop again if work came meanwhile
    return 0


# -- gathered sends -------------------------------------------------------------------
#
# flush_nowait inside the pass (plain handlers; async handlers' flush() keeps
# send(2), so a flush that completes at once still completes at once) queues a
# SEND of the output instead of calling send(2); the pass submits every queued
# SQE with one io_uring_enter. At most one SEND per connection is in flight
# (c.uring_sid), so output stays in order; what is written meanwhile goes with
# the next SEND, queued from the CQE. The SEND is MSG_DONTWAIT: a full socket
# completes at once with -EAGAIN or a short count, and the connection then
# waits for EPOLLOUT exactly as after a short send(2) (writing, the write
# timeout, the write limit). Ownership: the kernel may read c.outbuf's first
# _slen(c) bytes until the CQE; they are consumed only then. A connection
# finished before that parks its output LinkBuffer in p.polls under the SEND's
# id (uring_park_send); the CQE drops it. Ring teardown cancels synchronously
# before anything is let go.

cdef int uring_send(Poller p, Connection c) except -1:
    """Queue c's output as one SEND/SENDMSG (nothing if one is in flight)."""
    cdef io_uring_sqe* sqe
    cdef iovec* iov
    cdef msghdr* msg
    cdef Py_ssize_t total
    cdef int cnt
    cdef unsigned long long sid
    if c.uring_sid:
        return 0                 # in flight: the rest follows its CQE, in order
    if c.outbuf.length == 0:
        c.outbuf.release_all()
        return 0
    if c.uring_msg is None:
        # the SEND's length, then its msghdr and iovecs (Connection stays small)
        c.uring_msg = bytearray(sizeof(Py_ssize_t) + sizeof(msghdr) + sizeof(iovec) * MAX_IOV)
    msg = <msghdr*>(PyByteArray_AS_STRING(c.uring_msg) + sizeof(Py_ssize_t))
    iov = <iovec*>(<char*>msg + sizeof(msghdr))
    cnt = c.outbuf.fill_iovecs(iov, MAX_IOV, &total)
    if cnt == 1 and iov[0].iov_len > (1 << 30):
        iov[0].iov_len = 1 << 30
        total = iov[0].iov_len
    if uring_zc_fits(p.ring, total):
        return _uring_send_zc(p, c, iov, cnt, total)
    sqe = p.ring.sqe()
    sid = p.ring.req_new(c, ID_SEND)
    if cnt == 1:
        np_sqe_send(sqe, c.fd, iov[0].iov_base, <unsigned int>total, sid)
    else:
        memset(msg, 0, sizeof(msghdr))
        msg.msg_iov = iov
        msg.msg_iovlen = cnt
        np_sqe_sendmsg(sqe, c.fd, msg, sid)
    c.uring_sid = sid
    (<Py_ssize_t*>PyByteArray_AS_STRING(c.uring_msg))[0] = total
    return 0


cdef inline Py_ssize_t _slen(Connection c) noexcept:
    # The length of c's SEND in flight (0: none), kept at the head of c.uring_msg.
    if c.uring_msg is None:
        return 0
    return (<Py_ssize_t*>PyByteArray_AS_STRING(c.uring_msg))[0]


cdef inline void _slen_clear(Connection c) noexcept:
    if c.uring_msg is not None:
        (<Py_ssize_t*>PyByteArray_AS_STRING(c.uring_msg))[0] = 0


cdef int _uring_sent(Poller p, Connection c, int res, bint taken=False) except -1:
    # The CQE of c's SEND: the kernel is done with its bytes (a SEND_ZC's
    # result: they were taken out of the output already, `taken`).
    cdef Py_ssize_t slen = _slen(c)
    cdef double due
    _slen_clear(c)
    if c.finished:
        return 0
    if res > 0 and not taken:
        c.outbuf.consume(res)
    if c.closed_by:
        return 0
    if res < 0 and res != -EAGAIN:
        if c.writing:
            c.on_writable()       # send(2) reports the error to the flush waiting
        else:
            c.mark_eof(sockerror(-res))
        return 0
    if c.writing:
        c.on_writable()           # a flush waits or EPOLLOUT is awaited: the usual path
        return 0
    if c.outbuf.length == 0:
        c.outbuf.release_all()
        if c.idle_timeout > 0:
            c.last_active = monotonic()
        if c.close_when_done and not c.processing:
            c.close()
        return 0
    if res == slen and p.in_pass:
        return uring_send(p, c)   # written meanwhile: the next SEND
    # the socket is full (EAGAIN or a short send): wait for EPOLLOUT, as
    # flush_nowait does after a short send(2)
    c.writing = True
    c.update_events()
    if c.write_timer is None:
        c.write_wait_start = monotonic()
        due = c.write_due()
        if due > 0:
            c.write_timer = p.timers.push(due, c, T_WRITE, _NOWAIT)
    c.check_write_limit()
    return 0


cdef int uring_park_send(Poller p, Connection c) except -1:
    """c is finished with a SEND in flight: keep its output alive until the CQE
    (a SEND_ZC's: until its notification)."""
    global uring_parked
    cdef LinkBuffer out = c.outbuf
    cdef _ZcSend z
    if c.uring_sid:
        owner = p.ring.req_get(c.uring_sid)
        if type(owner) is _ZcSend:
            z = <_ZcSend>owner
            z.c = None
            z.held = out
            z.parked = True
            uring_parked += 1
            p.ring.parked += 1
        else:
            p.ring.req_set(c.uring_sid, out)
        c.outbuf = LinkBuffer.__new__(LinkBuffer)
        c.outbuf.c_close()
        c.uring_sid = 0
        _slen_clear(c)
    return 0


# -- zero-copy sends (opt-in) ---------------------------------------------------------
#
# NETPOLL_URING_SEND_ZC=1: a gathered send (uring_send) of at least
# NETPOLL_URING_SEND_ZC_MIN bytes (default 16 KiB) is a SEND_ZC (one iovec) or
# SENDMSG_ZC, and flush_nowait gathers such outputs instead of calling send(2)
# (URING_GATHER_MAX). The kernel pins the pages instead of copying them, so it
# may read the bytes until the request's *notification* CQE (IORING_CQE_F_NOTIF),
# which comes after the result CQE (res, IORING_CQE_F_MORE) - on TCP once the
# peer has ACKed them. Ownership:
#   * The request's owner in the table is a _ZcSend (not the Connection), from
#     submission to the notification (or a result CQE without F_MORE: nothing
#     follows then).
#   * Result CQE: the `res` bytes sent leave the output as a slice (c_slice: the
#     same chunks, shared, sealed - no copy), held by the _ZcSend until the
#     notification; the connection is free at once (uring_sid = 0), so its next
#     SEND can follow in the same pass and order is kept (one send at a time,
#     each queued behind the previous one's result). The slice's reference keeps
#     the chunks out of the pool and keeps the output's own nodes from being
#     rewound (sole_owner), so nothing the kernel may read is rewritten.
#   * A connection finished before the result CQE parks its whole output in the
#     _ZcSend (uring_park_send).
#   * Notification: the _ZcSend leaves the table and the bytes go.
#   * Ring teardown: after the synchronous cancel, wait (URING_ZC_DRAIN_MS at
#     most, reaping with GETEVENTS) for the notifications still due; if some
#     never come (a peer that does not ACK, or a single-issuer ring closed from
#     another thread) their chunks are leaked (chunk_leak), never reused.
#   * EOPNOTSUPP (a socket without zero-copy, e.g. AF_UNIX): SEND_ZC is off for
#     the process (logged once at debug) and this output goes again as a SEND.

cdef inline bint uring_zc_fits(_Ring ring, Py_ssize_t n) noexcept:
    """A gathered send of n bytes goes with SEND_ZC."""
    return ring.zc_min != 0 and n >= ring.zc_min and not _zc_refused


cdef int _uring_send_zc(Poller p, Connection c, iovec* iov, int cnt, Py_ssize_t total) except -1:
    global uring_zc_sends, uring_zc_pending
    cdef io_uring_sqe* sqe
    cdef msghdr* msg
    cdef unsigned long long sid
    cdef _ZcSend z = _ZcSend.__new__(_ZcSend)
    z.c = c
    sqe = p.ring.sqe()
    sid = p.ring.req_new(z, ID_SEND)
    p.ring.zlive += 1
    uring_zc_pending += 1
    uring_zc_sends += 1
    if cnt == 1:
        np_sqe_send_zc(sqe, c.fd, iov[0].iov_base, <unsigned int>total, sid)
    else:
        msg = <msghdr*>(PyByteArray_AS_STRING(c.uring_msg) + sizeof(Py_ssize_t))
        memset(msg, 0, sizeof(msghdr))
        msg.msg_iov = iov
        msg.msg_iovlen = cnt
        np_sqe_sendmsg_zc(sqe, c.fd, msg, sid)
    c.uring_sid = sid
    (<Py_ssize_t*>PyByteArray_AS_STRING(c.uring_msg))[0] = total
    return 0


cdef Connection _uring_zc_take(_Ring ring, _ZcSend z, np_cqe* cq):
    # A CQE of a SEND_ZC: its result (the connection, if not parked) or its
    # notification (the kernel is done with the bytes: they go).
    global uring_zc_notifs, uring_zc_copied
    cdef Connection c = z.c
    cdef unsigned long long pid = cq.user_data
    if cq.flags & IORING_CQE_F_NOTIF:
        uring_zc_notifs += 1
        if (<unsigned int>cq.res) & IORING_NOTIF_USAGE_ZC_COPIED:
            uring_zc_copied += 1
        ring.req_end(pid)
        return None
    z.c = None
    if not (cq.flags & IORING_CQE_F_MORE):
        ring.req_end(pid)         # no notification follows (the request failed early)
    if c is not None and c.uring_sid == pid:
        c.uring_sid = 0
    return c


cdef int _uring_zc_sent(Poller p, Connection c, np_cqe* cq) except -1:
    # The result CQE of c's SEND_ZC (a notification follows): the bytes sent
    # stay alive, held by the request, until it; the rest of the output is c's.
    cdef int res = cq.res
    cdef _ZcSend z
    if res == -EOPNOTSUPP and not _zc_refused:
        return _uring_zc_refused(p, c)
    owner = p.ring.req_get(cq.user_data)
    if res > 0 and not c.finished and type(owner) is _ZcSend:
        z = <_ZcSend>owner
        z.held = c.outbuf.c_slice(res)
        return _uring_sent(p, c, res, True)
    return _uring_sent(p, c, res)


cdef int _uring_zc_refused(Poller p, Connection c) except -1:
    # EOPNOTSUPP: this socket (and so, cheaply, the process) sends without
    # zero-copy; nothing was sent: this output goes again as a plain SEND.
    global _zc_refused
    _zc_refused = True
    config.logger.debug("netpoll: io_uring SEND_ZC refused (fd %d: %s): plain SENDs from now on",
                        c.fd, os.strerror(_errno.EOPNOTSUPP))
    if p.in_pass and not c.finished and not c.closed_by and not c.writing:
        _slen_clear(c)
        return uring_send(p, c)
    return _uring_sent(p, c, -_errno.EAGAIN)


cdef void _uring_zc_drain(_Ring ring) noexcept:
    # Teardown with SEND_ZC notifications due: the kernel may still read those
    # bytes. Cancel everything else, then reap (GETEVENTS runs the deferred
    # completion work) until they came, URING_ZC_DRAIN_MS at most; leak what
    # is still held after that.
    global uring_accept_closed, uring_zc_drained
    cdef np_cqe cq
    cdef int idle = 0
    cdef bint got
    cdef _ZcSend z
    if ring.r.fd >= 0:
        np_ring_cancel_all(&ring.r)
        while ring.zlive > 0 and idle < URING_ZC_DRAIN_MS:
            if np_ring_submit(&ring.r, 0, IORING_ENTER_GETEVENTS) < 0:
                break             # not the ring's thread (single issuer): cannot wait
            got = False
            while np_ring_reap(&ring.r, &cq, 1) == 1:
                got = True
                if cq.user_data & ID_KIND == ID_ACCEPT:
                    if cq.res >= 0:
                        close(cq.res)
                        uring_accept_closed += 1
                    continue
                owner = ring.req_get(cq.user_data)
                if type(owner) is _ZcSend:
                    z = <_ZcSend>owner
                    if z.c is not None and z.held is None:
                        z.held = z.c.outbuf    # its bytes stay there (abandon comes after)
                    _uring_zc_take(ring, z, &cq)
                    if cq.flags & IORING_CQE_F_NOTIF:
                        uring_zc_drained += 1
            if not got:
                with nogil:       # the peer may be a thread of this process
                    usleep(1000)
                idle += 1
    if ring.zlive > 0:
        _uring_zc_leak(ring)


cdef void _uring_zc_leak(_Ring ring) noexcept:
    # The notifications did not come: the kernel may still read these chunks.
    global uring_zc_leaked, uring_leaked
    cdef unsigned int i
    cdef _ZcSend z
    cdef Py_ssize_t n = 0
    for i in range(ring.nslots):
        if ring.req_ids[i] == 0:
            continue
        owner = <object>PyList_GET_ITEM(ring.reqs, i)
        if type(owner) is not _ZcSend:
            continue
        z = <_ZcSend>owner
        if z.held is not None:
            n += _leak_nodes(z.held)
        if z.c is not None:
            n += _leak_nodes(z.c.outbuf)
    uring_zc_leaked += n
    uring_leaked += n
    config.logger.debug("netpoll: io_uring teardown: %d SEND_ZC notifications did not come; "
                        "%d chunks leaked", ring.zlive, n)


cdef Py_ssize_t _leak_nodes(LinkBuffer b) noexcept:
    cdef Node* r = b.rd
    cdef Chunk ch
    cdef Py_ssize_t n = 0
    while r != NULL:
        ch = <Chunk>r.chunk
        if ch.cls == -2 and ch.base is not None:
            Py_INCREF(ch.base)    # external memory (a bytes object): kept forever
        else:
            chunk_leak(ch)
        n += 1
        r = r.next
    return n


# -- multishot accept -----------------------------------------------------------------
#
# A server whose pollers are io_uring pollers accepts through one poller's ring
# (EventLoop.start_accepting): one ACCEPT with IORING_ACCEPT_MULTISHOT on the
# listening fd, SOCK_NONBLOCK | SOCK_CLOEXEC; each CQE with res >= 0 is a new
# fd. The request is in the ring's table like a recv (kind ID_ACCEPT, owner:
# the EventLoop, a strong reference until the final CQE). Rules:
#   * The walk only queues a CQE (p.accepted); run_pending hands it to the
#     server (EventLoop.uring_accepted), which sets the connection up exactly
#     as the add_reader path does (take_fd -> new_connection: on_prepare is
#     user code, so never inside the walk).
#   * A CQE without IORING_CQE_F_MORE ends the request: the server re-arms if
#     still accepting (EMFILE & co.: backoff first, as on the add_reader path).
#   * Stopping (stop_accepting: shutdown, the listener closed, backoff, a
#     backend switch) submits an ASYNC_CANCEL at once, before the listener's fd
#     is closed: the request holds a reference to the listening *file*, which
#     would otherwise stay open and keep accepting. The id stays in the table
#     until its final CQE (-ECANCELED): a connection the kernel accepted before
#     the cancel landed is set up if the server is still running (a backend
#     switch, backoff) and closed if it is shutting down (new_connection).
#   * A CQE nobody owns (its request ended or was dropped) carries an fd
#     nobody will serve: it is closed, never leaked. So are fds left in the CQ
#     ring at teardown (_uring_accept_teardown, after the synchronous cancel)
#     and fds queued on a poller that closes.
#   * A retired poller (configure(backend=...)/poller_num) moves its servers'
#     accepts to a poller of the new set and stays open until their final CQEs.
#   * EINVAL on the first CQE (a kernel without multishot accept): the server,
#     and every later one in the process, uses the loop's add_reader instead.
#     On by default; NETPOLL_URING_ACCEPT=0 turns it off (uring_accept_wanted).
#   * Shutdown: stop_accepting cancels, then shutdown() reaps the rings at once;
#     fds the kernel accepted before the cancel are set up and drained like the
#     other connections (answered if their request is in), and shutdown's
#     drained waits for the ACCEPT's final CQE (uring_accept_pending). Only
#     after the timeout's force phase (hard_closed) is a late fd closed unserved.

cdef bint _accept_refused = False      # the kernel refused multishot accept (EINVAL)
cdef unsigned short _accept_extra = 0  # tests: unknown accept flags (-> EINVAL)
cdef Py_ssize_t uring_accepts_armed = 0
cdef Py_ssize_t uring_accepted_fds = 0
cdef Py_ssize_t uring_accept_closed = 0  # fds of CQEs nobody owned, closed


@cython.binding(True)
def _uring_accept_debug(refuse=None, reset=False):
    """Counters of the multishot accept path (tests). refuse=True makes new ACCEPTs
    carry an unknown flag (the kernel answers EINVAL); reset=True forgets an
    earlier refusal."""
    global _accept_extra, _accept_refused
    if refuse is not None:
        _accept_extra = 0x8000 if refuse else 0
    if reset:
        _accept_refused = False
    return {"armed": uring_accepts_armed, "accepted": uring_accepted_fds,
            "closed_unowned": uring_accept_closed, "refused": _accept_refused,
            "live": _live_accepts()}


cdef Py_ssize_t _live_accepts():
    cdef Py_ssize_t n = 0
    for ps in _pollers.values():
        for p in (<_PollerSet>ps).pollers:
            if (<Poller>p).uring:
                n += (<Poller>p).ring.naccept
    return n


cdef bint uring_accept_wanted() noexcept:
    # On by default; NETPOLL_URING_ACCEPT=0 keeps the loop's add_reader. A multishot
    # ACCEPT takes connections off the listen queue before this process has read a
    # byte, so a server that stops must still serve what its ring took: shutdown()
    # sets them up and drains them (server.pyx, new_connection), and run_workers'
    # hand-over stops the ring first (EventLoop._pause_accepting) so that what the
    # kernel queues meanwhile stays for the successor sharing the socket.
    return not _accept_refused and os.environ.get("NETPOLL_URING_ACCEPT", "1") != "0"


cdef bint uring_accept_pending(EventLoop server):
    """server has an ACCEPT in a ring's table or a CQE queued for it: a connection
    may still come (shutdown waits for it; its final CQE clears this)."""
    cdef unsigned int i
    cdef unsigned long long ud
    cdef Poller p
    ps = _pollers.get(server.loop)
    if ps is None:
        return False
    for q in (<_PollerSet>ps).pollers:
        p = <Poller>q
        if not p.uring:
            continue
        for item in p.accepted:
            if item[0] is server:
                return True
        if not p.ring.naccept or p.ring.r.fd < 0:
            continue
        for i in range(p.ring.nslots):
            ud = p.ring.req_ids[i]
            if ud and ud & ID_KIND == ID_ACCEPT and p.ring.reqs[i] is server:
                return True
    return False


cdef int uring_take_all(object loop) except -1:
    """shutdown: reap every io_uring poller of loop (accept CQEs included)."""
    ps = _pollers.get(loop)
    if ps is not None:
        for q in list((<_PollerSet>ps).pollers):
            if (<Poller>q).uring:
                uring_take_input(<Poller>q)
    return 0


cdef int uring_accept_arm(Poller p, EventLoop server) except -1:
    """Arm server's multishot ACCEPT on p's ring (submitted with the pass, or at once)."""
    global uring_accepts_armed
    cdef io_uring_sqe* sqe = p.ring.sqe()
    cdef unsigned long long aid = p.ring.req_new(server, ID_ACCEPT)
    np_sqe_accept_multishot(sqe, server.lfd, aid, _accept_extra)
    p.ring.naccept += 1
    uring_accepts_armed += 1
    server.apoller = p
    server.aid = aid
    if not p.in_pass:
        p.ring.flush()
    return 0


cdef int uring_accept_cancel(EventLoop server) except -1:
    """Stop server's ACCEPT: ASYNC_CANCEL submitted at once (before the listener
    closes). The id stays in the table until the final CQE."""
    cdef Poller p = server.apoller
    cdef unsigned long long aid = server.aid
    cdef io_uring_sqe* sqe
    server.apoller = None
    server.aid = 0
    if p is None or not aid or p.ring.r.fd < 0 or p.ring.req_get(aid) is None:
        return 0
    sqe = p.ring.sqe()
    np_sqe_cancel(sqe, aid, 0)
    p.ring.flush_removal()       # (DEFER_TASKRUN: its completion too, so the listener's
    return 0                     # file is released when the caller closes it)


cdef int _uring_accept_cqe(Poller p, np_cqe* cq) except -1:
    # Inside the walk: no user code. Queue the CQE for run_pending; close an
    # fd nobody owns.
    global uring_accept_closed
    cdef unsigned long long aid = cq.user_data
    cdef bint more = (cq.flags & IORING_CQE_F_MORE) != 0
    owner = p.ring.req_get(aid)
    if owner is None:
        if cq.res >= 0:
            close(cq.res)
            uring_accept_closed += 1
        return 0
    if not more:
        p.ring.req_end(aid)
        p.ring.naccept -= 1
    try:
        p.accepted.append((owner, cq.res, more, aid))
    except BaseException:
        if cq.res >= 0:
            close(cq.res)
        raise
    return 0


cdef int uring_run_accepts(Poller p) except -1:
    """run_pending: hand the queued ACCEPT CQEs to their servers (user code may
    run: on_prepare), then run the other pollers' queues, as _on_accept does."""
    global uring_accepted_fds
    cdef Py_ssize_t i = 0
    cdef EventLoop server
    items, p.accepted = p.accepted, []
    try:
        while i < len(items):
            server, res, more, aid = items[i]
            i += 1
            if res >= 0:
                uring_accepted_fds += 1
            server.uring_accepted(res, more, aid)
    finally:
        while i < len(items):        # something raised: never leak the rest's fds
            res = items[i][1]
            i += 1
            if res >= 0:
                close(res)
        if p.retired and not p.conns and p.ring.naccept == 0 and p.epfd >= 0:
            p.close()                # its accepts were moved and have ended
    ps = _pollers.get(p.loop)
    if ps is not None:
        for q in list((<_PollerSet>ps).pollers):
            if q is not p:
                (<Poller>q).run_pending()
    return 0


cdef list _accepting_servers(Poller p):
    """The servers whose current ACCEPT is a request of p's ring."""
    cdef unsigned int i
    cdef unsigned long long ud
    cdef list out = []
    if not p.ring.naccept:
        return out
    for i in range(p.ring.nslots):
        ud = p.ring.req_ids[i]
        if ud and ud & ID_KIND == ID_ACCEPT:
            owner = p.ring.reqs[i]
            if type(owner) is EventLoop and (<EventLoop>owner).aid == ud:
                out.append(owner)
    return out


cdef int uring_accept_retire(Poller p) except -1:
    """p takes no new connections: move its servers' ACCEPTs to the new pollers."""
    cdef EventLoop server
    for server in _accepting_servers(p):
        uring_accept_cancel(server)
        if server.accepting:
            server.start_accepting()
    return 0


cdef int uring_accept_detach(Poller p) except -1:
    """p is closing (the loop closed, or retired and empty): its servers lose
    their ACCEPT, fds queued for them are closed (teardown closes the rest)."""
    global uring_accept_closed
    cdef EventLoop server
    for item in p.accepted:
        if item[1] >= 0:
            close(item[1])
            uring_accept_closed += 1
    p.accepted = []
    for server in _accepting_servers(p):
        server.apoller = None
        server.aid = 0
    return 0


cdef void _uring_accept_teardown(_Ring ring) noexcept:
    # Teardown of a ring with ACCEPTs in the table: cancel synchronously, then
    # close every fd still in the CQ ring (nobody will reap them).
    global uring_accept_closed
    cdef np_cqe cq
    if ring.r.fd >= 0:
        np_ring_cancel_all(&ring.r)
        if np_ring_overflowed(&ring.r):
            np_ring_submit(&ring.r, 0, IORING_ENTER_GETEVENTS)
        while np_ring_reap(&ring.r, &cq, 1) == 1:
            if cq.user_data & ID_KIND == ID_ACCEPT and cq.res >= 0:
                close(cq.res)
                uring_accept_closed += 1
    ring.naccept = 0
