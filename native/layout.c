/*
 * kproc._native: the record layout, learnt by field name.
 *
 * The C side reads the WORKER, WORK and TASK records of the arena.  It does
 * not know their offsets: wq_setup() is given the dict of
 * kproc/_core/layout.py native_layout() ({"WORKER.head": offset, ...}, derived
 * from the Record objects) and looks up each field it needs by name, once,
 * outside every hot path.  A missing name is a KeyError naming it; a field
 * that does not fit its slot, or a table that does not fit the buffer, a
 * ValueError naming it; a failed setup leaves none, so the fast paths refuse
 * to run (RuntimeError) rather than read a half-learnt layout.
 * Runs in the calling process, once per runtime and process.
 */
#include "kproc_native.h"

static const struct {
    const char *name;
    int bound, width;
} fields[WQ_NFIELDS] = {
#define FIELD_SPEC(id, name, bound, width) [WQ_##id] = {name, WQ_##bound, (int)(width)},
    LIST_FIELDS(FIELD_SPEC)
    QUEUE_FIELDS(FIELD_SPEC)
#undef FIELD_SPEC
};

/* wq[@id] := @layout[fields[@id].name], an int >= 0.  Return 0, or -1 with KeyError/TypeError/ValueError set. */
static int lookup(MemObject *self, PyObject *layout, int id, const char *fname)
{
    PyObject *v = PyDict_GetItemString(layout, fields[id].name);
    Py_ssize_t n;
    if (!v) {
        PyErr_Format(PyExc_KeyError, "%s(): the layout has no '%s' (kproc/_core/layout.py "
                     "native_layout() gives every field C reads)", fname, fields[id].name);
        return -1;
    }
    n = PyLong_AsSsize_t(v);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "%s(): '%s' is negative (%zd)", fname, fields[id].name, n);
        return -1;
    }
    self->wq[id] = n;
    return 0;
}

/* The table of @count slots of @stride bytes at @base lies inside the buffer, 8-aligned. */
static int table_ok(MemObject *self, int base, int stride, int count)
{
    Py_ssize_t b = self->wq[base], s = self->wq[stride], n = self->wq[count];
    return s > 0 && s % 8 == 0 && (uintptr_t)(self->base + b) % 8 == 0 && b <= self->size &&
           n <= (self->size - b) / s;
}

/*
 * What the C side relies on, checked once: every field lies wholly inside its
 * slot, naturally aligned; the tables lie inside the buffer; ON_NONE is 0 (a
 * zeroed slot is on no list) and the two lists differ.
 * Return 0, or -1 with ValueError set.
 */
static int check_fields(MemObject *self, int n, const char *fname)
{
    Py_ssize_t *wq = self->wq;
    for (int id = 0; id < n; id++) {
        int bound = fields[id].bound, width = fields[id].width, al = width < 8 ? width : 8;
        if (bound == WQ_NONE)
            continue;
        if (wq[id] % al || wq[id] > wq[bound] - width) {
            PyErr_Format(PyExc_ValueError, "%s(): '%s' (%zd) is not a %d-aligned field of "
                         "%d bytes inside '%s' (%zd)", fname, fields[id].name, wq[id], al,
                         width, fields[bound].name, wq[bound]);
            return -1;
        }
    }
    if (!table_ok(self, WQ_WORKS, WQ_WORK_STRIDE, WQ_MAX_WORKS) ||
        (n > WQ_NLIST && !table_ok(self, WQ_TASKS, WQ_TASK_STRIDE, WQ_MAX_TASKS))) {
        PyErr_Format(PyExc_ValueError, "%s(): tables beyond the buffer (or strides not "
                     "positive multiples of 8, or bases misaligned)", fname);
        return -1;
    }
    if (wq[WQ_ON_NONE] != 0 || !wq[WQ_ON_WORKLIST] || !wq[WQ_ON_TIMER] ||
        wq[WQ_ON_WORKLIST] == wq[WQ_ON_TIMER]) {
        PyErr_Format(PyExc_ValueError, "%s(): ON_NONE must be 0 and ON_WORKLIST, ON_TIMER "
                     "two other values", fname);
        return -1;
    }
    return 0;
}

/*
 * wq_setup(layout): where workers, works and tasks live, from the dict of
 * kproc/_core/layout.py native_layout(), each field looked up by name once,
 * here, and checked (check_fields).  A failed setup leaves none.
 */
static PyObject *Mem_wq_setup(ARGS)
{
    NEED_BUFFER();
    if (!nargs_ok(nargs, 1, 1, "wq_setup"))
        return NULL;
    if (!PyDict_Check(args[0]))
        return PyErr_Format(PyExc_TypeError, "wq_setup() needs the dict of "
                            "kproc/_core/layout.py native_layout(), not %.100s",
                            Py_TYPE(args[0])->tp_name);
    self->wq_set = 0;
    for (int id = 0; id < WQ_NFIELDS; id++)
        if (lookup(self, args[0], id, "wq_setup") < 0)
            return NULL;
    if (check_fields(self, WQ_NFIELDS, "wq_setup") < 0)
        return NULL;
    self->wq_set = 1;
    Py_RETURN_NONE;
}

PyMethodDef layout_methods[] = {
    M(wq_setup, "wq_setup(layout): where workers, works and tasks live, by field name "
                "(the dict of kproc/_core/layout.py native_layout())"),
    {NULL, NULL, 0, NULL},
};
