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

The callback itself is ``Mem.wl_fire_timers`` (``native/worklist.c``, the
code the C ``work_pop`` runs too); the sorted insert and the tie are here.

Because the callback never runs outside the worker lock, there is never a
callback "in flight" for ``del_timer_sync()`` to wait for: cancelling the
timer is unlinking it under the lock.  That removes by construction the 2021
races (mod_delayed_work vs cancel_delayed_work_sync deadlock; the split of
``kthread_cancel_delayed_work_timer``).

Runs in every process that touches the worker (the caller, any kthread) and in
the worker's kthread, always with the worker lock held.
"""

from __future__ import annotations

import time

from .._core import layout as L
from .._core import trace as _trace
from .lists import (Locked, insert_sanity_check, link_before, unlink, node_off, refused,
                    tie_locked, complete_flushers)
from .tracepoints import trace_queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["run_timers", "next_expiry", "arm_timer"]

W = L.WORK
K = L.WORKER


def run_timers(lk: Locked) -> None:
    """Fire every expired timer of the worker (kthread_delayed_work_timer_fn).

    ``wl_fire_timers`` moves each expired work to the tail of the work list
    with the flush markers waiting on it right behind, and drops those being
    cancelled; one being cancelled while markers wait on it is left for this
    function, which takes it off and completes its markers.  Works moved ask
    for the worker's wake-up (``lk.wake``).
    Context: worker lock held.  A refusal (corrupt lists) stops the firing (warned).
    """
    mem, kbase = lk.mem, lk.kbase
    if not mem.load32(kbase + K.thead):
        return
    now = time.monotonic_ns()
    due: Sequence[tuple[int, int]] = _due(lk, now) if _trace.ENABLED else ()
    while True:
        try:
            fired, stopped = mem.wl_fire_timers(kbase, now)
        except (RuntimeError, ValueError) as exc:
            refused(exc)
            return
        if fired and not mem.load32(kbase + K.current):
            lk.wake = True
        if not stopped or not unlink(lk, stopped, L.ON_TIMER):
            break
        complete_flushers(lk, stopped)
    for idx, base in due:
        if mem.load32(base + W.where) == L.ON_WORKLIST:
            trace_queue(lk.rt, kbase, idx, base)


def _due(lk: Locked, now: int) -> list[tuple[int, int]]:
    """The expired timers, earliest first, as (index + 1, offset): what to trace."""
    mem = lk.mem
    due: list[tuple[int, int]] = []
    idx = mem.load32(lk.kbase + K.thead)
    while idx:
        base = node_off(lk, idx, "timer")
        if base is None or mem.load64(base + W.expires) > now:
            break
        due.append((idx, base))
        idx = mem.load32(base + W.next)
    return due


def next_expiry(lk: Locked) -> int | None:
    """The earliest timer of the worker (ns), or None.  Context: worker lock held."""
    idx = lk.mem.load32(lk.kbase + K.thead)
    base = node_off(lk, idx, "timer") if idx else None
    return lk.mem.load64(base + W.expires) if base is not None else None


def arm_timer(lk: Locked, idx: int, delay_ns: int) -> bool:
    """Put delayed work ``idx`` on the timer list, to expire ``delay_ns`` from now.

    Ties the work to the worker, as __kthread_queue_delayed_work() does, after
    the same sanity check as kthread_insert_work().  The list stays sorted by
    expiry: this function picks the node to link before.
    Context: worker lock held.  Return: True; False (warned, nothing linked)
    if a sanity check failed.
    """
    expires = time.monotonic_ns() + delay_ns      # first: the checks are not the delay
    mem, kbase = lk.mem, lk.kbase
    base = node_off(lk, idx, "work")
    if base is None or not insert_sanity_check(lk, base, idx):
        return False
    mem.store64(base + W.expires, expires)
    # Sorted insert, walking from the tail: timers mostly arrive in order.
    before = 0
    cur = mem.load32(kbase + K.ttail)
    while cur:
        cbase = node_off(lk, cur, "timer")
        if cbase is None:
            return False
        if mem.load64(cbase + W.expires) <= expires:
            break
        before = cur
        cur = mem.load32(cbase + W.prev)
    if not link_before(lk, L.ON_TIMER, idx, before):
        return False
    tie_locked(lk, base)
    if mem.load32(kbase + K.thead) == idx and not mem.load32(kbase + K.current):
        lk.wake = True        # an idle worker re-arms its sleep for the new first timer
    return True
