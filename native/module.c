/*
 * kproc._native: atomics, futexes, completions and a robust mutex over a
 * shared buffer.
 *
 * Only system calls and atomic instructions live here.  Every policy (what a
 * wake-up means, how long to spin, when to give up, what an errno means) is
 * decided in Python; see kproc/_wait.py and kproc/_completion.py.
 *
 * A Mem object holds a writable buffer export (the arena's mmap, MAP_SHARED
 * across processes) for its whole lifetime, so the memory cannot go away
 * under a call that released the GIL.  Methods take byte offsets, checked for
 * bounds and natural alignment (ValueError).  Atomics are sequentially
 * consistent.  Futexes are shared (no FUTEX_PRIVATE_FLAG): the waiter and the
 * waker are different processes.
 *
 * Blocking calls try once holding the GIL, release it only around the spin
 * and the syscall, compute one absolute CLOCK_MONOTONIC deadline on entry,
 * and on EINTR run Python's signal handlers (PyErr_CheckSignals) and give up
 * if one raised, else retry with the same deadline.  A spin (spin_ns) runs in
 * full and the deadline bounds the sleep after it, so timeout_ns=0 with a
 * spin means "spin, never sleep".  A timeout is a return value, not an
 * exception; any other failure is OSError(errno).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define DONE_ALL UINT32_MAX             /* completion.done after complete_all */
#define SPIN_CLOCK_EVERY 64             /* spin iterations between clock reads */
#define MUTEX_SLICE_NS 50000000LL       /* mutex_lock: run signal handlers this often */
#define NO_DEADLINE (-1)

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() do { } while (0)
#endif

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define CAS(p, expp, v) __atomic_compare_exchange_n((p), (expp), (v), 0, \
                                                    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)

/*
 * The layout fields C reads, under the names native_layout() gives them.
 * X(id, name, bound, width): @bound is the field holding the size of the slot
 * this one lies in (NONE for tables and constants), @width its size in bytes
 * (it must lie wholly inside the slot, naturally aligned).
 * LIST fields serve the list primitives (wl_setup); wq_setup also reads the
 * QUEUE fields, which the fast paths need to tie a work and wake a worker.
 */
#define LIST_FIELDS(X)                                                        \
    X(WORKS, "WORK.base", NONE, 0)                                            \
    X(WORK_STRIDE, "WORK.stride", NONE, 0)                                    \
    X(MAX_WORKS, "WORK.count", NONE, 0)                                       \
    X(WORKER_SIZE, "WORKER.size", NONE, 0)                                    \
    X(K_LOCK, "WORKER.lock", WORKER_SIZE, sizeof(pthread_mutex_t))            \
    X(K_HEAD, "WORKER.head", WORKER_SIZE, 4)                                  \
    X(K_TAIL, "WORKER.tail", WORKER_SIZE, 4)                                  \
    X(K_DEPTH, "WORKER.depth", WORKER_SIZE, 4)                                \
    X(K_THEAD, "WORKER.thead", WORKER_SIZE, 4)                                \
    X(K_TTAIL, "WORKER.ttail", WORKER_SIZE, 4)                                \
    X(K_NDELAYED, "WORKER.ndelayed", WORKER_SIZE, 4)                          \
    X(W_KIND, "WORK.kind", WORK_STRIDE, 4)                                    \
    X(W_WHERE, "WORK.where", WORK_STRIDE, 4)                                  \
    X(W_PREV, "WORK.prev", WORK_STRIDE, 4)                                    \
    X(W_NEXT, "WORK.next", WORK_STRIDE, 4)                                    \
    X(W_CANCELING, "WORK.canceling", WORK_STRIDE, 4)                          \
    X(W_FLUSHERS, "WORK.flushers", WORK_STRIDE, 4)                            \
    X(W_EXPIRES, "WORK.expires", WORK_STRIDE, 8)                              \
    X(ON_NONE, "ON_NONE", NONE, 0)                                            \
    X(ON_WORKLIST, "ON_WORKLIST", NONE, 0)                                    \
    X(ON_TIMER, "ON_TIMER", NONE, 0)                                          \
    X(WK_FLUSH, "WK_FLUSH", NONE, 0)

#define QUEUE_FIELDS(X)                                                       \
    X(K_GEN, "WORKER.gen", WORKER_SIZE, 4)                                    \
    X(K_CURRENT, "WORKER.current", WORKER_SIZE, 4)                            \
    X(K_TASK, "WORKER.task", WORKER_SIZE, 4)                                  \
    X(K_TASK_GEN, "WORKER.task_gen", WORKER_SIZE, 4)                          \
    X(W_GEN, "WORK.gen", WORK_STRIDE, 4)                                      \
    X(W_FLAGS, "WORK.flags", WORK_STRIDE, 4)                                  \
    X(W_WORKER, "WORK.worker", WORK_STRIDE, 4)                                \
    X(W_WORKER_GEN, "WORK.worker_gen", WORK_STRIDE, 4)                        \
    X(TASKS, "TASK.base", NONE, 0)                                            \
    X(TASK_STRIDE, "TASK.stride", NONE, 0)                                    \
    X(MAX_TASKS, "TASK.count", NONE, 0)                                       \
    X(T_GEN, "TASK.gen", TASK_STRIDE, 4)                                      \
    X(T_STATE, "TASK.state", TASK_STRIDE, 4)                                  \
    X(T_WAKE_SEQ, "TASK.wake_seq", TASK_STRIDE, 4)                            \
    X(T_SLEEPING, "TASK.sleeping", TASK_STRIDE, 4)                            \
    X(WF_ORPHAN, "WF_ORPHAN", NONE, 0)                                        \
    X(TASK_NORMAL, "TASK_NORMAL", NONE, 0)

#define FIELD_ID(id, name, bound, width) WQ_##id,
#define FIELD_ONE(id, name, bound, width) + 1
enum wq_field {
    LIST_FIELDS(FIELD_ID)
    QUEUE_FIELDS(FIELD_ID)
    WQ_NFIELDS,
    WQ_NLIST = 0 LIST_FIELDS(FIELD_ONE),        /* the LIST fields come first */
    WQ_NONE = -1
};
#undef FIELD_ID
#undef FIELD_ONE

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;                         /* NULL until __init__ succeeded */
    Py_ssize_t size;
    int wq_set;                         /* the layout is known (wq_setup) */
    Py_ssize_t wq[WQ_NFIELDS];
} MemObject;

/* A completion record, 16 bytes, 8-aligned (layout shared with kproc/_layout.py). */
struct completion {
    uint32_t done;                      /* count; DONE_ALL after complete_all */
    uint32_t seq;                       /* the futex word, bumped by every complete */
    uint32_t sleepers;                  /* waiters inside (or about to enter) FUTEX_WAIT */
    uint32_t reserved;
};

/* -- clock and syscalls -------------------------------------------------- */

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

static long futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts,
                  uint32_t val3)
{
    return syscall(SYS_futex, uaddr, op, val, ts, NULL, val3);
}

static int futex_wake_n(uint32_t *word, int n)
{
    return (int)futex(word, FUTEX_WAKE, (uint32_t)n, NULL, 0);
}

static PyObject *errno_error(int err)
{
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* -- argument parsing (hot path: no PyArg_Parse*) ------------------------ */

static int nargs_ok(Py_ssize_t nargs, Py_ssize_t lo, Py_ssize_t hi, const char *name)
{
    if (nargs >= lo && nargs <= hi)
        return 1;
    if (lo == hi)
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)",
                     name, lo, nargs);
    else
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)",
                     name, lo, hi, nargs);
    return 0;
}

/*
 * For the methods with optional parameters (which may be named): spread the
 * positional and keyword arguments over @out[0..hi) in parameter order, NULL
 * where one was not given (its default applies).  The first @lo are required.
 * Return 1, or 0 with TypeError set.
 */
static int parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *fname, const char *const names[], Py_ssize_t lo,
                      Py_ssize_t hi, PyObject **out)
{
    Py_ssize_t i, k, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > hi) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)",
                     fname, hi, nargs);
        return 0;
    }
    for (i = 0; i < hi; i++)
        out[i] = i < nargs ? args[i] : NULL;
    for (k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        for (i = 0; i < hi; i++)
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0)
                break;
        if (i == hi) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                         fname, key);
            return 0;
        }
        if (out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                         fname, names[i]);
            return 0;
        }
        out[i] = args[nargs + k];
    }
    for (i = 0; i < lo; i++) {
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'",
                         fname, names[i]);
            return 0;
        }
    }
    return 1;
}

/* Address of @len bytes at offset @arg, @align-aligned, or NULL (ValueError set). */
static void *at_len(MemObject *m, PyObject *arg, Py_ssize_t len, int align)
{
    Py_ssize_t off = PyLong_AsSsize_t(arg);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    if (off < 0 || off > m->size - len) {
        PyErr_Format(PyExc_ValueError, "offset %zd: %zd bytes there are out of bounds "
                     "(buffer size %zd)", off, len, m->size);
        return NULL;
    }
    if (((uintptr_t)(m->base + off)) % (uintptr_t)align) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not %d-aligned", off, align);
        return NULL;
    }
    return m->base + off;
}

static void *at(MemObject *m, PyObject *arg, int width)
{
    return at_len(m, arg, width, width);
}

/* Any int: taken mod 2**32 (so fetch_add32(off, -1) decrements). */
static int get_u32(PyObject *o, uint32_t *out)
{
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return 0;
    *out = (uint32_t)v;
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

/*
 * Absolute CLOCK_MONOTONIC deadline for a relative @timeout_obj in ns:
 * negative, None or not given (NULL) means none (NO_DEADLINE).
 * Return 0, or -1 with an exception set.
 */
static int get_deadline(PyObject *timeout_obj, int64_t *deadline)
{
    int64_t t, now;
    if (!timeout_obj || timeout_obj == Py_None) {
        *deadline = NO_DEADLINE;
        return 0;
    }
    if (!get_i64(timeout_obj, &t))
        return -1;
    if (t < 0) {
        *deadline = NO_DEADLINE;
        return 0;
    }
    now = mono_ns();
    *deadline = t > INT64_MAX - now ? NO_DEADLINE : now + t;
    return 0;
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

/* -- Mem: construction --------------------------------------------------- */

static int Mem_init(MemObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *obj;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Mem", kwlist, &obj))
        return -1;
    if (self->base) {
        PyErr_SetString(PyExc_RuntimeError, "Mem is already initialised");
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
#define KWARGS ARGS, PyObject *kwnames

/* Every method but __init__ needs the buffer. */
#define NEED_BUFFER()                                                         \
    do {                                                                      \
        if (!self->base) {                                                    \
            PyErr_SetString(PyExc_ValueError, "Mem was not initialised");     \
            return NULL;                                                      \
        }                                                                     \
    } while (0)

/* -- Mem: 32-bit atomics (unsigned) -------------------------------------- */

static PyObject *Mem_load32(ARGS)
{
    uint32_t *p;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 1, 1, "load32") || !(p = at(self, args[0], 4)))
        return NULL;
    return PyLong_FromUnsignedLong(LOAD(p));
}

static PyObject *Mem_store32(ARGS)
{
    uint32_t *p, v;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 2, 2, "store32") || !(p = at(self, args[0], 4)) ||
        !get_u32(args[1], &v))
        return NULL;
    STORE(p, v);
    Py_RETURN_NONE;
}

#define RMW32(NAME, EXPR)                                                     \
static PyObject *Mem_##NAME(ARGS)                                             \
{                                                                             \
    uint32_t *p, v;                                                           \
    NEED_BUFFER();                                                            \
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
    NEED_BUFFER();
    if (!nargs_ok(nargs, 3, 3, "cmpxchg32") || !(p = at(self, args[0], 4)) ||
        !get_u32(args[1], &expected) || !get_u32(args[2], &desired))
        return NULL;
    CAS(p, &expected, desired);         /* on failure, expected := the value there */
    return PyLong_FromUnsignedLong(expected);
}

/* -- Mem: 64-bit atomics (signed) ---------------------------------------- */

static PyObject *Mem_load64(ARGS)
{
    int64_t *p;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 1, 1, "load64") || !(p = at(self, args[0], 8)))
        return NULL;
    return PyLong_FromLongLong(LOAD(p));
}

static PyObject *Mem_store64(ARGS)
{
    int64_t *p, v;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 2, 2, "store64") || !(p = at(self, args[0], 8)) ||
        !get_i64(args[1], &v))
        return NULL;
    STORE(p, v);
    Py_RETURN_NONE;
}

#define RMW64(NAME, EXPR)                                                     \
static PyObject *Mem_##NAME(ARGS)                                             \
{                                                                             \
    int64_t *p, v;                                                            \
    NEED_BUFFER();                                                            \
    if (!nargs_ok(nargs, 2, 2, #NAME) || !(p = at(self, args[0], 8)) ||       \
        !get_i64(args[1], &v))                                                \
        return NULL;                                                          \
    return PyLong_FromLongLong(EXPR);                                         \
}
RMW64(xchg64, __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST))

/* Signed overflow wraps (two's complement), done on the unsigned type. */
static PyObject *Mem_fetch_add64(ARGS)
{
    int64_t *p, v;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 2, 2, "fetch_add64") || !(p = at(self, args[0], 8)) ||
        !get_i64(args[1], &v))
        return NULL;
    return PyLong_FromLongLong((int64_t)__atomic_fetch_add((uint64_t *)p, (uint64_t)v,
                                                           __ATOMIC_SEQ_CST));
}

static PyObject *Mem_cmpxchg64(ARGS)
{
    int64_t *p, expected, desired;
    NEED_BUFFER();
    if (!nargs_ok(nargs, 3, 3, "cmpxchg64") || !(p = at(self, args[0], 8)) ||
        !get_i64(args[1], &expected) || !get_i64(args[2], &desired))
        return NULL;
    CAS(p, &expected, desired);
    return PyLong_FromLongLong(expected);
}

/* -- Mem: futexes -------------------------------------------------------- */

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
        Py_BEGIN_ALLOW_THREADS
        /* FUTEX_WAIT_BITSET: the timeout is absolute, on CLOCK_MONOTONIC. */
        rc = futex(word, FUTEX_WAIT_BITSET, expected,
                   deadline != NO_DEADLINE ? &ts : NULL, FUTEX_BITSET_MATCH_ANY);
        err = errno;
        Py_END_ALLOW_THREADS
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
    Py_BEGIN_ALLOW_THREADS
    for (unsigned i = 1;; i++) {
        if (LOAD(word) != expected) {
            changed = 1;
            break;
        }
        cpu_relax();
        if (i % SPIN_CLOCK_EVERY == 0 && mono_ns() >= end)
            break;
    }
    Py_END_ALLOW_THREADS
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

/* -- Mem: completions ---------------------------------------------------- */

/* try_wait_for_completion(): take one count, or pass if complete_all. */
static int completion_try(struct completion *c)
{
    uint32_t v = LOAD(&c->done);
    for (;;) {
        if (v == DONE_ALL)
            return 1;
        if (v == 0)
            return 0;
        if (CAS(&c->done, &v, v - 1))   /* on failure v is reloaded */
            return 1;
    }
}

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
    return PyBool_FromLong(LOAD(&c->done) != 0);
}

/*
 * complete() / complete_all().  The order prevents a lost wake-up against
 * completion_wait(): done is published first, then seq moves (a waiter about
 * to FUTEX_WAIT on its older seq snapshot gets EAGAIN), then sleepers is read
 * (a waiter that incremented it before our read is woken; one that
 * increments it after re-tries done before sleeping, and sees ours).
 */
static PyObject *Mem_completion_complete(KWARGS)
{
    static const char *const names[] = {"off", "all", "gen_off", "gen"};
    PyObject *a[4];
    struct completion *c;
    int all = 0, ok;
    NEED_BUFFER();
    if (!parse_args(args, nargs, kwnames, "completion_complete", names, 1, 4, a) ||
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
    return PyLong_FromLong(0);
}

/*
 * Spin (GIL released) until @end: 1 acquired, 2 seq moved without acquiring,
 * 0 nothing happened.
 */
static int completion_spin(struct completion *c, uint32_t snap, int64_t end)
{
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
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
    Py_END_ALLOW_THREADS
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

/* -- Mem: robust process-shared mutex ------------------------------------ */

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

/* 0 locked, 1 locked and made consistent after its owner died, -1 OSError set. */
static int mutex_acquired(pthread_mutex_t *mx, int rc)
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
 * mutex_lock(off, timeout_ns=-1) -> 0 locked, 1 locked (previous owner died,
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
    rc = pthread_mutex_trylock(mx);
    if (rc == EBUSY && spin_ns > 0) {
        /* A robust mutex never spins in glibc: a contended lock sleeps in the
         * kernel at once, and waking a halted vCPU costs tens of µs.  Critical
         * sections here are a few µs, so trying again for a while first wins. */
        int64_t until = mono_ns() + spin_ns;
        unsigned n = 0;
        do {
            for (int i = 0; i < 32; i++)
                cpu_relax();
            rc = pthread_mutex_trylock(mx);
        } while (rc == EBUSY && ((++n & 15) || mono_ns() < until));
    }
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

/* -- Mem: kthread_worker fast paths -------------------------------------- */

/* -- the record layout, by field name ------------------------------------- */

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

#define WQ(f) (self->wq[WQ_##f])
#define U32(off) ((uint32_t *)(self->base + (off)))

/* Offset of work slot @idx1 (index + 1), or -1 if out of the table. */
static Py_ssize_t wq_work(MemObject *self, uint32_t idx1)
{
    if (idx1 == 0 || idx1 > (uint32_t)WQ(MAX_WORKS))
        return -1;
    return WQ(WORKS) + (Py_ssize_t)(idx1 - 1) * WQ(WORK_STRIDE);
}

/* trylock, then retry for @spin_ns: 1 held, 0 still busy (nothing held), -1 error set. */
static int wq_trylock(pthread_mutex_t *mx, int64_t spin_ns)
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

#undef WQ
#undef U32

/* -- Mem: type ----------------------------------------------------------- */

/* Positional-only methods (the hot atomics), and those taking keywords too. */
#define M(NAME, DOC) {#NAME, (PyCFunction)(void (*)(void))Mem_##NAME, METH_FASTCALL, DOC}
#define MK(NAME, DOC) {#NAME, (PyCFunction)(void (*)(void))Mem_##NAME, \
                       METH_FASTCALL | METH_KEYWORDS, DOC}
static PyMethodDef Mem_methods[] = {
    M(load32, "load32(off) -> int: the u32 at off"),
    M(store32, "store32(off, v): store v mod 2**32"),
    M(xchg32, "xchg32(off, v) -> old"),
    M(cmpxchg32, "cmpxchg32(off, expected, new) -> old (success iff old == expected)"),
    M(fetch_add32, "fetch_add32(off, delta) -> old (delta may be negative; wraps mod 2**32)"),
    M(fetch_or32, "fetch_or32(off, mask) -> old"),
    M(fetch_and32, "fetch_and32(off, mask) -> old"),
    M(load64, "load64(off) -> int: the s64 at off"),
    M(store64, "store64(off, v)"),
    M(xchg64, "xchg64(off, v) -> old"),
    M(cmpxchg64, "cmpxchg64(off, expected, new) -> old (success iff old == expected)"),
    M(fetch_add64, "fetch_add64(off, delta) -> old (wraps)"),
    MK(futex_wait, "futex_wait(off, expected, timeout_ns=-1) -> 0 woken (or spurious), "
                  "1 the word did not hold expected, 2 timed out"),
    M(futex_wake, "futex_wake(off, n) -> number woken (n = INT_MAX: all)"),
    MK(wait_change, "wait_change(off, expected, timeout_ns=-1, spin_ns=0) -> 0 the word "
                    "differs from expected or a wake-up came, 2 timed out; the spin runs "
                    "in full, the timeout bounds the sleep after it"),
    M(completion_try, "completion_try(off) -> bool: try_wait_for_completion"),
    M(completion_done, "completion_done(off) -> bool: done != 0"),
    MK(completion_complete, "completion_complete(off, all=False, gen_off=-1, gen=0) -> 0; "
                           "-1 (nothing done) if the u32 at gen_off is not gen"),
    MK(completion_wait, "completion_wait(off, seq_snapshot, timeout_ns=-1, spin_ns=0, "
                       "gen_off=-1, gen=0) -> 1 acquired, 0 timed out, 2 woken or seq "
                       "moved without acquiring, -1 stale generation; seq_snapshot < 0: "
                       "read it now; the spin runs in full, the timeout bounds the sleep"),
    M(mutex_init, "mutex_init(off): a robust, process-shared, error-checking mutex"),
    MK(mutex_lock, "mutex_lock(off, timeout_ns=-1, spin_ns=0) -> 0 locked, 1 locked and "
                  "the previous owner died (made consistent), 2 timed out; a busy lock is "
                  "retried for spin_ns before sleeping"),
    M(mutex_unlock, "mutex_unlock(off); OSError (EPERM) if not the owner"),
    M(wq_setup, "wq_setup(layout): where workers, works and tasks live, by field name "
                  "(the dict of kproc/_core/layout.py native_layout())"),
    M(work_queue, "work_queue(kbase, wbase, widx1, kgen, wgen, spin_ns, wake) -> 0 not "
                  "queued, 1 queued, 2 queued to an idle worker, -1 slow path"),
    M(work_pop, "work_pop(kbase, prev_idx1, spin_ns) -> next work index + 1, 0 none, "
                "-1 slow path"),
    {NULL, NULL, 0, NULL},
};

static PyObject *Mem_get_size(MemObject *self, void *Py_UNUSED(closure))
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
    .tp_doc = "Mem(buffer): atomics, futexes, completions and robust mutexes at byte "
              "offsets of a writable buffer, kept exported for the object's lifetime.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Mem_init,
    .tp_dealloc = (destructor)Mem_dealloc,
    .tp_methods = Mem_methods,
    .tp_getset = Mem_getset,
};

/* -- module -------------------------------------------------------------- */

static PyObject *mod_monotonic_ns(PyObject *Py_UNUSED(mod), PyObject *Py_UNUSED(arg))
{
    return PyLong_FromLongLong(mono_ns());
}

static PyObject *mod_set_pdeathsig(PyObject *Py_UNUSED(mod), PyObject *arg)
{
    long sig = PyLong_AsLong(arg);
    if (sig == -1 && PyErr_Occurred())
        return NULL;
    if (prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0)
        return errno_error(errno);
    Py_RETURN_NONE;
}

static PyObject *mod_set_comm(PyObject *Py_UNUSED(mod), PyObject *arg)
{
    char name[16] = {0};                /* TASK_COMM_LEN, NUL included */
    char *raw;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &raw, &len) < 0)
        return NULL;
    memcpy(name, raw, len > 15 ? 15 : (size_t)len);
    if (prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0) != 0)
        return errno_error(errno);
    Py_RETURN_NONE;
}

static PyObject *mod_getcpu(PyObject *self, PyObject *noargs)
{
    int cpu;
    (void)self;
    (void)noargs;
    cpu = sched_getcpu();
    if (cpu < 0)
        return errno_error(errno);
    return PyLong_FromLong(cpu);
}

static PyMethodDef module_methods[] = {
    {"monotonic_ns", mod_monotonic_ns, METH_NOARGS,
     "monotonic_ns() -> int: CLOCK_MONOTONIC in ns (the clock of every deadline here)"},
    {"set_pdeathsig", mod_set_pdeathsig, METH_O, "set_pdeathsig(sig): prctl(PR_SET_PDEATHSIG)"},
    {"set_comm", mod_set_comm, METH_O, "set_comm(name: bytes): prctl(PR_SET_NAME), 15 bytes"},
    {"getcpu", mod_getcpu, METH_NOARGS, "getcpu() -> int: sched_getcpu(), the CPU running us"},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(module_doc,
"Atomics, futexes, completions and a robust mutex over shared memory.\n"
"\n"
"Mem(buffer) wraps a writable buffer (an mmap shared by every process of a\n"
"runtime) and offers, at byte offsets checked for bounds and alignment\n"
"(ValueError):\n"
"\n"
"- 32-bit unsigned and 64-bit signed sequentially consistent atomics;\n"
"- shared futexes: futex_wait (absolute CLOCK_MONOTONIC deadline),\n"
"  futex_wake, and wait_change (spin, then futex_wait);\n"
"- completions (16-byte records: done, seq, sleepers, reserved) with the\n"
"  kernel's counting semantics, free of lost wake-ups when the caller passes\n"
"  a seq snapshot read before it checked its own conditions;\n"
"- robust process-shared pthread mutexes (MUTEX_SIZE bytes, 8-aligned).\n"
"\n"
"Timeouts are relative ns (negative or None: none), bound the sleep that\n"
"follows any spin, and are return values, not exceptions.  Blocking calls\n"
"release the GIL and let signal handlers raise (KeyboardInterrupt).\n"
"\n"
"Only syscalls and atomics live here: the policy (what a wake-up means, how\n"
"long to spin, what an errno means) lives in Python.\n"
"HAVE_FUTEX is True so that callers can feature-detect this module.");

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kproc._native",
    .m_doc = module_doc,
    .m_size = -1,
    .m_methods = module_methods,
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
    if (PyModule_AddObject(m, "Mem", (PyObject *)&MemType) < 0) {
        Py_DECREF(&MemType);
        goto fail;
    }
    if (PyModule_AddIntConstant(m, "MUTEX_SIZE", (sizeof(pthread_mutex_t) + 7) & ~(size_t)7) < 0)
        goto fail;
    Py_INCREF(Py_True);
    if (PyModule_AddObject(m, "HAVE_FUTEX", Py_True) < 0) {
        Py_DECREF(Py_True);
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
