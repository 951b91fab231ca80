/*
 * kproc._native: fork(2) without Python's fork handlers, for kthreadd's children.
 *
 * os.fork() runs, in the child, PyOS_AfterFork_Child(): the interpreter's
 * re-initialisation and every os.register_at_fork(after_in_child=) handler
 * (threading's, logging's, random's reseed, kproc's own...).  In a child of
 * kthreadd those handlers write to ~0.6-0.7 MiB of pages it shares with
 * kthreadd (measured: benchmarks/dirty.py, docs/design.md "Memory of a
 * kthread"), which is most of what a spare costs.  fork_bare() forks with
 * none of it; the child arms PR_SET_PDEATHSIG and checks its parent before
 * anything else (a kthreadd killed between the fork and the prctl leaves no
 * orphan), and runs PyOS_AfterFork_Child() later (after_fork_child()), once
 * it is claimed, before any Python of its own runs.  Only a single-threaded
 * parent may use it (kthreadd is one: no lock can be held by a thread that
 * the child lacks).  Runs in kthreadd and, for after_fork_child, the child.
 */
#include "kproc_native.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* fork_bare(pdeathsig, close_fds) -> pid in the parent, 0 in the child. */
PyObject *kp_fork_bare(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs)
{
    long sig, fds[8];
    Py_ssize_t nfds, i;
    pid_t parent, pid;
    if (nargs != 2 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "fork_bare(pdeathsig, close_fds: tuple)");
        return NULL;
    }
    sig = PyLong_AsLong(args[0]);
    if (sig == -1 && PyErr_Occurred())
        return NULL;
    nfds = PyTuple_GET_SIZE(args[1]);
    if (nfds > 8) {
        PyErr_SetString(PyExc_ValueError, "fork_bare: at most 8 descriptors to close");
        return NULL;
    }
    for (i = 0; i < nfds; i++) {
        fds[i] = PyLong_AsLong(PyTuple_GET_ITEM(args[1], i));
        if (fds[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    parent = getpid();
    pid = fork();
    if (pid < 0)
        return errno_error(errno);
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0 || getppid() != parent)
            _exit(0);               /* the parent died already: nobody to serve */
        PyThreadState_Get()->native_thread_id = (unsigned long)syscall(SYS_gettid);
        for (i = 0; i < nfds; i++)
            close((int)fds[i]);
    }
    return PyLong_FromLong((long)pid);
}
