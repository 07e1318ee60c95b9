# io_uring for the reactor (netpoll._core): the kernel header's constants and
# the small ring helper in uring.h (raw io_uring_setup/enter/register syscalls
# and mmap; no liburing).

cdef extern from "<linux/io_uring.h>" nogil:
    enum:
        IORING_OP_NOP
        IORING_OP_POLL_ADD
        IORING_OP_POLL_REMOVE
        IORING_OP_RECV
        IORING_OP_ASYNC_CANCEL
        IORING_OP_SEND
        IORING_OP_SENDMSG
        IORING_CQE_F_BUFFER
        IORING_CQE_BUFFER_SHIFT
        IORING_SETUP_CLAMP
        IORING_SETUP_SUBMIT_ALL
        IORING_SETUP_COOP_TASKRUN
        IORING_SETUP_TASKRUN_FLAG
        IORING_SETUP_SINGLE_ISSUER
        IORING_SETUP_DEFER_TASKRUN
        IORING_SETUP_NO_SQARRAY
        IORING_ENTER_GETEVENTS
        IORING_CQE_F_MORE
        IORING_CQE_F_NOTIF
        IORING_OP_SEND_ZC
        IORING_OP_SENDMSG_ZC
        IORING_NOTIF_USAGE_ZC_COPIED

    cdef struct io_uring_sqe:
        unsigned char opcode
        unsigned char flags
        unsigned short ioprio
        int fd
        unsigned long long off
        unsigned long long addr
        unsigned int len
        unsigned int poll32_events
        unsigned long long user_data


cdef extern from "uring.h" nogil:
    ctypedef struct np_ring:
        int fd
        unsigned sq_entries
        unsigned cq_entries
        unsigned setup_flags
        int efd

    ctypedef struct np_cqe:
        unsigned long long user_data
        int res
        unsigned flags

    int np_ring_init(np_ring* r, unsigned entries, unsigned flags)
    void np_ring_exit(np_ring* r)
    unsigned np_ring_pending(np_ring* r)
    io_uring_sqe* np_ring_sqe(np_ring* r)
    int np_ring_submit(np_ring* r, unsigned min_complete, unsigned flags)
    bint np_ring_overflowed(np_ring* r)
    int np_ring_reap(np_ring* r, np_cqe* out, int n)
    bint np_ring_cq_ready(np_ring* r)
    bint np_ring_taskrun(np_ring* r)
    void np_ring_evfd_begin(np_ring* r)
    int np_ring_evfd_end(np_ring* r)
    int np_ring_probe(np_ring* r, const unsigned char* ops, int n)
    void np_sqe_poll_add(io_uring_sqe* sqe, int fd, unsigned events, unsigned long long user_data)
    void np_sqe_poll_remove(io_uring_sqe* sqe, unsigned long long target,
                            unsigned long long user_data)
    void np_sqe_accept_multishot(io_uring_sqe* sqe, int fd, unsigned long long user_data,
                                 unsigned short extra)

    ctypedef struct np_pbuf:
        unsigned nbufs
        unsigned bufsz
        unsigned mask

    int np_pbuf_init(np_ring* r, np_pbuf* b, unsigned nbufs, unsigned bufsz)
    void np_pbuf_put(np_pbuf* b, unsigned bid, char* addr)
    int np_ring_cancel_all(np_ring* r)
    int np_pbuf_teardown(np_ring* r, np_pbuf* b)
    void np_sqe_recv_multishot(io_uring_sqe* sqe, int fd, unsigned long long user_data)
    void np_sqe_recv_once(io_uring_sqe* sqe, int fd, unsigned long long user_data)
    void np_sqe_send(io_uring_sqe* sqe, int fd, const void* buf, unsigned int len,
                     unsigned long long user_data)
    void np_sqe_sendmsg(io_uring_sqe* sqe, int fd, const void* msg, unsigned long long user_data)
    void np_sqe_send_zc(io_uring_sqe* sqe, int fd, const void* buf, unsigned int len,
                        unsigned long long user_data)
    void np_sqe_sendmsg_zc(io_uring_sqe* sqe, int fd, const void* msg,
                           unsigned long long user_data)
    void np_sqe_cancel(io_uring_sqe* sqe, unsigned long long target,
                       unsigned long long user_data)
