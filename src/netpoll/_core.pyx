# cython: language_level=3
"""netpoll._core — the reactor: pollers, connections, handlers, server, dialer.

How it runs inside asyncio
--------------------------
netpoll does not replace the event loop. Each Poller owns an epoll fd and
registers that one fd with the running loop (``add_reader``). When it turns
readable, ``Poller._on_ready`` drains ``epoll_wait`` and does the socket I/O of
every ready connection in C (the *I/O pass*): ``recv`` into the input
LinkBuffer, ``send`` of queued output on EPOLLOUT. The pass only does I/O and
fills queues; user code (handlers, on_disconnect, close callbacks) runs after
it, from the queues (reactor/poller.pyx explains why this is what keeps the
borrowed ``epoll_event.data.ptr`` pointers safe).

Where each part lives (one extension, joined by the include lines below;
every class, field and cdef signature is declared in _core.pxd):

    reactor/config.pyx      configure()/get_config(), the pollers of each loop
    reactor/timers.pyx      timer records, the per-poller heap
    reactor/uring.pyx       the io_uring backend behind the poller's seam
    reactor/poller.pyx      the I/O pass and its queues
    reactor/handler.pyx     the Task-like driver of async handlers
    reactor/connection.pyx  Connection: state table, input/output, reader/writer
    reactor/tls.pyx         TLS between the socket and the LinkBuffers
    reactor/transport.pyx   TransportCore: asyncio protocols called from the pass's queues
    reactor/streams.pyx     StreamCore: asyncio Streams read from the connection's input
    reactor/server.pyx      EventLoop: accept, backoff, graceful shutdown
    reactor/dialer.pyx      non-blocking connect, new_fd_connection
    reactor/sched.pyx       asyncio's call_soon/call_later/_run_once in C (netpoll loops)
"""

cimport cython
from cpython.object cimport PyObject, PyObject_TypeCheck, PyTypeObject
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM
from libc.stdlib cimport calloc, free, malloc as c_malloc, realloc
from libc.string cimport memcpy, memset
from posix.uio cimport iovec

from netpoll._buffer cimport Chunk, LinkBuffer, NETPOLL_DEBUG, Node, chunk_leak, chunk_new
from posix.unistd cimport usleep
from netpoll.includes.system cimport *
from netpoll.includes.uring cimport *

import asyncio
import contextvars
import errno as _errno
import functools
import heapq
import inspect
import logging
import math
import os
import random
import socket
import sys
import weakref

from netpoll.errors import (
    ConcurrentAccessError,
    ConnectionClosedError,
    DialTimeoutError,
    EndOfStreamError,
    ReadTimeoutError,
    WriteTimeoutError,
)


cdef extern from "awaitable.h":
    object NpReady_New(object value)
    object NpReady_Fail(object exc)
    int NpReady_Init() except -1


cdef extern from "Python.h":
    int PyIter_Send(object it, object arg, PyObject** presult) except -1
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1
    bint PyCoro_CheckExact(object o)
    object PyContext_CopyCurrent()
    Py_ssize_t PyDict_GET_SIZE(object d)
    int PyDict_SetItem(object d, object k, object v) except -1
    int PyDict_DelItem(object d, object k) except -1
    Py_hash_t PyObject_Hash(object o) except -1
    # borrowed; NULL when absent (the keys here are loops: no comparison can raise)
    PyObject* _PyDict_GetItem_KnownHash(object d, object k, Py_hash_t h)
    int _PyDict_SetItem_KnownHash(object d, object k, object v, Py_hash_t h) except -1
    ctypedef struct PyCodeObject:
        int co_flags
    bint PyFunction_Check(object o)
    PyObject* PyFunction_GET_CODE(object f)     # borrowed


NpReady_Init()

NETPOLL_DEBUG_BUILD = bool(NETPOLL_DEBUG)

cdef unsigned int READ_EVENTS = EPOLLIN | EPOLLRDHUP
cdef unsigned int HUP_EVENTS = EPOLLHUP | EPOLLRDHUP | EPOLLERR

cdef Py_ssize_t live_connections = 0
cdef Py_ssize_t live_transports = 0

logger = logging.getLogger("netpoll")


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef object oserror(int err, str what):
    return OSError(err, f"{what}: {os.strerror(err)}")


cdef object sockerror(int err):
    # What the socket module raises for a failed recv/send (OSError picks the
    # subclass: ConnectionResetError, BrokenPipeError, ...): conn.close_error.
    return OSError(err, os.strerror(err))


@cython.binding(True)
def _debug_counts():
    """Live connections and transport cores (counted in the debug build only)."""
    return {"connections": live_connections, "transports": live_transports}


include "reactor/config.pyx"
include "reactor/timers.pyx"
include "reactor/uring.pyx"
include "reactor/poller.pyx"
include "reactor/waiter.pyx"
include "reactor/handler.pyx"
include "reactor/connection.pyx"
include "reactor/tls.pyx"
include "reactor/transport.pyx"
include "reactor/streams.pyx"
include "reactor/server.pyx"
include "reactor/dialer.pyx"
include "reactor/sched.pyx"
