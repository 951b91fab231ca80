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

#include <signal.h>

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
/*
 * Lock @mx: spin, then sleep in slices (see Mem_mutex_lock).  Return 0 locked,
 * 1 locked after its owner died (made consistent), 2 timed out, -1 with an
 * exception set (nothing held: a signal handler raised, or an errno).
 */
static int mutex_lock_sliced(pthread_mutex_t *mx, int64_t deadline, int64_t spin_ns)
{
    int rc = mutex_trylock_spin(mx, spin_ns);
    while (rc == EBUSY) {
        int64_t now = mono_ns(), until = now + MUTEX_SLICE_NS;
        struct timespec ts;
        if (deadline != NO_DEADLINE && now >= deadline)
            return 2;
        if (deadline != NO_DEADLINE && deadline < until)
            until = deadline;
        ns_to_ts(until, &ts);
        KP_BEGIN_ALLOW_THREADS
        rc = pthread_mutex_clocklock(mx, CLOCK_MONOTONIC, &ts);
        KP_END_ALLOW_THREADS
        if (rc == ETIMEDOUT) {
            if (PyErr_CheckSignals() < 0)
                return -1;
            rc = EBUSY;
        }
    }
    return mutex_acquired(mx, rc);
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
    rc = mutex_lock_sliced(mx, deadline, spin_ns);
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

/*
 * MutexGuard(mem, off, spin_ns=0): ``with`` on the robust mutex at @off.
 *
 * Why in C: a Python __enter__ that called mutex_lock() could be interrupted
 * (KeyboardInterrupt from a signal handler, run at the next bytecode) after
 * the lock was taken and before the with-block was entered, and its
 * __exit__ would never run: the lock leaked to a live process.  Here
 * __enter__ takes the lock and returns without running any bytecode, and the
 * interpreter checks for signals only inside the block, whose exit unlocks.
 * __exit__ unlocks first, then calls ``self._unlocked()`` if a subclass
 * defines it (an interruption there cannot leak the lock).  ``recovered``:
 * the last __enter__ found the previous holder dead.
 *
 * While the lock is held, asynchronous signals are blocked in the calling
 * thread (the mask is restored after the unlock), so a Ctrl-C that comes
 * during the critical section stays pending in the kernel and its handler
 * runs after the block, as multiprocessing keeps its locks' sections whole.
 * (A process with several threads may have it delivered to another thread;
 * the handler then still runs in the main thread between two bytecodes.)
 */
typedef struct {
    PyObject_HEAD
    MemObject *mem;
    pthread_mutex_t *mx;
    int64_t spin_ns;
    int held;
    int recovered;
    sigset_t saved;                     /* the mask to restore at __exit__ */
} MutexGuardObject;

/* Every signal but those that must stay deliverable (SIGKILL, SIGSTOP, faults). */
static sigset_t async_signals(void)
{
    static sigset_t set;
    static int made;
    if (!made) {
        static const int keep[] = {SIGKILL, SIGSTOP, SIGSEGV, SIGBUS, SIGFPE, SIGILL,
                                   SIGTRAP, SIGSYS, SIGABRT};
        sigfillset(&set);
        for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
            sigdelset(&set, keep[i]);
        made = 1;
    }
    return set;
}

static int MutexGuard_init(MutexGuardObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"mem", "off", "spin_ns", NULL};
    PyObject *mem, *off;
    long long spin_ns = 0;
    pthread_mutex_t *mx;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O|L:MutexGuard", kwlist, &MemType, &mem,
                                     &off, &spin_ns))
        return -1;
    if (self->held) {
        PyErr_SetString(PyExc_RuntimeError, "MutexGuard re-initialised while held");
        return -1;
    }
    if (!((MemObject *)mem)->base) {
        PyErr_SetString(PyExc_ValueError, "Mem was not initialised or was released");
        return -1;
    }
    if (!(mx = mutex_at((MemObject *)mem, off)))
        return -1;
    Py_INCREF(mem);
    Py_XSETREF(self->mem, (MemObject *)mem);
    self->mx = mx;
    self->spin_ns = spin_ns;
    return 0;
}

static void MutexGuard_dealloc(MutexGuardObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->mem);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int MutexGuard_traverse(MutexGuardObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->mem);
    return 0;
}

static PyObject *MutexGuard_enter(MutexGuardObject *self, PyObject *Py_UNUSED(ignored))
{
    int rc;
    if (!self->mem || !self->mem->base) {
        PyErr_SetString(PyExc_ValueError, "MutexGuard: Mem was not initialised or was released");
        return NULL;
    }
    if (self->held) {
        PyErr_SetString(PyExc_RuntimeError, "MutexGuard entered twice");
        return NULL;
    }
    if ((rc = mutex_lock_sliced(self->mx, NO_DEADLINE, self->spin_ns)) < 0)
        return NULL;
    {
        sigset_t set = async_signals();
        pthread_sigmask(SIG_BLOCK, &set, &self->saved);
    }
    self->held = 1;
    self->recovered = rc == 1;
    Py_INCREF(self);
    return (PyObject *)self;
}

static PyObject *MutexGuard_exit(MutexGuardObject *self, PyObject *Py_UNUSED(args))
{
    PyObject *hook, *res;
    int rc;
    if (!self->held) {
        PyErr_SetString(PyExc_RuntimeError, "MutexGuard exited without being entered");
        return NULL;
    }
    self->held = 0;
    rc = pthread_mutex_unlock(self->mx);
    pthread_sigmask(SIG_SETMASK, &self->saved, NULL);
    if (rc != 0)
        return errno_error(rc);
    if (Py_IS_TYPE(self, &MutexGuardType))
        Py_RETURN_FALSE;
    if (!(hook = PyObject_GetAttrString((PyObject *)self, "_unlocked"))) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return NULL;
        PyErr_Clear();
    } else {
        res = PyObject_CallNoArgs(hook);
        Py_DECREF(hook);
        if (!res)
            return NULL;
        Py_DECREF(res);
    }
    Py_RETURN_FALSE;
}

static PyMethodDef MutexGuard_methods[] = {
    {"__enter__", (PyCFunction)MutexGuard_enter, METH_NOARGS, "take the lock; return self"},
    {"__exit__", (PyCFunction)MutexGuard_exit, METH_VARARGS,
     "release the lock, then call self._unlocked() if defined"},
    {NULL, NULL, 0, NULL},
};

static PyObject *MutexGuard_get_recovered(MutexGuardObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->recovered);
}

static PyGetSetDef MutexGuard_getset[] = {
    {"recovered", (getter)MutexGuard_get_recovered, NULL,
     "the last __enter__ took the lock from a dead holder", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject MutexGuardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kproc._native.MutexGuard",
    .tp_basicsize = sizeof(MutexGuardObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "MutexGuard(mem, off, spin_ns=0): a with-statement on the robust mutex at "
              "off whose entry cannot be interrupted once the lock is taken.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MutexGuard_init,
    .tp_dealloc = (destructor)MutexGuard_dealloc,
    .tp_traverse = (traverseproc)MutexGuard_traverse,
    .tp_methods = MutexGuard_methods,
    .tp_getset = MutexGuard_getset,
};
