/* netpoll: a minimal io_uring ring (raw syscalls and the kernel header only,
 * no liburing). The ring memory protocol needs acquire/release ordering on
 * the shared head/tail words, which is why this part is C and not Cython.
 *
 *   np_ring_init    io_uring_setup + mmap of the SQ ring, CQ ring and SQEs
 *   np_ring_exit    munmap + close (the kernel cancels whatever is in flight)
 *   np_ring_sqe     the next free SQE (zeroed), or NULL when the SQ is full
 *   np_ring_submit  io_uring_enter for every SQE queued since the last submit
 *   np_ring_reap    copy up to n CQEs out of the ring and release their slots
 *   np_ring_probe   IORING_REGISTER_PROBE: is each opcode supported?
 */
#ifndef NETPOLL_URING_H
#define NETPOLL_URING_H

#include <errno.h>
#include <string.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <linux/io_uring.h>
/* flags newer than some distributions' kernel headers (the running kernel
 * decides: io_uring_setup refuses a flag it does not know with EINVAL) */
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16)
#endif

typedef struct np_ring {
    int fd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_flags, *sq_array;
    unsigned sq_entries;
    struct io_uring_sqe *sqes;
    unsigned *cq_head, *cq_tail, *cq_mask, *cq_flags;
    unsigned cq_entries;
    struct io_uring_cqe *cqes;
    void *sq_ptr, *cq_ptr;
    size_t sq_sz, cq_sz, sqes_sz;
    unsigned sq_local_tail;     /* SQEs filled in, not yet published */
    unsigned sq_published;      /* tail published to the kernel, not yet entered */
    unsigned setup_flags;       /* the IORING_SETUP_* flags the ring was made with */
    int efd;                    /* DEFER_TASKRUN: the registered eventfd the loop watches, else -1 */
    int disabled;               /* made with R_DISABLED: enabled by the first submit */
} np_ring;

typedef struct np_cqe {
    unsigned long long user_data;
    int res;
    unsigned flags;
} np_cqe;

static inline int np_ring_init(np_ring *r, unsigned entries, unsigned flags)
{
    struct io_uring_params p;
    int fd, err;
    memset(r, 0, sizeof(*r));
    r->fd = -1;
    r->efd = -1;
    memset(&p, 0, sizeof(p));
    p.flags = flags;
    /* SINGLE_ISSUER binds the ring to the thread that makes it, unless it
     * starts disabled: then to the thread that enables it. Pollers may be
     * made in another thread than their loop's (configure(poller_num=...)),
     * so such a ring is enabled by its first submit (np_ring_submit). */
    if (flags & IORING_SETUP_SINGLE_ISSUER)
        p.flags |= IORING_SETUP_R_DISABLED;
    fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (fd < 0)
        return -errno;
    r->fd = fd;
    r->setup_flags = flags;
    r->disabled = (flags & IORING_SETUP_SINGLE_ISSUER) != 0;
    /* IORING_SETUP_NO_SQARRAY: no index array, SQE i is tail & mask (sq_off.array is 0) */
    r->sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_sz > r->sq_sz)
            r->sq_sz = r->cq_sz;
        r->cq_sz = r->sq_sz;
    }
    r->sq_ptr = mmap(NULL, r->sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                     fd, IORING_OFF_SQ_RING);
    if (r->sq_ptr == MAP_FAILED) {
        err = errno;
        r->sq_ptr = NULL;
        goto fail;
    }
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        r->cq_ptr = r->sq_ptr;
    } else {
        r->cq_ptr = mmap(NULL, r->cq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                         fd, IORING_OFF_CQ_RING);
        if (r->cq_ptr == MAP_FAILED) {
            err = errno;
            r->cq_ptr = NULL;
            goto fail;
        }
    }
    r->sqes_sz = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = (struct io_uring_sqe *)mmap(NULL, r->sqes_sz, PROT_READ | PROT_WRITE,
                                          MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) {
        err = errno;
        r->sqes = NULL;
        goto fail;
    }
    r->sq_head = (unsigned *)((char *)r->sq_ptr + p.sq_off.head);
    r->sq_tail = (unsigned *)((char *)r->sq_ptr + p.sq_off.tail);
    r->sq_mask = (unsigned *)((char *)r->sq_ptr + p.sq_off.ring_mask);
    r->sq_flags = (unsigned *)((char *)r->sq_ptr + p.sq_off.flags);
    r->sq_array = (flags & IORING_SETUP_NO_SQARRAY) ? NULL
                  : (unsigned *)((char *)r->sq_ptr + p.sq_off.array);
    r->sq_entries = p.sq_entries;
    r->cq_head = (unsigned *)((char *)r->cq_ptr + p.cq_off.head);
    r->cq_tail = (unsigned *)((char *)r->cq_ptr + p.cq_off.tail);
    r->cq_mask = (unsigned *)((char *)r->cq_ptr + p.cq_off.ring_mask);
    r->cq_flags = (unsigned *)((char *)r->cq_ptr + p.cq_off.flags);
    r->cq_entries = p.cq_entries;
    r->cqes = (struct io_uring_cqe *)((char *)r->cq_ptr + p.cq_off.cqes);
    r->sq_local_tail = *r->sq_tail;
    r->sq_published = 0;
    r->efd = -1;
    if (flags & IORING_SETUP_DEFER_TASKRUN) {
        /* Completion work of a DEFER_TASKRUN ring runs only inside our
         * io_uring_enter(GETEVENTS), and work queued for it does not make the
         * ring fd poll readable (checked on 6.18: an epoll_wait on the ring fd
         * sleeps through it). The kernel does signal a registered eventfd when
         * it queues such work: that eventfd is what the loop watches. */
        r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (r->efd < 0) {
            err = errno;
            goto fail;
        }
        if (syscall(__NR_io_uring_register, fd, IORING_REGISTER_EVENTFD, &r->efd, 1) < 0) {
            err = errno;
            close(r->efd);
            goto fail;
        }
    }
    return 0;
fail:
    if (r->sqes) munmap(r->sqes, r->sqes_sz);
    if (r->cq_ptr && r->cq_ptr != r->sq_ptr) munmap(r->cq_ptr, r->cq_sz);
    if (r->sq_ptr) munmap(r->sq_ptr, r->sq_sz);
    close(fd);
    memset(r, 0, sizeof(*r));
    r->fd = -1;
    r->efd = -1;
    return -err;
}

static inline void np_ring_exit(np_ring *r)
{
    if (r->fd < 0)
        return;
    if (r->sqes) munmap(r->sqes, r->sqes_sz);
    if (r->cq_ptr && r->cq_ptr != r->sq_ptr) munmap(r->cq_ptr, r->cq_sz);
    if (r->sq_ptr) munmap(r->sq_ptr, r->sq_sz);
    close(r->fd);
    if (r->efd >= 0)
        close(r->efd);
    memset(r, 0, sizeof(*r));
    r->fd = -1;
    r->efd = -1;
}
/* DEFER_TASKRUN, the start of a pass: consume the eventfd's count and stop
 * the kernel from signalling it for the CQEs our own io_uring_enter posts
 * (IORING_CQ_EVENTFD_DISABLED). */
static inline void np_ring_evfd_begin(np_ring *r)
{
    unsigned long long v;
    ssize_t rc = read(r->efd, &v, sizeof(v));
    (void)rc;
    __atomic_store_n(r->cq_flags, *r->cq_flags | IORING_CQ_EVENTFD_DISABLED, __ATOMIC_RELAXED);
}
/* The end of a pass: signal again; if completions or completion work came
 * while it was off (the kernel signals only for the first queued work item,
 * and sets IORING_SQ_TASKRUN then), wake the loop ourselves. Returns 1 then. */
static inline int np_ring_evfd_end(np_ring *r)
{
    unsigned long long one = 1;
    __atomic_store_n(r->cq_flags, *r->cq_flags & ~IORING_CQ_EVENTFD_DISABLED, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if ((__atomic_load_n(r->sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_TASKRUN)
            || __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) != *r->cq_head) {
        ssize_t rc = write(r->efd, &one, sizeof(one));
        (void)rc;
        return 1;
    }
    return 0;
}

/* SQEs queued (filled or published) and not yet handed to io_uring_enter. */
static inline unsigned np_ring_pending(np_ring *r)
{
    return r->sq_published + (r->sq_local_tail - *r->sq_tail);
}

static inline struct io_uring_sqe *np_ring_sqe(np_ring *r)
{
    unsigned head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    unsigned idx;
    struct io_uring_sqe *sqe;
    if (r->sq_local_tail - head >= r->sq_entries)
        return NULL;
    idx = r->sq_local_tail & *r->sq_mask;
    sqe = &r->sqes[idx];
    memset(sqe, 0, sizeof(*sqe));
    if (r->sq_array)
        r->sq_array[idx] = idx;
    r->sq_local_tail++;
    return sqe;
}

/* Publish the queued SQEs and enter the kernel once for all of them.
 * Returns the number submitted, or -errno. */
static inline int np_ring_submit(np_ring *r, unsigned min_complete, unsigned flags)
{
    unsigned tail = *r->sq_tail;
    unsigned n = r->sq_local_tail - tail;
    int ret;
    if (n) {
        __atomic_store_n(r->sq_tail, r->sq_local_tail, __ATOMIC_RELEASE);
        r->sq_published += n;
    }
    n = r->sq_published;
    if (n == 0 && min_complete == 0 && !(flags & IORING_ENTER_GETEVENTS))
        return 0;
    if (r->disabled) {
        if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
            return -errno;
        r->disabled = 0;
    }
    do {
        ret = (int)syscall(__NR_io_uring_enter, r->fd, n, min_complete, flags, NULL, 0);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0)
        return -errno;
    if ((unsigned)ret >= r->sq_published)
        r->sq_published = 0;
    else
        r->sq_published -= (unsigned)ret;
    return ret;
}

/* The CQ ring overflowed into the kernel's backlog (IORING_FEAT_NODROP): an
 * io_uring_enter with GETEVENTS flushes it back into the ring. */
static inline int np_ring_overflowed(np_ring *r)
{
    return (__atomic_load_n(r->sq_flags, __ATOMIC_RELAXED) & IORING_SQ_CQ_OVERFLOW) != 0;
}

static inline int np_ring_reap(np_ring *r, np_cqe *out, int n)
{
    unsigned head = *r->cq_head;
    unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    int i = 0;
    while (head != tail && i < n) {
        struct io_uring_cqe *c = &r->cqes[head & *r->cq_mask];
        out[i].user_data = c->user_data;
        out[i].res = c->res;
        out[i].flags = c->flags;
        i++;
        head++;
    }
    if (i)
        __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    return i;
}

/* IORING_SETUP_TASKRUN_FLAG: completion work is waiting for our next
 * io_uring_enter (IORING_SQ_TASKRUN). */
static inline int np_ring_taskrun(np_ring *r)
{
    return (__atomic_load_n(r->sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_TASKRUN) != 0;
}
static inline int np_ring_cq_ready(np_ring *r)
{
    return __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) != *r->cq_head;
}

/* 1 when every opcode in ops[0..n) is supported, 0 when one is not, -errno on error. */
static inline int np_ring_probe(np_ring *r, const unsigned char *ops, int n)
{
    size_t sz = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *p = (struct io_uring_probe *)calloc(1, sz);
    int ret, i;
    if (p == NULL)
        return -ENOMEM;
    ret = (int)syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_PROBE, p, 256);
    if (ret < 0) {
        ret = -errno;
        free(p);
        return ret;
    }
    ret = 1;
    for (i = 0; i < n; i++) {
        if (ops[i] > p->last_op || ops[i] >= p->ops_len
                || !(p->ops[ops[i]].flags & IO_URING_OP_SUPPORTED)) {
            ret = 0;
            break;
        }
    }
    free(p);
    return ret;
}

static inline void np_sqe_poll_add(struct io_uring_sqe *sqe, int fd, unsigned events,
                                   unsigned long long user_data)
{
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = fd;
    sqe->poll32_events = events;     /* little-endian: no swap needed on x86/arm64 */
    sqe->user_data = user_data;
}

static inline void np_sqe_poll_remove(struct io_uring_sqe *sqe, unsigned long long target,
                                      unsigned long long user_data)
{
    sqe->opcode = IORING_OP_POLL_REMOVE;
    sqe->fd = -1;
    sqe->addr = target;
    sqe->user_data = user_data;
}

/* Multishot accept on a listening socket: one CQE per accepted connection
 * (res = the new fd, SOCK_NONBLOCK | SOCK_CLOEXEC, IORING_CQE_F_MORE while the
 * request stays armed). `extra` is tests only: unknown accept flags, which the
 * kernel refuses with -EINVAL (the fallback to the loop's add_reader). */
static inline void np_sqe_accept_multishot(struct io_uring_sqe *sqe, int fd,
                                           unsigned long long user_data, unsigned short extra)
{
    sqe->opcode = IORING_OP_ACCEPT;
    sqe->fd = fd;
    sqe->ioprio = IORING_ACCEPT_MULTISHOT | extra;
    sqe->accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
    sqe->user_data = user_data;
}

/* ---- provided-buffer ring (IORING_REGISTER_PBUF_RING, group 0) ----------------
 * The ring of io_uring_buf entries is one page-aligned mmap; the buffers are
 * not ours to allocate here: each entry carries its own address, so the
 * caller (_Ring, reactor/uring.pyx) publishes one LinkBuffer pool chunk per
 * buffer id with np_pbuf_put and may publish another chunk for the same id
 * after a CQE (the zero-copy hand-over). Ownership: a buffer in the ring
 * belongs to the kernel (it may write into it at any time); a CQE with
 * IORING_CQE_F_BUFFER hands buffer `bid` to us; np_pbuf_put gives a buffer for
 * that id back. The buffers may be freed only after every request was
 * cancelled synchronously and the ring fd closed (np_pbuf_teardown says when
 * they must be leaked instead). */
typedef struct np_pbuf {
    struct io_uring_buf_ring *br;
    unsigned nbufs, bufsz, mask;
    unsigned short tail;
    size_t br_sz;
} np_pbuf;

/* Register an empty ring for nbufs (a power of two) buffers of bufsz bytes. */
static inline int np_pbuf_init(np_ring *r, np_pbuf *b, unsigned nbufs, unsigned bufsz)
{
    struct io_uring_buf_reg reg;
    int err;
    memset(b, 0, sizeof(*b));
    b->nbufs = nbufs;
    b->bufsz = bufsz;
    b->mask = nbufs - 1;
    b->br_sz = nbufs * sizeof(struct io_uring_buf);
    b->br = (struct io_uring_buf_ring *)mmap(NULL, b->br_sz, PROT_READ | PROT_WRITE,
                                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b->br == MAP_FAILED) {
        b->br = NULL;
        return -errno;
    }
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long long)(unsigned long)b->br;
    reg.ring_entries = nbufs;
    reg.bgid = 0;
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        err = errno;
        munmap(b->br, b->br_sz);
        memset(b, 0, sizeof(*b));
        return -err;
    }
    b->tail = 0;
    return 0;
}

/* Give the kernel a buffer for id bid: bufsz bytes at addr. */
static inline void np_pbuf_put(np_pbuf *b, unsigned bid, char *addr)
{
    struct io_uring_buf *e;
    e = &b->br->bufs[b->tail & b->mask];
    e->addr = (unsigned long long)(unsigned long)addr;
    e->len = b->bufsz;
    e->bid = (unsigned short)(bid & b->mask);
    b->tail++;
    __atomic_store_n(&b->br->tail, b->tail, __ATOMIC_RELEASE);
}

/* Cancel every request of the ring and wait for it (IORING_REGISTER_SYNC_CANCEL),
 * so no request can write into a provided buffer any more. */
static inline int np_ring_cancel_all(np_ring *r)
{
    struct io_uring_sync_cancel_reg reg;
    int ret;
    if (r->fd < 0)
        return 0;
    memset(&reg, 0, sizeof(reg));
    reg.fd = -1;
    reg.flags = IORING_ASYNC_CANCEL_ANY;
    reg.timeout.tv_sec = -1;
    reg.timeout.tv_nsec = -1;
    do {
        ret = (int)syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_SYNC_CANCEL, &reg, 1);
    } while (ret < 0 && errno == EINTR);
    return ret < 0 && errno != ENOENT ? -errno : 0;
}

/* Teardown order: cancel synchronously, close the ring, then unmap the buffer
 * ring. Returns 1 when the cancel could not be waited for (a SINGLE_ISSUER
 * ring closed from another thread): the kernel then cancels in the background
 * and the caller must leak the buffers (the buffer ring is left mapped too),
 * not free them under a request that may still write. 0: free them. */
static inline int np_pbuf_teardown(np_ring *r, np_pbuf *b)
{
    int leak = 0;
    if (r->fd >= 0) {
        /* IORING_SETUP_SINGLE_ISSUER: only the thread that made the ring may
         * register (EEXIST from any other). */
        if (!r->disabled)       /* still disabled: nothing was ever submitted */
            leak = np_ring_cancel_all(r) < 0 && (r->setup_flags & IORING_SETUP_SINGLE_ISSUER);
        np_ring_exit(r);
    }
    if (b == NULL)
        return leak;
    if (b->br && !leak)
        munmap(b->br, b->br_sz);
    memset(b, 0, sizeof(*b));
    return leak;
}

static inline void np_sqe_recv_multishot(struct io_uring_sqe *sqe, int fd,
                                         unsigned long long user_data)
{
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = fd;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->user_data = user_data;
}

/* One receive into one provided buffer (connections with a buffer limit: at
 * most one buffer of input per arm, as bounded as epoll's reads). */
static inline void np_sqe_recv_once(struct io_uring_sqe *sqe, int fd,
                                    unsigned long long user_data)
{
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = fd;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    sqe->ioprio = IORING_RECVSEND_POLL_FIRST;
    sqe->user_data = user_data;
}

/* Gathered output: a SEND (one iovec) or SENDMSG, MSG_DONTWAIT so that a full
 * socket completes at once with -EAGAIN or a short count (REQ_F_NOWAIT: the
 * ring does not park it on a poll), exactly like send(2). The kernel reads
 * `buf` (or msg and its iovecs, copied at issue) until the CQE. */
static inline void np_sqe_send(struct io_uring_sqe *sqe, int fd, const void *buf, unsigned len,
                               unsigned long long user_data)
{
    sqe->opcode = IORING_OP_SEND;
    sqe->fd = fd;
    sqe->addr = (unsigned long long)(unsigned long)buf;
    sqe->len = len;
    sqe->msg_flags = MSG_NOSIGNAL | MSG_DONTWAIT;
    sqe->user_data = user_data;
}

static inline void np_sqe_sendmsg(struct io_uring_sqe *sqe, int fd, const struct msghdr *msg,
                                  unsigned long long user_data)
{
    sqe->opcode = IORING_OP_SENDMSG;
    sqe->fd = fd;
    sqe->addr = (unsigned long long)(unsigned long)msg;
    sqe->len = 1;
    sqe->msg_flags = MSG_NOSIGNAL | MSG_DONTWAIT;
    sqe->user_data = user_data;
}

/* Zero-copy output (opt-in, NETPOLL_URING_SEND_ZC=1): SEND_ZC (one iovec) or
 * SENDMSG_ZC. The kernel pins the pages instead of copying: it may read them
 * until the *notification* CQE (IORING_CQE_F_NOTIF, same user_data), not just
 * the first CQE, which carries the result and IORING_CQE_F_MORE when a
 * notification follows. REPORT_USAGE: the notification's res has
 * IORING_NOTIF_USAGE_ZC_COPIED when the kernel copied after all (loopback). */
static inline void np_sqe_send_zc(struct io_uring_sqe *sqe, int fd, const void *buf, unsigned len,
                                  unsigned long long user_data)
{
    sqe->opcode = IORING_OP_SEND_ZC;
    sqe->fd = fd;
    sqe->addr = (unsigned long long)(unsigned long)buf;
    sqe->len = len;
    sqe->ioprio = IORING_SEND_ZC_REPORT_USAGE;
    sqe->msg_flags = MSG_NOSIGNAL | MSG_DONTWAIT;
    sqe->user_data = user_data;
}

static inline void np_sqe_sendmsg_zc(struct io_uring_sqe *sqe, int fd, const struct msghdr *msg,
                                     unsigned long long user_data)
{
    sqe->opcode = IORING_OP_SENDMSG_ZC;
    sqe->fd = fd;
    sqe->addr = (unsigned long long)(unsigned long)msg;
    sqe->len = 1;
    sqe->ioprio = IORING_SEND_ZC_REPORT_USAGE;
    sqe->msg_flags = MSG_NOSIGNAL | MSG_DONTWAIT;
    sqe->user_data = user_data;
}

static inline void np_sqe_cancel(struct io_uring_sqe *sqe, unsigned long long target,
                                 unsigned long long user_data)
{
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->addr = target;
    sqe->user_data = user_data;
}

#endif
