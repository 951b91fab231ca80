/*
 * kproc._native: futexes, spin-then-wait, and completions on them.
 *
 * Futexes are shared (no FUTEX_PRIVATE_FLAG): the waiter and the waker are
 * different processes.  Blocking calls try once holding the GIL, release it
 * only around the spin and the syscall, compute one absolute CLOCK_MONOTONIC
 * deadline on entry, and on EINTR run Python's signal handlers
 * (PyErr_CheckSignals) and give up if one raised, else retry with the same
 * deadline.  A spin (spin_ns) runs in full and the deadline bounds the sleep
 * after it, so timeout_ns=0 with a spin means "spin, never sleep".  A timeout
 * is a return value, not an exception; any other failure is OSError(errno).
 *
 * A completion (struct completion) has the kernel's counting semantics; the
 * race against a lost wake-up is named at completion_complete() and
 * completion_wait().  Runs in the calling thread, waker or waiter.
 */
#include "kproc_native.h"

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

/* -- futexes ---------------------------------------------------------------- */

static long futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts,
                  uint32_t val3)
{
    return syscall(SYS_futex, uaddr, op, val, ts, NULL, val3);
}

int futex_wake_n(uint32_t *word, int n)
{
    return (int)futex(word, FUTEX_WAKE, (uint32_t)n, NULL, 0);
}

/*
 * End of a spin of @spin_ns starting now.  The deadline does not cut it
 * short: it bounds the sleep that follows, so timeout_ns=0 with spin_ns > 0
 * means "spin, but never sleep" (the callers' fast path).
 */
static int64_t spin_end(int64_t spin_ns)
{
    int64_t now = mono_ns();
    return spin_ns > INT64_MAX - now ? INT64_MAX : now + spin_ns;
}

/*
 * Sleep on @word while it holds @expected, until @deadline (NO_DEADLINE: none).
 * Return 0 woken (or spurious), 1 the word did not hold @expected, 2 timed
 * out, -1 exception set (a signal handler raised, or OSError).
 * Called with the GIL held; releases it around the syscall only.
 */
static int futex_wait_until(uint32_t *word, uint32_t expected, int64_t deadline)
{
    for (;;) {
        struct timespec ts;
        long rc;
        int err;
        if (deadline != NO_DEADLINE) {
            if (mono_ns() >= deadline)
                return LOAD(word) == expected ? 2 : 1;
            ns_to_ts(deadline, &ts);
        }
        KP_BEGIN_ALLOW_THREADS
        /* FUTEX_WAIT_BITSET: the timeout is absolute, on CLOCK_MONOTONIC. */
        rc = futex(word, FUTEX_WAIT_BITSET, expected,
                   deadline != NO_DEADLINE ? &ts : NULL, FUTEX_BITSET_MATCH_ANY);
        err = errno;
        KP_END_ALLOW_THREADS
        if (rc == 0)
            return 0;
        if (err == EAGAIN)
            return 1;
        if (err == ETIMEDOUT)
            return 2;
        if (err != EINTR) {
            errno_error(err);
            return -1;
        }
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
}

static PyObject *Mem_futex_wait(KWARGS)
{
    static const char *const names[] = {"off", "expected", "timeout_ns"};
    PyObject *a[3];
    uint32_t *p, expected;
    int64_t deadline;
    int rc;
    NEED_BUFFER();
    if (!parse_args(args, nargs, kwnames, "futex_wait", names, 2, 3, a) ||
        !(p = at(self, a[0], 4)) || !get_u32(a[1], &expected) ||
        get_deadline(a[2], &deadline) < 0)
        return NULL;
    rc = futex_wait_until(p, expected, deadline);
    return rc < 0 ? NULL : PyLong_FromLong(rc);
}

static PyObject *Mem_futex_wake(ARGS)
{
    uint32_t *p;
    long n;
    int rc;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 2, 2, "futex_wake") || !(p = at(self, args[0], 4)))
        return NULL;
    n = PyLong_AsLong(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "futex_wake: n must be >= 0");
        return NULL;
    }
    rc = futex_wake_n(p, n > INT_MAX ? INT_MAX : (int)n);
    if (rc < 0)
        return errno_error(errno);
    return PyLong_FromLong(rc);
}

/* Spin (GIL released) while *word == expected, until @end. 1 if it changed. */
static int spin_while_equal(uint32_t *word, uint32_t expected, int64_t end)
{
    int changed = 0;
    KP_BEGIN_ALLOW_THREADS
    for (unsigned i = 1;; i++) {
        if (LOAD(word) != expected) {
            changed = 1;
            break;
        }
        cpu_relax();
        if (i % SPIN_CLOCK_EVERY == 0 && mono_ns() >= end)
            break;
    }
    KP_END_ALLOW_THREADS
    return changed;
}

static PyObject *Mem_wait_change(KWARGS)
{
    static const char *const names[] = {"off", "expected", "timeout_ns", "spin_ns"};
    PyObject *a[4];
    uint32_t *p, expected;
    int64_t deadline, spin_ns = 0;
    int rc;
    NEED_BUFFER();
    if (!parse_args(args, nargs, kwnames, "wait_change", names, 2, 4, a) ||
        !(p = at(self, a[0], 4)) || !get_u32(a[1], &expected) ||
        get_deadline(a[2], &deadline) < 0 || (a[3] && !get_i64(a[3], &spin_ns)))
        return NULL;
    if (LOAD(p) != expected)
        return PyLong_FromLong(0);
    if (spin_ns > 0 && spin_while_equal(p, expected, spin_end(spin_ns)))
        return PyLong_FromLong(0);
    rc = futex_wait_until(p, expected, deadline);
    if (rc < 0)
        return NULL;
    return PyLong_FromLong(rc == 2 ? 2 : 0);
}

/* -- completions ------------------------------------------------------------ */

static struct completion *completion_at(MemObject *m, PyObject *arg)
{
    return at_len(m, arg, sizeof(struct completion), 8);
}

/*
 * Optional generation check (arguments gen_off, gen; NULL: not given): the
 * record is only touched if the u32 at gen_off still holds gen, so that a
 * stale handle never acts on a recycled slot.  gen_off < 0 (the default)
 * skips it.  Return 1 go on, 0 stale, -1 exception set.
 */
static int gen_ok(MemObject *m, PyObject *gen_off_obj, PyObject *gen_obj)
{
    uint32_t *g, gen;
    long long gen_off;
    if (!gen_off_obj)
        return 1;
    gen_off = PyLong_AsLongLong(gen_off_obj);
    if (gen_off == -1 && PyErr_Occurred())
        return -1;
    if (gen_off < 0)
        return 1;
    if (!gen_obj) {
        PyErr_SetString(PyExc_TypeError, "gen_off needs gen");
        return -1;
    }
    if (!(g = at(m, gen_off_obj, 4)) || !get_u32(gen_obj, &gen))
        return -1;
    return LOAD(g) == gen;
}

static PyObject *Mem_completion_try(ARGS)
{
    struct completion *c;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 1, 1, "completion_try") || !(c = completion_at(self, args[0])))
        return NULL;
    return PyBool_FromLong(completion_try(c));
}

static PyObject *Mem_completion_done(ARGS)
{
    struct completion *c;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 1, 1, "completion_done") || !(c = completion_at(self, args[0])))
        return NULL;
    /* done, then granted: a count in flight to a queued waiter counts (swait.c) */
    return PyBool_FromLong(LOAD(&c->done) != 0 || LOAD(&c->granted) != 0);
}

/*
 * complete() / complete_all().  The order prevents a lost wake-up against
 * completion_wait(): done is published first, then seq moves (a waiter about
 * to FUTEX_WAIT on its older seq snapshot gets EAGAIN), then sleepers is read
 * (a waiter that incremented it before our read is woken; one that
 * increments it after re-tries done before sleeping, and sees ours).  Then
 * the queue of sleeping waiters (swait.c) gets what is left, head first: a
 * queued waiter links itself and then reads done, so one side sees the other.
 */
static PyObject *Mem_completion_complete(KWARGS)
{
    static const char *const names[] = {"off", "all", "gen_off", "gen", "wake"};
    PyObject *a[5];
    struct completion *c;
    int all = 0, ok;
    NEED_BUFFER();
    if (!parse_args(args, nargs, kwnames, "completion_complete", names, 1, 5, a) ||
        !(c = completion_at(self, a[0])) || (a[1] && (all = PyObject_IsTrue(a[1])) < 0))
        return NULL;
    if ((ok = gen_ok(self, a[2], a[3])) <= 0)
        return ok < 0 ? NULL : PyLong_FromLong(-1);
    if (all) {
        STORE(&c->done, DONE_ALL);
    } else {
        /* Saturate below DONE_ALL: counting up must never mean complete_all. */
        uint32_t v = LOAD(&c->done);
        while (v < DONE_ALL - 1 && !CAS(&c->done, &v, v + 1))
            ;
    }
    __atomic_fetch_add(&c->seq, 1, __ATOMIC_SEQ_CST);
    if (LOAD(&c->sleepers) > 0)
        futex_wake_n(&c->seq, all ? INT_MAX : 1);
    /* queued sleepers first in, first out */
    if (swait_settle_wake(self, c, a[4]) < 0)
        return NULL;
    return PyLong_FromLong(0);
}

/*
 * Spin (GIL released) until @end: 1 acquired, 2 seq moved without acquiring,
 * 0 nothing happened.
 */
static int completion_spin(struct completion *c, uint32_t snap, int64_t end)
{
    int rc = 0;
    KP_BEGIN_ALLOW_THREADS
    for (unsigned i = 1;; i++) {
        if (LOAD(&c->done) != 0 && completion_try(c)) {
            rc = 1;
            break;
        }
        if (LOAD(&c->seq) != snap) {
            rc = completion_try(c) ? 1 : 2;
            break;
        }
        cpu_relax();
        if (i % SPIN_CLOCK_EVERY == 0 && mono_ns() >= end)
            break;
    }
    KP_END_ALLOW_THREADS
    return rc;
}

/*
 * completion_wait(off, seq_snapshot, timeout_ns=-1, spin_ns=0, gen_off=-1, gen=0)
 *   -> 1 acquired, 0 timed out, 2 woken (or seq moved) without acquiring,
 *      -1 stale (generation mismatch; nothing touched).
 *
 * @seq_snapshot must have been read before the caller checked its own
 * wake-up conditions: any complete() after that read moves seq, so the
 * FUTEX_WAIT below returns at once instead of sleeping through it.  A
 * negative snapshot means "read it now" (for callers with no condition of
 * their own).
 */
static PyObject *Mem_completion_wait(KWARGS)
{
    static const char *const names[] = {"off", "seq_snapshot", "timeout_ns", "spin_ns",
                                        "gen_off", "gen"};
    PyObject *a[6];
    struct completion *c;
    uint32_t snap;
    int64_t deadline, spin_ns = 0, snap_arg;
    int rc, ok;
    NEED_BUFFER();
    if (!parse_args(args, nargs, kwnames, "completion_wait", names, 2, 6, a) ||
        !(c = completion_at(self, a[0])) || !get_i64(a[1], &snap_arg) ||
        get_deadline(a[2], &deadline) < 0 || (a[3] && !get_i64(a[3], &spin_ns)))
        return NULL;
    if ((ok = gen_ok(self, a[4], a[5])) <= 0)
        return ok < 0 ? NULL : PyLong_FromLong(-1);
    snap = snap_arg < 0 ? LOAD(&c->seq) : (uint32_t)snap_arg;
    if (completion_try(c))
        return PyLong_FromLong(1);
    if (spin_ns > 0 && (rc = completion_spin(c, snap, spin_end(spin_ns))) != 0)
        return PyLong_FromLong(rc);
    /* Announce ourselves before the last try, so a complete() after it wakes us. */
    __atomic_fetch_add(&c->sleepers, 1, __ATOMIC_SEQ_CST);
    if (completion_try(c)) {
        __atomic_fetch_sub(&c->sleepers, 1, __ATOMIC_SEQ_CST);
        return PyLong_FromLong(1);
    }
    rc = futex_wait_until(&c->seq, snap, deadline);
    __atomic_fetch_sub(&c->sleepers, 1, __ATOMIC_SEQ_CST);   /* also on exceptions */
    if (rc < 0)
        return NULL;
    if (completion_try(c))
        return PyLong_FromLong(1);
    return PyLong_FromLong(rc == 2 ? 0 : 2);
}

PyMethodDef futex_methods[] = {
    MK(futex_wait, "futex_wait(off, expected, timeout_ns=-1) -> 0 woken (or spurious), "
                  "1 the word did not hold expected, 2 timed out"),
    M(futex_wake, "futex_wake(off, n) -> number woken (n = INT_MAX: all)"),
    MK(wait_change, "wait_change(off, expected, timeout_ns=-1, spin_ns=0) -> 0 the word "
                    "differs from expected or a wake-up came, 2 timed out; the spin runs "
                    "in full, the timeout bounds the sleep after it"),
    M(completion_try, "completion_try(off) -> bool: try_wait_for_completion"),
    M(completion_done, "completion_done(off) -> bool: done != 0, or a count granted to a "
                      "queued waiter not yet taken"),
    MK(completion_complete, "completion_complete(off, all=False, gen_off=-1, gen=0, "
                           "wake=None) -> 0; -1 (nothing done) if the u32 at gen_off is not "
                           "gen; wake(word_off) wakes each queued node granted a count "
                           "(default: FUTEX_WAKE)"),
    MK(completion_wait, "completion_wait(off, seq_snapshot, timeout_ns=-1, spin_ns=0, "
                       "gen_off=-1, gen=0) -> 1 acquired, 0 timed out, 2 woken or seq "
                       "moved without acquiring, -1 stale generation; seq_snapshot < 0: "
                       "read it now; the spin runs in full, the timeout bounds the sleep"),
    {NULL, NULL, 0, NULL},
};
