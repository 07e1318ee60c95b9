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

/* A cache of the loop's instance attributes (sched.pyx's _la/_ltrue).
 *
 * The scheduling functions read a dozen of the loop's __dict__ entries per
 * request (_debug, _closed, _ready...), each a dict lookup. A dict's version
 * tag (PEP 509, 3.11: ma_version_tag) changes at every mutation and is unique
 * across all dicts ever made, so while the loop's __dict__ is the same object
 * with the same tag, a value read from it earlier is still its value (and
 * still alive: the dict holds it). One cache (the last dict read), indexed by
 * the attribute's number in sched.pyx's _LOOP_ATTRS. 3.11 only: 3.12
 * deprecates the tag and 3.14 removes it; elsewhere every read looks up.
 */
#if PY_VERSION_HEX < 0x030C0000
#define NP_ATTR_CACHE 1
#else
#define NP_ATTR_CACHE 0
#endif
#define NP_NCACHE 16
static PyObject *np_cache_dict = NULL;     /* compared, never dereferenced */
static uint64_t np_cache_ver = 0;
static PyObject *np_cache_val[NP_NCACHE];  /* borrowed from np_cache_dict; NULL = not read */

/* np_iattr, through the cache (idx < NP_NCACHE names `name`). */
static inline PyObject *
np_iattr_c(PyObject *o, int idx, PyObject *name)
{
    PyObject **dp = _PyObject_GetDictPtr(o);
    if (dp == NULL || *dp == NULL)
        return NULL;
#if NP_ATTR_CACHE
    PyObject *d = *dp;
    uint64_t ver = ((PyDictObject *)d)->ma_version_tag;
    if (d == np_cache_dict && ver == np_cache_ver) {
        if (np_cache_val[idx] != NULL)
            return np_cache_val[idx];
    } else {
        memset(np_cache_val, 0, sizeof(np_cache_val));
        np_cache_dict = d;
        np_cache_ver = ver;
    }
    PyObject *v = PyDict_GetItemWithError(d, name);
    if (v != NULL && ((PyDictObject *)d)->ma_version_tag == ver)
        np_cache_val[idx] = v;
    return v;
#else
    return PyDict_GetItemWithError(*dp, name);
#endif
}

/* np_iattr_set for an int attribute already in the dict (a counter): 1 done,
 * 0 not there or not an int (the caller uses setattr), -1 error. Replacing one
 * int with another changes only that entry (no code runs: an int has no
 * __del__), so a warm cache stays warm, with the new value and version. */
static inline int
np_iattr_set_int(PyObject *o, int idx, PyObject *name, PyObject *v)
{
    PyObject **dp = _PyObject_GetDictPtr(o);
    if (dp == NULL || *dp == NULL || !PyLong_CheckExact(v))
        return 0;
    PyObject *d = *dp;
    PyObject *old = PyDict_GetItemWithError(d, name);
    if (old == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyLong_CheckExact(old))
        return 0;
#if NP_ATTR_CACHE
    int warm = d == np_cache_dict && ((PyDictObject *)d)->ma_version_tag == np_cache_ver;
#endif
    if (PyDict_SetItem(d, name, v) < 0)
        return -1;
#if NP_ATTR_CACHE
    if (warm) {
        np_cache_ver = ((PyDictObject *)d)->ma_version_tag;
        np_cache_val[idx] = v;
    }
#endif
    return 1;
}

/* Is t the type whose flags were cached under (ct, tag)? A type's version tag
 * is unique and is invalidated (Py_TPFLAGS_VALID_VERSION_TAG cleared) when the
 * type or one of its bases changes, so the cached facts about its attributes
 * still hold while this is true. */
static inline int
np_type_fresh(PyObject *t, PyObject *ct, unsigned int tag)
{
    return t == ct && (((PyTypeObject *)t)->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)
        && ((PyTypeObject *)t)->tp_version_tag == tag;
}

/* The type's version tag, or 0 when it has no valid one (do not cache then). */
static inline unsigned int
np_type_tag(PyObject *t)
{
    if (!(((PyTypeObject *)t)->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
        return 0;
    return ((PyTypeObject *)t)->tp_version_tag;
}

/* Is the caller's reference the only one to o, with no weak reference to it?
 * (Then nothing else can see o: sched.pyx may clear and reuse a Handle.) */
static inline int
np_sole_ref(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    if (Py_REFCNT(o) != 1)
        return 0;
    if (t->tp_weaklistoffset > 0 && *(PyObject **)((char *)o + t->tp_weaklistoffset) != NULL)
        return 0;
    if (t->tp_weaklistoffset < 0)
        return 0;     /* 3.12+: a managed weakref list (no public way to read it): keep out */
    return 1;
}

#endif
