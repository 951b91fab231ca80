/*
 * kproc._native: the kthread_worker's lists, and the fast paths on them.
 *
 * The one exception to "only syscalls and atomics" (kproc_native.h).  A
 * worker (WORKER record) has two lists of works (WORK records) linked by slot
 * index + 1 through WORK.prev/next, 0 ending them: the work list
 * (WORKER.head/tail, counted in WORKER.depth, flush markers excepted) and the
 * timer list (delayed_work_list: WORKER.thead/ttail, sorted by expiry, counted
 * in WORKER.ndelayed).  WORK.where says which list a work is on; ON_NONE (0)
 * is the kernel's list_empty(&work->node).
 *
 * Every change is made under the worker's lock (WORKER.lock), and the
 * primitives below (wl_link_before, wl_unlink, wl_pop_head, wl_fire_timers)
 * never take it: their caller holds it.  They are the single implementation
 * of those operations, used by the fast paths below (work_queue, work_pop,
 * which take the lock themselves) and by Python's slow path through the
 * checked wl_* methods of wl_methods.c.  A link that points outside the work
 * table means the lists are corrupt: a primitive that meets one changes
 * nothing itself and returns -1 (a compound one, wl_fire_timers, stops
 * there); the call raises RuntimeError.
 *
 * Runs in whichever process and thread calls: a queuer (any process of the
 * runtime) or the worker's own kthread.
 */
#include "kproc_native.h"

#include <limits.h>

/* RuntimeError for the lists of the worker at @kbase; return NULL. */
PyObject *wl_corrupt(Py_ssize_t kbase)
{
    return PyErr_Format(PyExc_RuntimeError, "the lists of the worker at offset %zd are "
                        "corrupt (a link is not a work slot)", kbase);
}

/* -- the list primitives (worker lock held) --------------------------------- */

/*
 * Inline in the fast paths below, as if written out in them (their speed is
 * the point); wl_methods.c calls the external copies the compiler keeps.
 */
#define WL_PRIMITIVE inline __attribute__((always_inline))

/*
 * Link work @idx (at @off) before node @before of list @l (0: at its tail),
 * mark it on @l and, if @counted (all but a flush marker on the work list),
 * count it.  Return 0, or -1 if a neighbour is not a work slot (nothing done).
 */
WL_PRIMITIVE
int wl_link_before(MemObject *self, Py_ssize_t kbase, const struct wl_list *l, uint32_t idx,
                   Py_ssize_t off, uint32_t before, int counted)
{
    Py_ssize_t boff = 0, poff = 0;
    uint32_t prev;
    if (before) {
        if ((boff = wq_work(self, before)) < 0)
            return -1;
        prev = LOAD(U32(boff + WQ(W_PREV)));
    } else {
        prev = LOAD(U32(kbase + l->tail));
    }
    if (prev && (poff = wq_work(self, prev)) < 0)
        return -1;
    STORE(U32(off + WQ(W_NEXT)), before);
    STORE(U32(off + WQ(W_PREV)), prev);
    if (before)
        STORE(U32(boff + WQ(W_PREV)), idx);
    else
        STORE(U32(kbase + l->tail), idx);
    if (prev)
        STORE(U32(poff + WQ(W_NEXT)), idx);
    else
        STORE(U32(kbase + l->head), idx);
    STORE(U32(off + WQ(W_WHERE)), l->where);
    if (counted)
        __atomic_fetch_add(U32(kbase + l->count), 1, __ATOMIC_SEQ_CST);
    return 0;
}

/*
 * list_del_init() of the work at @off from list @l; uncount it if @counted.
 * Return 0, or -1 if a neighbour is not a work slot (nothing done).
 */
WL_PRIMITIVE
int wl_unlink(MemObject *self, Py_ssize_t kbase, const struct wl_list *l, Py_ssize_t off,
              int counted)
{
    uint32_t prev = LOAD(U32(off + WQ(W_PREV))), next = LOAD(U32(off + WQ(W_NEXT)));
    Py_ssize_t poff = 0, noff = 0;
    if ((prev && (poff = wq_work(self, prev)) < 0) || (next && (noff = wq_work(self, next)) < 0))
        return -1;
    if (prev)
        STORE(U32(poff + WQ(W_NEXT)), next);
    else
        STORE(U32(kbase + l->head), next);
    if (next)
        STORE(U32(noff + WQ(W_PREV)), prev);
    else
        STORE(U32(kbase + l->tail), prev);
    STORE(U32(off + WQ(W_PREV)), 0);
    STORE(U32(off + WQ(W_NEXT)), 0);
    STORE(U32(off + WQ(W_WHERE)), 0);
    if (counted)
        __atomic_fetch_sub(U32(kbase + l->count), 1, __ATOMIC_SEQ_CST);
    return 0;
}

/* wl_unlink() of the head (at @hoff) of list @l, whose prev is 0.  0, or -1 (nothing done). */
WL_PRIMITIVE
int wl_pop_head(MemObject *self, Py_ssize_t kbase, const struct wl_list *l, Py_ssize_t hoff,
                int counted)
{
    uint32_t next = LOAD(U32(hoff + WQ(W_NEXT)));
    Py_ssize_t noff = 0;
    if (next && (noff = wq_work(self, next)) < 0)
        return -1;
    STORE(U32(kbase + l->head), next);
    if (next)
        STORE(U32(noff + WQ(W_PREV)), 0);
    else
        STORE(U32(kbase + l->tail), 0);
    STORE(U32(hoff + WQ(W_NEXT)), 0);
    STORE(U32(hoff + WQ(W_WHERE)), 0);
    if (counted)
        __atomic_fetch_sub(U32(kbase + l->count), 1, __ATOMIC_SEQ_CST);
    return 0;
}

/*
 * A timer moved work @toff to the work list: the flush markers waiting on it
 * (a chain through WORK.next from WORK.flushers, newest first) go right
 * behind it, oldest first, as kthread_flush_work() would have put them had
 * the work been queued.  Return 0, or -1 (a marker is not a work slot).
 */
static inline int wl_queue_flushers(MemObject *self, Py_ssize_t kbase, Py_ssize_t toff, uint32_t m)
{
    STORE(U32(toff + WQ(W_FLUSHERS)), 0);
    while (m) {
        Py_ssize_t moff = wq_work(self, m);
        uint32_t older;
        if (moff < 0)
            return -1;
        older = LOAD(U32(moff + WQ(W_NEXT)));
        if (wl_link_before(self, kbase, &self->works, m, moff,
                           LOAD(U32(toff + WQ(W_NEXT))), 0) < 0)
            return -1;
        m = older;
    }
    return 0;
}

/*
 * kthread_delayed_work_timer_fn() for every timer of the worker that expired
 * by @now, earliest first: off the timer list and onto the tail of the work
 * list, its flush markers right behind it (*@fired counts the works moved); a
 * work being cancelled is only taken off.  A work being cancelled while
 * flushers wait on it stops the walk, left at the head of the timer list:
 * completing the flushers is the wait backend's business, in Python.
 * Return 0 no expired timer left, the index + 1 of the work it stopped at,
 * or -1 if the lists are corrupt.
 */
WL_PRIMITIVE
int64_t wl_fire_timers(MemObject *self, Py_ssize_t kbase, int64_t now, uint32_t *fired)
{
    uint32_t t;
    while ((t = LOAD(U32(kbase + WQ(K_THEAD))))) {
        Py_ssize_t toff = wq_work(self, t);
        uint32_t canceling, flushers;
        if (toff < 0)
            return -1;
        if (LOAD((int64_t *)(self->base + toff + WQ(W_EXPIRES))) > now)
            return 0;
        canceling = LOAD(U32(toff + WQ(W_CANCELING)));
        flushers = LOAD(U32(toff + WQ(W_FLUSHERS)));
        if (canceling && flushers)
            return t;
        if (wl_pop_head(self, kbase, &self->timers, toff, 1) < 0)
            return -1;
        if (canceling)
            continue;
        if (wl_link_before(self, kbase, &self->works, t, toff, 0, 1) < 0)
            return -1;
        ++*fired;
        if (flushers && wl_queue_flushers(self, kbase, toff, flushers) < 0)
            return -1;
    }
    return 0;
}

/* -- the fast paths (they take the lock) ------------------------------------- */

/* mutex_trylock_spin() of the worker lock: 1 held, 0 still busy (nothing held), -1 error set. */
static int wq_trylock(pthread_mutex_t *mx, int64_t spin_ns)
{
    int rc = mutex_trylock_spin(mx, spin_ns);
    if (rc == 0)
        return 1;
    if (rc == EBUSY)
        return 0;
    return mutex_acquired(mx, rc) < 0 ? -1 : 1;
}

/* wake_up_process() of the worker's task (TASK_NORMAL sleepers), futex backend. */
static void wq_wake_task(MemObject *self, Py_ssize_t kbase)
{
    uint32_t t = LOAD(U32(kbase + WQ(K_TASK))), state;
    Py_ssize_t tbase;
    if (t == 0 || t > (uint32_t)WQ(MAX_TASKS))
        return;
    tbase = WQ(TASKS) + (Py_ssize_t)(t - 1) * WQ(TASK_STRIDE);
    if (LOAD(U32(tbase + WQ(T_GEN))) != LOAD(U32(kbase + WQ(K_TASK_GEN))))
        return;
    state = LOAD(U32(tbase + WQ(T_STATE)));
    do {
        if (!(state & (uint32_t)WQ(TASK_NORMAL)))
            return;
    } while (!CAS(U32(tbase + WQ(T_STATE)), &state, 0));
    __atomic_fetch_add(U32(tbase + WQ(T_WAKE_SEQ)), 1, __ATOMIC_SEQ_CST);
    if (LOAD(U32(tbase + WQ(T_SLEEPING))))
        futex_wake_n(U32(tbase + WQ(T_WAKE_SEQ)), INT_MAX);
}

/*
 * work_queue(kbase, wbase, widx1, kgen, wgen, spin_ns, wake) -> kthread_queue_work()
 * when nothing unusual is going on: 0 not queued (pending or being cancelled),
 * 1 queued, 2 queued and the worker is idle (wake it; done here if @wake),
 * -1 take the slow path (a generation differs, the work is tied elsewhere, a
 * timer is armed, or the lock stayed busy for spin_ns).
 */
static PyObject *Mem_work_queue(ARGS)
{
    Py_ssize_t kbase, wbase;
    uint32_t widx1, kgen, wgen, tied, idx1;
    int64_t spin_ns;
    int wake, idle, rc;
    pthread_mutex_t *mx;
    NEED_BUFFER();
    if (!self->wq_set)
        return PyErr_Format(PyExc_RuntimeError, "work_queue() before wq_setup()");
    if (!nargs_ok(nargs, 7, 7, "work_queue") ||
        !at_len(self, args[0], WQ(WORKER_SIZE), 8) || !at_len(self, args[1], WQ(WORK_STRIDE), 8) ||
        !get_u32(args[2], &widx1) || !get_u32(args[3], &kgen) || !get_u32(args[4], &wgen) ||
        !get_i64(args[5], &spin_ns) || (wake = PyObject_IsTrue(args[6])) < 0)
        return NULL;
    kbase = PyLong_AsSsize_t(args[0]);
    wbase = PyLong_AsSsize_t(args[1]);
    idx1 = (uint32_t)((wbase - WQ(WORKS)) / WQ(WORK_STRIDE) + 1);
    if (wq_work(self, idx1) != wbase)
        return PyErr_Format(PyExc_ValueError, "work_queue(): %zd is not a work slot", wbase);
    if (LOAD(U32(kbase + WQ(K_GEN))) != kgen || LOAD(U32(wbase + WQ(W_GEN))) != wgen)
        return PyLong_FromLong(-1);
    tied = LOAD(U32(wbase + WQ(W_WORKER)));
    if (tied && (tied != widx1 || LOAD(U32(wbase + WQ(W_WORKER_GEN))) != kgen))
        return PyLong_FromLong(-1);
    mx = (pthread_mutex_t *)(self->base + kbase + WQ(K_LOCK));
    if ((rc = wq_trylock(mx, spin_ns)) <= 0)
        return rc < 0 ? NULL : PyLong_FromLong(-1);
    if (LOAD(U32(kbase + WQ(K_THEAD)))) {
        pthread_mutex_unlock(mx);
        return PyLong_FromLong(-1);
    }
    if (LOAD(U32(wbase + WQ(W_WHERE))) || LOAD(U32(wbase + WQ(W_CANCELING)))) {
        pthread_mutex_unlock(mx);
        return PyLong_FromLong(0);
    }
    if (wl_link_before(self, kbase, &self->works, idx1, wbase, 0, 1) < 0) {
        pthread_mutex_unlock(mx);
        return wl_corrupt(kbase);
    }
    if (!tied) {
        STORE(U32(wbase + WQ(W_WORKER)), widx1);
        STORE(U32(wbase + WQ(W_WORKER_GEN)), kgen);
    }
    idle = LOAD(U32(kbase + WQ(K_CURRENT))) == 0;
    pthread_mutex_unlock(mx);
    if (idle && wake)
        wq_wake_task(self, kbase);
    return PyLong_FromLong(idle ? 2 : 1);
}

/*
 * work_pop(kbase, prev_idx1, spin_ns) -> the worker's side: finish @prev_idx1
 * (clear current_work), pop the head of the work list and make it current.
 * Expired timers are fired first (wl_fire_timers).
 * Return: its index + 1; 0 if both lists are empty (current_work cleared);
 * -1 take the slow path (the list is empty but a timer is armed -- the caller
 * computes its sleep --, the head is a flush marker, a due timer needs the
 * Python path, the previous work is an orphan to free, or the lock stayed busy).
 */
static PyObject *Mem_work_pop(ARGS)
{
    Py_ssize_t kbase, hoff, poff;
    uint32_t prev, head, fired = 0;
    int64_t spin_ns, stop;
    int rc;
    pthread_mutex_t *mx;
    NEED_BUFFER();
    if (!self->wq_set)
        return PyErr_Format(PyExc_RuntimeError, "work_pop() before wq_setup()");
    if (!nargs_ok(nargs, 3, 3, "work_pop") || !at_len(self, args[0], WQ(WORKER_SIZE), 8) ||
        !get_u32(args[1], &prev) || !get_i64(args[2], &spin_ns))
        return NULL;
    kbase = PyLong_AsSsize_t(args[0]);
    poff = prev ? wq_work(self, prev) : 0;
    if (poff < 0)
        return PyErr_Format(PyExc_ValueError, "work_pop(): bad previous work %u", prev);
    if (prev && (LOAD(U32(poff + WQ(W_FLAGS))) & (uint32_t)WQ(WF_ORPHAN)))
        return PyLong_FromLong(-1);
    mx = (pthread_mutex_t *)(self->base + kbase + WQ(K_LOCK));
    if ((rc = wq_trylock(mx, spin_ns)) <= 0)
        return rc < 0 ? NULL : PyLong_FromLong(-1);
    if (LOAD(U32(kbase + WQ(K_THEAD))) &&
        (stop = wl_fire_timers(self, kbase, mono_ns(), &fired)) != 0) {
        pthread_mutex_unlock(mx);
        return stop < 0 ? wl_corrupt(kbase) : PyLong_FromLong(-1);
    }
    head = LOAD(U32(kbase + WQ(K_HEAD)));
    hoff = head ? wq_work(self, head) : 0;
    if (hoff < 0 || (!head && LOAD(U32(kbase + WQ(K_THEAD)))) ||
        (head && LOAD(U32(hoff + WQ(W_KIND))) == (uint32_t)WQ(WK_FLUSH))) {
        pthread_mutex_unlock(mx);
        return PyLong_FromLong(-1);
    }
    if (!head) {
        STORE(U32(kbase + WQ(K_CURRENT)), 0);
        pthread_mutex_unlock(mx);
        return PyLong_FromLong(0);
    }
    if (wl_pop_head(self, kbase, &self->works, hoff, 1) < 0) {
        pthread_mutex_unlock(mx);
        return wl_corrupt(kbase);
    }
    STORE(U32(kbase + WQ(K_CURRENT)), head);
    pthread_mutex_unlock(mx);
    return PyLong_FromLong(head);
}

PyMethodDef worklist_methods[] = {
    M(work_queue, "work_queue(kbase, wbase, widx1, kgen, wgen, spin_ns, wake) -> 0 not "
                  "queued, 1 queued, 2 queued to an idle worker, -1 slow path"),
    M(work_pop, "work_pop(kbase, prev_idx1, spin_ns) -> next work index + 1, 0 none, "
                "-1 slow path"),
    {NULL, NULL, 0, NULL},
};
