/*
 * kproc._native: the record layout, learnt by field name.
 *
 * The C side reads the WORKER, WORK and TASK records of the arena.  It does
 * not know their offsets: wl_setup() and wq_setup() are given the dict of
 * kproc/_core/layout.py native_layout() ({"WORKER.head": offset, ...}, derived
 * from the Record objects) and looks up each field it needs by name, once,
 * outside every hot path.  A missing name is a KeyError naming it; a field
 * that does not fit its slot, or a table that does not fit the buffer, a
 * ValueError naming it; a failed setup leaves none, so the methods that
 * need it refuse to run (RuntimeError) rather than read a half-learnt layout.
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

/*
 * wq[@id] := @layout[fields[@id].name], an int >= 0.
 * Return 0, or -1 with KeyError, TypeError or ValueError set.
 */
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
 * Learn the first @n fields (WQ_NLIST: the lists; WQ_NFIELDS: everything)
 * from the native_layout() dict in @args.  A failed setup leaves none.
 * Return 0, or -1 with an exception set.
 */
static int setup(MemObject *self, PyObject *const *args, Py_ssize_t nargs, int n,
                 const char *fname)
{
    if (!nargs_ok(nargs, 1, 1, fname))
        return -1;
    if (!PyDict_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s() needs the dict of kproc/_core/layout.py "
                     "native_layout(), not %.100s", fname, Py_TYPE(args[0])->tp_name);
        return -1;
    }
    self->wl_set = self->wq_set = 0;
    for (int id = 0; id < n; id++)
        if (lookup(self, args[0], id, fname) < 0)
            return -1;
    if (check_fields(self, n, fname) < 0)
        return -1;
    self->works = (struct wl_list){self->wq[WQ_K_HEAD], self->wq[WQ_K_TAIL],
                                   self->wq[WQ_K_DEPTH], (uint32_t)self->wq[WQ_ON_WORKLIST]};
    self->timers = (struct wl_list){self->wq[WQ_K_THEAD], self->wq[WQ_K_TTAIL],
                                    self->wq[WQ_K_NDELAYED], (uint32_t)self->wq[WQ_ON_TIMER]};
    self->wl_set = 1;
    self->wq_set = n == WQ_NFIELDS;
    return 0;
}

/*
 * wl_setup(layout): where the lists of workers live, for the wl_* methods.
 * On a Mem already set up by wq_setup() it learns everything again, so that
 * the fast paths keep a layout of one piece.  Return: None.
 */
static PyObject *Mem_wl_setup(ARGS)
{
    NEED_BUFFER();
    if (setup(self, args, nargs, self->wq_set ? WQ_NFIELDS : WQ_NLIST, "wl_setup") < 0)
        return NULL;
    Py_RETURN_NONE;
}

/*
 * wq_setup(layout): wl_setup(), and where works are tied and workers' tasks
 * live, for the fast paths (work_queue, work_pop).  Return: None.
 */
static PyObject *Mem_wq_setup(ARGS)
{
    NEED_BUFFER();
    if (setup(self, args, nargs, WQ_NFIELDS, "wq_setup") < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyMethodDef layout_methods[] = {
    M(wl_setup, "wl_setup(layout): where the work lists live, by field name (the dict of "
                "kproc/_core/layout.py native_layout()), for the wl_* methods"),
    M(wq_setup, "wq_setup(layout): wl_setup(), and where works are tied and tasks live, "
                "for work_queue and work_pop"),
    {NULL, NULL, 0, NULL},
};
