/*
 * kproc._native: module init, the Mem method table, clock and prctl helpers.
 *
 * Each file of the extension keeps the methods of its mechanism in its own
 * table; the Mem type's table is put together here, once, at import.  The
 * module functions are thin wrappers of one system call each.  Runs in every
 * process that imports kproc._native.
 */
#include "kproc_native.h"

#include <sched.h>
#include <string.h>
#include <sys/prctl.h>

#define MEM_METHODS_MAX 48

static PyMethodDef mem_methods[MEM_METHODS_MAX + 1];    /* NULL-terminated */

/*
 * Mem's methods, from every mechanism's table, in a stable order.
 * Return 0, or -1 with SystemError set.
 */
static int assemble_methods(void)
{
    PyMethodDef *const tables[] = {atomic_methods, futex_methods, mutex_methods,
                                   layout_methods, worklist_methods, wl_methods,
                                   swait_methods, pool_methods};
    size_t n = 0;
    for (size_t t = 0; t < sizeof(tables) / sizeof(tables[0]); t++) {
        for (PyMethodDef *d = tables[t]; d->ml_name; d++) {
            if (n == MEM_METHODS_MAX) {
                PyErr_SetString(PyExc_SystemError, "kproc._native: raise MEM_METHODS_MAX");
                return -1;
            }
            mem_methods[n++] = *d;
        }
    }
    MemType.tp_methods = mem_methods;
    return 0;
}

/* -- module functions ------------------------------------------------------- */

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
    {"fork_bare", (PyCFunction)(void (*)(void))kp_fork_bare, METH_FASTCALL,
     "fork_bare(pdeathsig, close_fds) -> pid: fork(2) without Python's fork handlers "
     "(fork.c)"},
    {"process_vm_read", (PyCFunction)(void (*)(void))mod_process_vm_read, METH_FASTCALL,
     "process_vm_read(pid, addr, buffer) -> bytes read (short where unreachable or gone)"},
    {"process_vm_write", (PyCFunction)(void (*)(void))mod_process_vm_write, METH_FASTCALL,
     "process_vm_write(pid, addr, data) -> bytes written (short where unreachable or gone)"},
    {"pool_layout", mod_pool_layout, METH_NOARGS,
     "pool_layout() -> {name: offset}: the pool slot layout native/pool.c assumes"},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(module_doc,
"Atomics, futexes, completions, a robust mutex and work lists over shared memory.\n"
"\n"
"Mem(buffer) wraps a writable buffer (an mmap shared by every process of a\n"
"runtime) and offers, at byte offsets checked for bounds and alignment\n"
"(ValueError):\n"
"\n"
"- 32-bit unsigned and 64-bit signed sequentially consistent atomics;\n"
"- shared futexes: futex_wait (absolute CLOCK_MONOTONIC deadline),\n"
"  futex_wake, and wait_change (spin, then futex_wait);\n"
"- completions (32-byte records: done, seq, sleepers, and the lock, head and\n"
"  tail of their FIFO queue of sleeping waiters) with the\n"
"  kernel's counting semantics, free of lost wake-ups when the caller passes\n"
"  a seq snapshot read before it checked its own conditions;\n"
"- robust process-shared pthread mutexes (MUTEX_SIZE bytes, 8-aligned);\n"
"- the kthread_worker's lists, by the field names of native_layout():\n"
"  wl_setup and the wl_* primitives (worker lock held), wq_setup and the\n"
"  work_queue / work_pop fast paths.\n"
"\n"
"Timeouts are relative ns (negative or None: none), bound the sleep that\n"
"follows any spin, and are return values, not exceptions.  Blocking calls\n"
"release the GIL and let signal handlers raise (KeyboardInterrupt).\n"
"\n"
"Only syscalls and atomics live here, but for the work lists: the policy\n"
"(what a wake-up means, how long to spin, what an errno means) lives in\n"
"Python.\n"
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
    if (assemble_methods() < 0 || PyType_Ready(&MemType) < 0 ||
        PyType_Ready(&MutexGuardType) < 0)
        return NULL;
    m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    Py_INCREF(&MemType);
    if (PyModule_AddObject(m, "Mem", (PyObject *)&MemType) < 0) {
        Py_DECREF(&MemType);
        goto fail;
    }
    Py_INCREF(&MutexGuardType);
    if (PyModule_AddObject(m, "MutexGuard", (PyObject *)&MutexGuardType) < 0) {
        Py_DECREF(&MutexGuardType);
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
