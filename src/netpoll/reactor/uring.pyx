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
# The ring fd is registered with the asyncio loop (add_reader), exactly like
# the epoll fd: an io_uring fd polls readable while its CQ ring holds
# completions. (No IORING_SETUP_DEFER_TASKRUN or COOP_TASKRUN: with those the
# completion task_work would wait for our next io_uring_enter, and the loop's
# epoll_wait on the ring fd would not wake.)
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
# CQE user_data is not a pointer but a poll id: `Poller.polls` maps id ->
# Connection (a strong reference) while the poll is armed. A CQE whose id is
# not in the map (a removed or replaced poll) is dropped without touching any
# connection. Poll requests reference no user memory, so cancellation needs no
# waiting: the kernel only holds a reference to the *file*. That is why
# Poller.remove submits its POLL_REMOVE at once, before close(2): until the
# poll is cancelled the socket stays open in the kernel.
#
# Overflow: the ring is made with 4096 SQ entries (CQ 8192). SQ full: the
# queued SQEs are submitted and the SQE taken again. CQ full: the kernel keeps
# the extra CQEs in its backlog (IORING_FEAT_NODROP) and sets
# IORING_SQ_CQ_OVERFLOW; the next flush enters with GETEVENTS to move them in.
#
# What this model does not do yet (issue 16's full model): multishot accept
# (the listener is still polled by the asyncio loop), multishot RECV into a
# provided-buffer ring, and SEND SQEs gathered per pass. recv/send are still
# system calls made by Connection, as on epoll; docs/design.md has the plan
# and its buffer-ownership rules.

cdef enum:
    URING_ENTRIES = 4096
    URING_REAP = 256

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


@cython.final
cdef class _Ring:

    def __cinit__(self, unsigned int entries):
        cdef int rc = np_ring_init(&self.r, entries, IORING_SETUP_CLAMP)
        if rc < 0:
            raise oserror(-rc, "io_uring_setup")
        self.ncqes = URING_REAP
        self.cqes = <np_cqe*>c_malloc(sizeof(np_cqe) * self.ncqes)
        if self.cqes == NULL:
            np_ring_exit(&self.r)
            raise MemoryError()

    def __dealloc__(self):
        np_ring_exit(&self.r)
        if self.cqes != NULL:
            free(self.cqes)
            self.cqes = NULL

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
        cdef int rc
        cdef unsigned int flags = 0
        if self.r.fd < 0:
            return 0
        if np_ring_overflowed(&self.r):
            flags = IORING_ENTER_GETEVENTS
        elif np_ring_pending(&self.r) == 0:
            return 0
        rc = np_ring_submit(&self.r, 0, flags)
        if rc < 0 and rc != -_errno.EBUSY and rc != -_errno.EAGAIN:
            raise oserror(-rc, "io_uring_enter")
        return 0

    cdef int close(self) except -1:
        np_ring_exit(&self.r)
        return 0


cdef int uring_arm(Poller p, Connection c) except -1:
    """Queue a POLL_ADD for c's interest mask (submitted with the pass, or now)."""
    cdef io_uring_sqe* sqe = p.ring.sqe()
    cdef unsigned long long pid = p.next_id
    p.next_id += 1
    np_sqe_poll_add(sqe, c.fd, c.events, pid)
    p.polls[pid] = c
    c.uring_id = pid
    c.uring_armed = c.events
    if not p.in_pass:
        p.ring.flush()
    return 0


cdef int uring_disarm(Poller p, Connection c) except -1:
    """Queue a POLL_REMOVE for c's armed poll; its late CQEs find no connection."""
    cdef io_uring_sqe* sqe
    if c.uring_armed:
        p.polls.pop(c.uring_id, None)
        c.uring_armed = 0
        if p.ring.r.fd >= 0:
            sqe = p.ring.sqe()
            np_sqe_poll_remove(sqe, c.uring_id, 0)
        c.uring_id = 0
    return 0


cdef int uring_modify(Poller p, Connection c, unsigned int events) except -1:
    c.events = events
    if c.uring_armed != events:
        uring_disarm(p, c)
        if events:
            uring_arm(p, c)
        elif not p.in_pass:
            p.ring.flush()
    return 0


cdef Connection _uring_take(Poller p, dict polls, np_cqe* cq):
    # The connection a CQE is for (None: a POLL_REMOVE's own CQE, or a removed
    # or replaced poll); a final CQE ends its poll.
    cdef unsigned long long pid = cq.user_data
    cdef Connection c
    if pid == 0:
        return None
    obj = polls.get(pid)
    if obj is None:
        return None
    c = <Connection>obj
    if not (cq.flags & IORING_CQE_F_MORE):
        del polls[pid]
        c.uring_armed = 0
        c.uring_id = 0
    return c


cdef int uring_pass(Poller p) except -1:
    """The I/O pass of an io_uring poller (Poller._on_ready says why it spins)."""
    cdef _Ring ring = p.ring
    cdef int n, i, rounds = 0
    cdef np_cqe* cq
    cdef Connection c
    cdef dict polls = p.polls
    p.in_pass = True
    try:
        while rounds < p.spin and p.epfd >= 0:
            ring.flush()          # the previous round's re-arms, in one io_uring_enter
            n = np_ring_reap(&ring.r, ring.cqes, ring.ncqes)
            if n <= 0:
                return 0
            rounds += 1
            p.in_batch = True
            i = 0
            try:
                while i < n:
                    cq = &ring.cqes[i]
                    i += 1
                    c = _uring_take(p, polls, cq)
                    if c is None:
                        continue
                    if cq.res >= 0:
                        c.on_event(<unsigned int>cq.res)
                    elif cq.res != -_errno.ECANCELED:
                        c.on_event(EPOLLERR)
                    if c.registered and c.events and not c.uring_armed \
                            and p.epfd >= 0:
                        uring_arm(p, c)
            finally:
                p.in_batch = False
                # on_event raised: the rest of the batch was taken out of the CQ
                # ring, so re-arm those polls (level-triggered: they report again)
                while i < n:
                    c = _uring_take(p, polls, &ring.cqes[i])
                    i += 1
                    if c is not None and c.registered and c.events \
                            and not c.uring_armed and p.epfd >= 0:
                        uring_arm(p, c)
            p.run_pending()
    finally:
        p.in_pass = False
        if p.epfd >= 0:
            ring.flush()           # re-arms and changes queued by the handlers
    return 0
