# cython: language_level=3
"""netpoll._buffer — the zero-copy LinkBuffer and its chunk pool.

Why a linked buffer
-------------------
Protocol code wants to parse bytes where they landed. A LinkBuffer is a list
of nodes, each a window onto a block of memory ("chunk"); the reactor reads
from the socket straight into the tail node (book/book_ack) and the parser
takes views of the head node (next/peek) without copying. Only a read that
spans two nodes copies, and then it copies once: the spanned bytes are pulled
up into one new node, so a following peek/next of the same bytes is free.

Cursors
-------
::

    read ─▶ [node] ─▶ [node] ─▶ [flush node] ─▶ [node] ─▶ [write node]
             readable bytes ..........│.. pending (malloc'd, unflushed) ..│

``read`` is the first node (consumed nodes are unlinked at once: views keep
their own memory alive, so there is nothing to wait for); ``flush`` is the
last node with readable bytes; ``write`` is the tail, where writes go. Each
node keeps off <= end <= malloc <= cap (see _buffer.pxd).

Memory safety (stronger than Go's "invalid after Release")
----------------------------------------------------------
Chunks are Python objects. A node holds one reference; every memoryview
handed out holds another (the chunk is the view's exporter). The block goes
back to the pool in the chunk's dealloc, so it is reused only when no node
and no view refers to it. Within a live chunk no byte a view may see is ever
rewritten: space is rewound for reuse only while the node holds the sole
reference (Py_REFCNT == 1); otherwise the node is sealed (cap lowered) and
new writes go to a new node.

Pool
----
Power-of-two size classes from 1 B to 8 MiB (Go's mcache, mallocMax), with a
bounded free list per class; larger blocks come from malloc and go back to
it. Freed blocks are not cleared (the bytes are overwritten before any view
of them exists).
"""

cimport cython
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_Decode, PyUnicode_DecodeUTF8
from libc.stdlib cimport free, malloc as c_malloc
from libc.string cimport memchr, memcpy, memcmp
from posix.uio cimport iovec

from netpoll.errors import NotEnoughDataError


cdef extern from "Python.h":
    Py_ssize_t Py_REFCNT(PyObject* o)       # a raw pointer: no temporary reference
    void Py_DecRef(PyObject* o)             # a raw pointer, as the cache holds it
    object PyMemoryView_FromObject(object o)
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL


cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil


NETPOLL_DEBUG_BUILD = bool(NETPOLL_DEBUG)

# -- constants (Go: nocopy.go) -------------------------------------------------
cdef enum:
    NCLASS = 24                  # 1 B .. 8 MiB
    MALLOC_MAX = 1 << 23         # 8 MiB: larger blocks bypass the pool
    NODE_MIN_DEFAULT = 4096      # smallest node a write allocates (Go's LinkBufferCap)
    INPLACE_THRESHOLD = 4096     # bytes this large are linked, not copied
    TAIL_MAX = 8192              # flush seals a tail larger than this
    POOL_BYTES_PER_CLASS = 1 << 20     # cache at most 1 MiB of free blocks per class
    CACHE_CLASSES = 17           # Chunk objects of blocks up to 64 KiB are kept whole ...
    CACHE_DEPTH = 32             # ... up to 32 per class (at most ~4 MiB in all)

cdef Py_ssize_t NODE_MIN = NODE_MIN_DEFAULT   # configure(link_buffer_cap=...)

cdef void* pool_head[NCLASS]
cdef Py_ssize_t pool_count[NCLASS]
cdef Py_ssize_t pool_limit[NCLASS]
cdef Py_ssize_t live_chunks = 0
cdef Py_ssize_t live_nodes = 0
cdef Node* node_pool = NULL
cdef Py_ssize_t node_pool_count = 0
# Spare Chunk objects, each with its block, that nothing else refers to: a node
# that frees the last reference to a pooled chunk parks it here, and the next
# chunk_new of that class takes it back. A connection that answers each request
# into a fresh output node (written, sent, freed) then reuses one object and
# block instead of making and destroying a Chunk per request.
cdef PyObject* chunk_cache[CACHE_CLASSES][CACHE_DEPTH]
cdef int chunk_cache_n[CACHE_CLASSES]

cdef int _i
for _i in range(NCLASS):
    pool_head[_i] = NULL
    pool_count[_i] = 0
    pool_limit[_i] = max(4, min(4096, POOL_BYTES_PER_CLASS >> _i))
for _i in range(CACHE_CLASSES):
    chunk_cache_n[_i] = 0

cdef char empty_block[1]
cdef char* byte_format = "B"


cdef inline int size_class(Py_ssize_t n) noexcept:
    if n <= 1:
        return 0
    return 64 - __builtin_clzll(<unsigned long long>(n - 1))


@cython.final
@cython.no_gc
@cython.freelist(256)
cdef class Chunk:
    """A block of memory shared by buffer nodes and user views (internal)."""

    def __cinit__(self):
        self.data = empty_block
        self.cap = 0
        self.cls = -3
        self.xptr = empty_block
        self.xlen = 0
        self.xro = True
        if NETPOLL_DEBUG:
            global live_chunks
            live_chunks += 1

    def __dealloc__(self):
        cdef int cls = self.cls
        cdef void** blk
        if cls >= 0:
            if pool_count[cls] < pool_limit[cls]:
                blk = <void**>self.data
                blk[0] = pool_head[cls]
                pool_head[cls] = <void*>self.data
                pool_count[cls] += 1
            else:
                free(self.data)
        elif cls == -1:
            free(self.data)
        if NETPOLL_DEBUG:
            global live_chunks
            live_chunks -= 1

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if (flags & PyBUF_WRITABLE) == PyBUF_WRITABLE and self.xro:
            raise BufferError("netpoll view is read-only")
        buffer.buf = self.xptr
        buffer.obj = self
        buffer.len = self.xlen
        buffer.readonly = self.xro
        buffer.itemsize = 1
        buffer.format = NULL
        if (flags & PyBUF_FORMAT) == PyBUF_FORMAT:
            buffer.format = byte_format
        buffer.ndim = 1
        buffer.shape = NULL
        if (flags & PyBUF_ND) == PyBUF_ND:
            buffer.shape = &buffer.len
        buffer.strides = NULL
        if (flags & PyBUF_STRIDES) == PyBUF_STRIDES:
            buffer.strides = &buffer.itemsize
        buffer.suboffsets = NULL
        buffer.internal = NULL

    def __releasebuffer__(self, Py_buffer* buffer):
        pass


cdef Chunk chunk_new(Py_ssize_t size):
    cdef Chunk c
    cdef int cls
    cdef void* p
    cdef PyObject* spare
    if size <= MALLOC_MAX:
        cls = size_class(size)
        if cls < CACHE_CLASSES and chunk_cache_n[cls]:
            chunk_cache_n[cls] -= 1
            spare = chunk_cache[cls][chunk_cache_n[cls]]
            c = <Chunk>spare             # a new reference ...
            Py_DecRef(spare)             # ... replaces the cache's
            return c
        c = Chunk.__new__(Chunk)
        p = pool_head[cls]
        if p != NULL:
            pool_head[cls] = (<void**>p)[0]
            pool_count[cls] -= 1
        else:
            p = c_malloc(max(<size_t>1 << cls, sizeof(void*)))
            if p == NULL:
                raise MemoryError(f"cannot allocate a {1 << cls}-byte chunk")
        c.cls = cls
        c.cap = <Py_ssize_t>1 << cls
    else:
        c = Chunk.__new__(Chunk)
        p = c_malloc(<size_t>size)
        if p == NULL:
            raise MemoryError(f"cannot allocate a {size}-byte chunk")
        c.cls = -1
        c.cap = size
    c.data = <char*>p
    return c


cdef Chunk chunk_of_bytes(bytes b):
    """Link an immutable bytes object without copying."""
    cdef Chunk c = Chunk.__new__(Chunk)
    c.cls = -2
    c.base = b
    c.data = PyBytes_AS_STRING(b)
    c.cap = PyBytes_GET_SIZE(b)
    return c


cdef object view(Chunk c, char* p, Py_ssize_t n, bint readonly):
    c.xptr = p
    c.xlen = n
    c.xro = readonly
    try:
        return PyMemoryView_FromObject(c)
    finally:
        # a stray getbuffer on the chunk itself (memoryview.obj) sees nothing
        c.xptr = empty_block
        c.xlen = 0
        c.xro = True


cdef void chunk_leak(Chunk c) noexcept:
    if c.cls >= -1:
        c.cls = -3           # __dealloc__ neither pools nor frees it


cdef inline Node* node_new(Chunk c) except NULL:
    global node_pool, node_pool_count, live_nodes
    cdef Node* n = node_pool
    if n != NULL:
        node_pool = n.next
        node_pool_count -= 1
    else:
        n = <Node*>c_malloc(sizeof(Node))
        if n == NULL:
            raise MemoryError("cannot allocate a buffer node")
    Py_INCREF(c)
    n.next = NULL
    n.chunk = <PyObject*>c
    n.data = c.data
    n.off = 0
    n.end = 0
    n.malloc = 0
    n.cap = c.cap
    if NETPOLL_DEBUG:
        live_nodes += 1
    return n


cdef inline void node_free(Node* n) noexcept:
    global node_pool, node_pool_count, live_nodes
    cdef PyObject* c = n.chunk
    n.chunk = NULL
    if node_pool_count < 4096:
        n.next = node_pool
        node_pool = n
        node_pool_count += 1
    else:
        free(n)
    if NETPOLL_DEBUG:
        live_nodes -= 1
    if c != NULL and Py_REFCNT(c) == 1 and chunk_park(c):
        return                   # the node's reference is now the cache's
    Py_XDECREF(c)


cdef inline bint chunk_park(PyObject* c) noexcept:
    # Keep a pooled chunk that only the caller refers to (no view, node or
    # slice: nobody can see its bytes) for the next chunk_new of its class.
    cdef int cls = (<Chunk>c).cls
    if cls < 0 or cls >= CACHE_CLASSES or chunk_cache_n[cls] == CACHE_DEPTH:
        return False
    chunk_cache[cls][chunk_cache_n[cls]] = c
    chunk_cache_n[cls] += 1
    return True


cdef void chunk_cache_clear() noexcept:
    cdef int cls
    cdef PyObject* c
    for cls in range(CACHE_CLASSES):
        while chunk_cache_n[cls]:
            chunk_cache_n[cls] -= 1
            c = chunk_cache[cls][chunk_cache_n[cls]]
            Py_DecRef(c)


cdef inline bint sole_owner(Node* n) noexcept:
    # Only this node refers to the chunk: no view, slice or split shares it.
    return (<Chunk>n.chunk).cls >= 0 and Py_REFCNT(n.chunk) == 1


cpdef dict _debug_counts():
    """Live chunks and nodes (counted in the debug build only); spare chunks are freed first."""
    chunk_cache_clear()
    return {"chunks": live_chunks, "nodes": live_nodes}


@cython.binding(True)
def _set_link_buffer_cap(n):
    """Set the smallest node capacity a write allocates (netpoll.configure checks n)."""
    global NODE_MIN
    NODE_MIN = n


@cython.binding(True)
def _get_link_buffer_cap():
    """The smallest node capacity a write allocates."""
    return NODE_MIN


@cython.binding(True)
def _pool_stats():
    """Cached free blocks per size class (for tests and tuning)."""
    return {1 << i: pool_count[i] for i in range(NCLASS) if pool_count[i]}


cdef inline Py_ssize_t _size_arg(str op, object n) except -1:
    cdef Py_ssize_t v
    if not isinstance(n, int):
        raise TypeError(f"{op}: size must be an int, not {type(n).__name__}")
    v = n
    if v < 0:
        raise ValueError(f"{op}({v}): negative size")
    return v


cdef str _delim_repr(object d):
    return repr(d) if not isinstance(d, int) else repr(bytes([d]))


@cython.final
@cython.freelist(32)     # slice() makes one per echoed request: reuse their memory
cdef class LinkBuffer:
    """A linked list of memory chunks: read in place, write without copying.

    ``LinkBuffer(size=4096)``: an empty buffer; ``size`` (0 allowed) hints the
    capacity of the first node, which is allocated only when first written.

    Reading consumes flushed bytes; writing goes to an unflushed tail that
    becomes readable at :meth:`flush`. Every memoryview handed out stays
    valid and unchanged for as long as it is held.
    """

    def __cinit__(self):
        self.rd = NULL
        self.fl = NULL
        self.wr = NULL
        self.length = 0
        self.pending = 0
        self.closed = False
        self.owned = False
        self.gen = 0
        self.hint = 0

    def __init__(self, size=4096):
        self.hint = _size_arg("LinkBuffer", size)

    def __dealloc__(self):
        self._free_nodes()

    # -- internals -------------------------------------------------------------

    cdef void _free_nodes(self) noexcept:
        cdef Node* n = self.rd
        cdef Node* nx
        self.rd = self.fl = self.wr = NULL
        while n != NULL:
            nx = n.next
            node_free(n)
            n = nx

    cdef int _check(self, str op) except -1:
        if self.closed:
            raise ValueError(f"{op}: I/O operation on closed LinkBuffer")
        return 0

    cdef int _check_write(self, str op) except -1:
        if self.closed:
            raise ValueError(f"{op}: I/O operation on closed LinkBuffer")
        if self.owned:
            raise ValueError(f"{op}: a connection's input buffer is written by the poller; "
                             "it can only be read")
        return 0

    cdef int _need(self, str op, Py_ssize_t n) except -1:
        if n > self.length:
            raise NotEnoughDataError(f"{op}({n}): only {self.length} bytes readable")
        return 0

    cdef Node* _append(self, Chunk c) except NULL:
        cdef Node* n = node_new(c)
        if self.wr == NULL:
            self.rd = self.fl = self.wr = n
        else:
            self.wr.next = n
            self.wr = n
        return n

    cdef Node* _room(self, Py_ssize_t need) except NULL:
        """The tail node, with at least `need` bytes of writable space."""
        cdef Node* w = self.wr
        cdef Py_ssize_t size
        if w != NULL:
            if w.cap - w.malloc >= need:
                return w
            if (w == self.rd and w.off == w.end and w.end == w.malloc
                    and sole_owner(w) and (<Chunk>w.chunk).cap >= need):
                # empty and private: rewind instead of allocating
                w.off = w.end = w.malloc = 0
                w.cap = (<Chunk>w.chunk).cap
                return w
        size = need if need > NODE_MIN else NODE_MIN
        if w == NULL and self.hint > need:
            size = self.hint
        return self._append(chunk_new(size))

    cdef void _trim(self) noexcept:
        """Unlink consumed nodes ahead of the flush node."""
        cdef Node* n = self.rd
        while n != self.fl and n.off == n.end:
            self.rd = n.next
            node_free(n)
            n = self.rd

    cdef Node* _front(self, Py_ssize_t n) except NULL:
        """A node at read holding n (> 0, <= length) contiguous readable bytes."""
        self._trim()
        cdef Node* r = self.rd
        while r.off == r.end:        # empty flush-side nodes cannot be trimmed
            r = r.next
        if r.end - r.off >= n:
            return r
        return self._pullup(n)

    cdef Node* _pullup(self, Py_ssize_t n) except NULL:
        # Copy the n bytes spanning nodes into one new node at the front.
        cdef Chunk c = chunk_new(n)
        cdef Node* fresh = node_new(c)
        cdef Node* r = self.rd
        cdef Node* nx
        cdef Py_ssize_t got = 0, k
        while got < n:
            k = r.end - r.off
            if k > n - got:
                k = n - got
            memcpy(c.data + got, r.data + r.off, k)
            got += k
            r.off += k
            if r.off == r.end and r != self.fl:
                nx = r.next
                node_free(r)
                r = nx
            elif got < n:
                r = r.next
        # nodes before r were freed; r (partly read, or the flush node) stays
        fresh.end = fresh.malloc = fresh.cap = n
        fresh.next = r
        self.rd = fresh
        return fresh

    cdef Py_ssize_t _copy_out(self, char* dst, Py_ssize_t n) noexcept:
        """Copy the first n readable bytes to dst without consuming."""
        cdef Node* r = self.rd
        cdef Py_ssize_t got = 0, k
        while got < n:
            k = r.end - r.off
            if k > n - got:
                k = n - got
            memcpy(dst + got, r.data + r.off, k)
            got += k
            r = r.next
        return got

    cdef bint _match_at(self, Node* node, Py_ssize_t pos,
                        const char* d, Py_ssize_t dlen) noexcept:
        cdef Py_ssize_t i = 0
        while i < dlen:
            while pos == node.end:
                if node == self.fl:
                    return False
                node = node.next
                pos = node.off
            if node.data[pos] != d[i]:
                return False
            pos += 1
            i += 1
        return True

    # -- C API for the reactor ----------------------------------------------------

    cdef char* book(self, Py_ssize_t book_size, Py_ssize_t max_size,
                    Py_ssize_t* avail) except NULL:
        cdef Node* w = self.wr
        if w != NULL and self.length == 0 and w == self.rd and w.off == w.end \
                and w.end == w.malloc and sole_owner(w):
            w.off = w.end = w.malloc = 0
            w.cap = (<Chunk>w.chunk).cap
        if w == NULL or w.cap == w.malloc:
            w = self._append(chunk_new(max_size))
        avail[0] = w.cap - w.malloc if w.cap - w.malloc < book_size else book_size
        return w.data + w.malloc

    cdef int book_ack(self, Py_ssize_t n) except -1:
        cdef Node* w = self.wr
        w.malloc += n
        w.end = w.malloc
        self.fl = w
        self.length += n
        return 0

    cdef bint book_fits(self, Py_ssize_t n) noexcept:
        cdef Node* w = self.wr
        if w == NULL:
            return False
        if w.cap - w.malloc >= n:
            return True
        return (self.length == 0 and w == self.rd and w.off == w.end and w.end == w.malloc
                and sole_owner(w) and (<Chunk>w.chunk).cap >= n)

    cdef int adopt(self, Chunk c, Py_ssize_t n) except -1:
        # Pending bytes sit between fl and wr; a readable node after them would
        # make them readable out of order (and an unacked booking is at wr).
        # The input buffer of a connection never has any: only book/book_ack
        # and adopt write it, and they leave nothing pending.
        cdef Node* w
        if self.pending:
            raise ValueError(f"adopt: {self.pending} bytes written but not flushed")
        if n <= 0 or n > c.cap:
            raise ValueError(f"adopt({n}): a {c.cap}-byte chunk")
        w = self._append(c)
        w.end = w.malloc = w.cap = n
        self.fl = w
        self.length += n
        return 0

    cdef int fill_iovecs(self, iovec* iov, int max_iov, Py_ssize_t* total) noexcept:
        cdef Node* r = self.rd
        cdef int i = 0
        cdef Py_ssize_t t = 0
        if self.length == 0:
            total[0] = 0
            return 0
        while i < max_iov:
            if r.end > r.off:
                iov[i].iov_base = r.data + r.off
                iov[i].iov_len = r.end - r.off
                t += r.end - r.off
                i += 1
            if r == self.fl:
                break
            r = r.next
        total[0] = t
        return i

    cdef int consume(self, Py_ssize_t n) except -1:
        cdef Node* r
        cdef Py_ssize_t k
        self.gen += 1
        self.length -= n
        while n > 0:
            r = self.rd
            k = r.end - r.off
            if k > n:
                k = n
            r.off += k
            n -= k
            if r.off == r.end and r != self.fl:
                self.rd = r.next
                node_free(r)
        return 0

    cdef Py_ssize_t index_of(self, const char* d, Py_ssize_t dlen,
                             Py_ssize_t skip) noexcept:
        cdef Node* r = self.rd
        cdef Py_ssize_t base = 0, start, k
        cdef const char* hit
        if r == NULL or dlen <= 0:
            return -1
        while True:
            k = r.end - r.off
            if skip < base + k:
                start = skip - base if skip > base else 0
                while start < k:
                    hit = <const char*>memchr(r.data + r.off + start, d[0], k - start)
                    if hit == NULL:
                        break
                    start = hit - (r.data + r.off)
                    if dlen == 1 or self._match_at(r, r.off + start + 1, d + 1, dlen - 1):
                        if base + start + dlen <= self.length:
                            return base + start
                        return -1
                    start += 1
            base += k
            if r == self.fl:
                return -1
            r = r.next

    cdef int release_keep(self, Py_ssize_t keep) except -1:
        cdef Node* r = self.rd
        if r != NULL and r == self.wr and self.length == 0 and self.pending == 0 \
                and (<Chunk>r.chunk).cap <= keep and sole_owner(r):
            # one small private chunk: keep it for the next read (no allocation)
            r.off = r.end = r.malloc = 0
            r.cap = (<Chunk>r.chunk).cap
            return 0
        return self.release_all()

    cdef int release_all(self) except -1:
        if self.rd == NULL:
            return 0
        if self.length == 0 and self.pending == 0:
            self._free_nodes()
        else:
            self._trim()
        return 0

    cdef object c_next(self, Py_ssize_t n):
        cdef Node* r
        if n == 0:
            return memoryview(b"")
        r = self._front(n)
        mv = view(<Chunk>r.chunk, r.data + r.off, n, True)
        r.off += n
        self.length -= n
        self.gen += 1
        if r.off == r.end and r != self.fl:
            self._trim()
        return mv

    cdef object c_peek(self, Py_ssize_t n):
        cdef Node* r
        if n == 0:
            return memoryview(b"")
        r = self._front(n)
        return view(<Chunk>r.chunk, r.data + r.off, n, True)

    cdef bytes c_read_binary(self, Py_ssize_t n):
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        if n:
            self._trim()
            self._copy_out(PyBytes_AS_STRING(out), n)
            self.consume(n)
        return out

    cdef LinkBuffer c_slice(self, Py_ssize_t n):
        cdef LinkBuffer out = LinkBuffer.__new__(LinkBuffer)
        cdef Node* r
        cdef Node* s
        cdef Py_ssize_t left = n, k
        self._trim()
        r = self.rd
        while left > 0:
            k = r.end - r.off
            if k > left:
                k = left
            if k > 0:
                s = out._append(<Chunk>r.chunk)
                s.off = r.off
                s.end = s.malloc = s.cap = r.off + k     # sealed: never written
                left -= k
            r = r.next
        out.fl = out.wr          # every node of a slice is readable
        out.length = n
        self.consume(n)
        return out

    cdef int c_flush(self) except -1:
        cdef Node* n = self.fl
        if n == NULL:
            return 0
        while True:
            self.length += n.malloc - n.end
            n.end = n.malloc
            if n == self.wr:
                break
            n = n.next
        self.fl = self.wr
        self.pending = 0
        if self.wr.cap > TAIL_MAX:
            # a big tail is never reused for small writes (it would stay pinned)
            self.wr.cap = self.wr.malloc
        return 0

    cdef Py_ssize_t c_write(self, object data) except -1:
        """Append a bytes-like object; returns its length in bytes."""
        cdef Py_buffer pb
        cdef Node* w
        cdef Py_ssize_t n
        if type(data) is bytes:
            n = PyBytes_GET_SIZE(data)
            if n >= INPLACE_THRESHOLD:
                w = self._append(chunk_of_bytes(<bytes>data))
                w.malloc = w.cap = n
                self.pending += n
                return n
            if n:
                w = self._room(n)
                memcpy(w.data + w.malloc, PyBytes_AS_STRING(data), n)
                w.malloc += n
                self.pending += n
            return n
        if PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE) < 0:
            return -1
        try:
            n = pb.len
            if n:
                w = self._room(n)
                memcpy(w.data + w.malloc, pb.buf, n)
                w.malloc += n
                self.pending += n
        finally:
            PyBuffer_Release(&pb)
        return n

    cdef int c_append(self, LinkBuffer other) except -1:
        cdef Node* r = other.rd
        cdef Node* s
        cdef Py_ssize_t moved = other.length
        while r != NULL and moved:
            if r.end > r.off:
                s = self._append(<Chunk>r.chunk)
                s.off = s.end = r.off
                s.malloc = s.cap = r.end               # pending here, sealed
            if r == other.fl:
                break
            r = r.next
        self.pending += moved
        other.c_close()
        return 0

    cdef int c_close(self) except -1:
        self.gen += 1
        self._free_nodes()
        self.length = 0
        self.pending = 0
        self.closed = True
        return 0

    # -- reading ------------------------------------------------------------------

    def __len__(self):
        self._check("len")
        return self.length

    def len(self):
        """Readable bytes."""
        self._check("len")
        return self.length

    def is_empty(self):
        """True when nothing is readable."""
        self._check("is_empty")
        return self.length == 0

    def next(self, n):
        """The next n bytes as a read-only memoryview, consumed."""
        self._check("next")
        cdef Py_ssize_t k = _size_arg("next", n)
        self._need("next", k)
        return self.c_next(k)

    def peek(self, n):
        """The next n bytes as a read-only memoryview, not consumed."""
        self._check("peek")
        cdef Py_ssize_t k = _size_arg("peek", n)
        self._need("peek", k)
        return self.c_peek(k)

    def skip(self, n):
        """Consume n bytes."""
        self._check("skip")
        cdef Py_ssize_t k = _size_arg("skip", n)
        self._need("skip", k)
        if k:
            self.consume(k)

    def until(self, delim):
        """Bytes up to and including the first `delim` (int 0-255 or non-empty bytes), consumed."""
        self._check("until")
        cdef char one
        cdef Py_ssize_t i
        cdef const unsigned char[::1] d
        if isinstance(delim, int):
            if not 0 <= delim <= 255:
                raise ValueError(f"until({delim}): a delimiter byte must be in 0..255")
            one = <char><unsigned char>delim
            i = self.index_of(&one, 1, 0)
            if i < 0:
                raise NotEnoughDataError(
                    f"until({_delim_repr(delim)}): not found in {self.length} readable bytes")
            return self.c_next(i + 1)
        if not isinstance(delim, (bytes, bytearray, memoryview)):
            raise TypeError(f"until: delimiter must be an int or bytes, not {type(delim).__name__}")
        d = bytes(delim)
        if d.shape[0] == 0:
            raise ValueError("until(b''): empty delimiter")
        i = self.index_of(<const char*>&d[0], d.shape[0], 0)
        if i < 0:
            raise NotEnoughDataError(
                f"until({_delim_repr(bytes(delim))}): not found in {self.length} readable bytes")
        return self.c_next(i + d.shape[0])

    def read_binary(self, n):
        """An independent copy of the next n bytes, consumed."""
        self._check("read_binary")
        cdef Py_ssize_t k = _size_arg("read_binary", n)
        self._need("read_binary", k)
        return self.c_read_binary(k)

    def read_string(self, n, str encoding="utf-8", str errors="strict"):
        """The next n bytes decoded; on a decode error nothing is consumed.

        A codec or error handler is user code and may touch this buffer while
        it runs: the bytes being decoded are kept alive by a reference to
        their chunk, and if the buffer was consumed from or closed meanwhile,
        nothing is consumed and RuntimeError (ValueError once closed) is raised.
        """
        self._check("read_string")
        cdef Py_ssize_t k = _size_arg("read_string", n)
        self._need("read_string", k)
        cdef Node* r
        cdef Py_ssize_t gen
        if k == 0:
            return ""
        self._trim()
        r = self.rd
        while r.off == r.end:
            r = r.next
        gen = self.gen
        if r.end - r.off >= k:
            keep = <object>r.chunk        # the memory stays valid whatever the codec does
            eb = encoding.encode()
            xb = errors.encode()
            s = PyUnicode_Decode(r.data + r.off, k, eb, xb)
            del keep
        else:
            tmp = PyBytes_FromStringAndSize(NULL, k)
            self._copy_out(PyBytes_AS_STRING(tmp), k)
            s = tmp.decode(encoding, errors)
        if self.gen != gen:
            self._check("read_string")
            raise RuntimeError(
                f"read_string({k}): the buffer was read from while decoding; nothing consumed")
        self.consume(k)
        return s

    def read_byte(self):
        """One byte as an int, consumed."""
        self._check("read_byte")
        self._need("read_byte", 1)
        self._trim()
        cdef Node* r = self.rd
        while r.off == r.end:
            r = r.next
        cdef unsigned char b = <unsigned char>r.data[r.off]
        self.consume(1)
        return b

    def slice(self, n):
        """A new LinkBuffer holding the next n bytes, sharing their memory; consumed here."""
        self._check("slice")
        cdef Py_ssize_t k = _size_arg("slice", n)
        self._need("slice", k)
        return self.c_slice(k)

    def release(self):
        """Give back the memory of consumed data."""
        self._check("release")
        self.release_all()

    def bytes(self):
        """A copy of all readable bytes, not consumed."""
        self._check("bytes")
        cdef bytes out = PyBytes_FromStringAndSize(NULL, self.length)
        if self.length:
            self._copy_out(PyBytes_AS_STRING(out), self.length)
        return out

    def get_bytes(self):
        """The readable bytes node by node, as read-only memoryviews (for writev)."""
        self._check("get_bytes")
        cdef list out = []
        cdef Node* r = self.rd
        while r != NULL and self.length:
            if r.end > r.off:
                out.append(view(<Chunk>r.chunk, r.data + r.off, r.end - r.off, True))
            if r == self.fl:
                break
            r = r.next
        return out

    # -- writing ------------------------------------------------------------------

    def malloc(self, n):
        """Reserve n contiguous bytes at the tail; returns a writable memoryview of them."""
        self._check_write("malloc")
        cdef Py_ssize_t k = _size_arg("malloc", n)
        cdef Node* w
        if k == 0:
            return memoryview(bytearray())
        w = self._room(k)
        mv = view(<Chunk>w.chunk, w.data + w.malloc, k, False)
        w.malloc += k
        self.pending += k
        return mv

    def malloc_len(self):
        """Bytes written or reserved since the last flush."""
        self._check("malloc_len")
        return self.pending

    def malloc_ack(self, n):
        """Keep the first n bytes written or reserved since the last flush; drop the rest."""
        self._check_write("malloc_ack")
        cdef Py_ssize_t k = _size_arg("malloc_ack", n)
        cdef Py_ssize_t left = k, p
        cdef Node* node
        cdef Node* nx
        if k > self.pending:
            raise ValueError(
                f"malloc_ack({k}): only {self.pending} bytes written or reserved")
        if self.fl == NULL:
            return
        node = self.fl
        while True:
            p = node.malloc - node.end
            if left <= p or node == self.wr:
                break
            left -= p
            node = node.next
        if node.end + left < node.malloc:
            node.malloc = node.end + left
            if not sole_owner(node):
                node.cap = node.malloc     # a malloc view may still see the dropped bytes
        nx = node.next
        node.next = NULL
        self.wr = node
        while nx != NULL:
            node = nx.next
            node_free(nx)
            nx = node
        self.pending = k

    def write_binary(self, data):
        """Append a bytes-like object; returns its length.

        An immutable ``bytes`` of 4 KiB or more is linked without copying;
        mutable objects are copied at every size.
        """
        self._check_write("write_binary")
        return self.c_write(data)

    def write_string(self, str s, str encoding="utf-8"):
        """Append encoded text; returns the bytes written."""
        self._check_write("write_string")
        cdef Py_ssize_t n
        cdef const char* p
        cdef Node* w
        if encoding == "utf-8" or encoding == "utf8":
            p = PyUnicode_AsUTF8AndSize(s, &n)
            if n >= INPLACE_THRESHOLD:
                self.c_write(s.encode())
            elif n:
                w = self._room(n)
                memcpy(w.data + w.malloc, p, n)
                w.malloc += n
                self.pending += n
            return n
        b = s.encode(encoding)
        self.c_write(b)
        return len(b)

    def write_byte(self, b):
        """Append one byte (an int 0..255)."""
        self._check_write("write_byte")
        if not isinstance(b, int):
            raise TypeError(f"write_byte: expected an int, not {type(b).__name__}")
        if not 0 <= b <= 255:
            raise ValueError(f"write_byte({b}): a byte must be in 0..255")
        cdef Node* w = self._room(1)
        w.data[w.malloc] = <char><unsigned char>b
        w.malloc += 1
        self.pending += 1

    def write_direct(self, data, remain_cap):
        """Link `data` as its own node in front of the last `remain_cap` malloc'd bytes.

        ``malloc(nA + nB); write_direct(b, nB)`` gives ``bufA | b | bufB``.
        An immutable ``bytes`` is linked without copying; other objects are copied.
        """
        self._check_write("write_direct")
        cdef Py_ssize_t rc = _size_arg("write_direct", remain_cap)
        cdef Py_ssize_t pos, p, n
        cdef Node* node
        cdef Node* d
        cdef Node* tail
        cdef Chunk c
        cdef Py_buffer pb
        if rc > self.pending:
            raise ValueError(
                f"write_direct(remain_cap={rc}): only {self.pending} bytes written or reserved")
        if type(data) is bytes:
            c = chunk_of_bytes(<bytes>data)
            n = c.cap
        else:
            if PyObject_GetBuffer(data, &pb, PyBUF_SIMPLE) < 0:
                return
            try:
                n = pb.len
                c = chunk_new(n)
                memcpy(c.data, pb.buf, n)
            finally:
                PyBuffer_Release(&pb)
        if n == 0:
            return
        if self.wr == NULL:
            self._append(c)
            self.wr.malloc = self.wr.cap = n
            self.pending += n
            return
        # find the node holding pending offset pos
        pos = self.pending - rc
        node = self.fl
        while True:
            p = node.malloc - node.end
            if pos <= p or node == self.wr:
                break
            pos -= p
            node = node.next
        d = node_new(c)
        d.malloc = d.cap = n
        if node.end + pos < node.malloc:
            # split: node keeps [..end+pos), a new node continues the same chunk
            tail = node_new(<Chunk>node.chunk)
            tail.off = tail.end = node.end + pos
            tail.malloc = node.malloc
            tail.cap = node.cap
            tail.data = node.data
            tail.next = node.next
            node.malloc = node.cap = node.end + pos
            d.next = tail
            if self.wr == node:
                self.wr = tail
        else:
            d.next = node.next
            if self.wr == node:
                self.wr = d
        node.next = d
        self.pending += n

    def write_buffer(self, LinkBuffer other not None):
        """Move all readable data of `other` to this tail without copying; `other` is closed."""
        self._check_write("write_buffer")
        if other is self:
            raise ValueError("write_buffer: cannot append a buffer to itself")
        other._check_write("write_buffer")
        self.c_append(other)

    def append(self, LinkBuffer other not None):
        """Same as write_buffer (Go's Append)."""
        self._check_write("append")
        if other is self:
            raise ValueError("append: cannot append a buffer to itself")
        other._check_write("append")
        self.c_append(other)

    def flush(self):
        """Make everything written so far readable."""
        self._check_write("flush")
        self.c_flush()

    def close(self):
        """Give back all memory; views handed out stay valid. A second close does nothing."""
        if self.owned and not self.closed:
            raise ValueError("close: a connection's input buffer is closed with the connection")
        if not self.closed:
            self.c_close()

    def __repr__(self):
        if self.closed:
            return "<LinkBuffer closed>"
        return f"<LinkBuffer len={self.length} malloc_len={self.pending}>"
