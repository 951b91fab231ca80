/*
 * kproc._native: cross-process copies (process_vm_readv / process_vm_writev),
 * the syscalls under copy_from_user() / copy_to_user() of a kthread that
 * adopted another process's address space (kproc/_kthread/mm.py).
 *
 * Only the syscalls: the remote range is cut at page boundaries, one iovec per
 * page, so that a partial transfer (which the kernel makes at iovec
 * granularity) stops exactly at the first page that cannot be reached.
 * Return the bytes transferred; a range unreachable from its first byte
 * (EFAULT) or a process that is gone (ESRCH) transfers 0.  Any other failure
 * is OSError(errno) (EPERM: no ptrace right over the process).  The GIL is
 * released around each syscall.
 */
#include "kproc_native.h"

#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

#define VM_IOV_MAX 1024

static Py_ssize_t vm_copy(pid_t pid, char *local, Py_ssize_t len, uintptr_t remote, int write)
{
    static long page;
    Py_ssize_t done = 0;
    if (!page)
        page = sysconf(_SC_PAGESIZE);
    while (done < len) {
        struct iovec liov, riov[VM_IOV_MAX];
        Py_ssize_t want = 0;
        ssize_t got;
        int n = 0, err;
        uintptr_t at = remote + (uintptr_t)done;
        while (n < VM_IOV_MAX && done + want < len) {
            size_t chunk = (size_t)page - (size_t)(at % (uintptr_t)page);
            if ((Py_ssize_t)chunk > len - done - want)
                chunk = (size_t)(len - done - want);
            riov[n].iov_base = (void *)at;
            riov[n].iov_len = chunk;
            at += chunk;
            want += (Py_ssize_t)chunk;
            n++;
        }
        liov.iov_base = local + done;
        liov.iov_len = (size_t)want;
        Py_BEGIN_ALLOW_THREADS
        got = write ? process_vm_writev(pid, &liov, 1, riov, (unsigned long)n, 0)
                    : process_vm_readv(pid, &liov, 1, riov, (unsigned long)n, 0);
        err = errno;
        Py_END_ALLOW_THREADS
        if (got < 0) {
            if (err == EFAULT || err == ESRCH || err == ENOMEM)
                break;                  /* unreachable, or gone: a short copy */
            errno = err;
            return -1;
        }
        done += got;
        if (got < want)
            break;
    }
    return done;
}

static int vm_args(PyObject *const *args, Py_ssize_t nargs, const char *name, pid_t *pid,
                   uintptr_t *addr)
{
    long p;
    unsigned long long a;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s() takes 3 arguments (pid, addr, buffer)", name);
        return 0;
    }
    p = PyLong_AsLong(args[0]);
    if (p == -1 && PyErr_Occurred())
        return 0;
    a = PyLong_AsUnsignedLongLong(args[1]);
    if (a == (unsigned long long)-1 && PyErr_Occurred())
        return 0;
    if (p <= 0 || p > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "pid must be a positive int");
        return 0;
    }
    *pid = (pid_t)p;
    *addr = (uintptr_t)a;
    return 1;
}

/* process_vm_read(pid, addr, buffer) -> bytes read into the writable buffer. */
PyObject *mod_process_vm_read(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    pid_t pid;
    uintptr_t addr;
    Py_ssize_t got;
    if (!vm_args(args, nargs, "process_vm_read", &pid, &addr) ||
        PyObject_GetBuffer(args[2], &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    got = vm_copy(pid, view.buf, view.len, addr, 0);
    PyBuffer_Release(&view);
    if (got < 0)
        return errno_error(errno);
    return PyLong_FromSsize_t(got);
}

/* process_vm_write(pid, addr, data) -> bytes written from the buffer. */
PyObject *mod_process_vm_write(PyObject *Py_UNUSED(mod), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    pid_t pid;
    uintptr_t addr;
    Py_ssize_t got;
    if (!vm_args(args, nargs, "process_vm_write", &pid, &addr) ||
        PyObject_GetBuffer(args[2], &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    got = vm_copy(pid, view.buf, view.len, addr, 1);
    PyBuffer_Release(&view);
    if (got < 0)
        return errno_error(errno);
    return PyLong_FromSsize_t(got);
}
