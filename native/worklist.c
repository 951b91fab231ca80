/*
 * kproc._native: the kthread_worker fast paths.
 *
 * The one exception to "only syscalls and atomics" (see kproc_native.h): the
 * worker's lists, changed here under the worker's lock.
 */
#include "kproc_native.h"

#include <limits.h>

#define WQ(f) (self->wq[WQ_##f])
#define U32(off) ((uint32_t *)(self->base + (off)))

/* Offset of work slot @idx1 (index + 1), or -1 if out of the table. */
static Py_ssize_t wq_work(MemObject *self, uint32_t idx1)
{
    if (idx1 == 0 || idx1 > (uint32_t)WQ(MAX_WORKS))
        return -1;
    return WQ(WORKS) + (Py_ssize_t)(idx1 - 1) * WQ(WORK_STRIDE);
}

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
    Py_ssize_t kbase, wbase, tail_off;
    uint32_t widx1, kgen, wgen, tied, idx1, tail;
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
    tail = LOAD(U32(kbase + WQ(K_TAIL)));
    tail_off = tail ? wq_work(self, tail) : 0;
    if (tail_off < 0) {
        pthread_mutex_unlock(mx);
        return PyErr_Format(PyExc_RuntimeError, "work list corrupt: tail %u", tail);
    }
    STORE(U32(wbase + WQ(W_NEXT)), 0);
    STORE(U32(wbase + WQ(W_PREV)), tail);
    STORE(U32(kbase + WQ(K_TAIL)), idx1);
    if (tail)
        STORE(U32(tail_off + WQ(W_NEXT)), idx1);
    else
        STORE(U32(kbase + WQ(K_HEAD)), idx1);
    STORE(U32(wbase + WQ(W_WHERE)), (uint32_t)WQ(ON_WORKLIST));
    if (!tied) {
        STORE(U32(wbase + WQ(W_WORKER)), widx1);
        STORE(U32(wbase + WQ(W_WORKER_GEN)), kgen);
    }
    __atomic_fetch_add(U32(kbase + WQ(K_DEPTH)), 1, __ATOMIC_SEQ_CST);
    idle = LOAD(U32(kbase + WQ(K_CURRENT))) == 0;
    pthread_mutex_unlock(mx);
    if (idle && wake)
        wq_wake_task(self, kbase);
    return PyLong_FromLong(idle ? 2 : 1);
}

/*
 * kthread_delayed_work_timer_fn() for every expired timer of the worker, under
 * its lock: move the work to the tail of the work list.  Return 0; 1 if one
 * needs the Python path (being cancelled, or flushers wait on it: nothing
 * moved from there on); -1 if the list is corrupt.
 */
static int wq_fire_timers(MemObject *self, Py_ssize_t kbase)
{
    uint32_t t, next, tail;
    Py_ssize_t toff, noff, tail_off;
    int64_t now = 0;
    while ((t = LOAD(U32(kbase + WQ(K_THEAD))))) {
        if ((toff = wq_work(self, t)) < 0)
            return -1;
        if (!now)
            now = mono_ns();
        if (LOAD((int64_t *)(self->base + toff + WQ(W_EXPIRES))) > now)
            return 0;
        if (LOAD(U32(toff + WQ(W_CANCELING))) || LOAD(U32(toff + WQ(W_FLUSHERS))))
            return 1;
        next = LOAD(U32(toff + WQ(W_NEXT)));
        noff = next ? wq_work(self, next) : 0;
        tail = LOAD(U32(kbase + WQ(K_TAIL)));
        tail_off = tail ? wq_work(self, tail) : 0;
        if (noff < 0 || tail_off < 0)
            return -1;
        STORE(U32(kbase + WQ(K_THEAD)), next);            /* off the timer list */
        if (next)
            STORE(U32(noff + WQ(W_PREV)), 0);
        else
            STORE(U32(kbase + WQ(K_TTAIL)), 0);
        __atomic_fetch_sub(U32(kbase + WQ(K_NDELAYED)), 1, __ATOMIC_SEQ_CST);
        STORE(U32(toff + WQ(W_NEXT)), 0);                   /* onto the work list */
        STORE(U32(toff + WQ(W_PREV)), tail);
        STORE(U32(kbase + WQ(K_TAIL)), t);
        if (tail)
            STORE(U32(tail_off + WQ(W_NEXT)), t);
        else
            STORE(U32(kbase + WQ(K_HEAD)), t);
        STORE(U32(toff + WQ(W_WHERE)), (uint32_t)WQ(ON_WORKLIST));
        __atomic_fetch_add(U32(kbase + WQ(K_DEPTH)), 1, __ATOMIC_SEQ_CST);
    }
    return 0;
}

/*
 * work_pop(kbase, prev_idx1, spin_ns) -> the worker's side: finish @prev_idx1
 * (clear current_work), pop the head of the work list and make it current.
 * Expired timers are fired first (wq_fire_timers).
 * Return: its index + 1; 0 if both lists are empty (current_work cleared);
 * -1 take the slow path (the list is empty but a timer is armed -- the caller
 * computes its sleep --, the head is a flush marker, a due timer needs the
 * Python path, the previous work is an orphan to free, or the lock stayed busy).
 */
static PyObject *Mem_work_pop(ARGS)
{
    Py_ssize_t kbase, hoff, noff, poff;
    uint32_t prev, head, next;
    int64_t spin_ns;
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
    if ((rc = wq_fire_timers(self, kbase)) != 0) {
        pthread_mutex_unlock(mx);
        if (rc < 0)
            return PyErr_Format(PyExc_RuntimeError, "timer list corrupt");
        return PyLong_FromLong(-1);
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
    next = LOAD(U32(hoff + WQ(W_NEXT)));
    noff = next ? wq_work(self, next) : 0;
    if (noff < 0) {
        pthread_mutex_unlock(mx);
        return PyErr_Format(PyExc_RuntimeError, "work list corrupt: next %u", next);
    }
    STORE(U32(kbase + WQ(K_HEAD)), next);
    if (next)
        STORE(U32(noff + WQ(W_PREV)), 0);
    else
        STORE(U32(kbase + WQ(K_TAIL)), 0);
    STORE(U32(hoff + WQ(W_NEXT)), 0);
    STORE(U32(hoff + WQ(W_WHERE)), 0);
    __atomic_fetch_sub(U32(kbase + WQ(K_DEPTH)), 1, __ATOMIC_SEQ_CST);
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
