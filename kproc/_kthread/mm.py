"""Borrowed address spaces (kernel: kthread.c kthread_use_mm(), kthread_unuse_mm();
kernel/fork.c get_task_mm(), mmput(); copy_from_user(), copy_to_user()).

A kernel kthread has no ``mm`` of its own; ``kthread_use_mm(mm)`` makes it
work in a user process's address space, where ``copy_from_user`` and
``copy_to_user`` reach that process's memory (the USB gadget, vhost and
io_uring workers do this).  Here an :class:`Mm` names another process's
address space and the copies are real cross-process copies:
``process_vm_readv`` / ``process_vm_writev`` (``native/vm.c``, the remote
range cut at page boundaries so a copy stops at the first unreachable page),
or the same calls through ctypes, page by page, without the extension.

An :class:`Mm` is picklable: a caller may take one (``get_task_mm()`` of
itself or of any process it may ptrace) and hand it to a kthread.  It names
the process by pid *and* start time (``/proc/PID/stat`` field 22), so a pid
reused by another process is never read or written: as with every handle,
a stale one raises (``KthreadError(ESRCH)``) where it is checked, and a copy
through it copies nothing.  A dead process gives a short copy (0 bytes), a
bad address a short one up to the first unreachable page; neither crashes
nor hangs.  ``mmput()`` drops the handle: using it afterwards raises.

The adopted ``mm`` is per kthread process (the kernel's ``tsk->mm``); the
copies raise a clear error in a kthread that adopted none and outside a
kthread.  Runs in the caller (``get_task_mm``, ``mmput``) and in kthreads.
"""

from __future__ import annotations

import errno
import os

from .._core.errors import KthreadError, kernel_warn
from .._core.native import has, native
from .._sched.schedule import need_current
from .._sched.task import Task

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Mm", "get_task_mm", "mmput", "kthread_use_mm", "kthread_unuse_mm",
           "copy_from_user", "copy_to_user"]

PAGE = os.sysconf("SC_PAGESIZE")
_vm = native if has("process_vm_read") else None
_current: Mm | None = None          # this kthread's adopted address space (tsk->mm)


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (/proc/PID/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[19])


class Mm:
    """Handle on a process's address space (the kernel's ``struct mm_struct``).

    ``pid``: the process.  Picklable; equal when naming the same process.
    """

    __slots__ = ("pid", "_start", "_put")

    def __init__(self, pid: int, start: int) -> None:
        self.pid = pid
        self._start = start
        self._put = False

    def __reduce__(self) -> tuple[type[Mm], tuple[int, int]]:
        return (Mm, (self.pid, self._start))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mm) and (other.pid, other._start) == (self.pid, self._start)

    def __hash__(self) -> int:
        return hash((Mm, self.pid, self._start))

    def __repr__(self) -> str:
        return f"<Mm pid={self.pid}{' (put)' if self._put else ''}>"

    def _same_process(self) -> bool:
        return _start_time(self.pid) == self._start


def _check_mm(mm: object, fn_name: str) -> Mm:
    if not isinstance(mm, Mm):
        raise TypeError(f"{fn_name}(): mm must be a kproc.Mm (from get_task_mm()), "
                        f"not {type(mm).__name__}")
    if mm._put:
        raise KthreadError(errno.ESRCH, f"{fn_name}(): this Mm was given back with mmput()")
    return mm


def get_task_mm(task_or_pid: Task | int) -> Mm:
    """get_task_mm(): a handle on the address space of a kthread or any process.

    @task_or_pid: a Task or a pid (``os.getpid()`` for the caller itself).
    Context: any.  Return: the :class:`Mm`.
    Raises: TypeError; ValueError for a pid <= 0; KthreadError(ESRCH) if the
    process does not exist (the kernel returns NULL for a task without mm).
    """
    if isinstance(task_or_pid, Task):
        pid = task_or_pid.pid
    elif isinstance(task_or_pid, int) and not isinstance(task_or_pid, bool):
        pid = task_or_pid
        if pid <= 0:
            raise ValueError(f"pid must be > 0, not {pid}")
    else:
        raise TypeError(f"task_or_pid must be a kproc.Task or a pid, not "
                        f"{type(task_or_pid).__name__}")
    start = _start_time(pid)
    if start is None:
        raise KthreadError(errno.ESRCH, f"get_task_mm(): no process {pid}")
    return Mm(pid, start)


def mmput(mm: Mm) -> None:
    """mmput(): give the handle back; using it afterwards raises.

    Context: any.  KernelWarning if a kthread of this process still uses it.
    """
    _check_mm(mm, "mmput")
    if _current is not None and _current == mm:
        kernel_warn("mmput() of the mm this kthread still uses (kthread_unuse_mm() first)")
    mm._put = True


def kthread_use_mm(mm: Mm) -> None:
    """kthread_use_mm(): make the calling kthread work in ``mm``'s address space.

    Context: kthread.  KernelWarning if it already uses one (replaced, as the
    kernel's WARN_ON_ONCE(tsk->mm) goes on).
    Raises: RuntimeError outside a kthread; TypeError; KthreadError(ESRCH)
    for a put or stale Mm (its process is gone, or its pid now names another).
    """
    global _current
    need_current("kthread_use_mm")
    _check_mm(mm, "kthread_use_mm")
    if not mm._same_process():
        raise KthreadError(errno.ESRCH, f"kthread_use_mm(): process {mm.pid} of this Mm "
                           "is gone (or its pid was reused)")
    if _current is not None:
        kernel_warn("kthread_use_mm() while already using an mm: replaced")
    _current = mm


def kthread_unuse_mm(mm: Mm) -> None:
    """kthread_unuse_mm(): stop using ``mm``.

    Context: kthread.  KernelWarning (nothing done) if it is not the mm in use.
    Raises: RuntimeError outside a kthread; TypeError.
    """
    global _current
    need_current("kthread_unuse_mm")
    if not isinstance(mm, Mm):
        raise TypeError(f"kthread_unuse_mm(): mm must be a kproc.Mm, not {type(mm).__name__}")
    if _current is None or _current != mm:
        kernel_warn("kthread_unuse_mm() of an mm this kthread does not use")
        return
    _current = None


def _adopted(fn_name: str) -> Mm:
    need_current(fn_name)
    if _current is None:
        raise RuntimeError(f"{fn_name}() needs a user address space: call "
                           "kthread_use_mm(get_task_mm(...)) first (a kthread has none "
                           "of its own)")
    return _current


def _check_addr(addr: object, fn_name: str) -> int:
    if isinstance(addr, bool) or not isinstance(addr, int):
        raise TypeError(f"{fn_name}(): addr must be an int, not {type(addr).__name__}")
    if addr < 0:
        raise ValueError(f"{fn_name}(): addr must be >= 0, not {addr}")
    return addr


def copy_from_user(addr: int, n: int) -> bytes:
    """copy_from_user(): read ``n`` bytes at ``addr`` of the adopted address space.

    Context: kthread, between kthread_use_mm() and kthread_unuse_mm().
    Return: the bytes that could be read: shorter than ``n`` from the first
    page that is not mapped readable, empty if the process is gone.
    Raises: RuntimeError outside a kthread or without kthread_use_mm();
    TypeError/ValueError for a bad address or length; PermissionError when
    the kthread may not ptrace the process.
    """
    mm = _adopted("copy_from_user")
    _check_addr(addr, "copy_from_user")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"copy_from_user(): n must be an int >= 0, not {n!r}")
    buf = bytearray(n)
    if n == 0 or not mm._same_process():
        return b""
    return bytes(buf[:_transfer(mm.pid, addr, memoryview(buf), False)])


def copy_to_user(addr: int, data: bytes | bytearray | memoryview) -> int:
    """copy_to_user(): write ``data`` at ``addr`` of the adopted address space.

    Context: kthread, between kthread_use_mm() and kthread_unuse_mm().
    Return: the number of bytes NOT copied (0 on success, as the kernel's):
    the rest from the first page that is not mapped writable; all of them if
    the process is gone.
    Raises: as copy_from_user(); TypeError if ``data`` is not bytes-like.
    """
    mm = _adopted("copy_to_user")
    _check_addr(addr, "copy_to_user")
    try:
        view = memoryview(data).cast("B")
    except TypeError:
        raise TypeError(f"copy_to_user(): data must be bytes-like, not "
                        f"{type(data).__name__}") from None
    if not view.nbytes or not mm._same_process():
        return view.nbytes
    return view.nbytes - _transfer(mm.pid, addr, view, True)


def _transfer(pid: int, addr: int, view: memoryview, write: bool) -> int:
    """Copy between ``view`` and ``pid``'s memory at ``addr``; return bytes copied."""
    try:
        if _vm is not None:
            if write:
                return int(_vm.process_vm_write(pid, addr, view))
            return int(_vm.process_vm_read(pid, addr, view))
        return _proc_mem(pid, addr, view, write)
    except PermissionError as exc:
        raise PermissionError(exc.errno, f"cannot reach the memory of process {pid}: "
                              "no ptrace right over it (same user, and see "
                              "/proc/sys/kernel/yama/ptrace_scope)") from None


_libc_vm: tuple[Any, Any, Any] | None = None


def _libc_calls() -> tuple[Any, Any, Any]:
    """libc's process_vm_readv and process_vm_writev through ctypes, and the iovec
    type (built on the first copy of the pure path)."""
    global _libc_vm
    import ctypes       # the pure-Python path only: kthreadd does not load ctypes
    if _libc_vm is None:
        class Iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        libc = ctypes.CDLL(None, use_errno=True)
        readv, writev = libc.process_vm_readv, libc.process_vm_writev
        for call in (readv, writev):
            call.restype = ctypes.c_ssize_t
            call.argtypes = (ctypes.c_int, ctypes.POINTER(Iovec), ctypes.c_ulong,
                             ctypes.POINTER(Iovec), ctypes.c_ulong, ctypes.c_ulong)
        _libc_vm = (readv, writev, Iovec)
    return _libc_vm


def _proc_mem(pid: int, addr: int, view: memoryview, write: bool) -> int:
    """The pure-Python path: the same system calls through ctypes, one page at a time.

    Not ``/proc/PID/mem``: that file writes through a read-only mapping and
    reads a ``PROT_NONE`` page (it forces access, as a debugger does), where
    ``copy_from_user`` would fault; ``process_vm_readv`` honours protections.
    """
    import ctypes       # loaded by _libc_calls
    readv, writev, iovec = _libc_calls()
    n = view.nbytes
    local = (ctypes.c_char * n).from_buffer_copy(view) if write or view.readonly \
        else (ctypes.c_char * n).from_buffer(view)
    base = ctypes.addressof(local)
    done = 0
    while done < n:
        chunk = min(PAGE - (addr + done) % PAGE, n - done)
        liov, riov = iovec(base + done, chunk), iovec(addr + done, chunk)
        got = (writev if write else readv)(pid, ctypes.byref(liov), 1, ctypes.byref(riov), 1, 0)
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EFAULT, errno.ESRCH, errno.ENOMEM):
                break
            raise OSError(err, os.strerror(err))
        done += got
        if got < chunk:
            break
    return done
