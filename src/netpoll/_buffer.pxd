# cython: language_level=3
#
# netpoll._buffer — declarations shared with the reactor (netpoll._core).
#
# Memory model (see _buffer.pyx for the full essay):
#
#   Chunk   a Python object owning one block of memory: pooled (a power-of-two
#           size class, 1 B .. 8 MiB), direct (malloc, above 8 MiB) or external
#           (a bytes object linked without copying). Every memoryview handed
#           to a user holds a reference to its Chunk, so the block returns to
#           the pool only when no node *and* no view refers to it.
#   Node    a C struct in a linked list; it borrows a window of one Chunk:
#
#           data: |....consumed....|##readable##|~~pending~~|   free   |
#                 0               off          end        malloc     cap
#
#           off..end is readable (flushed); end..malloc is written or reserved
#           but not yet flushed; malloc..cap may still be written. cap is
#           lowered ("sealed") whenever the space after it may be seen by
#           someone else, so no byte a view can see is ever rewritten.

from cpython.object cimport PyObject
from posix.uio cimport iovec


cdef extern from "netpoll_debug.h":
    int NETPOLL_DEBUG


cdef class Chunk:
    cdef char* data
    cdef Py_ssize_t cap
    # size class index (0..23), or -1 for a direct malloc, -2 for external memory,
    # -3 for no block of its own to free (empty, or leaked: chunk_leak)
    cdef int cls
    # the object whose buffer `data` points into (external chunks only)
    cdef object base
    # export window used by view(): set just before PyMemoryView_FromObject
    cdef char* xptr
    cdef Py_ssize_t xlen
    cdef bint xro


ctypedef struct Node:
    Node* next
    PyObject* chunk      # strong reference to a Chunk
    char* data           # chunk.data
    Py_ssize_t off       # read offset
    Py_ssize_t end       # end of readable (flushed) bytes
    Py_ssize_t malloc    # end of written/reserved bytes
    Py_ssize_t cap       # writes may go up to here


cdef Chunk chunk_new(Py_ssize_t size)
# A pooled (or direct, above 8 MiB) chunk of at least `size` bytes.

cdef object view(Chunk c, char* p, Py_ssize_t n, bint readonly)
# A memoryview of n bytes at p inside c; keeps c alive.

cdef void chunk_leak(Chunk c) noexcept
# Someone outside this process's control (the kernel, under a request not
# known to be cancelled) may still write c's block: never free it nor give it
# back to the pool. The block is leaked; the Chunk object may go.


cdef class LinkBuffer:
    cdef Node* rd            # first node; consumed nodes before it are already unlinked
    cdef Node* fl            # last node holding readable bytes
    cdef Node* wr            # last node (tail), where writes go
    cdef Py_ssize_t length   # readable bytes
    cdef Py_ssize_t pending  # written or reserved since the last flush (malloc_len)
    cdef Py_ssize_t hint     # capacity hint for the first node
    cdef bint closed
    cdef bint owned          # a connection's input: the poller writes it, users only read
    cdef Py_ssize_t gen      # bumped by every consume and close (re-entrancy checks)

    # -- internals --
    cdef void _free_nodes(self) noexcept
    cdef int _check(self, str op) except -1
    cdef int _check_write(self, str op) except -1
    # _check, and refuse Python-level writes and close() on a reactor-owned buffer.
    cdef int _need(self, str op, Py_ssize_t n) except -1
    cdef Node* _append(self, Chunk c) except NULL
    cdef Node* _room(self, Py_ssize_t need) except NULL
    cdef void _trim(self) noexcept
    cdef Node* _front(self, Py_ssize_t n) except NULL
    cdef Node* _pullup(self, Py_ssize_t n) except NULL
    cdef Py_ssize_t _copy_out(self, char* dst, Py_ssize_t n) noexcept
    cdef bint _match_at(self, Node* node, Py_ssize_t pos, const char* d, Py_ssize_t dlen) noexcept

    # -- C API for the reactor; none of these checks `closed` --
    cdef char* book(self, Py_ssize_t book_size, Py_ssize_t max_size, Py_ssize_t* avail) except NULL
    # Reserve up to book_size bytes of contiguous space at the tail for a read
    # (a fresh node of max_size when the tail is full). *avail gets the size.
    cdef int book_ack(self, Py_ssize_t n) except -1
    # Make n bytes of the last booking readable (n may be 0).
    cdef bint book_fits(self, Py_ssize_t n) noexcept
    # Whether book() would give n bytes without allocating a node (the tail has
    # room, or is empty and private and big enough to be rewound).
    cdef int adopt(self, Chunk c, Py_ssize_t n) except -1
    # Link the first n bytes of c (0 < n <= c.cap, written by someone who no
    # longer writes them: a provided buffer after its CQE) as a new readable
    # tail node, sealed (off 0, end = malloc = cap = n): nothing is ever written
    # after them. ValueError when bytes are pending (written, not flushed); not
    # to be called between book and book_ack.
    cdef int fill_iovecs(self, iovec* iov, int max_iov, Py_ssize_t* total) noexcept
    # Point iov at the readable bytes, node by node; returns the count used.
    cdef int consume(self, Py_ssize_t n) except -1
    # Drop n readable bytes (n <= length) and unlink the nodes emptied.
    cdef Py_ssize_t index_of(self, const char* delim, Py_ssize_t dlen, Py_ssize_t skip) noexcept
    # Offset of the first delim in the readable bytes at or after `skip`, or -1.
    cdef int release_keep(self, Py_ssize_t keep) except -1
    # Like release_all, but an empty buffer keeps one private chunk of at most
    # `keep` bytes for the next read.
    cdef int release_all(self) except -1
    # Free every node when nothing is readable or pending; else trim consumed ones.
    cdef object c_next(self, Py_ssize_t n)
    cdef object c_peek(self, Py_ssize_t n)
    cdef bytes c_read_binary(self, Py_ssize_t n)
    cdef LinkBuffer c_slice(self, Py_ssize_t n)
    cdef int c_flush(self) except -1
    cdef Py_ssize_t c_write(self, object data) except -1
    cdef int c_append(self, LinkBuffer other) except -1
    cdef int c_close(self) except -1


cpdef dict _debug_counts()
# Live chunks and nodes (debug build); empty counts in a release build.
