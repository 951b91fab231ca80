/*
 * kproc._native: kthreadd's fork loop (Mem.fork_children).
 *
 * Every child of kthreadd (a batch of spares, or one kthread for the create
 * list) is forked here, bare and with no Python run between two forks.
 *
 * Bare: CPython's own fork handlers (PyOS_BeforeFork, PyOS_AfterFork_Child,
 * PyOS_AfterFork_Parent) do not run.  They repair what other threads of the
 * parent could have left (locks, thread states; kthreadd has no other
 * thread) and run every os.register_at_fork handler (threading's, logging's,
 * random's reseed...), which in a child of kthreadd write ~0.5-0.7 MiB of
 * pages it shares with kthreadd.  What a kthread can tell of them is done
 * elsewhere: kproc/_kthread/fork.py runs the user's handlers (before and
 * after_in_parent once per batch in kthreadd, after_in_child once per
 * kthread, at its claim) and reseeds random in each child.
 *
 * In a row: every page kthreadd's interpreter writes after a fork is copied
 * in kthreadd and stays a private page of each child forked before the
 * write; a batch with no write in between pays that once per batch, not once
 * per child, and the children of one batch share those pages.
 *
 * Each child arms PR_SET_PDEATHSIG and leaves at once if kthreadd died
 * before that, records its own native thread id (threading.get_native_id),
 * closes kthreadd's descriptors, optionally names itself, and returns to
 * Python.  Only a single-threaded parent may call this.
 *
 * Runs in kthreadd (the loop) and, until it returns, in each child.
 */
#include "kproc_native.h"

#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CLOSE_MAX 16
#define CHILDREN_MAX 16                 /* layout.SPARE_POOL */

/* The child's side of a fork, before it returns to Python. */
static void bare_child(pid_t ppid, const int *fds, Py_ssize_t nfds, const char *comm)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || getppid() != ppid)
        _exit(0);                       /* kthreadd died between fork and prctl */
    PyThreadState_Get()->native_thread_id = (unsigned long)syscall(SYS_gettid);
    for (Py_ssize_t i = 0; i < nfds; i++)
        close(fds[i]);
    if (comm[0])
        prctl(PR_SET_NAME, (unsigned long)comm, 0, 0, 0);
}

/*
 * fork_children(n, close, out, comm) -> int
 *
 * Fork @n children in a row, bare.  In kthreadd: -1, with @out (a writable
 * buffer of 4 bytes per child, zero-filled by the caller) holding an int32
 * per fork tried, in order: the child's pid, or -errno where a fork failed
 * (the last one tried).  No Python object is allocated between the first
 * fork and the return, so every child forked is reported.  In child i: i,
 * with the descriptors of the tuple @close closed and named @comm (bytes, at
 * most 15; empty: keep kthreadd's name).
 */
static PyObject *Mem_fork_children(ARGS)
{
    int fds[CLOSE_MAX];
    char comm[16] = {0};
    Py_ssize_t n, nfds;
    Py_buffer out;
    char *name;
    Py_ssize_t name_len;
    pid_t ppid = getpid();
    NEED_BUFFER();
    if (!nargs_ok(nargs, 4, 4, "fork_children"))
        return NULL;
    n = PyLong_AsSsize_t(args[0]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (!PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "fork_children: close must be a tuple");
        return NULL;
    }
    if (PyBytes_AsStringAndSize(args[3], &name, &name_len) < 0)
        return NULL;
    nfds = PyTuple_GET_SIZE(args[1]);
    if (n < 0 || n > CHILDREN_MAX || nfds > CLOSE_MAX || name_len > 15) {
        PyErr_SetString(PyExc_ValueError,
                        "fork_children: too many children or descriptors, or a long name");
        return NULL;
    }
    memcpy(comm, name, (size_t)name_len);
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
        PyErr_SetString(PyExc_ValueError,
                        "fork_children: out holds fewer than 4 bytes a child");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        pid_t pid = fork();
        int32_t v = pid < 0 ? -(int32_t)errno : (int32_t)pid;
        if (pid == 0) {
            bare_child(ppid, fds, nfds, comm);
            PyBuffer_Release(&out);
            return PyLong_FromSsize_t(i);      /* a small int: cached, never fails */
        }
        memcpy((char *)out.buf + 4 * i, &v, 4);
        if (pid < 0)
            break;
    }
    PyBuffer_Release(&out);
    return PyLong_FromLong(-1);
}

PyMethodDef forkloop_methods[] = {
    M(fork_children, "fork_children(n, close, out, comm) -> int: kthreadd's fork loop, n "
                     "bare forks in a row; -1 in kthreadd (out: an int32 pid or -errno per "
                     "fork), i in child i"),
    {NULL, NULL, 0, NULL},
};
