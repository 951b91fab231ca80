"""The worker's timer list: ``kthread_delayed_work_timer_fn`` and the timer half of
``__kthread_queue_delayed_work`` (kernel/kthread.c 6.15).

A worker's pending timers are its ``delayed_work_list``, kept sorted by expiry
(CLOCK_MONOTONIC ns) under the worker lock.  The timer callback (take the
work off the timer list and, unless it is being cancelled, insert it on the
work list) runs under that same lock, *before anything else is done with the
list*: every queue, flush, cancel and mod on the worker, and the worker itself
before it picks its next work, first fires the timers that have expired.  The
effect is the kernel's: a work is on the work list from its expiry on, even
while the worker is busy, so a work queued after the expiry runs after it.
An idle worker sleeps until its earliest expiry, so nothing else has to wake
it; a new earlier timer wakes it to re-arm.

Because the callback never runs outside the worker lock, there is never a
callback "in flight" for ``del_timer_sync()`` to wait for: cancelling the
timer is unlinking it under the lock.  That removes by construction the 2021
races (mod_delayed_work vs cancel_delayed_work_sync deadlock; the split of
``kthread_cancel_delayed_work_timer``).

Runs in every process that touches the worker (the caller, any kthread) and in
the worker's kthread, always with the worker lock held.
"""

import time

from .._core import layout as L
from .lists import insert_work, link_before, unlink, complete_flushers, queue_flushers

__all__ = ["run_timers", "next_expiry", "arm_timer"]

W = L.WORK
K = L.WORKER


def _wo(rt, idx1):
    return rt.arena.work_off(idx1 - 1)


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
            queue_flushers(lk, idx)
        idx = mem.load32(kbase + K.thead)
    if not wake:
        lk.wake = False


def next_expiry(lk):
    """The earliest timer of the worker (ns), or None.  Context: worker lock held."""
    idx = lk.mem.load32(lk.kbase + K.thead)
    return lk.mem.load64(_wo(lk.rt, idx) + W.expires) if idx else None


def arm_timer(lk, idx, delay_ns):
    """Put delayed work ``idx`` on the timer list, to expire ``delay_ns`` from now.

    Ties the work to the worker, as __kthread_queue_delayed_work() does.
    Context: worker lock held.
    """
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
