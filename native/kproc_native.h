/*
 * kproc._native: what the files of the extension share.
 *
 * The rule: only system calls and atomic instructions live here.  Every
 * policy (what a wake-up means, how long to spin, when to give up, what an
 * errno means) is decided in Python; see kproc/_core/wait.py and
 * kproc/_sched/completion.py.
 *
 * The one exception is the kthread_worker's lists (worklist.c): linking a
 * work before a node, unlinking it, popping the head of the work list and
 * firing the expired timers run in C, always under the worker's lock, held by
 * the caller.  They are the single implementation of those list operations:
 * the C fast paths (work_queue, work_pop) and Python's slow path (the checked
 * wl_* methods of wl_methods.c) share them, and kproc/_core/pymem.py supplies
 * the same wl_* API where the extension is not built.  What C knows of the
 * records it learns once, by field name, from kproc/_core/layout.py's
 * native_layout() (layout.c); no offset is typed twice.
 *
 * The second exception is the pool's call slots (pool.c): placing a call,
 * reaping an outcome, and a worker's claim-run-publish of a call run in C
 * (the pool's memory is its own memfd, not the arena; its layout is written
 * in pool.c and checked against kproc/_pool/channel.py's records at import,
 * through pool_layout()).  Everything they do not handle (side channel,
 * uncached functions, exceptions) they hand back to Python, which keeps the
 * whole path too, for KPROC_NATIVE=0.
 *
 * Files, one mechanism each: mem.c (the Mem object, bounds-checked
 * addressing, 32/64-bit atomics), args.c (argument parsing), futex.c
 * (futexes, spin-then-wait, completions), swait.c (the FIFO queue of a
 * completion's sleeping waiters), vm.c (process_vm_readv/writev), mutex.c (the robust
 * process-shared mutex), pool.c (the pool's call slots), forkloop.c (kthreadd's bare fork loop), layout.c (the record layout,
 * by name), worklist.c (the list
 * primitives and the kthread_work fast paths on them), wl_methods.c (the
 * primitives as methods, for Python's slow path), module.c (module init, the
 * method table, clock and prctl helpers).
 *
 * Everything runs in the calling process and thread, whichever it is; no file
 * keeps state outside the Mem object it is called on (but for the method
 * table module.c puts together at import).
 */
#ifndef KPROC_NATIVE_H
#define KPROC_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#define DONE_ALL UINT32_MAX             /* completion.done after complete_all */
#define SPIN_CLOCK_EVERY 64             /* spin iterations between clock reads */
#define NO_DEADLINE (-1)

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() do { } while (0)
#endif

/* Every atomic is sequentially consistent. */
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

/* One list of a worker: its head/tail links and counter in WORKER, WORK.where of its nodes. */
struct wl_list {
    Py_ssize_t head, tail, count;
    uint32_t where;
};

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;                         /* NULL until __init__ succeeded */
    Py_ssize_t size;
    int wl_set;                         /* the LIST fields are known (wl_setup) */
    int wq_set;                         /* the QUEUE fields too (wq_setup) */
    Py_ssize_t wq[WQ_NFIELDS];
    struct wl_list works, timers;       /* work_list and delayed_work_list, from wq[] */
} MemObject;

/*
 * A completion record, 32 bytes, 8-aligned (kproc/_core/layout.py COMPLETION).
 * done/seq/sleepers serve waiters that are not queued (a spin, the legacy
 * sleep on seq); lock/head/tail are the queue of sleeping waiters (swait.c),
 * which complete() serves first in, first out.
 */
struct completion {
    uint32_t done;                      /* count; DONE_ALL after complete_all */
    uint32_t seq;                       /* the futex word, bumped by every complete */
    uint32_t sleepers;                  /* waiters inside (or about to enter) FUTEX_WAIT */
    uint32_t lock;                      /* pid holding the queue, 0 = free */
    uint32_t head, tail;                /* queued swait nodes (arena offsets), 0 = none */
    uint32_t granted;                   /* counts handed to queued waiters, not yet taken */
    uint32_t reserved;
};

#define GRANT_COUNT 1                   /* swait_node.granted: one count, in c->granted */
#define GRANT_ALL 2                     /* swait_node.granted: from complete_all */

/* try_wait_for_completion(): take one count, or pass if complete_all. */
static inline int completion_try(struct completion *c)
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

/* A queued waiter, 32 bytes, 8-aligned (layout.py SWAIT): one per sleeping thread. */
struct swait_node {
    int32_t owner;                      /* pid of the thread's process, 0 = free */
    uint32_t wake;                      /* the waiter's futex word, bumped at every wake */
    uint32_t granted;                   /* GRANT_COUNT / GRANT_ALL until taken, 0 */
    uint32_t next, prev;                /* queue links (arena offsets), 0 = none */
    uint32_t pad;
    uint64_t comp;                      /* the completion it is queued on, 0 = none */
};

/* Method signatures (METH_FASTCALL, with METH_KEYWORDS for KWARGS). */
#define ARGS MemObject *self, PyObject *const *args, Py_ssize_t nargs
#define KWARGS ARGS, PyObject *kwnames

/*
 * Calls of any Mem that sleep or spin with the GIL released: Mem.release()
 * refuses while one is in flight, so memory is never unmapped under a call.
 * Changed with the GIL held only.
 */
extern long kproc_gil_released;
#define KP_BEGIN_ALLOW_THREADS { kproc_gil_released++; Py_BEGIN_ALLOW_THREADS
#define KP_END_ALLOW_THREADS Py_END_ALLOW_THREADS kproc_gil_released--; }

/* Every method but __init__ needs the buffer. */
#define NEED_BUFFER()                                                         \
    do {                                                                      \
        if (!self->base) {                                                    \
            PyErr_SetString(PyExc_ValueError, "Mem was not initialised or was released");     \
            return NULL;                                                      \
        }                                                                     \
    } while (0)

/* Method table entries: positional-only (the hot atomics), and those taking keywords too. */
#define M(NAME, DOC) {#NAME, (PyCFunction)(void (*)(void))Mem_##NAME, METH_FASTCALL, DOC}
#define MK(NAME, DOC) {#NAME, (PyCFunction)(void (*)(void))Mem_##NAME, \
                       METH_FASTCALL | METH_KEYWORDS, DOC}

/* -- clock ---------------------------------------------------------------- */

static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void ns_to_ts(int64_t ns, struct timespec *ts)
{
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}

static inline PyObject *errno_error(int err)
{
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* -- arguments (args.c; the checks inline: they are on every hot path) ------ */

int nargs_error(Py_ssize_t nargs, Py_ssize_t lo, Py_ssize_t hi, const char *name);

/* 1 if @lo <= @nargs <= @hi, else 0 with TypeError set. */
static inline int nargs_ok(Py_ssize_t nargs, Py_ssize_t lo, Py_ssize_t hi, const char *name)
{
    return (nargs >= lo && nargs <= hi) || nargs_error(nargs, lo, hi, name);
}

int parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               const char *fname, const char *const names[], Py_ssize_t lo,
               Py_ssize_t hi, PyObject **out);
int get_deadline(PyObject *timeout_obj, int64_t *deadline);

/* Any int: taken mod 2**32 (so fetch_add32(off, -1) decrements). 0: exception set. */
static inline int get_u32(PyObject *o, uint32_t *out)
{
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return 0;
    *out = (uint32_t)v;
    return 1;
}

static inline int get_i64(PyObject *o, int64_t *out)
{
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred())
        return 0;
    *out = v;
    return 1;
}

/* -- the Mem type, its method tables, addressing (mem.c) ----------------------- */

extern PyTypeObject MemType;
extern PyTypeObject MutexGuardType;
extern PyMethodDef atomic_methods[], futex_methods[], mutex_methods[], layout_methods[],
    worklist_methods[], wl_methods[], swait_methods[], pool_methods[],
    forkloop_methods[];

void *at_len(MemObject *m, PyObject *arg, Py_ssize_t len, int align);

static inline void *at(MemObject *m, PyObject *arg, int width)
{
    return at_len(m, arg, width, width);
}

/* -- futexes and mutexes (futex.c, mutex.c) --------------------------------- */

int futex_wake_n(uint32_t *word, int n);
/* Cross-process copies (vm.c): module functions. */
PyObject *mod_process_vm_read(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);
PyObject *mod_process_vm_write(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);
/* The pool's slot layout as pool.c assumes it (a module function). */
PyObject *mod_pool_layout(PyObject *mod, PyObject *noargs);
/* The queue of sleeping waiters (swait.c): after done moved, hand counts to it. */
void swait_settle(MemObject *m, struct completion *c);
int swait_settle_wake(MemObject *m, struct completion *c, PyObject *wake);
int swait_take_grant(struct completion *c, struct swait_node *n);
int mutex_trylock_spin(pthread_mutex_t *mx, int64_t spin_ns);
int mutex_acquired(pthread_mutex_t *mx, int rc);
int mutex_held(pthread_mutex_t *mx, const char *fname);

/* -- the work lists (worklist.c; the worker lock held, see there) ------------ */

/* A layout field, in a method of a set-up Mem (layout.c); a u32 at a buffer offset. */
#define WQ(f) (self->wq[WQ_##f])
#define U32(off) ((uint32_t *)(self->base + (off)))

/* Offset of work slot @idx1 (index + 1), or -1 if out of the table. */
static inline Py_ssize_t wq_work(MemObject *self, uint32_t idx1)
{
    if (idx1 == 0 || idx1 > (uint32_t)WQ(MAX_WORKS))
        return -1;
    return WQ(WORKS) + (Py_ssize_t)(idx1 - 1) * WQ(WORK_STRIDE);
}

PyObject *wl_corrupt(Py_ssize_t kbase);
int wl_link_before(MemObject *self, Py_ssize_t kbase, const struct wl_list *l, uint32_t idx,
                   Py_ssize_t off, uint32_t before, int counted);
int wl_unlink(MemObject *self, Py_ssize_t kbase, const struct wl_list *l, Py_ssize_t off,
              int counted);
int wl_pop_head(MemObject *self, Py_ssize_t kbase, const struct wl_list *l, Py_ssize_t hoff,
                int counted);
int64_t wl_fire_timers(MemObject *self, Py_ssize_t kbase, int64_t now, uint32_t *fired);

#endif /* KPROC_NATIVE_H */
