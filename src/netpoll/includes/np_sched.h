/* Direct access to the __slots__ of asyncio's Handle and TimerHandle.
 *
 * reactor/sched.pyx makes and runs asyncio's own Handle/TimerHandle objects
 * (genuine instances: isinstance, repr, cancel() and when() are asyncio's)
 * without running their Python __init__/_run. A __slots__ attribute is a
 * member descriptor (PyMemberDescr_Type) holding the offset of an object
 * pointer in the instance; we read that offset once at import and then read
 * and write the slot as the descriptor would (T_OBJECT_EX: NULL = unset).
 * Only used on objects whose type is exactly the class the offset came from.
 */
#ifndef NETPOLL_SCHED_H
#define NETPOLL_SCHED_H
#include <Python.h>
#include <structmember.h>  /* PyMemberDef (3.11 keeps it there) */

/* T_OBJECT_EX and READONLY (structmember.h / descrobject.h; same values in 3.11-3.13) */
#define NP_T_OBJECT_EX 16
#define NP_READONLY 1

/* The offset of a writable object slot, or -1 if descr is not one. */
static Py_ssize_t
np_slot_offset(PyObject *descr)
{
    if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type)
        return -1;
    PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
    if (m->type != NP_T_OBJECT_EX || (m->flags & NP_READONLY))
        return -1;
    return m->offset;
}

/* Borrowed; NULL when the slot is unset. */
static inline PyObject *
np_slot(PyObject *o, Py_ssize_t off)
{
    return *(PyObject **)((char *)o + off);
}

static inline void
np_slot_set(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyObject **p = (PyObject **)((char *)o + off);
    PyObject *old = *p;
    Py_XINCREF(v);
    *p = v;
    Py_XDECREF(old);
}

/* What object.__new__(t) does once its arguments are checked. */
static inline PyObject *
np_alloc(PyObject *t)
{
    return ((PyTypeObject *)t)->tp_alloc((PyTypeObject *)t, 0);
}

/* An instance attribute straight from the object's __dict__ (borrowed), or NULL
 * (no error set) when it is not there. Only for classes where nothing on the
 * type shadows the name (sched.pyx checks: no data descriptor, no custom
 * __getattribute__/__getattr__ hooks in the way of these names). */
static inline PyObject *
np_iattr(PyObject *o, PyObject *name)
{
    PyObject **dp = _PyObject_GetDictPtr(o);
    if (dp == NULL || *dp == NULL)
        return NULL;
    return PyDict_GetItemWithError(*dp, name);
}

/* Set an instance attribute that is already in the object's __dict__: 1 done,
 * 0 not there (the caller uses setattr), -1 error. */
static inline int
np_iattr_set(PyObject *o, PyObject *name, PyObject *v)
{
    PyObject **dp = _PyObject_GetDictPtr(o);
    if (dp == NULL || *dp == NULL)
        return 0;
    PyObject *old = PyDict_GetItemWithError(*dp, name);
    if (old == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return PyDict_SetItem(*dp, name, v) < 0 ? -1 : 1;
}

#endif
