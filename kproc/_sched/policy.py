"""Scheduling class of a kthread (kernel: kernel/sched/syscalls.c sched_set_fifo(),
sched_set_fifo_low(), sched_set_normal()).

Kthreads that need to run before normal tasks do not pick an RT priority of
their own: the kernel gives them one of two, ``MAX_RT_PRIO / 2`` (50,
``sched_set_fifo``) or 1 (``sched_set_fifo_low``, just above SCHED_NORMAL),
and ``sched_set_normal(p, nice)`` takes them back to SCHED_NORMAL at a nice
level.  Here each is ``os.sched_setscheduler`` (and ``setpriority`` for the
nice level) on the task's pid.  The kernel's calls cannot fail (the
``_nocheck`` variants skip the permission checks) and WARN_ON_ONCE if they
do; a process may lack CAP_SYS_NICE, so a refusal is a KernelWarning naming
the errno, with nothing changed.  Runs in any process of the runtime.
"""

from __future__ import annotations

import os

from .._core.errors import kernel_warn
from .task import Task, resolve

__all__ = ["sched_set_fifo", "sched_set_fifo_low", "sched_set_normal", "MAX_RT_PRIO"]

MAX_RT_PRIO = 100
MIN_NICE, MAX_NICE = -20, 19


def _pid(task: Task) -> int:
    resolve(task)
    return task.pid


def _set(fn_name: str, pid: int, policy: int, prio: int) -> bool:
    try:
        os.sched_setscheduler(pid, policy, os.sched_param(prio))
    except OSError as exc:
        kernel_warn(f"{fn_name}(): sched_setscheduler of pid {pid} failed: {exc.strerror} "
                    "(CAP_SYS_NICE or an RLIMIT_RTPRIO is needed); nothing changed",
                    stacklevel=4)
        return False
    return True


def sched_set_fifo(task: Task) -> None:
    """sched_set_fifo(): SCHED_FIFO at priority MAX_RT_PRIO / 2 (50).

    Context: any.  KernelWarning (nothing changed) if the system refuses.
    Raises: TypeError if not a Task; KthreadError(ESRCH) for a stale one.
    """
    _set("sched_set_fifo", _pid(task), os.SCHED_FIFO, MAX_RT_PRIO // 2)


def sched_set_fifo_low(task: Task) -> None:
    """sched_set_fifo_low(): SCHED_FIFO at priority 1, just above SCHED_NORMAL.

    Context, Raises: as sched_set_fifo().
    """
    _set("sched_set_fifo_low", _pid(task), os.SCHED_FIFO, 1)


def sched_set_normal(task: Task, nice: int) -> None:
    """sched_set_normal(): SCHED_NORMAL (SCHED_OTHER) at nice level ``nice``.

    Context: any.  KernelWarning (nothing changed) if the system refuses.
    Raises: TypeError (not a Task, nice not an int); ValueError for a nice
    level outside -20..19; KthreadError(ESRCH) for a stale Task.
    """
    if isinstance(nice, bool) or not isinstance(nice, int):
        raise TypeError(f"nice must be an int, not {type(nice).__name__}")
    if not MIN_NICE <= nice <= MAX_NICE:
        raise ValueError(f"nice must be in {MIN_NICE}..{MAX_NICE}, not {nice}")
    pid = _pid(task)
    if not _set("sched_set_normal", pid, os.SCHED_OTHER, 0):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError as exc:
        kernel_warn(f"sched_set_normal(): setpriority of pid {pid} to {nice} failed: "
                    f"{exc.strerror}", stacklevel=3)
