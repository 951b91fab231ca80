/*
 * kproc._native: kthreadd's fork loop (Mem.fork_spares).
 *
 * kthreadd forks its spare children here, several in a row, with no Python
 * run between two forks.  Why: every page kthreadd's interpreter writes
 * after a fork is copied (copy-on-write) in kthreadd and stays a private
 * page of each child forked before the write; a batch of forks with no
 * write in between pays that once per batch, not once per child, and the
 * children of one batch share those pages among themselves.
 *
 * Each child arms PR_SET_PDEATHSIG, leaves at once if kthreadd died before
 * that, closes kthreadd's descriptors, names itself ``kproc-spare``, runs
 * CPython's after-fork handlers (PyOS_AfterFork_Child) and returns to
 * Python, which sets it up and puts it to sleep on its pool word
 * (kproc/_kthread/spares.py) before any creator can claim it: the child's
 * own copy-on-write faults of that set-up stay off the creator's path.
 *
 * Runs in kthreadd (the loop) and, until it returns, in each child.
 */
#include "kproc_native.h"

#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#define CLOSE_MAX 16
#define SPARES_MAX 16                   /* layout.SPARE_POOL */

/* The child's side of a fork, before it returns to Python. */
static void spare_child(pid_t ppid, const int *fds, Py_ssize_t nfds)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != ppid)
        _exit(0);                       /* kthreadd died between fork and prctl */
    for (Py_ssize_t i = 0; i < nfds; i++)
        close(fds[i]);
    prctl(PR_SET_NAME, (unsigned long)"kproc-spare", 0, 0, 0);
}

/*
 * fork_spares(n, close, out) -> int
 *
 * Fork @n children in a row.  In kthreadd: -1, with @out (a writable buffer
 * of 4 bytes per child, zero-filled by the caller) holding an int32 per
 * fork tried, in order: the child's pid, or -errno where a fork failed (the
 * last one tried).  No Python object is allocated between the first fork
 * and the return, so every child forked is reported.  In child i: i.
 * Python's before-fork handlers run once before the batch and its parent
 * handlers once after it; each child runs the child handlers.
 */
static PyObject *Mem_fork_spares(ARGS)
{
    int fds[CLOSE_MAX];
    Py_ssize_t n, nfds;
    Py_buffer out;
    pid_t ppid = getpid();
    NEED_BUFFER();
    if (!nargs_ok(nargs, 3, 3, "fork_spares"))
        return NULL;
    n = PyLong_AsSsize_t(args[0]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (!PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "fork_spares: close must be a tuple");
        return NULL;
    }
    nfds = PyTuple_GET_SIZE(args[1]);
    if (n < 0 || n > SPARES_MAX || nfds > CLOSE_MAX) {
        PyErr_SetString(PyExc_ValueError, "fork_spares: too many children or descriptors");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nfds; i++) {
        long fd = PyLong_AsLong(PyTuple_GET_ITEM(args[1], i));
        if (fd == -1 && PyErr_Occurred())
            return NULL;
        fds[i] = (int)fd;
    }
    if (PyObject_GetBuffer(args[2], &out, PyBUF_WRITABLE) < 0)
        return NULL;
    if (out.len < 4 * n) {
        PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "fork_spares: out holds fewer than 4 bytes a child");
        return NULL;
    }
    PyOS_BeforeFork();
    for (Py_ssize_t i = 0; i < n; i++) {
        pid_t pid = fork();
        int32_t v = pid < 0 ? -(int32_t)errno : (int32_t)pid;
        if (pid == 0) {
            spare_child(ppid, fds, nfds);
            PyBuffer_Release(&out);
            PyOS_AfterFork_Child();
            return PyLong_FromSsize_t(i);      /* a small int: cached, never fails */
        }
        memcpy((char *)out.buf + 4 * i, &v, 4);
        if (pid < 0)
            break;
    }
    PyOS_AfterFork_Parent();
    PyBuffer_Release(&out);
    return PyLong_FromLong(-1);
}

PyMethodDef forkloop_methods[] = {
    M(fork_spares, "fork_spares(n, close, out) -> int: kthreadd's fork loop, n forks in a "
                   "row; -1 in kthreadd (out: an int32 pid or -errno per fork), i in "
                   "child i"),
    {NULL, NULL, 0, NULL},
};
