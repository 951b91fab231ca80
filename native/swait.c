/*
 * kproc._native: the FIFO queue of a completion's sleeping waiters
 * (kernel: the swait queue of struct completion, kernel/sched/swait.c, and
 * complete()'s swake_up_locked(): "Threads will be awakened in the same order
 * in which they were queued").
 *
 * A waiter that has to sleep links its own node (struct swait_node, one per
 * sleeping thread, in the arena) at the tail of the completion's queue and
 * sleeps on the node's own word.  complete() hands its count to the head
 * node (granted = 1, its word bumped and woken); complete_all() to every
 * node.  A waiter woken for another reason (its liveness tick, a stray
 * wake_up_process(), kthread_stop()'s notification) finds its node still
 * linked where it was: it keeps its place, which a wait on a shared futex
 * word (re-queued at the back of the kernel's futex hash bucket at every
 * re-wait) cannot do.
 *
 * The queue is guarded by a lock word in the completion (the holder's pid);
 * every critical section is a few loads and stores in C, with the GIL held,
 * so no other thread of the holder's process can be inside, and only the
 * death of the holder's process can leave it held: a locker that has spun
 * for a while checks the holder with kill(pid, 0) and takes the lock over
 * from a dead one.  A node whose owner died while queued is skipped (and
 * unlinked) by the complete() that reaches it, so its count goes to the next
 * waiter instead of being lost.
 *
 * The race against a lost wake-up: complete() publishes done, then reads
 * head (swait_settle); a waiter links its node, then reads done under the
 * lock (in the same settle step).  Both are sequentially consistent: either
 * complete() sees the node and grants it, or the waiter sees the count.
 * Waiters that are not queued (spinning on done) may take a count first, as
 * a newly arriving waiter does in the kernel.
 */
#include "kproc_native.h"

#include <signal.h>
#include <unistd.h>

#define LOCK_SPINS_BEFORE_CHECK 256
#define WAKE_BATCH 16                   /* grants collected under the lock per round */

struct saved_error {
    PyObject *type, *value, *tb;
};

static struct swait_node *node_at(MemObject *m, uint32_t off)
{
    if (off == 0 || off % 8 || (Py_ssize_t)off + (Py_ssize_t)sizeof(struct swait_node) > m->size)
        return NULL;
    return (struct swait_node *)(m->base + off);
}

/* 1 if @pid names no process (a waiter or lock holder that died). */
static int pid_dead(int32_t pid, int32_t me)
{
    return pid > 0 && pid != me && kill(pid, 0) < 0 && errno == ESRCH;
}

static void cq_lock(struct completion *c, int32_t me)
{
    for (unsigned i = 1;; i++) {
        uint32_t holder = 0;
        if (CAS(&c->lock, &holder, (uint32_t)me))
            return;
        if (i % LOCK_SPINS_BEFORE_CHECK) {
            cpu_relax();
            continue;
        }
        if (pid_dead((int32_t)holder, me) && CAS(&c->lock, &holder, (uint32_t)me))
            return;             /* its holder died: the queue is ours (links are checked) */
        sched_yield();
    }
}

static void cq_unlock(struct completion *c)
{
    STORE(&c->lock, 0);
}

static void unlink_node(MemObject *m, struct completion *c, struct swait_node *n)
{
    struct swait_node *prev = node_at(m, n->prev), *next = node_at(m, n->next);
    if (prev)
        STORE(&prev->next, n->next);
    else
        STORE(&c->head, n->next);
    if (next)
        STORE(&next->prev, n->prev);
    else
        STORE(&c->tail, n->prev);
    n->next = n->prev = 0;
    STORE(&n->comp, 0);
}

/*
 * The waiter takes the count complete() granted its node, if it did (the
 * kernel waiter's own x->done-- in do_wait_for_common()).  Return 1 if there
 * was one.  Called by the node's thread, or by one taking a dead one's node.
 */
int swait_take_grant(struct completion *c, struct swait_node *n)
{
    uint32_t how = LOAD(&n->granted);
    if (!how)
        return 0;
    STORE(&n->granted, 0);
    STORE(&n->comp, 0);
    if (how == GRANT_COUNT)
        __atomic_fetch_sub(&c->granted, 1, __ATOMIC_SEQ_CST);
    return 1;
}

/*
 * Hand the available counts to the queue, head first.  The lock is held.
 * A counted grant stays in c->granted until its waiter takes it, so that
 * completion_done() (done, then granted) reads true from complete() until
 * then, as the kernel's done does; granted goes up before done goes down.
 */
static int settle_locked(MemObject *m, struct completion *c, int32_t me, uint32_t *out,
                         int cap)
{
    Py_ssize_t bound = m->size / (Py_ssize_t)sizeof(struct swait_node);
    struct swait_node *n;
    int n_out = 0;
    while ((n = node_at(m, LOAD(&c->head))) != NULL && bound-- > 0) {
        uint32_t done, how;
        if (out && n_out == cap)
            return n_out;               /* the caller wakes these, then comes back */
        if (pid_dead(LOAD(&n->owner), me)) {
            unlink_node(m, c, n);       /* killed while queued: its place is gone */
            continue;
        }
        done = LOAD(&c->done);
        if (done == 0)
            return n_out;
        how = done == DONE_ALL ? GRANT_ALL : GRANT_COUNT;
        if (how == GRANT_COUNT)
            __atomic_fetch_add(&c->granted, 1, __ATOMIC_SEQ_CST);
        if (!completion_try(c)) {
            if (how == GRANT_COUNT)
                __atomic_fetch_sub(&c->granted, 1, __ATOMIC_SEQ_CST);
            return n_out;
        }
        unlink_node(m, c, n);
        STORE(&n->comp, (uint64_t)((char *)c - m->base));  /* until taken */
        STORE(&n->granted, how);
        __atomic_fetch_add(&n->wake, 1, __ATOMIC_SEQ_CST);
        if (out)
            out[n_out++] = (uint32_t)((char *)&n->wake - m->base);
        else
            futex_wake_n(&n->wake, 1);
    }
    if (!n && (LOAD(&c->head) || LOAD(&c->tail))) {
        STORE(&c->head, 0);             /* a link out of the arena: drop the queue */
        STORE(&c->tail, 0);
    }
    return n_out;
}

/*
 * Call @wake(off) for each of the @n words in @offs, all of them even if one
 * raises (a waiter not woken would sleep through its grant); the first
 * exception is kept in *@err.
 */
static void call_wakes(PyObject *wake, const uint32_t *offs, int n, struct saved_error *err)
{
    for (int i = 0; i < n; i++) {
        PyObject *arg = PyLong_FromUnsignedLong(offs[i]), *r = NULL;
        if (arg) {
            r = PyObject_CallOneArg(wake, arg);
            Py_DECREF(arg);
        }
        if (r) {
            Py_DECREF(r);
        } else if (!err->type) {
            PyErr_Fetch(&err->type, &err->value, &err->tb);
        } else {
            PyErr_Clear();
        }
    }
}

/*
 * Grant what is there to the queue, head first.  @wake NULL (or None): each
 * granted node's word is woken with FUTEX_WAKE under the lock (the futex
 * backend).  Else @wake(word_off) is called for each, after the lock is
 * released (the posix backend posts its semaphore channel), in batches.
 * Return 0, or -1 with the first exception a @wake raised set.
 */
int swait_settle_wake(MemObject *m, struct completion *c, PyObject *wake)
{
    uint32_t offs[WAKE_BATCH];
    struct saved_error err = {NULL, NULL, NULL};
    int32_t me;
    int n;
    if (!LOAD(&c->head))
        return 0;
    me = (int32_t)getpid();
    if (!wake || wake == Py_None) {
        cq_lock(c, me);
        settle_locked(m, c, me, NULL, 0);
        cq_unlock(c);
        return 0;
    }
    do {
        cq_lock(c, me);
        n = settle_locked(m, c, me, offs, WAKE_BATCH);
        cq_unlock(c);
        call_wakes(wake, offs, n, &err);
    } while (n == WAKE_BATCH && LOAD(&c->head));
    if (err.type) {
        PyErr_Restore(err.type, err.value, err.tb);
        return -1;
    }
    return 0;
}

void swait_settle(MemObject *m, struct completion *c)
{
    swait_settle_wake(m, c, NULL);
}

static int parse_pair(MemObject *self, PyObject *const *args, Py_ssize_t nargs,
                      Py_ssize_t hi, const char *fname, struct completion **c,
                      struct swait_node **n, uint32_t *noff)
{
    long long off;
    if (!nargs_ok(nargs, 2, hi, fname) ||
        !(*c = at_len(self, args[0], sizeof(struct completion), 8)) ||
        !(*n = at_len(self, args[1], sizeof(struct swait_node), 8)))
        return 0;
    off = PyLong_AsLongLong(args[1]);
    if (off > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a swait node must lie in the first 4 GiB");
        return 0;
    }
    *noff = (uint32_t)off;
    return 1;
}

/*
 * completion_enqueue(off, node_off, wake=None) -> 1 acquired (a count was
 * there: not queued), 0 queued at the tail (sleep on the node's wake word
 * until granted).  @wake: as swait_settle_wake()'s, for a count that another
 * node got while this one linked.
 */
static PyObject *Mem_completion_enqueue(ARGS)
{
    struct completion *c;
    struct swait_node *n, *tail;
    uint32_t noff;
    int32_t me = (int32_t)getpid();
    uint32_t offs[WAKE_BATCH];
    struct saved_error err = {NULL, NULL, NULL};
    PyObject *wake;
    int woken = 0;
    NEED_BUFFER();
    if (!parse_pair(self, args, nargs, 3, "completion_enqueue", &c, &n, &noff))
        return NULL;
    wake = nargs > 2 && args[2] != Py_None ? args[2] : NULL;
    cq_lock(c, me);
    if (completion_try(c)) {
        cq_unlock(c);
        return PyLong_FromLong(1);
    }
    STORE(&n->granted, 0);
    STORE(&n->comp, (uint64_t)((char *)c - self->base));
    n->next = 0;
    n->prev = LOAD(&c->tail);
    if ((tail = node_at(self, n->prev)) != NULL)
        STORE(&tail->next, noff);
    else {
        n->prev = 0;
        STORE(&c->head, noff);
    }
    STORE(&c->tail, noff);
    /* a count that came in while we linked */
    woken = settle_locked(self, c, me, wake ? offs : NULL, WAKE_BATCH);
    cq_unlock(c);
    if (wake) {
        call_wakes(wake, offs, woken, &err);
        if (woken == WAKE_BATCH && swait_settle_wake(self, c, wake) < 0 && !err.type)
            PyErr_Fetch(&err.type, &err.value, &err.tb);
    }
    if (err.type) {
        /* Our own grant stays on the node: the caller's dequeue() takes it. */
        PyErr_Restore(err.type, err.value, err.tb);
        return NULL;
    }
    return PyLong_FromLong(swait_take_grant(c, n));
}

/*
 * completion_dequeue(off, node_off) -> 1 the node had been granted a count
 * (the caller owns it), 0 it was taken off the queue without one.
 */
static PyObject *Mem_completion_dequeue(ARGS)
{
    struct completion *c;
    struct swait_node *n;
    uint32_t noff;
    int granted;
    NEED_BUFFER();
    if (!parse_pair(self, args, nargs, 2, "completion_dequeue", &c, &n, &noff))
        return NULL;
    cq_lock(c, (int32_t)getpid());
    granted = swait_take_grant(c, n);
    if (!granted && LOAD(&n->comp) == (uint64_t)((char *)c - self->base))
        unlink_node(self, c, n);
    cq_unlock(c);
    return PyLong_FromLong(granted);
}

PyMethodDef swait_methods[] = {
    M(completion_enqueue, "completion_enqueue(off, node_off, wake=None) -> 1 acquired at "
                          "once, 0 queued at the tail (sleep on the node's wake word until "
                          "granted); wake(word_off) wakes other nodes granted meanwhile "
                          "(default: FUTEX_WAKE)"),
    M(completion_dequeue, "completion_dequeue(off, node_off) -> 1 it had been granted a "
                          "count (now the caller's), 0 taken off the queue without one"),
    {NULL, NULL, 0, NULL},
};
