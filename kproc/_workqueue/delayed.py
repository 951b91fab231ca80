"""Delayed works: kthread_queue_delayed_work() and kthread_mod_delayed_work().

Mirrors ``kthread_queue_delayed_work``, ``__kthread_queue_delayed_work`` and
``kthread_mod_delayed_work`` (kernel/kthread.c 6.15).  The timer itself -- the
sorted timer list and ``kthread_delayed_work_timer_fn``, which run only under
the worker lock -- is ``timers``; a delay of 0 queues at once.

Races prevented: the pending test, the cancel of a pending instance and the
re-arm of mod happen in one locked section, after the due timers have been
fired, so a timer expiring meanwhile is seen as queued; a cancel in progress
(``canceling`` raised) wins over mod, which then leaves the work alone (the
kernel's 2021 fix: the number of queued works stays the same).

Runs in the caller: any process of the runtime, a work on the worker included.
"""

from __future__ import annotations

from .._core import layout as L
from .._core.checks import check_seconds
from .handles import KthreadDelayedWork, KthreadWorker, resolve_queue_args, work_owner_check
from .lists import Locked, cancel_work_locked, insert_work, queuing_blocked, tied_worker
from .timers import run_timers, arm_timer

__all__ = ["kthread_queue_delayed_work", "kthread_mod_delayed_work"]

W = L.WORK
K = L.WORKER


def check_delay(delay: float) -> int:
    """Seconds -> ns.  Raises: TypeError, ValueError (negative, NaN, infinite)."""
    return int(check_seconds("delay", delay) * 1e9)


def _queue_delayed_locked(lk: Locked, idx: int, delay_ns: int) -> bool:
    """__kthread_queue_delayed_work(): delay 0 queues at once, else arms the timer.

    Context: worker lock held.  Return: False if a list sanity check refused it.
    """
    return insert_work(lk, idx) if not delay_ns else arm_timer(lk, idx, delay_ns)


def kthread_queue_delayed_work(worker: KthreadWorker, dwork: KthreadDelayedWork,
                               delay: float) -> bool:
    """kthread_queue_delayed_work - queue a delayed work after @delay seconds.

    If @dwork is not pending, arms its timer; when the timer expires the work
    is put on @worker's list (even while the worker is busy).  A delay of 0
    queues it at once.
    Context: any process of the runtime; does not sleep.
    Return: False if @dwork was already pending (timer armed or queued) or is
    being cancelled, or (KernelWarning) is tied to another worker; True otherwise.
    Raises: TypeError; ValueError (negative, NaN or infinite delay);
    KthreadError(ESRCH) (destroyed worker, stale work, work of a destroyed worker).
    """
    rt, kbase, base = resolve_queue_args(worker, dwork, "dwork", delayed=True)
    delay_ns = check_delay(delay)
    if work_owner_check(rt, base, kbase, "kthread_queue_delayed_work"):
        return False
    with Locked(rt, kbase) as lk:
        run_timers(lk)
        if queuing_blocked(lk, base):
            return False
        return _queue_delayed_locked(lk, dwork._idx + 1, delay_ns)


def kthread_mod_delayed_work(worker: KthreadWorker, dwork: KthreadDelayedWork,
                             delay: float) -> bool:
    """kthread_mod_delayed_work - modify the delay of, or queue, a delayed work.

    If @dwork is idle, the same as kthread_queue_delayed_work(); otherwise it
    is taken off its list and re-armed to expire after @delay (0: queued now).
    Context: any process of the runtime; does not sleep.
    Return: False if @dwork was idle and has been queued; True otherwise --
    including when a cancel is in progress in parallel, which wins: the work
    is then left alone (the number of queued works stays the same).  False
    also (KernelWarning, nothing done) if it is tied to another worker.
    Raises: as kthread_queue_delayed_work().
    """
    rt, kbase, base = resolve_queue_args(worker, dwork, "dwork", delayed=True)
    delay_ns = check_delay(delay)
    if work_owner_check(rt, base, kbase, "kthread_mod_delayed_work"):
        return False
    mem = rt.mem
    idx = dwork._idx + 1
    with Locked(rt, kbase) as lk:
        run_timers(lk)
        if tied_worker(rt, base) is None:
            ret = False               # never queued: nothing to cancel
        elif mem.load32(base + W.canceling):
            return True
        else:
            ret = cancel_work_locked(lk, idx)
        _queue_delayed_locked(lk, idx, delay_ns)
        return ret
