/*
 * kproc._native: the work-list primitives as Mem methods, for Python's slow path.
 *
 * wl_link_before, wl_unlink, wl_pop and wl_fire_timers are the primitives of
 * worklist.c, the very code the fast paths run, with every argument checked:
 * what the fast paths know by construction (the worker lock is held by the
 * caller, the work is where it is said to be, a flush marker never goes on the
 * timer list) is checked here, and a breach is an exception, never a change.
 * kproc/_core/pymem.py implements the same methods, with the same results and
 * the same exceptions, where the extension is not built.
 *
 * Context, for each: any process of the runtime, holding the worker lock
 * (mutex_lock on WORKER.lock of @kbase), after wl_setup() or wq_setup().
 * Raises, for each: RuntimeError (not set up; the lock is not held by the
 * calling thread; the lists are corrupt), ValueError (an offset out of the
 * buffer or a slot out of the work table; the state a call needs is not the
 * state found), TypeError (argument count or type).
 */
#include "kproc_native.h"

/*
 * The worker at @obj for @fname, its lock held by the calling thread: its
 * offset, or -1 with an exception set.
 */
static Py_ssize_t wl_worker(MemObject *self, PyObject *obj, const char *fname)
{
    Py_ssize_t kbase;
    if (!self->wl_set) {
        PyErr_Format(PyExc_RuntimeError, "%s() before wl_setup() or wq_setup()", fname);
        return -1;
    }
    if (!at_len(self, obj, WQ(WORKER_SIZE), 8))
        return -1;
    kbase = PyLong_AsSsize_t(obj);
    if (mutex_held((pthread_mutex_t *)(self->base + kbase + WQ(K_LOCK)), fname) < 0)
        return -1;
    return kbase;
}

/* The list named by @obj (ON_WORKLIST or ON_TIMER), or NULL with ValueError set. */
static const struct wl_list *wl_list_of(MemObject *self, PyObject *obj, const char *fname)
{
    uint32_t where;
    if (!get_u32(obj, &where))
        return NULL;
    if (where == self->works.where)
        return &self->works;
    if (where == self->timers.where)
        return &self->timers;
    PyErr_Format(PyExc_ValueError, "%s(): list %u is neither ON_WORKLIST (%u) nor ON_TIMER "
                 "(%u)", fname, where, self->works.where, self->timers.where);
    return NULL;
}

/* Work slot @idx (index + 1): its offset, or -1 with ValueError set. */
static Py_ssize_t wl_slot(MemObject *self, uint32_t idx, const char *fname)
{
    Py_ssize_t off = wq_work(self, idx);
    if (off < 0)
        PyErr_Format(PyExc_ValueError, "%s(): %u is not a work slot (index + 1, 1..%zd)",
                     fname, idx, WQ(MAX_WORKS));
    return off;
}

static int wl_marker(MemObject *self, Py_ssize_t off)
{
    return LOAD(U32(off + WQ(W_KIND))) == (uint32_t)WQ(WK_FLUSH);
}

/* Counted by list @l: a work on either list, but not a flush marker on the work list. */
static int wl_counted(MemObject *self, const struct wl_list *l, Py_ssize_t off)
{
    return l == &self->timers || !wl_marker(self, off);
}

/*
 * wl_link_before(kbase, list, idx1, before_idx1) - link a work on a list of a worker.
 * @list: ON_WORKLIST or ON_TIMER; @idx1: the work (slot index + 1), on no
 * list; @before_idx1: a work on @list to link it before, 0 for the tail.
 * Marks it on @list (WORK.where) and counts it (WORKER.depth, but not for a
 * flush marker; WORKER.ndelayed).  Python keeps the timer list sorted by
 * choosing @before_idx1.  Return: None.
 */
static PyObject *Mem_wl_link_before(ARGS)
{
    static const char fname[] = "wl_link_before";
    const struct wl_list *l;
    Py_ssize_t kbase, off, boff = 0;
    uint32_t idx, before;
    if (!nargs_ok(nargs, 4, 4, fname) || (kbase = wl_worker(self, args[0], fname)) < 0 ||
        !(l = wl_list_of(self, args[1], fname)) || !get_u32(args[2], &idx) ||
        !get_u32(args[3], &before) || (off = wl_slot(self, idx, fname)) < 0 ||
        (before && (boff = wl_slot(self, before, fname)) < 0))
        return NULL;
    if (LOAD(U32(off + WQ(W_WHERE))))
        return PyErr_Format(PyExc_ValueError, "%s(): work %u is already on a list", fname, idx);
    if (before && LOAD(U32(boff + WQ(W_WHERE))) != l->where)
        return PyErr_Format(PyExc_ValueError, "%s(): work %u is not on list %u", fname,
                            before, l->where);
    if (l == &self->timers && wl_marker(self, off))
        return PyErr_Format(PyExc_ValueError, "%s(): flush marker %u on the timer list",
                            fname, idx);
    if (wl_link_before(self, kbase, l, idx, off, before, wl_counted(self, l, off)) < 0)
        return wl_corrupt(kbase);
    Py_RETURN_NONE;
}

/*
 * wl_unlink(kbase, list, idx1) - list_del_init() of a work from a list of a worker.
 * @idx1 must be on @list.  Uncounts it; WORK.where becomes ON_NONE.
 * Return: None.
 */
static PyObject *Mem_wl_unlink(ARGS)
{
    static const char fname[] = "wl_unlink";
    const struct wl_list *l;
    Py_ssize_t kbase, off;
    uint32_t idx;
    if (!nargs_ok(nargs, 3, 3, fname) || (kbase = wl_worker(self, args[0], fname)) < 0 ||
        !(l = wl_list_of(self, args[1], fname)) || !get_u32(args[2], &idx) ||
        (off = wl_slot(self, idx, fname)) < 0)
        return NULL;
    if (LOAD(U32(off + WQ(W_WHERE))) != l->where)
        return PyErr_Format(PyExc_ValueError, "%s(): work %u is not on list %u", fname, idx,
                            l->where);
    if (wl_unlink(self, kbase, l, off, wl_counted(self, l, off)) < 0)
        return wl_corrupt(kbase);
    Py_RETURN_NONE;
}

/*
 * wl_pop(kbase) - take the head off the work list of a worker.
 * Uncounted unless it is a flush marker; WORK.where becomes ON_NONE.
 * current_work is left alone: the caller completes a marker, or makes a work
 * current.  Return: the head's slot index + 1, 0 if the work list is empty.
 */
static PyObject *Mem_wl_pop(ARGS)
{
    Py_ssize_t kbase, hoff;
    uint32_t head;
    if (!nargs_ok(nargs, 1, 1, "wl_pop") || (kbase = wl_worker(self, args[0], "wl_pop")) < 0)
        return NULL;
    if (!(head = LOAD(U32(kbase + WQ(K_HEAD)))))
        return PyLong_FromLong(0);
    if ((hoff = wq_work(self, head)) < 0 ||
        wl_pop_head(self, kbase, &self->works, hoff, wl_counted(self, &self->works, hoff)) < 0)
        return wl_corrupt(kbase);
    return PyLong_FromUnsignedLong(head);
}

/*
 * wl_fire_timers(kbase, now_ns) - kthread_delayed_work_timer_fn() for every expired timer.
 * @now_ns: CLOCK_MONOTONIC ns; a timer whose WORK.expires <= @now_ns has expired.
 * Earliest first, each expired work leaves the timer list for the tail of the
 * work list, the flush markers waiting on it right behind it; one being
 * cancelled only leaves the timer list.  One being cancelled while flush
 * markers wait on it stops the walk before it is touched: the caller unlinks
 * it (wl_unlink(kbase, ON_TIMER, stopped)), completes its markers, and calls
 * again.
 * Return: (fired, stopped): the number of works moved to the work list (the
 * caller wakes an idle worker if it is not 0), and 0 or the slot index + 1
 * of the work the walk stopped at.
 */
static PyObject *Mem_wl_fire_timers(ARGS)
{
    Py_ssize_t kbase;
    int64_t now, stop;
    uint32_t fired = 0;
    if (!nargs_ok(nargs, 2, 2, "wl_fire_timers") ||
        (kbase = wl_worker(self, args[0], "wl_fire_timers")) < 0 || !get_i64(args[1], &now))
        return NULL;
    if ((stop = wl_fire_timers(self, kbase, now, &fired)) < 0)
        return wl_corrupt(kbase);
    return Py_BuildValue("(IL)", fired, (long long)stop);
}

PyMethodDef wl_methods[] = {
    M(wl_link_before, "wl_link_before(kbase, list, idx1, before_idx1): link work idx1 "
                      "before before_idx1 (0: at the tail) of list ON_WORKLIST or ON_TIMER "
                      "of the worker at kbase, mark and count it; worker lock held"),
    M(wl_unlink, "wl_unlink(kbase, list, idx1): list_del_init() of work idx1 from that "
                 "list, uncounted, where = ON_NONE; worker lock held"),
    M(wl_pop, "wl_pop(kbase) -> idx1 of the head of the work list, unlinked (0: empty); "
              "current_work untouched; worker lock held"),
    M(wl_fire_timers, "wl_fire_timers(kbase, now_ns) -> (fired, stopped): move every "
                      "timer expired by now_ns to the work list, flush markers behind it; "
                      "stopped: 0, or idx1 of an expired work being cancelled with "
                      "flushers, left first on the timer list; worker lock held"),
    {NULL, NULL, 0, NULL},
};
