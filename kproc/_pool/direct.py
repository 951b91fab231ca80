"""A direct wait: the thread that wants a call's outcome waits on its slot and reaps it.

``result()``/``exception()`` of a pool future, and a map's iterator for its
next call, wait here instead of on the future: spinning first, then on the
slot's completion (no spin when the worker shares the caller's CPU), and
reap the slot themselves, so a round trip involves no other thread of the
caller.  Races prevented: the waiter announces itself (``SLOT.direct``)
before it looks at the state, so the worker, which publishes DONE before it
reads ``direct``, either sees it (and completes the slot's completion) or
the waiter sees DONE; a waiter that leaves without reaping kicks the
collector, so a DONE slot is never left for nobody.  Runs in the caller.
"""

from __future__ import annotations

import time

from .._core import layout as L
from .._sched.completion import complete
from .call import Call
from .channel import DONE, SLOT
from .engine import TICK_NS, Engine, current_cpu

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["wait_direct"]

C = L.COMPLETION


def wait_direct(eng: Engine, call: Call, timeout: float | None, spare: bool = False
                ) -> tuple[float | None, tuple[bool, Any] | None]:
    """Wait in this thread for ``call``'s slot to be DONE, and reap it.

    @spare: a map's iterator: its reaps feed the backlog's map calls to the
    workers off this CPU only (``Engine._pick``), and it feeds every worker
    once its spin is over, before it sleeps (its CPU is then free).

    Return: (the seconds of ``timeout`` left, None for no timeout, 0 if it
    ran out; the outcome if this thread reaped it, else None: another
    thread reaps it, or the call is not in a slot).
    """
    slot = call.slot
    if slot < 0 or call.finished:
        return timeout, None
    pm = eng.pm
    mem = getattr(pm, "mem", None)
    if mem is None:                  # torn down just now: the pool failed the call
        return timeout, None
    off = pm.slot_off(slot)
    state_off = off + SLOT.state
    if mem.load32(state_off) == DONE:        # no wait at all: reap it now
        with eng.lock:
            reaped = eng.reap_locked(slot, spare) if eng.slot_call[slot] is call else None
        return timeout, (eng.deliver(*reaped) if reaped is not None else None)
    deadline = None if timeout is None else time.monotonic() + timeout
    amem = eng.rt.mem
    coff = eng.comp_off[slot]
    seq_off = coff + C.seq
    spin = eng.rt.waits.spin_ns
    if current_cpu() == eng.cpus[eng.slot_worker[slot]]:
        spin = 0                     # spinning would only delay the worker
    wait = eng.raw_wait
    spin_word = pm.spin_word if spin else None
    mem.fetch_add32(off + SLOT.direct, 1)
    reaped = None
    try:
        while eng.slot_call[slot] is call and eng.broken is None:
            if mem.load32(state_off) == DONE:
                with eng.lock:
                    if eng.slot_call[slot] is call:
                        reaped = eng.reap_locked(slot, spare)
                break
            if spin_word is not None:    # spin in C on the state word: DONE seen at once
                spin_word(off, spin)
                spin_word, spin = None, 0    # spun out: the completion wait sleeps at once
                continue
            snap = amem.load32(seq_off)
            if amem.load32(coff):
                continue
            if deadline is None:
                tick = TICK_NS
            else:
                tick = min(TICK_NS, int((deadline - time.monotonic()) * 1e9))
                if tick <= 0:
                    break
            if spare:                # about to sleep: the workers here may take calls
                if spin and wait(coff, snap, 0, spin, -1, 0) != 0:
                    continue
                spare, spin = False, 0
                if eng.backlog:
                    with eng.lock:
                        eng.feed_locked()
                continue
            if wait(coff, snap, tick, spin, -1, 0) == 0:
                eng.rt.check_alive()
    finally:
        mem.fetch_add32(off + SLOT.direct, -1)
        if reaped is None:
            complete(eng.kick)       # a DONE we leave is the collector's again
    got = eng.deliver(*reaped) if reaped is not None else None
    if deadline is None:
        return None, got
    return max(0.0, deadline - time.monotonic()), got
