/*
 * kproc._native: futexes, atomics and a robust mutex over a shared buffer.
 *
 * Only system calls and atomic instructions live here; every policy (what a
 * wake-up means, how long to spin, when to give up) is decided in Python.
 * A Mem object holds a writable buffer (the arena's mmap) for its lifetime;
 * its methods take byte offsets, checked for bounds and alignment.
 *
 * Blocking calls release the GIL around the syscall only, compute one
 * absolute CLOCK_MONOTONIC deadline on entry, and on EINTR run Python's
 * signal handlers (PyErr_CheckSignals) and give up if one raised, else retry
 * with the same deadline.  A timeout is a return value, not an exception.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define UINT_ALL 0xFFFFFFFFu

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() do { } while (0)
#endif

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;
    Py_ssize_t size;
} MemObject;

/* -- helpers ------------------------------------------------------------- */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void ns_to_ts(int64_t ns, struct timespec *ts)
{
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}

static void *at(MemObject *m, PyObject *arg, int width)
{
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    if (off < 0 || off > m->size - width || (off % width) != 0) {
        PyErr_Format(PyExc_ValueError, "offset %zd out of bounds or not %d-aligned "
                     "(buffer size %zd)", off, width, m->size);
        return NULL;
    }
    return m->base + off;
}

static int nargs_ok(Py_ssize_t nargs, Py_ssize_t lo, Py_ssize_t hi, const char *name)
{
    if (nargs < lo || nargs > hi) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)",
                     name, lo, hi, nargs);
        return 0;
    }
    return 1;
}

static int get_u32(PyObject *o, uint32_t *out)
{
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return 0;
    *out = (uint32_t)v;          /* wraps: fetch_add32(off, -1) works */
    return 1;
}

static int get_i64(PyObject *o, int64_t *out)
{
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return 0;
    *out = v;
    return 1;
}

static long futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts,
                  uint32_t val3)
{
    return syscall(SYS_futex, uaddr, op, val, ts, NULL, val3);
}

/* -- Mem type ------------------------------------------------------------ */

static int Mem_init(MemObject *self, PyObject *args, PyObject *kw)
{
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "O:Mem", &obj))
        return -1;
    if (self->base) {
        PyErr_SetString(PyExc_RuntimeError, "Mem already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE) < 0)
        return -1;
    self->base = self->view.buf;
    self->size = self->view.len;
    return 0;
}

static void Mem_dealloc(MemObject *self)
{
    if (self->base)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define ARGS MemObject *self, PyObject *const *args, Py_ssize_t nargs

static PyObject *Mem_load32(ARGS)
{
    uint32_t *p;
    if (!nargs_ok(nargs, 1, 1, "load32") || !(p = at(self, args[0], 4)))
        return NULL;
    return PyLong_FromUnsignedLong(__atomic_load_n(p, __ATOMIC_SEQ_CST));
}

static PyObject *Mem_store32(ARGS)
{
    uint32_t *p, v;
    if (!nargs_ok(nargs, 2, 2, "store32") || !(p = at(self, args[0], 4)) ||
        !get_u32(args[1], &v))
        return NULL;
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

#define RMW32(NAME, EXPR)                                                     \
static PyObject *Mem_##NAME(ARGS)                                             \
{                                                                             \
    uint32_t *p, v;                                                           \
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
    if (!nargs_ok(nargs, 3, 3, "cmpxchg32") || !(p = at(self, args[0], 4)) ||
        !get_u32(args[1], &expected) || !get_u32(args[2], &desired))
        return NULL;
    __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_SEQ_CST);
    return PyLong_FromUnsignedLong(expected);   /* the value that was there */
}

static PyObject *Mem_load64(ARGS)
{
    int64_t *p;
    if (!nargs_ok(nargs, 1, 1, "load64") || !(p = at(self, args[0], 8)))
        return NULL;
    return PyLong_FromLongLong(__atomic_load_n(p, __ATOMIC_SEQ_CST));
}

static PyObject *Mem_store64(ARGS)
{
    int64_t *p, v;
    if (!nargs_ok(nargs, 2, 2, "store64") || !(p = at(self, args[0], 8)) ||
        !get_i64(args[1], &v))
        return NULL;
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

#define RMW64(NAME, EXPR)                                                     \
static PyObject *Mem_##NAME(ARGS)                                             \
{                                                                             \
    int64_t *p, v;                                                            \
    if (!nargs_ok(nargs, 2, 2, #NAME) || !(p = at(self, args[0], 8)) ||       \
        !get_i64(args[1], &v))                                                \
        return NULL;                                                          \
    return PyLong_FromLongLong(EXPR);                                         \
}
RMW64(xchg64, __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST))
RMW64(fetch_add64, __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST))

static PyObject *Mem_cmpxchg64(ARGS)
{
    int64_t *p, expected, desired;
    if (!nargs_ok(nargs, 3, 3, "cmpxchg64") || !(p = at(self, args[0], 8)) ||
        !get_i64(args[1], &expected) || !get_i64(args[2], &desired))
        return NULL;
    __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_SEQ_CST);
    return PyLong_FromLongLong(expected);
}

/*
 * Sleep on *word while it equals @expected, until @deadline (-1: none).
 * Return 0 woken/changed, 1 value differed, 2 timed out, -1 exception set.
 * Called with the GIL held; releases it around the syscall.
 */
static int futex_wait_until(uint32_t *word, uint32_t expected, int64_t deadline)
{
    for (;;) {
        struct timespec ts;
        long rc;
        int err;
        if (deadline >= 0) {
            if (mono_ns() >= deadline)
                return __atomic_load_n(word, __ATOMIC_SEQ_CST) == expected ? 2 : 1;
            ns_to_ts(deadline, &ts);
        }
        Py_BEGIN_ALLOW_THREADS
        rc = futex(word, FUTEX_WAIT_BITSET, expected, deadline >= 0 ? &ts : NULL,
                   FUTEX_BITSET_MATCH_ANY);
        err = errno;
        Py_END_ALLOW_THREADS
        if (rc == 0)
            return 0;
        if (err == EAGAIN)
            return 1;
        if (err == ETIMEDOUT)
            return 2;
        if (err == EINTR) {
            if (PyErr_CheckSignals() < 0)
                return -1;
            continue;
        }
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
}

static int64_t deadline_of(PyObject *timeout_obj)
{
    long long t = PyLong_AsLongLong(timeout_obj);
    if (t == -1 && PyErr_Occurred())
        return -2;
    return t < 0 ? -1 : mono_ns() + t;
}

static PyObject *Mem_futex_wait(ARGS)
{
    uint32_t *p, expected;
    int64_t deadline = -1;
    int rc;
    if (!nargs_ok(nargs, 2, 3, "futex_wait") || !(p = at(self, args[0], 4)) ||
        !get_u32(args[1], &expected))
        return NULL;
    if (nargs > 2 && (deadline = deadline_of(args[2])) == -2)
        return NULL;
    rc = futex_wait_until(p, expected, deadline);
    return rc < 0 ? NULL : PyLong_FromLong(rc);
}

static PyObject *Mem_futex_wake(ARGS)
{
    uint32_t *p;
    long n, rc;
    if (!nargs_ok(nargs, 2, 2, "futex_wake") || !(p = at(self, args[0], 4)))
        return NULL;
    n = PyLong_AsLong(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    rc = futex(p, FUTEX_WAKE, n > INT_MAX ? INT_MAX : (uint32_t)n, NULL, 0);
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(rc);
}

/* Spin (GIL released) up to @spin_ns while *word == expected. 1 if it changed. */
static int spin_while_equal(uint32_t *word, uint32_t expected, int64_t spin_ns)
{
    int changed = 0;
    if (spin_ns <= 0)
        return 0;
    Py_BEGIN_ALLOW_THREADS
    int64_t end = mono_ns() + spin_ns;
    for (unsigned i = 1;; i++) {
        if (__atomic_load_n(word, __ATOMIC_SEQ_CST) != expected) {
            changed = 1;
            break;
        }
        cpu_relax();
        if ((i & 63) == 0 && mono_ns() >= end)
            break;
    }
    Py_END_ALLOW_THREADS
    return changed;
}

static PyObject *Mem_wait_change(ARGS)
{
    uint32_t *p, expected;
    int64_t deadline = -1, spin_ns = 0;
    int rc;
    if (!nargs_ok(nargs, 2, 4, "wait_change") || !(p = at(self, args[0], 4)) ||
        !get_u32(args[1], &expected))
        return NULL;
    if (nargs > 2 && (deadline = deadline_of(args[2])) == -2)
        return NULL;
    if (nargs > 3 && !get_i64(args[3], &spin_ns))
        return NULL;
    if (__atomic_load_n(p, __ATOMIC_SEQ_CST) != expected)
        return PyLong_FromLong(0);
    if (spin_while_equal(p, expected, spin_ns))
        return PyLong_FromLong(0);
    rc = futex_wait_until(p, expected, deadline);
    if (rc < 0)
        return NULL;
    return PyLong_FromLong(rc == 2 ? 2 : 0);
}

/* -- completions: done u32 @0, seq u32 @4 (futex word), sleepers u32 @8 --- */

static int completion_try(uint32_t *done)
{
    uint32_t v = __atomic_load_n(done, __ATOMIC_SEQ_CST);
    for (;;) {
        if (v == UINT_ALL)
            return 1;
        if (v == 0)
            return 0;
        if (__atomic_compare_exchange_n(done, &v, v - 1, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            return 1;
    }
}

static uint32_t *completion_at(MemObject *m, PyObject *arg)
{
    uint32_t *p = at(m, arg, 8);
    if (p && (char *)(p + 4) > m->base + m->size) {
        PyErr_SetString(PyExc_ValueError, "completion record out of bounds");
        return NULL;
    }
    return p;
}

static PyObject *Mem_completion_try(ARGS)
{
    uint32_t *c;
    if (!nargs_ok(nargs, 1, 1, "completion_try") || !(c = completion_at(self, args[0])))
        return NULL;
    return PyBool_FromLong(completion_try(c));
}

static PyObject *Mem_completion_done(ARGS)
{
    uint32_t *c;
    if (!nargs_ok(nargs, 1, 1, "completion_done") || !(c = completion_at(self, args[0])))
        return NULL;
    return PyBool_FromLong(__atomic_load_n(c, __ATOMIC_SEQ_CST) != 0);
}

/*
 * Optional generation check (args gen_off, gen): the record is only touched
 * if the u32 at gen_off still holds gen.  1 ok, 0 stale, -1 exception set.
 */
static int gen_ok(MemObject *m, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t at_arg)
{
    uint32_t *g, gen;
    long long gen_off;
    if (nargs <= at_arg)
        return 1;
    gen_off = PyLong_AsLongLong(args[at_arg]);
    if (gen_off == -1 && PyErr_Occurred())
        return -1;
    if (gen_off < 0)
        return 1;
    if (nargs <= at_arg + 1) {
        PyErr_SetString(PyExc_TypeError, "gen_off needs gen");
        return -1;
    }
    if (!(g = at(m, args[at_arg], 4)) || !get_u32(args[at_arg + 1], &gen))
        return -1;
    return __atomic_load_n(g, __ATOMIC_SEQ_CST) == gen;
}

static PyObject *Mem_completion_complete(ARGS)
{
    uint32_t *c;
    int all = 0, ok;
    if (!nargs_ok(nargs, 1, 4, "completion_complete") || !(c = completion_at(self, args[0])))
        return NULL;
    if (nargs > 1 && (all = PyObject_IsTrue(args[1])) < 0)
        return NULL;
    if ((ok = gen_ok(self, args, nargs, 2)) <= 0)
        return ok < 0 ? NULL : PyLong_FromLong(-1);
    if (all) {
        __atomic_store_n(&c[0], UINT_ALL, __ATOMIC_SEQ_CST);
    } else {
        uint32_t v = __atomic_load_n(&c[0], __ATOMIC_SEQ_CST);
        while (v < UINT_ALL - 1 &&
               !__atomic_compare_exchange_n(&c[0], &v, v + 1, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST))
            ;
    }
    __atomic_fetch_add(&c[1], 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c[2], __ATOMIC_SEQ_CST) > 0)
        futex(&c[1], FUTEX_WAKE, all ? INT_MAX : 1, NULL, 0);
    return PyLong_FromLong(0);
}

/*
 * completion_wait(off, seq_snapshot, timeout_ns=-1, spin_ns=0, gen_off=-1, gen=0) ->
 *   1 acquired, 0 timed out, 2 woken (or seq moved) without acquiring,
 *   -1 stale (generation mismatch; nothing touched).
 * A negative seq_snapshot means "read it now".
 */
static PyObject *Mem_completion_wait(ARGS)
{
    uint32_t *c, snap;
    int64_t deadline = -1, spin_ns = 0, snap_arg;
    int rc, got = 0, moved = 0, ok;
    if (!nargs_ok(nargs, 2, 6, "completion_wait") || !(c = completion_at(self, args[0])) ||
        !get_i64(args[1], &snap_arg))
        return NULL;
    if (nargs > 2 && (deadline = deadline_of(args[2])) == -2)
        return NULL;
    if (nargs > 3 && !get_i64(args[3], &spin_ns))
        return NULL;
    if ((ok = gen_ok(self, args, nargs, 4)) <= 0)
        return ok < 0 ? NULL : PyLong_FromLong(-1);
    snap = snap_arg < 0 ? __atomic_load_n(&c[1], __ATOMIC_SEQ_CST) : (uint32_t)snap_arg;
    if (completion_try(c))
        return PyLong_FromLong(1);
    if (spin_ns > 0) {
        Py_BEGIN_ALLOW_THREADS
        int64_t end = mono_ns() + spin_ns;
        for (unsigned i = 1;; i++) {
            if (__atomic_load_n(&c[0], __ATOMIC_SEQ_CST) != 0 && completion_try(c)) {
                got = 1;
                break;
            }
            if (__atomic_load_n(&c[1], __ATOMIC_SEQ_CST) != snap) {
                moved = 1;
                break;
            }
            cpu_relax();
            if ((i & 63) == 0 && mono_ns() >= end)
                break;
        }
        Py_END_ALLOW_THREADS
        if (got)
            return PyLong_FromLong(1);
        if (moved)
            return PyLong_FromLong(completion_try(c) ? 1 : 2);
    }
    __atomic_fetch_add(&c[2], 1, __ATOMIC_SEQ_CST);
    if (completion_try(c)) {
        __atomic_fetch_sub(&c[2], 1, __ATOMIC_SEQ_CST);
        return PyLong_FromLong(1);
    }
    rc = futex_wait_until(&c[1], snap, deadline);
    __atomic_fetch_sub(&c[2], 1, __ATOMIC_SEQ_CST);
    if (rc < 0)
        return NULL;
    if (completion_try(c))
        return PyLong_FromLong(1);
    return PyLong_FromLong(rc == 2 ? 0 : 2);
}

/* -- robust process-shared mutex ----------------------------------------- */

static pthread_mutex_t *mutex_at(MemObject *m, PyObject *arg)
{
    char *p = at(m, arg, 8);
    if (p && p + sizeof(pthread_mutex_t) > m->base + m->size) {
        PyErr_SetString(PyExc_ValueError, "mutex out of bounds");
        return NULL;
    }
    return (pthread_mutex_t *)p;
}

static PyObject *Mem_mutex_init(ARGS)
{
    pthread_mutex_t *mx;
    pthread_mutexattr_t attr;
    int rc;
    if (!nargs_ok(nargs, 1, 1, "mutex_init") || !(mx = mutex_at(self, args[0])))
        return NULL;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
    rc = pthread_mutex_init(mx, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* mutex_lock(off, timeout_ns=-1) -> 0 locked, 1 locked (previous owner died), 2 timeout */
static PyObject *Mem_mutex_lock(ARGS)
{
    pthread_mutex_t *mx;
    int64_t deadline = -1;
    int rc;
    if (!nargs_ok(nargs, 1, 2, "mutex_lock") || !(mx = mutex_at(self, args[0])))
        return NULL;
    if (nargs > 1 && (deadline = deadline_of(args[1])) == -2)
        return NULL;
    rc = pthread_mutex_trylock(mx);
    while (rc == EBUSY) {
        /* Slices of at most 50 ms, so that Python signal handlers run. */
        int64_t now = mono_ns(), until = now + 50000000LL;
        struct timespec ts;
        if (deadline >= 0 && now >= deadline)
            return PyLong_FromLong(2);
        if (deadline >= 0 && deadline < until)
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
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(mx);
        return PyLong_FromLong(1);
    }
    if (rc) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(0);
}

static PyObject *Mem_mutex_unlock(ARGS)
{
    pthread_mutex_t *mx;
    int rc;
    if (!nargs_ok(nargs, 1, 1, "mutex_unlock") || !(mx = mutex_at(self, args[0])))
        return NULL;
    rc = pthread_mutex_unlock(mx);
    if (rc) {
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

#define M(NAME, DOC) {#NAME, (PyCFunction)(void (*)(void))Mem_##NAME, METH_FASTCALL, DOC}
static PyMethodDef Mem_methods[] = {
    M(load32, "load32(off) -> u32"),
    M(store32, "store32(off, v)"),
    M(xchg32, "xchg32(off, v) -> old"),
    M(cmpxchg32, "cmpxchg32(off, expected, new) -> old (success iff old == expected)"),
    M(fetch_add32, "fetch_add32(off, delta) -> old (wraps mod 2**32)"),
    M(fetch_or32, "fetch_or32(off, mask) -> old"),
    M(fetch_and32, "fetch_and32(off, mask) -> old"),
    M(load64, "load64(off) -> s64"),
    M(store64, "store64(off, v)"),
    M(xchg64, "xchg64(off, v) -> old"),
    M(cmpxchg64, "cmpxchg64(off, expected, new) -> old"),
    M(fetch_add64, "fetch_add64(off, delta) -> old"),
    M(futex_wait, "futex_wait(off, expected, timeout_ns=-1) -> 0 woken, 1 differed, 2 timeout"),
    M(futex_wake, "futex_wake(off, n) -> number woken"),
    M(wait_change, "wait_change(off, expected, timeout_ns=-1, spin_ns=0) -> 0 changed/woken, 2 timeout"),
    M(completion_try, "completion_try(off) -> bool"),
    M(completion_done, "completion_done(off) -> bool"),
    M(completion_complete, "completion_complete(off, all=False, gen_off=-1, gen=0) -> 0, -1 if stale"),
    M(completion_wait, "completion_wait(off, seq_snapshot, timeout_ns=-1, spin_ns=0, gen_off=-1, gen=0) -> 1 acquired, 0 timeout, 2 woken, -1 stale"),
    M(mutex_init, "mutex_init(off): robust, process-shared, error-checking"),
    M(mutex_lock, "mutex_lock(off, timeout_ns=-1) -> 0 locked, 1 owner died (recovered), 2 timeout"),
    M(mutex_unlock, "mutex_unlock(off)"),
    {NULL, NULL, 0, NULL},
};

static PyObject *Mem_get_size(MemObject *self, void *closure)
{
    return PyLong_FromSsize_t(self->size);
}

static PyGetSetDef Mem_getset[] = {
    {"size", (getter)Mem_get_size, NULL, "buffer size in bytes", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MemType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kproc._native.Mem",
    .tp_basicsize = sizeof(MemObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Mem(buffer): atomics, futexes and robust mutexes at byte offsets of a "
              "writable buffer (kept exported for the object's lifetime).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Mem_init,
    .tp_dealloc = (destructor)Mem_dealloc,
    .tp_methods = Mem_methods,
    .tp_getset = Mem_getset,
};

static PyObject *mod_monotonic_ns(PyObject *mod, PyObject *unused)
{
    return PyLong_FromLongLong(mono_ns());
}

/* set_pdeathsig(sig): PR_SET_PDEATHSIG. */
static PyObject *mod_set_pdeathsig(PyObject *mod, PyObject *arg)
{
    long sig = PyLong_AsLong(arg);
    if (sig == -1 && PyErr_Occurred())
        return NULL;
    if (prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* set_comm(bytes): PR_SET_NAME (the kernel keeps the first 15 bytes). */
static PyObject *mod_set_comm(PyObject *mod, PyObject *arg)
{
    char name[16] = {0};
    char *raw;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &raw, &len) < 0)
        return NULL;
    memcpy(name, raw, len > 15 ? 15 : len);
    if (prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"monotonic_ns", mod_monotonic_ns, METH_NOARGS, "CLOCK_MONOTONIC in ns"},
    {"set_pdeathsig", mod_set_pdeathsig, METH_O, "prctl(PR_SET_PDEATHSIG, sig)"},
    {"set_comm", mod_set_comm, METH_O, "prctl(PR_SET_NAME, name[:15])"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "kproc._native",
    "Futexes, atomics and a robust mutex over shared memory (policy lives in Python).",
    -1, module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m;
    if (PyType_Ready(&MemType) < 0)
        return NULL;
    m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    Py_INCREF(&MemType);
    if (PyModule_AddObject(m, "Mem", (PyObject *)&MemType) < 0 ||
        PyModule_AddIntConstant(m, "MUTEX_SIZE", (sizeof(pthread_mutex_t) + 7) & ~7) < 0 ||
        PyModule_AddIntConstant(m, "HAVE_FUTEX", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
