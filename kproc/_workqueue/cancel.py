"""kthread_cancel_work_sync() and kthread_cancel_delayed_work_sync().

Mirrors ``__kthread_cancel_work_sync`` (kernel/kthread.c 6.15; the
cancel_*_sync patch in ``reference/002_…``): under the worker lock, fire due
timers, take the work off whichever list it is on (``lists.cancel_work_locked``,
which also stops its timer); if it is running, raise its ``canceling`` counter,
drop the lock and wait for the running instance with a flush, then lower the
counter under the lock again.

Races prevented: while ``canceling`` is raised every queueing attempt fails
(``queuing_blocked``), so a work that re-queues itself, or that another
process queues meanwhile, is not pending when the cancel returns; the timer
callback runs only under the worker lock, so there is no callback in flight
to wait for (what del_timer_sync() waits for in the kernel); a work that
became an idle orphan while cancelled is freed by the cancel.  A cancel from
the work itself cannot wait for itself: it warns and cancels only the pending
instance.

Runs in the caller: any process of the runtime.
"""

from __future__ import annotations

from .._core import layout as L
from .._core.errors import kernel_warn
from .flush import flush_work_at, own_worker
from .handles import KthreadDelayedWork, KthreadWork, resolve_work
from .lists import Locked, cancel_work_locked, free_if_orphan_locked, tied_worker
from .timers import run_timers

__all__ = ["kthread_cancel_work_sync", "kthread_cancel_delayed_work_sync"]

W = L.WORK
K = L.WORKER


def _cancel_sync(work: KthreadWork, is_dwork: bool, fn_name: str) -> bool:
    rt, base = resolve_work(work, delayed=is_dwork)
    kbase = tied_worker(rt, base)
    if kbase is None:
        return False
    mem = rt.mem
    idx = work._idx + 1
    raised, hold = False, None
    try:
        with Locked(rt, kbase) as lk:
            run_timers(lk)
            ret = cancel_work_locked(lk, idx)
            if mem.load32(kbase + K.current) != idx:
                free_if_orphan_locked(lk, work._idx)
                return ret
            if own_worker(rt, kbase):
                kernel_warn(f"{fn_name}() called from the work itself would wait for "
                            "itself forever; not waiting", stacklevel=3)
                return ret
            # The work is running: wait with the lock dropped; meanwhile the
            # canceling counter makes every queueing attempt fail.  A kthread
            # records its count in a hold word first: if it dies waiting,
            # kthreadd drops the count (else the work could never be queued
            # again).  ``raised`` is set first, and the lock defers signals,
            # so a Ctrl-C cannot fall between the count and its undoing.
            hold = rt.arena.take_hold(rt.self_base, L.HOLD_CANCEL, work._idx)
            raised = True
            mem.fetch_add32(base + W.canceling, 1)
        flush_work_at(rt, kbase, idx, fn_name)
    finally:
        if raised:
            with Locked(rt, kbase) as lk:
                mem.fetch_add32(base + W.canceling, -1)
                rt.arena.release_hold(hold)
                free_if_orphan_locked(lk, work._idx)
    return ret


def kthread_cancel_work_sync(work: KthreadWork) -> bool:
    """kthread_cancel_work_sync - cancel a work and wait for its execution to finish.

    Works also when the work re-queues itself.  On return the work is neither
    pending nor running anywhere.  Use kthread_cancel_delayed_work_sync() for
    delayed works.
    Context: any process of the runtime; may block.  Called from the work
    itself it cannot wait for itself: KernelWarning, and only the pending
    instance is cancelled.
    Return: True if @work was pending, False otherwise.
    Raises: TypeError; KthreadError(ESRCH) (stale work, destroyed worker, the
    worker's kthread died while waiting).
    """
    return _cancel_sync(work, False, "kthread_cancel_work_sync")


def kthread_cancel_delayed_work_sync(dwork: KthreadDelayedWork) -> bool:
    """kthread_cancel_delayed_work_sync - kthread_cancel_work_sync() for delayed works.

    Stops the timer (the timer callback runs under the worker lock here, so
    there is never one in flight to wait for, which is what del_timer_sync()
    waits for in the kernel), takes the work off its list and waits for a
    running execution.  Context, Raises: as kthread_cancel_work_sync().
    Return: True if @dwork was pending (timer armed or on the work list).
    """
    return _cancel_sync(dwork, True, "kthread_cancel_delayed_work_sync")
