"""``map(chunksize=1)``: calls without a Future each, their outcomes taken in order.

``Executor.map`` would make a ``Future`` per item and reap each through it;
here a map's items are engine calls of kind KIND_MAP whose outcome is kept
on the call itself (``Call.result``), and the iterator reaps them in order,
the next one in the thread that iterates (``Engine.wait_direct``), so no
other thread is involved while someone iterates.  ProcessPoolExecutor's
semantics hold point by point: every call is submitted when ``map()`` is
called (its iterables read at once), the iterator is lazy, ``timeout``
counts from the call to ``map()``, an exception is raised at its item's
place, and closing the iterator (or an exception ending it) cancels the
calls that have not started.

Who reaps a map's call: its iterator while it is active (``MapRun.seen``
within ``engine.ACTIVE_S``), else the collector, which polls for them (their
worker does not wake it), so calls keep running while nobody iterates, and
``shutdown(wait=True)`` waits for them, as for ProcessPoolExecutor.

Races prevented: an iterator whose next call waits in the backlog sleeps on
``Engine.placed`` (notified under the engine's lock when a map's call is
placed, and when the pool breaks), re-checking under the lock.
Runs in the caller, in any of its threads.
"""

from __future__ import annotations

import time

from .call import Call, MapRun
from .channel import DONE, SLOT
from .direct import wait_direct
from .engine import Engine
from .remote import KIND_MAP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

__all__ = ["map_calls"]

BACKLOG_TICK = 0.1          # s: how often an iterator waiting on the backlog re-checks
REAP_AHEAD = 32             # calls an iterator reaps at most past the one it waited for


def map_calls(eng: Engine, payloads: list[bytes], end: float | None,
              check_open: Callable[[], object]) -> Iterator[Any]:
    """Submit one call per payload; return the iterator of their results, in order.

    @end: the deadline (time.monotonic()) of the whole map, None for none;
    @check_open: raises if the pool takes no calls (called under the engine's lock).
    Context: any thread of the caller.  Raises: what @check_open raises.
    """
    run = MapRun()
    calls = [Call(p, KIND_MAP, None, run) for p in payloads]
    with eng.lock:
        check_open()
        eng.submit_many_locked(calls)
    return _results(eng, calls, run, end)


def _results(eng: Engine, calls: list[Call], run: MapRun,
             end: float | None) -> Iterator[Any]:
    try:
        calls.reverse()
        while calls:
            call = calls[-1]
            got = call.result
            if got is None:
                got = _wait(eng, call, run, end)
                if len(calls) > 1:
                    _reap_ahead(eng, calls)
            calls.pop()
            if got[0]:
                raise got[1]
            yield got[1]
    finally:
        run.seen = float("-inf")          # the collector reaps what is left
        _cancel_rest(eng, calls)


def _reap_ahead(eng: Engine, calls: list[Call]) -> None:
    """Reap the calls after the next one (``calls`` is reversed) that are DONE already,
    in order, under one hold of the lock: their results wait on them."""
    pm = eng.pm
    load32, slot_off, slot_call = pm.mem.load32, pm.slot_off, eng.slot_call
    reaped = []
    with eng.lock, eng.batch_locked():
        for j in range(len(calls) - 2, max(-1, len(calls) - 2 - REAP_AHEAD), -1):
            call = calls[j]
            slot = call.slot
            if call.finished or slot < 0 or slot_call[slot] is not call or \
                    load32(slot_off(slot) + SLOT.state) != DONE:
                break
            got = eng.reap_locked(slot, True)
            if got is not None:
                reaped.append(got)
    for got in reaped:
        eng.deliver(*got)


def _wait(eng: Engine, call: Call, run: MapRun, end: float | None) -> tuple[bool, Any]:
    """Wait for ``call``'s outcome (reaping it here when it is in a slot).

    Raises: TimeoutError past ``end``.
    """
    while True:
        run.seen = now = time.monotonic()
        got = call.result
        if got is not None:
            return got
        if end is not None and now >= end:
            raise TimeoutError()
        left = None if end is None else end - now
        if call.slot >= 0:
            got = wait_direct(eng, call, left, True)[1]
            if got is not None:
                return got
            continue                      # reaped elsewhere, moved, or out of time
        with eng.lock:
            if eng.backlog and call.slot < 0:
                eng.feed_locked()         # on every worker (see wait_direct's spare)
            # finished without a result: being delivered by another thread, just now
            if call.slot < 0 and call.result is None and eng.broken is None and \
                    not call.finished:
                eng.place_waiters += 1
                try:
                    eng.placed.wait(BACKLOG_TICK if left is None else min(left, BACKLOG_TICK))
                finally:
                    eng.place_waiters -= 1


def _cancel_rest(eng: Engine, calls: list[Call]) -> None:
    """The iterator ends: cancel every call of it that has not started."""
    slotted = []
    with eng.lock:
        for call in calls:
            if call.finished:
                continue
            if call.slot < 0:
                eng.drop_backlog_call_locked(call)
            else:
                slotted.append(call)
    for call in slotted:
        eng.cancel(call)
