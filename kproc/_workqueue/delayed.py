"""Delayed works: the per-worker timer list (kernel: kthread_delayed_work, its timer_list).

A worker's pending timers are its ``delayed_work_list``, kept sorted by expiry
(CLOCK_MONOTONIC ns) under the worker lock.  The timer callback
(``kthread_delayed_work_timer_fn``: take the work off the timer list and, unless
it is being cancelled, insert it on the work list) runs under that same lock,
*before anything else is done with the list*: every queue, flush, cancel and
mod on the worker, and the worker itself before it picks its next work, first
fires the timers that have expired.  The effect is the kernel's: a work is on
the work list from its expiry on, even while the worker is busy, so a work
queued after the expiry runs after it.  An idle worker sleeps until its
earliest expiry (with a 1 µs timer slack), so nothing else has to wake it;
a new earlier timer wakes it to re-arm.

Because the callback never runs outside the worker lock, there is never a
callback "in flight" for ``del_timer_sync()`` to wait for: cancelling the timer
is unlinking it under the lock.  That removes by construction the 2021 races
(mod_delayed_work vs cancel_delayed_work_sync deadlock; the split of
``kthread_cancel_delayed_work_timer``), which tests hammer from two processes.

Mirrors: ``kthread_queue_delayed_work``, ``__kthread_queue_delayed_work``,
``kthread_delayed_work_timer_fn``, ``kthread_mod_delayed_work``.
"""

import time

from .._core import layout as L
from .._core.checks import check_seconds
from .lists import (Locked, insert_work, link_before, unlink, cancel_work_locked,
                      work_owner_check, work_worker_base, _same_runtime)
from .handles import resolve_work, resolve_worker

__all__ = ["kthread_queue_delayed_work", "kthread_mod_delayed_work", "run_timers",
           "next_expiry", "add_flusher", "complete_flushers"]

W = L.WORK
K = L.WORKER


def _wo(rt, idx1):
    return rt.arena.work_off(idx1 - 1)


def check_delay(delay):
    """Seconds -> ns.  Raises: TypeError, ValueError (negative, NaN, infinite)."""
    return int(check_seconds("delay", delay) * 1e9)


def run_timers(lk, wake=True):
    """Fire every expired timer of the worker (kthread_delayed_work_timer_fn).

    Context: worker lock held.  ``wake=False`` when the worker itself calls.
    """
    rt, mem, kbase = lk.rt, lk.mem, lk.kbase
    idx = mem.load32(kbase + K.thead)
    if not idx:
        return
    now = time.monotonic_ns()
    while idx and mem.load64(_wo(rt, idx) + W.expires) <= now:
        base = _wo(rt, idx)
        unlink(rt, kbase, K.thead, K.ttail, idx)
        mem.fetch_add32(kbase + K.ndelayed, -1)
        if mem.load32(base + W.canceling):
            complete_flushers(lk, idx)
        else:
            insert_work(lk, idx)
            _queue_flushers(lk, idx)
        idx = mem.load32(kbase + K.thead)
    if not wake:
        lk.wake = False


def next_expiry(lk):
    """The earliest timer of the worker (ns), or None.  Context: worker lock held."""
    idx = lk.mem.load32(lk.kbase + K.thead)
    return lk.mem.load64(_wo(lk.rt, idx) + W.expires) if idx else None


def add_flusher(lk, idx, marker):
    """Make flush marker ``marker`` wait for timer-pending work ``idx``."""
    mem, rt = lk.mem, lk.rt
    base = _wo(rt, idx)
    mem.store32(_wo(rt, marker) + W.next, mem.load32(base + W.flushers))
    mem.store32(base + W.flushers, marker)


def _pop_flushers(lk, idx):
    mem, rt = lk.mem, lk.rt
    base = _wo(rt, idx)
    chain = []
    m = mem.load32(base + W.flushers)
    while m:
        chain.append(m)
        m = mem.load32(_wo(rt, m) + W.next)
    mem.store32(base + W.flushers, 0)
    return chain


def _queue_flushers(lk, idx):
    """The timer moved ``idx`` to the work list: its flush markers go right behind it."""
    for m in _pop_flushers(lk, idx):
        mem = lk.mem
        mem.store32(_wo(lk.rt, m) + W.next, 0)
        insert_work(lk, m, mem.load32(_wo(lk.rt, idx) + W.next))


def complete_flushers(lk, idx):
    """Timer-pending ``idx`` was cancelled: its flushers have nothing left to wait for."""
    for m in _pop_flushers(lk, idx):
        lk.mem.store32(_wo(lk.rt, m) + W.next, 0)
        lk.rt.waits.completion_complete(_wo(lk.rt, m) + W.done, True)


def _queue_delayed_locked(lk, idx, delay_ns):
    """__kthread_queue_delayed_work(): delay 0 queues at once, else arms the timer."""
    if not delay_ns:
        insert_work(lk, idx)
        return
    rt, mem, kbase = lk.rt, lk.mem, lk.kbase
    base = _wo(rt, idx)
    mem.store32(base + W.worker, rt.arena.worker_idx(kbase) + 1)
    mem.store32(base + W.worker_gen, mem.load32(kbase + K.gen))
    expires = time.monotonic_ns() + delay_ns
    mem.store64(base + W.expires, expires)
    # Sorted insert, walking from the tail: timers mostly arrive in order.
    before = 0
    cur = mem.load32(kbase + K.ttail)
    while cur and mem.load64(_wo(rt, cur) + W.expires) > expires:
        before = cur
        cur = mem.load32(_wo(rt, cur) + W.prev)
    link_before(rt, kbase, K.thead, K.ttail, idx, before)
    mem.store32(base + W.where, L.ON_TIMER)
    mem.fetch_add32(kbase + K.ndelayed, 1)
    if mem.load32(kbase + K.thead) == idx and not mem.load32(kbase + K.current):
        lk.wake = True        # an idle worker re-arms its sleep for the new first timer


def kthread_queue_delayed_work(worker, dwork, delay):
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
    rt, kbase = resolve_worker(worker)
    wrt, base = resolve_work(dwork, "dwork", delayed=True)
    _same_runtime(rt, wrt, "dwork")
    delay_ns = check_delay(delay)
    if work_owner_check(rt, base, kbase, "kthread_queue_delayed_work"):
        return False
    mem = rt.mem
    with Locked(rt, kbase) as lk:
        run_timers(lk)
        if mem.load32(base + W.where) != L.ON_NONE or mem.load32(base + W.canceling):
            return False
        _queue_delayed_locked(lk, dwork._idx + 1, delay_ns)
        return True


def kthread_mod_delayed_work(worker, dwork, delay):
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
    rt, kbase = resolve_worker(worker)
    wrt, base = resolve_work(dwork, "dwork", delayed=True)
    _same_runtime(rt, wrt, "dwork")
    delay_ns = check_delay(delay)
    if work_owner_check(rt, base, kbase, "kthread_mod_delayed_work"):
        return False
    mem = rt.mem
    idx = dwork._idx + 1
    with Locked(rt, kbase) as lk:
        run_timers(lk)
        if work_worker_base(rt, base) is None:
            ret = False               # never queued: nothing to cancel
        elif mem.load32(base + W.canceling):
            return True
        else:
            ret = cancel_work_locked(lk, idx)
        _queue_delayed_locked(lk, idx, delay_ns)
        return ret
