/*
 * kproc._native: the Mem object, bounds-checked addressing, 32/64-bit atomics.
 *
 * A Mem object holds a writable buffer export (the arena's mmap, MAP_SHARED
 * across processes) for its whole lifetime, so the memory cannot go away
 * under a call that released the GIL.  Methods take byte offsets, checked for
 * bounds and natural alignment (ValueError).  Atomics are sequentially
 * consistent: 32-bit ones unsigned (values taken mod 2**32), 64-bit ones
 * signed (wrapping).  Runs in the calling thread, with the GIL held.
 */
#include "kproc_native.h"

/* Address of @len bytes at offset @arg, @align-aligned, or NULL (ValueError set). */
void *at_len(MemObject *m, PyObject *arg, Py_ssize_t len, int align)
{
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    if (off < 0 || off > m->size - len) {
        PyErr_Format(PyExc_ValueError, "offset %zd: %zd bytes there are out of bounds "
                     "(buffer size %zd)", off, len, m->size);
        return NULL;
    }
    if (((uintptr_t)(m->base + off)) % (uintptr_t)align) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not %d-aligned", off, align);
        return NULL;
    }
    return m->base + off;
}

/* -- construction ---------------------------------------------------------- */

static int Mem_init(MemObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *obj;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Mem", kwlist, &obj))
        return -1;
    if (self->base) {
        PyErr_SetString(PyExc_RuntimeError, "Mem is already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    self->base = self->view.buf;
    self->size = self->view.len;
    return 0;
}

long kproc_gil_released;

/*
 * release() -> True once the buffer export is dropped (every later call raises
 * ValueError), False (nothing done) while a call of any Mem sleeps or spins
 * with the GIL released: the owner of the mapping may then unmap it.
 */
static PyObject *Mem_release(MemObject *self, PyObject *Py_UNUSED(ignored))
{
    if (kproc_gil_released > 0)
        Py_RETURN_FALSE;
    if (self->base) {
        self->base = NULL;
        self->size = 0;
        self->wl_set = self->wq_set = 0;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_TRUE;
}

static void Mem_dealloc(MemObject *self)
{
    if (self->base)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* -- 32-bit atomics (unsigned) ---------------------------------------------- */

static PyObject *Mem_load32(ARGS)
{
    uint32_t *p;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 1, 1, "load32") || !(p = at(self, args[0], 4)))
        return NULL;
    return PyLong_FromUnsignedLong(LOAD(p));
}

static PyObject *Mem_store32(ARGS)
{
    uint32_t *p, v;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 2, 2, "store32") || !(p = at(self, args[0], 4)) ||
        !get_u32(args[1], &v))
        return NULL;
    STORE(p, v);
    Py_RETURN_NONE;
}

#define RMW32(NAME, EXPR)                                                     \
static PyObject *Mem_##NAME(ARGS)                                             \
{                                                                             \
    uint32_t *p, v;                                                           \
    NEED_BUFFER();                                                            \
    if (!nargs_ok(nargs, 2, 2, #NAME) || !(p = at(self, args[0], 4)) ||       \
        !get_u32(args[1], &v))                                                \
        return NULL;                                                          \
    return PyLong_FromUnsignedLong(EXPR);                                     \
}
RMW32(xchg32, __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST))
RMW32(fetch_add32, __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST))
RMW32(fetch_or32, __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST))
RMW32(fetch_and32, __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST))

static PyObject *Mem_cmpxchg32(ARGS)
{
    uint32_t *p, expected, desired;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 3, 3, "cmpxchg32") || !(p = at(self, args[0], 4)) ||
        !get_u32(args[1], &expected) || !get_u32(args[2], &desired))
        return NULL;
    CAS(p, &expected, desired);         /* on failure, expected := the value there */
    return PyLong_FromUnsignedLong(expected);
}

/* -- 64-bit atomics (signed) ------------------------------------------------ */

static PyObject *Mem_load64(ARGS)
{
    int64_t *p;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 1, 1, "load64") || !(p = at(self, args[0], 8)))
        return NULL;
    return PyLong_FromLongLong(LOAD(p));
}

static PyObject *Mem_store64(ARGS)
{
    int64_t *p, v;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 2, 2, "store64") || !(p = at(self, args[0], 8)) ||
        !get_i64(args[1], &v))
        return NULL;
    STORE(p, v);
    Py_RETURN_NONE;
}

#define RMW64(NAME, EXPR)                                                     \
static PyObject *Mem_##NAME(ARGS)                                             \
{                                                                             \
    int64_t *p, v;                                                            \
    NEED_BUFFER();                                                            \
    if (!nargs_ok(nargs, 2, 2, #NAME) || !(p = at(self, args[0], 8)) ||       \
        !get_i64(args[1], &v))                                                \
        return NULL;                                                          \
    return PyLong_FromLongLong(EXPR);                                         \
}
RMW64(xchg64, __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST))

/* Signed overflow wraps (two's complement), done on the unsigned type. */
static PyObject *Mem_fetch_add64(ARGS)
{
    int64_t *p, v;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 2, 2, "fetch_add64") || !(p = at(self, args[0], 8)) ||
        !get_i64(args[1], &v))
        return NULL;
    return PyLong_FromLongLong((int64_t)__atomic_fetch_add((uint64_t *)p, (uint64_t)v,
                                                           __ATOMIC_SEQ_CST));
}

static PyObject *Mem_cmpxchg64(ARGS)
{
    int64_t *p, expected, desired;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 3, 3, "cmpxchg64") || !(p = at(self, args[0], 8)) ||
        !get_i64(args[1], &expected) || !get_i64(args[2], &desired))
        return NULL;
    CAS(p, &expected, desired);
    return PyLong_FromLongLong(expected);
}

/* -- the type --------------------------------------------------------------- */

PyMethodDef atomic_methods[] = {
    {"release", (PyCFunction)Mem_release, METH_NOARGS,
     "release() -> bool: drop the buffer export (later calls raise ValueError); False "
     "and nothing done while any Mem call waits with the GIL released"},
    M(load32, "load32(off) -> int: the u32 at off"),
    M(store32, "store32(off, v): store v mod 2**32"),
    M(xchg32, "xchg32(off, v) -> old"),
    M(cmpxchg32, "cmpxchg32(off, expected, new) -> old (success iff old == expected)"),
    M(fetch_add32, "fetch_add32(off, delta) -> old (delta may be negative; wraps mod 2**32)"),
    M(fetch_or32, "fetch_or32(off, mask) -> old"),
    M(fetch_and32, "fetch_and32(off, mask) -> old"),
    M(load64, "load64(off) -> int: the s64 at off"),
    M(store64, "store64(off, v)"),
    M(xchg64, "xchg64(off, v) -> old"),
    M(cmpxchg64, "cmpxchg64(off, expected, new) -> old (success iff old == expected)"),
    M(fetch_add64, "fetch_add64(off, delta) -> old (wraps)"),
    {NULL, NULL, 0, NULL},
};

static PyObject *Mem_get_size(MemObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->size);
}

static PyGetSetDef Mem_getset[] = {
    {"size", (getter)Mem_get_size, NULL, "buffer size in bytes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject MemType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kproc._native.Mem",
    .tp_basicsize = sizeof(MemObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Mem(buffer): atomics, futexes, completions, robust mutexes and work "
              "lists at byte offsets of a writable buffer, kept exported for the "
              "object's lifetime.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Mem_init,
    .tp_dealloc = (destructor)Mem_dealloc,
    .tp_getset = Mem_getset,
    /* .tp_methods: put together from every file's table by module.c */
};
