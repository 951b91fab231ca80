"""The freezer for kthreads (kernel: kernel/freezer.c, freeze_kernel_threads()).

``freeze_kthreads()`` is the kernel's ``pm_nosig_freezing``: it raises the
arena-wide ``freezing`` flag, wakes every freezable kthread (KF_FREEZABLE, set
by ``set_freezable()`` or a KTW_FREEZABLE worker) so that it reaches its next
``try_to_freeze()`` / ``kthread_freezable_should_stop()``, and waits until each
one sleeps in TASK_FROZEN.  Kthreads that did not call ``set_freezable()`` run
on.  Frozen kthreads sleep on one futex word, ``freeze_seq``; ``thaw_kthreads()``
clears the flag and wakes them all.

Choices where the kernel is not the model:

* Kthreads that cannot run code -- created and never woken, parked -- count
  as frozen (they cannot do anything until woken or unparked, and are
  re-examined if that happens while freezing).
* On timeout ``freeze_kthreads()`` thaws what it froze and raises, naming the
  kthreads that did not freeze (the kernel's try_to_freeze_tasks() prints them
  and thaws too).
* ``kthread_stop()`` of a frozen kthread: one frozen in
  ``kthread_freezable_should_stop()`` leaves the refrigerator and sees
  should_stop (the kernel's ``check_kthr_stop``); one frozen in
  ``try_to_freeze()`` stays frozen until thawed, and the stop waits (as in
  the kernel).
"""

from __future__ import annotations

import errno
import math
import time

from ._core import layout as L
from ._core.errors import KthreadError
from ._core.hung_task import HungTask, task_text
from ._core.runtime import TICK_NS, Runtime, get_runtime
from ._sched.schedule import need_current, wake_up_state
from ._core.blobs import read_name
from ._sched.task import TaskState, TASK_NORMAL

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["freeze_kthreads", "thaw_kthreads", "set_freezable", "freezing",
           "try_to_freeze", "kthread_freezable_should_stop", "freezing_at",
           "try_to_freeze_at", "set_freezable_at", "kick_frozen"]

H = L.HEADER
T = L.TASK
FROZEN = TaskState.TASK_FROZEN
RUNNING = TaskState.TASK_RUNNING
DEFAULT_FREEZE_TIMEOUT = 20.0     # the kernel's freeze_timeout_msecs
POLL_S = 0.001


def freezing_at(rt: Runtime, base: int) -> bool:
    """freezing(p) for the task at ``base``: freezing in force and the task freezable."""
    mem = rt.mem
    return bool(mem.load32(H.freezing)) and \
        mem.load32(base + T.flags) & (L.KF_FREEZABLE | L.KF_EXITING) == L.KF_FREEZABLE


def refrigerator(rt: Runtime, base: int, check_stop: bool) -> bool:
    """__refrigerator(): sleep in TASK_FROZEN while freezing.  Return: True if frozen."""
    mem, waits = rt.mem, rt.waits
    frozen = False
    while True:
        seq = mem.load32(H.freeze_seq)
        if not freezing_at(rt, base) or \
                (check_stop and mem.load32(base + T.flags) & L.KF_SHOULD_STOP):
            break
        if not frozen:
            mem.store32(base + T.state, FROZEN)
            frozen = True
        waits.wait(H.freeze_seq, seq, TICK_NS, spin=False)
        rt.check_alive()
    mem.store32(base + T.state, RUNNING)
    return frozen


def try_to_freeze_at(rt: Runtime, base: int, check_stop: bool = False) -> bool:
    """try_to_freeze() for the kthread at ``base`` (the calling one)."""
    if not freezing_at(rt, base):
        return False
    return refrigerator(rt, base, check_stop)


def set_freezable_at(rt: Runtime, base: int) -> None:
    rt.mem.fetch_or32(base + T.flags, L.KF_FREEZABLE)


def _me(fn_name: str) -> tuple[Runtime, int]:
    return need_current(fn_name)


def set_freezable() -> bool:
    """set_freezable - make the calling kthread freezable, and freeze now if freezing.

    Context: kthread.  Return: True if it was frozen (try_to_freeze()).
    Raises: RuntimeError outside a kthread.
    """
    rt, base = _me("set_freezable")
    set_freezable_at(rt, base)
    return try_to_freeze_at(rt, base)


def freezing() -> bool:
    """freezing(current) - should the calling kthread freeze now?

    Context: kthread.  Return: bool.  Raises: RuntimeError outside a kthread.
    """
    rt, base = _me("freezing")
    return freezing_at(rt, base)


def try_to_freeze() -> bool:
    """try_to_freeze - enter the refrigerator if freezing; return once thawed.

    Context: kthread; may block until thaw_kthreads().
    Return: True if the kthread was frozen, False if there was nothing to do.
    Raises: RuntimeError outside a kthread.
    """
    rt, base = _me("try_to_freeze")
    return try_to_freeze_at(rt, base)


def kthread_freezable_should_stop() -> tuple[bool, bool]:
    """kthread_freezable_should_stop - try_to_freeze() plus kthread_should_stop().

    A kthread_stop() ends the freeze early.  Context: kthread; may block.
    Return: ``(should_stop, was_frozen)`` (the kernel returns should_stop and
    stores was_frozen through a pointer).  Raises: RuntimeError outside a kthread.
    """
    rt, base = _me("kthread_freezable_should_stop")
    frozen = try_to_freeze_at(rt, base, check_stop=True)
    return bool(rt.mem.load32(base + T.flags) & L.KF_SHOULD_STOP), frozen


def _freezable_live(rt: Runtime) -> Iterator[tuple[int, int]]:
    """(offset, idx) of every live freezable kthread."""
    mem, arena = rt.mem, rt.arena
    for idx in range(arena.params.max_kthreads):
        base = arena.task_off(idx)
        if mem.load32(base + T.slot) != L.SLOT_LIVE:
            continue
        if mem.load32(base + T.flags) & (L.KF_FREEZABLE | L.KF_EXITING) == L.KF_FREEZABLE:
            yield base, idx


def _not_frozen(rt: Runtime) -> list[tuple[int, int]]:
    mem = rt.mem
    todo: list[tuple[int, int]] = []
    for base, idx in _freezable_live(rt):
        state = mem.load32(base + T.state)
        flags = mem.load32(base + T.flags)
        never_woken = not flags & L.KF_STARTED and state != RUNNING
        if state == FROZEN or state == TaskState.TASK_PARKED or never_woken:
            continue
        todo.append((base, idx))
        wake_up_state(rt, base, TASK_NORMAL)     # freeze_task(): let it see freezing
    return todo


def freeze_kthreads(timeout: float = DEFAULT_FREEZE_TIMEOUT) -> None:
    """freeze_kthreads - freeze every freezable kthread (freeze_kernel_threads()).

    @timeout: seconds to wait for all of them.
    Context: any process of the runtime but a freezable kthread; blocks.
    Return: None once every freezable kthread is frozen (or cannot run).
    Raises: TypeError/ValueError for a bad timeout; KthreadError(EBUSY) naming
    the kthreads that did not freeze in time (everything is thawed again first).
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, not {timeout}")
    rt = get_runtime()
    if rt.self_base is not None and rt.mem.load32(rt.self_base + T.flags) & L.KF_FREEZABLE:
        raise RuntimeError("freeze_kthreads() called from a freezable kthread would wait "
                           "for itself")
    rt.mem.store32(H.freezing, 1)
    deadline = time.monotonic() + timeout
    hung = HungTask("freeze_kthreads", "to freeze (it has not called try_to_freeze())",
                    lambda: ", ".join(task_text(rt, base)() for base, _ in _not_frozen(rt)))
    while True:
        todo = _not_frozen(rt)
        if not todo:
            return
        hung.check()
        if time.monotonic() >= deadline:
            names = sorted(read_name(rt.arena, idx, base) for base, idx in todo)
            thaw_kthreads()
            raise KthreadError(errno.EBUSY, f"freezing of kthreads failed after {timeout} s: "
                               f"{len(names)} did not freeze: {', '.join(names)}")
        rt.check_alive()
        time.sleep(POLL_S)


def thaw_kthreads() -> None:
    """thaw_kthreads - end freezing and wake every frozen kthread.

    Context: any process of the runtime.  Return: None.
    """
    rt = get_runtime()
    rt.mem.store32(H.freezing, 0)
    kick_frozen(rt)


def kick_frozen(rt: Runtime) -> None:
    """Wake every frozen kthread so it re-checks (thaw, or kthread_stop() for one
    frozen in kthread_freezable_should_stop())."""
    rt.mem.fetch_add32(H.freeze_seq, 1)
    rt.waits.wake(H.freeze_seq)
