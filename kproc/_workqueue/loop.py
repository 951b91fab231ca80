"""The worker loop: the body of ``kthread_worker_fn`` once the worker is attached.

Mirrors the loop of ``kthread_worker_fn`` (kernel/kthread.c 6.15): publish
TASK_INTERRUPTIBLE, stop if asked, fire due timers and pop the next work under
the lock, run it with the lock dropped, sleep when there is nothing to do.
What it adds: parking between works (``kthread_park()`` on a worker would hang
in the kernel's loop), the freezer between works for KTW_FREEZABLE workers, a
sleep bounded by the first timer, and a work that raises being reported and
kept (``work.exception``) instead of ending the worker.

Races prevented:

* Lost wake-up: the worker publishes TASK_INTERRUPTIBLE *before* looking at
  its list, and a queuer wakes it after linking when ``current_work`` is
  empty (the kernel's pairing of ``set_current_state`` with
  ``wake_up_process``).
* Timer lateness: an idle worker with a timer pending wakes ``timer_spin_ns``
  before the expiry and spins on its wake word (a halted vCPU takes tens of
  µs to wake from a timer), and unpickles the first timer's work while idle.
* A work handle is cached per slot, generation and payload version, so a
  recycled slot or a re-initialised work is never run with a stale payload.

Runs in the worker's kthread only.
"""

from __future__ import annotations

import os
import sys
import time

from .._core import layout as L
from .._core import trace as _trace
from .._core.checks import env_number
from .._core.errors import warn_on_once
from .._core.runtime import Runtime
from .._core.wait import default_spin_ns
from .._freezer import freezing_at, try_to_freeze_at
from .._kthread.body import parkme
from .._sched.schedule import _sleep
from .._sched.task import TaskState
from .fastpath import fast_paths, lock_spin_ns
from .handles import KTW_FREEZABLE, KthreadWork, work_handle_for_exec
from .lists import Locked, free_if_orphan_locked, pop_locked
from .payload import store_traceback
from .timers import run_timers, next_expiry
from .tracepoints import work_id

__all__ = ["worker_loop", "timer_spin_ns"]

W = L.WORK
K = L.WORKER
T = L.TASK

INTERRUPTIBLE = TaskState.TASK_INTERRUPTIBLE
RUNNING = TaskState.TASK_RUNNING


def worker_loop(rt: Runtime, kbase: int, tbase: int, name: str) -> int:
    """The body of kthread_worker_fn() once the worker is attached to this kthread.

    Return: 0 when kthread_stop() ends it.  Context: the worker's kthread.
    """
    mem = rt.mem
    # The per-work path below (publish the state, look at the flags, pop, run)
    # uses only locals: bound methods, offsets and constants taken once here.
    store32, load32 = mem.store32, mem.load32
    state_off, flags_off = tbase + T.state, tbase + T.flags
    interruptible, running = int(INTERRUPTIBLE), int(RUNNING)
    stop_or_park = L.KF_SHOULD_STOP | L.KF_SHOULD_PARK
    works, stride = rt.arena.params.works, W.stride
    spin = lock_spin_ns()
    lk = Locked(rt, kbase)
    cpop = fast_paths(rt)[1]
    cache: dict[int, KthreadWork] = {}
    idx = 0
    freezable = bool(load32(kbase + K.flags) & KTW_FREEZABLE)
    while True:
        store32(state_off, interruptible)       # pairs with wake_worker()
        flags = load32(flags_off)
        if flags & stop_or_park:
            if not flags & L.KF_SHOULD_STOP:
                # Not in the kernel's kthread_worker_fn (kthread_park() on a worker
                # would hang there): parked between works, works wait on the list.
                parkme(rt, tbase)
                continue
            store32(state_off, running)
            _detach(lk, idx)
            return 0
        nxt = -1
        if cpop is not None and not _trace.ENABLED:
            try:
                nxt = cpop(kbase, idx, spin)
            except (RuntimeError, ValueError) as exc:
                warn_on_once(True, f"the C work_pop() of worker {name!r} failed: {exc}")
            if nxt > 0:                 # the common case: the next work, popped in C
                idx = nxt
                store32(state_off, running)
                _execute(rt, kbase, idx, works + (idx - 1) * stride, name, cache)
                if freezable:
                    try_to_freeze_at(rt, tbase)
                continue
        if nxt == 0:
            idx, deadline = 0, None
        else:
            idx, deadline = _pop_slow(lk, idx, cache)
        if idx:
            store32(state_off, running)
            _execute(rt, kbase, idx, works + (idx - 1) * stride, name, cache)
        elif not (freezable and freezing_at(rt, tbase)):
            if _trace.ENABLED:
                _trace.flush()          # idle: a kthread killed at shutdown loses nothing
            _timer_sleep(rt, tbase, deadline)
        else:
            store32(state_off, running)
        if freezable:
            try_to_freeze_at(rt, tbase)


def _pop_slow(lk: Locked, idx: int, cache: dict[int, KthreadWork]) -> tuple[int, int | None]:
    """Fire due timers, finish ``idx`` and pop the next work, in Python under the lock.

    Return: (next work index + 1 or 0, the first timer's expiry in ns or None).
    """
    rt, mem, kbase = lk.rt, lk.mem, lk.kbase
    with lk:
        if mem.load32(kbase + K.thead):
            run_timers(lk)
            lk.wake = False             # the worker is awake: it is the caller
        idx = pop_locked(lk, idx)
        deadline = None if idx else next_expiry(lk)
        if deadline is not None:
            first = mem.load32(kbase + K.thead)
            first_gen = mem.load32(rt.arena.work_off(first - 1))
    if deadline is not None:
        _prefetch(rt, first, first_gen, cache)
    return idx, deadline


def _detach(lk: Locked, idx: int) -> None:
    """kthread_stop() ended the loop: finish ``idx`` and clear worker->task."""
    with lk:
        if idx:
            lk.mem.store32(lk.kbase + K.current, 0)
            free_if_orphan_locked(lk, idx - 1)
        lk.mem.store32(lk.kbase + K.task, 0)


_timer_spin: int | None = None


def timer_spin_ns() -> int:
    """How long before a timer's expiry an idle worker wakes to spin (0: never).

    Waking a halted vCPU from a timer costs tens of µs on a VM; waking this
    much earlier and spinning on the wake word until the expiry removes that
    from a delayed work's lateness, for at most this much CPU per timer.
    ``KPROC_TIMER_SPIN_US`` sets it; 0 on a single CPU or the posix backend.
    """
    global _timer_spin
    if _timer_spin is None:
        env = env_number("KPROC_TIMER_SPIN_US")
        _timer_spin = int(env * 1000) if env is not None else \
            (100_000 if default_spin_ns() else 0)
    return _timer_spin


def _timer_sleep(rt: Runtime, tbase: int, deadline: int | None) -> None:
    """schedule() until woken or ``deadline`` (the first timer), waking early to spin."""
    if deadline is None or (waits := rt.waits).name != "futex" or \
            not (spin := timer_spin_ns()):
        _sleep(rt, tbase, deadline)
        return
    mem = waits.mem                 # the native Mem (the futex backend needs it)
    seq = mem.load32(tbase + T.wake_seq)
    if deadline - time.monotonic_ns() > spin and not _sleep(rt, tbase, deadline - spin):
        return                                    # woken before the timer: go look
    mem.store32(tbase + T.state, RUNNING)
    left = deadline - time.monotonic_ns()
    if left > 0:
        mem.wait_change(tbase + T.wake_seq, seq, 0, left)


def _prefetch(rt: Runtime, idx: int, gen: int, cache: dict[int, KthreadWork]) -> None:
    """Unpickle the first timer's work while idle, so it starts sooner at expiry.

    A work's payload only changes through kthread_init_work(), which bumps its
    version, so a handle loaded now stays good (the cache checks gen/version).
    """
    handle = cache.get(idx)
    if handle is not None and handle._gen == gen:
        return
    try:
        work_handle_for_exec(rt, idx - 1, gen, cache)
    except Exception:
        pass                      # _execute reports it when the work runs


def _execute(rt: Runtime, kbase: int, idx: int, base: int, name: str,
             cache: dict[int, KthreadWork]) -> None:
    """Run work ``idx`` (slot index + 1, its record at ``base``) and count it."""
    mem = rt.mem
    gen = mem.load32(base)
    handle = cache.get(idx)
    if handle is None or handle._gen != gen or handle._version != mem.load32(base + W.version):
        try:
            handle = work_handle_for_exec(rt, idx - 1, gen, cache)
        except Exception:
            _report(rt, kbase, idx, name, None)
            return
    traced = _trace.ENABLED
    if traced:
        fname = getattr(handle._func, "__qualname__", "?")
        _trace.work_execute_start(work_id(idx - 1, gen), fname, mem.load64(base + W.flow))
    try:
        handle._func(handle)  # type: ignore[misc]  # set by work_handle_for_exec()
    except Exception:
        _report(rt, kbase, idx, name, handle)
    mem.fetch_add64(base + W.runs, 1)
    mem.fetch_add64(kbase + K.executed, 1)
    if traced:
        _trace.work_execute_end(work_id(idx - 1, gen), fname)


def _report(rt: Runtime, kbase: int, idx: int, name: str, handle: KthreadWork | None) -> None:
    """A work raised: print the traceback with the worker's name, keep it, go on."""
    import traceback   # an error path: a worker rarely needs it
    what = getattr(getattr(handle, "_func", None), "__qualname__", "a work")
    text = (f"kproc: work {what} on worker {name!r} (pid {os.getpid()}) raised:\n"
            + traceback.format_exc())
    sys.stderr.write(text)
    store_traceback(rt, idx - 1, sys.exc_info()[1], text)
    rt.mem.fetch_add64(kbase + K.errors, 1)
