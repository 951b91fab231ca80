"""Process-level system calls Python's os module lacks (prctl).

Through ``kproc._native`` when it is built (feature-detected), else through
ctypes.  The native path matters in kthreads: ctypes' first calls in a fresh
fork dirty ~0.3 MiB (libffi and ctypes state) and cost ~0.3 ms.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading

from .native import has, native

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from collections.abc import Callable, Iterable

__all__ = ["set_comm", "set_pdeathsig", "reset_scheduling", "set_timerslack", "TASK_COMM_LEN",
           "signal_mask", "block_async_signals", "restore_signal_mask", "ASYNC_SIGNALS"]

TASK_COMM_LEN = 16
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_TIMERSLACK = 29

_native = native if has("set_comm") else None

_libc: ctypes.CDLL | None = None


def _prctl(option: int, arg2: int) -> None:
    global _libc
    import ctypes       # the pure-Python path only (kthreadd loads it there, at set_comm)
    if _libc is None:
        # The process's own symbols (libc's among them), not ctypes.util.find_library:
        # that pulls subprocess, tempfile, shutil, bz2 and lzma into kthreadd.
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                                ctypes.c_ulong, ctypes.c_ulong]
    if _libc.prctl(option, arg2, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def comm_of(name: str) -> str:
    """The kernel's comm for ``name``: at most TASK_COMM_LEN-1 bytes of UTF-8."""
    raw = name.encode("utf-8", "replace")[:TASK_COMM_LEN - 1]
    return raw.decode("utf-8", "ignore")


def set_comm(name: str) -> None:
    """Set this process's comm (what ps and /proc/PID/comm show)."""
    if _native is not None:
        _native.set_comm(comm_of(name).encode("utf-8"))
        return
    import ctypes       # the pure-Python path only
    buf = ctypes.create_string_buffer(comm_of(name).encode("utf-8"), TASK_COMM_LEN)
    _prctl(PR_SET_NAME, ctypes.addressof(buf))


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies."""
    if _native is not None:
        _native.set_pdeathsig(int(sig))
        return
    _prctl(PR_SET_PDEATHSIG, int(sig))


def reset_scheduling() -> None:
    """SCHED_OTHER, priority 0 (kernel: sched_setscheduler_nocheck(SCHED_NORMAL))."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pass


def set_timerslack(ns: int) -> None:
    """Set this process's timer slack (how late the kernel may fire its timers).

    Through ``/proc/self/timerslack_ns`` (no ctypes in a fresh fork), else prctl.
    """
    try:
        with open("/proc/self/timerslack_ns", "w") as f:
            f.write(str(int(ns)))
        return
    except OSError:
        pass
    _prctl(PR_SET_TIMERSLACK, int(ns))


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie (a killed child its
    parent has not reaped yet counts as dead).  Context: any."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


# Signals a Python handler may turn into an exception (KeyboardInterrupt...):
# all but those that must stay deliverable.
ASYNC_SIGNALS = frozenset(signal.valid_signals()) - {
    signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE,
    signal.SIGILL, signal.SIGTRAP, signal.SIGSYS, signal.SIGABRT}

# signal.pthread_sigmask() turns the old mask it returns into Signals members,
# an enum lookup per signal: ~25 us for a mask of all ASYNC_SIGNALS, returned
# by every restore below (each kthread_create() restores twice).  The C
# function it wraps (the _signal module's, always there in CPython) returns
# the same set as plain ints in ~1 us.
_sigmask: Callable[[int, Iterable[int]], set[int]] = getattr(
    importlib.import_module("_signal"), "pthread_sigmask", signal.pthread_sigmask)


def signal_mask() -> set[int] | None:
    """This thread's signal mask, to restore later; None outside the main thread
    (Python runs signal handlers only in the main thread: nothing to defer).

    Read first, outside any try, so that a Ctrl-C there changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return _sigmask(signal.SIG_BLOCK, ())


def block_async_signals(mask: set[int] | None) -> None:
    """Defer asynchronous signals in this (main) thread until restore_signal_mask().

    A signal that comes meanwhile stays pending in the kernel; a handler
    already due runs (and may raise) here.  No-op when ``mask`` is None.
    """
    if mask is not None:
        _sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)


def restore_signal_mask(mask: set[int] | None) -> None:
    """Restore ``mask``: the handlers of signals deferred meanwhile run (and may
    raise) here.  No-op when ``mask`` is None."""
    if mask is not None:
        _sigmask(signal.SIG_SETMASK, mask)
