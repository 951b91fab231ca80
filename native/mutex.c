/*
 * kproc._native: the robust, process-shared, error-checking mutex.
 *
 * A pthread mutex in the shared buffer (MUTEX_SIZE bytes, 8-aligned), locked
 * and unlocked by any thread of any process of the runtime.  Robust: a holder
 * that dies leaves EOWNERDEAD to the next locker, who is told (mutex_lock
 * returns 1) instead of hanging.  Error-checking: relocking by the owner is
 * EDEADLK and unlocking by another thread EPERM, both OSError.  Runs in the
 * calling thread; only the sleep of a contended lock releases the GIL.
 */
#include "kproc_native.h"

#define MUTEX_SLICE_NS 50000000LL       /* mutex_lock: run signal handlers this often */

static pthread_mutex_t *mutex_at(MemObject *m, PyObject *arg)
{
    return at_len(m, arg, sizeof(pthread_mutex_t), 8);
}

static PyObject *Mem_mutex_init(ARGS)
{
    pthread_mutex_t *mx;
    pthread_mutexattr_t attr;
    int rc;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 1, 1, "mutex_init") || !(mx = mutex_at(self, args[0])))
        return NULL;
    if ((rc = pthread_mutexattr_init(&attr)) != 0)
        return errno_error(rc);
    /* A holder that dies leaves EOWNERDEAD to the next locker, not a hang. */
    if (!(rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)) &&
        !(rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)) &&
        !(rc = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK)))
        rc = pthread_mutex_init(mx, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc)
        return errno_error(rc);
    Py_RETURN_NONE;
}

/*
 * pthread_mutex_trylock(), tried again for @spin_ns while the lock is busy.
 * A robust mutex never spins in glibc: a contended lock sleeps in the kernel
 * at once, and waking a halted vCPU costs tens of µs.  Critical sections here
 * are a few µs, so trying again for a while first wins.
 * Return what the last trylock returned: 0, EBUSY, EOWNERDEAD or an errno.
 */
int mutex_trylock_spin(pthread_mutex_t *mx, int64_t spin_ns)
{
    int rc = pthread_mutex_trylock(mx);
    if (rc == EBUSY && spin_ns > 0) {
        int64_t until = mono_ns() + spin_ns;
        unsigned n = 0;
        do {
            for (int i = 0; i < 32; i++)
                cpu_relax();
            rc = pthread_mutex_trylock(mx);
        } while (rc == EBUSY && ((++n & 15) || mono_ns() < until));
    }
    return rc;
}

/*
 * After a lock call returned @rc: 0 locked, 1 locked and made consistent
 * after its owner died, -1 OSError set (nothing held).
 */
int mutex_acquired(pthread_mutex_t *mx, int rc)
{
    if (rc == EOWNERDEAD) {
        if ((rc = pthread_mutex_consistent(mx)) == 0)
            return 1;
        pthread_mutex_unlock(mx);
    }
    if (rc) {
        errno_error(rc);
        return -1;
    }
    return 0;
}

/*
 * mutex_lock(off, timeout_ns=-1, spin_ns=0) -> 0 locked, 1 locked (previous owner died,
 * state made consistent: the caller repairs what it protects), 2 timed out.
 * pthread_mutex_clocklock is not interrupted by signals, so it sleeps in
 * slices of MUTEX_SLICE_NS with the GIL re-taken between them to run Python
 * signal handlers (Ctrl-C).
 */
static PyObject *Mem_mutex_lock(KWARGS)
{
    static const char *const names[] = {"off", "timeout_ns", "spin_ns"};
    PyObject *a[3];
    pthread_mutex_t *mx;
    int64_t deadline, spin_ns = 0;
    int rc;
    NEED_BUFFER();
    if (!parse_args(args, nargs, kwnames, "mutex_lock", names, 1, 3, a) ||
        !(mx = mutex_at(self, a[0])) || get_deadline(a[1], &deadline) < 0)
        return NULL;
    if (a[2] && a[2] != Py_None && (spin_ns = PyLong_AsLongLong(a[2])) == -1 && PyErr_Occurred())
        return NULL;
    rc = mutex_trylock_spin(mx, spin_ns);
    while (rc == EBUSY) {
        int64_t now = mono_ns(), until = now + MUTEX_SLICE_NS;
        struct timespec ts;
        if (deadline != NO_DEADLINE && now >= deadline)
            return PyLong_FromLong(2);
        if (deadline != NO_DEADLINE && deadline < until)
            until = deadline;
        ns_to_ts(until, &ts);
        Py_BEGIN_ALLOW_THREADS
        rc = pthread_mutex_clocklock(mx, CLOCK_MONOTONIC, &ts);
        Py_END_ALLOW_THREADS
        if (rc == ETIMEDOUT) {
            if (PyErr_CheckSignals() < 0)
                return NULL;
            rc = EBUSY;
        }
    }
    rc = mutex_acquired(mx, rc);
    return rc < 0 ? NULL : PyLong_FromLong(rc);
}

static PyObject *Mem_mutex_unlock(ARGS)
{
    pthread_mutex_t *mx;
    int rc;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 1, 1, "mutex_unlock") || !(mx = mutex_at(self, args[0])))
        return NULL;
    if ((rc = pthread_mutex_unlock(mx)) != 0)
        return errno_error(rc);       /* EPERM: not the owner */
    Py_RETURN_NONE;
}

/*
 * Is @mx held by the calling thread?  A robust error-checking mutex answers
 * EDEADLK to a trylock by its owner, without a system call; a free one is
 * taken by that trylock and released at once.  A free one whose owner died is
 * made consistent first: the next locker is not told, which only a caller
 * that broke the locking rule could have caused.
 * Return 0 held, or -1 with RuntimeError set (not held; named after @fname)
 * or OSError.
 */
int mutex_held(pthread_mutex_t *mx, const char *fname)
{
    int rc = pthread_mutex_trylock(mx);
    if (rc == EDEADLK)
        return 0;
    if (rc == EOWNERDEAD)
        rc = pthread_mutex_consistent(mx);
    if (rc == 0)
        pthread_mutex_unlock(mx);
    else if (rc != EBUSY) {
        errno_error(rc);
        return -1;
    }
    PyErr_Format(PyExc_RuntimeError, "%s(): the worker lock is not held by this thread "
                 "(take it with mutex_lock() first)", fname);
    return -1;
}

PyMethodDef mutex_methods[] = {
    M(mutex_init, "mutex_init(off): a robust, process-shared, error-checking mutex"),
    MK(mutex_lock, "mutex_lock(off, timeout_ns=-1, spin_ns=0) -> 0 locked, 1 locked and "
                  "the previous owner died (made consistent), 2 timed out; a busy lock is "
                  "retried for spin_ns before sleeping"),
    M(mutex_unlock, "mutex_unlock(off); OSError (EPERM) if not the owner"),
    {NULL, NULL, 0, NULL},
};
