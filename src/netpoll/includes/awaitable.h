/* NpReady: an awaitable whose result (or error) is known when it is made.
 *
 * `await reader.next(n)` with the bytes already buffered must cost about as
 * much as the LinkBuffer call itself. A coroutine object would allocate a
 * frame and end in StopIteration; this type instead answers the coroutine's
 * SEND through tp_as_async.am_send (PyIter_Send, CPython >= 3.10) with
 * PYGEN_RETURN and the value, raising nothing. tp_iternext (StopIteration)
 * keeps it usable by any other driver. Objects are recycled on a free list.
 *
 * The value is handed over exactly once (like a coroutine, it can be awaited
 * once) and dropped at that moment: the type is not GC-tracked, so keeping a
 * delivered exception (whose traceback holds the awaiting frame, which holds
 * this object) would make a cycle the collector cannot see.
 * One spare object is reused while nobody holds it (np_ready_make).
 */
#ifndef NETPOLL_AWAITABLE_H
#define NETPOLL_AWAITABLE_H
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *value;   /* result, or the exception when failed != 0 */
    int failed;
} NpReady;

static PyTypeObject NpReady_Type;
#define NPREADY_FREELIST 256
static NpReady *npready_free[NPREADY_FREELIST];
static int npready_nfree = 0;

/* The spare: one object the module keeps a reference to. `await
 * reader.next(n)` drops the awaitable as soon as it is delivered, so the
 * spare is free again (its refcount back to 1, ours) by the next read and
 * is handed out again without allocating or initialising an object. An
 * awaitable someone still holds (refcount > 1) is never reused: the next
 * one comes from the free list. */
static NpReady *npready_spare = NULL;

static PyObject *
np_ready_make(PyObject *value, int failed)
{
    NpReady *op = npready_spare;
    PyObject *old;
    if (op != NULL && Py_REFCNT(op) == 1) {
        old = op->value;          /* an undelivered value of a dropped awaitable */
        Py_INCREF(value);
        op->value = value;
        op->failed = failed;
        Py_INCREF(op);
        Py_XDECREF(old);          /* last: may run code that makes another one */
        return (PyObject *)op;
    }
    if (npready_nfree > 0) {
        op = npready_free[--npready_nfree];
        (void)PyObject_Init((PyObject *)op, &NpReady_Type);
    } else {
        op = PyObject_New(NpReady, &NpReady_Type);
        if (op == NULL)
            return NULL;
    }
    Py_INCREF(value);
    op->value = value;
    op->failed = failed;
    return (PyObject *)op;
}

static PyObject *NpReady_New(PyObject *value) { return np_ready_make(value, 0); }
static PyObject *NpReady_Fail(PyObject *exc) { return np_ready_make(exc, 1); }

static void
npready_dealloc(NpReady *op)
{
    Py_CLEAR(op->value);
    if (npready_nfree < NPREADY_FREELIST)
        npready_free[npready_nfree++] = op;
    else
        PyObject_Free(op);
}

static PyObject *
npready_await(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

/* Take the value out (new reference), or set RuntimeError if already taken. */
static PyObject *
npready_take(NpReady *op)
{
    PyObject *v = op->value;
    if (v == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited netpoll result");
        return NULL;
    }
    op->value = NULL;
    return v;
}

static PySendResult
npready_am_send(PyObject *self, PyObject *arg, PyObject **result)
{
    NpReady *op = (NpReady *)self;
    PyObject *v = npready_take(op);
    (void)arg;
    *result = NULL;
    if (v == NULL)
        return PYGEN_ERROR;
    if (op->failed) {
        PyErr_SetObject((PyObject *)Py_TYPE(v), v);
        Py_DECREF(v);
        return PYGEN_ERROR;
    }
    *result = v;
    return PYGEN_RETURN;
}

static PyObject *
npready_iternext(PyObject *self)
{
    NpReady *op = (NpReady *)self;
    PyObject *stop, *v = npready_take(op);
    if (v == NULL)
        return NULL;
    if (op->failed) {
        PyErr_SetObject((PyObject *)Py_TYPE(v), v);
        Py_DECREF(v);
        return NULL;
    }
    stop = PyObject_CallOneArg(PyExc_StopIteration, v);
    Py_DECREF(v);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static PyObject *
npready_send(PyObject *self, PyObject *arg)
{
    (void)arg;
    return npready_iternext(self);
}

static PyObject *
npready_throw(PyObject *self, PyObject *args)
{
    PyObject *typ, *val = NULL, *tb = NULL;
    (void)self;
    if (!PyArg_UnpackTuple(args, "throw", 1, 3, &typ, &val, &tb))
        return NULL;
    if (PyExceptionInstance_Check(typ))
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    else
        PyErr_SetObject(typ, val);
    return NULL;
}

static PyObject *
npready_close(PyObject *self, PyObject *unused)
{
    (void)self; (void)unused;
    Py_RETURN_NONE;
}

static PyMethodDef npready_methods[] = {
    {"send", (PyCFunction)npready_send, METH_O, NULL},
    {"throw", (PyCFunction)npready_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)npready_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods npready_as_async = {
    npready_await,   /* am_await */
    0,               /* am_aiter */
    0,               /* am_anext */
    npready_am_send, /* am_send */
};

static PyTypeObject NpReady_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    "netpoll._core.Ready",              /* tp_name */
    sizeof(NpReady),                    /* tp_basicsize */
    0,                                  /* tp_itemsize */
    (destructor)npready_dealloc,        /* tp_dealloc */
    0, 0, 0,                            /* vectorcall_offset, getattr, setattr */
    &npready_as_async,                  /* tp_as_async */
    0, 0, 0, 0, 0, 0, 0,                /* repr, number, sequence, mapping, hash, call, str */
    0, 0, 0,                            /* getattro, setattro, as_buffer */
    Py_TPFLAGS_DEFAULT,                 /* tp_flags */
    "an awaitable whose result is already known", /* tp_doc */
    0, 0, 0, 0,                         /* traverse, clear, richcompare, weaklistoffset */
    npready_await,                      /* tp_iter */
    npready_iternext,                   /* tp_iternext */
    npready_methods,                    /* tp_methods */
};

static int
NpReady_Init(void)
{
    if (PyType_Ready(&NpReady_Type) < 0)
        return -1;
    if (npready_spare == NULL) {
        npready_spare = PyObject_New(NpReady, &NpReady_Type);
        if (npready_spare == NULL)
            return -1;
        npready_spare->value = NULL;
        npready_spare->failed = 0;
    }
    return 0;
}

#endif
