"""Task states, sleeping and waking (kernel: schedule(), try_to_wake_up()).

Each kthread publishes its state in its task slot and sleeps on its own
``wake_seq`` word.  The kernel's lost-wake-up-free pattern holds::

    set_current_state(TASK_INTERRUPTIBLE)      # store state
    if not condition: schedule()               # sleeps only while state != RUNNING

because :func:`wake_up_state` changes the *state* first (compare-and-swap to
TASK_RUNNING) and only then bumps ``wake_seq`` and wakes the futex, while
:func:`schedule` snapshots ``wake_seq`` *before* reading the state: a wake-up
between ``set_current_state`` and ``schedule`` leaves the state RUNNING and
``schedule`` returns at once; one that lands after the snapshot makes the
futex wait return.

kthread_stop()'s notification (the kernel's TIF_NOTIFY_SIGNAL) is
``KTHREAD_SHOULD_STOP`` itself: once set, interruptible sleeps return at once
(``signal_pending()``).  Its wake-up is wake_up_process()'s: it ends a
``schedule()`` or ``schedule_timeout()`` in TASK_INTERRUPTIBLE or
TASK_UNINTERRUPTIBLE (with the time left), so a sleep that loops until its
condition (``msleep``, ``wait_for_completion``) runs to its end.  A wake-up
(stop's included) also bumps the word a completion wait published in
``wait_off``, so the waiter shows its state again at once
(:func:`notify_signal`).
"""

from __future__ import annotations

import math
import time

from .._core import layout as L
from .._core.checks import check_seconds
from .._core.runtime import Runtime, current_runtime
from .task import TaskState, TASK_NORMAL

__all__ = ["wake_up_state", "wake_up_process_raw", "notify_signal", "need_current",
           "set_current_state", "schedule", "schedule_timeout",
           "schedule_timeout_interruptible", "schedule_timeout_uninterruptible",
           "msleep", "msleep_interruptible", "signal_pending"]

T = L.TASK
RUNNING = TaskState.TASK_RUNNING
INTERRUPTIBLE = TaskState.TASK_INTERRUPTIBLE
UNINTERRUPTIBLE = TaskState.TASK_UNINTERRUPTIBLE
PARKED = TaskState.TASK_PARKED
FROZEN = TaskState.TASK_FROZEN
SETTABLE_STATES = (RUNNING, INTERRUPTIBLE, UNINTERRUPTIBLE)


def need_current(fn_name: str) -> tuple[Runtime, int]:
    """(runtime, own slot offset) of the calling kthread.

    Raises: RuntimeError when not called from a kthread.
    """
    rt = current_runtime()
    if rt is None or rt.self_base is None:
        raise RuntimeError(f"{fn_name}() must be called from a kthread (a process created "
                           "by kthread_create/kthread_run); it was called from a process "
                           "that is not one")
    return rt, rt.self_base


def wake_up_state(rt: Runtime, base: int, mask: int) -> bool:
    """try_to_wake_up(): move a task sleeping in a state of ``mask`` to RUNNING.

    A task waiting on a completion is woken too, on its own word (``wait_off``):
    it publishes its state again and sleeps on, as do_wait_for_common() loops
    back to __set_current_state() (its place in the queue is kept).
    Return: True if the task was woken.
    """
    mem = rt.mem
    while True:
        state = mem.load32(base + T.state)
        if not state & mask:
            return False
        if mem.cmpxchg32(base + T.state, state, RUNNING) == state:
            break
    mem.fetch_add32(base + T.wake_seq, 1)
    # The sleeper publishes ``sleeping`` before its futex compare and we read
    # it after the bump (both sequentially consistent): if we see 0, its
    # compare will see the new wake_seq.  Saves the syscall of waking nobody.
    if mem.load32(base + T.sleeping):
        rt.waits.wake(base + T.wake_seq)
    notify_signal(rt, base)
    return True


def wake_up_process_raw(rt: Runtime, base: int) -> bool:
    """wake_up_process() on a slot: wake TASK_NORMAL sleepers."""
    return wake_up_state(rt, base, TASK_NORMAL)


def notify_signal(rt: Runtime, base: int) -> None:
    """Wake the completion wait the task published in ``wait_off``, if any
    (kthread_stop()'s TIF_NOTIFY_SIGNAL, and every wake-up of the task)."""
    off = rt.mem.load32(base + T.wait_off)
    if off:
        rt.mem.fetch_add32(off, 1)
        rt.waits.wake(off)


def signal_pending(rt: Runtime, base: int) -> bool:
    """signal_pending(): kthread_stop() was called on this kthread."""
    return bool(rt.mem.load32(base + T.flags) & L.KF_SHOULD_STOP)


def set_current_state(state: int) -> None:
    """set_current_state(): publish the calling kthread's state.

    @state: TASK_RUNNING, TASK_INTERRUPTIBLE or TASK_UNINTERRUPTIBLE.
    Context: kthread.  Raises: ValueError on another state; RuntimeError
    outside a kthread.
    """
    if state not in SETTABLE_STATES or isinstance(state, bool):
        raise ValueError("state must be TASK_RUNNING, TASK_INTERRUPTIBLE or "
                         f"TASK_UNINTERRUPTIBLE, not {state!r}")
    rt, base = need_current("set_current_state")
    rt.mem.store32(base + T.state, int(state))


def _sleep(rt: Runtime, base: int, deadline_ns: int | None) -> bool:
    """Sleep until woken (state RUNNING), signalled, or ``deadline_ns`` passes.

    Return: True if the deadline passed (the task is then set RUNNING, as the
    kernel's process_timeout() wakes it).
    """
    return _sleep_loop(rt, base, deadline_ns)


def _sleep_loop(rt: Runtime, base: int, deadline_ns: int | None) -> bool:
    mem, waits = rt.mem, rt.waits
    seq_off = base + T.wake_seq
    while True:
        seq = mem.load32(seq_off)
        state = mem.load32(base + T.state)
        if state == RUNNING:
            return False
        if state == INTERRUPTIBLE and signal_pending(rt, base):
            mem.cmpxchg32(base + T.state, state, RUNNING)
            continue
        if deadline_ns is None:
            timeout = -1
        else:
            timeout = deadline_ns - time.monotonic_ns()
            if timeout <= 0:
                mem.cmpxchg32(base + T.state, state, RUNNING)
                if mem.load32(base + T.state) == RUNNING:
                    return True
                continue
        spin = waits.spin_ns > 0 and state not in (PARKED, FROZEN)
        if spin and waits.wait(seq_off, seq, 0, spin=True):
            continue            # woken while spinning: no waker paid for a futex wake
        # ``sleeping`` only for the futex wait itself: a waker reads it after
        # bumping wake_seq, and futex_wait() re-reads wake_seq, so one of the
        # two always sees the other (a spinning sleeper needs no system call).
        mem.store32(base + T.sleeping, 1)
        try:
            waits.wait(seq_off, seq, timeout, spin=False)
        finally:
            mem.store32(base + T.sleeping, 0)


def schedule() -> None:
    """schedule(): sleep in the current state until woken.

    Returns at once if the state is TASK_RUNNING, or TASK_INTERRUPTIBLE with
    kthread_stop() pending.  Context: kthread; may block forever.
    """
    rt, base = need_current("schedule")
    _sleep(rt, base, None)


def schedule_timeout(seconds: float) -> float:
    """schedule_timeout(): sleep in the current state for at most ``seconds``.

    Context: kthread.  Return: seconds left (0.0 if the time ran out).
    ``math.inf`` sleeps like schedule() and returns inf.
    Raises: ValueError for a negative or NaN timeout; TypeError.
    """
    check_seconds("timeout", seconds, infinite=True)
    rt, base = need_current("schedule_timeout")
    if math.isinf(seconds):
        _sleep(rt, base, None)
        return math.inf
    deadline = time.monotonic_ns() + int(seconds * 1e9)
    if _sleep(rt, base, deadline):
        return 0.0
    return max(0.0, (deadline - time.monotonic_ns()) / 1e9)


def schedule_timeout_interruptible(seconds: float) -> float:
    """schedule_timeout() in TASK_INTERRUPTIBLE (ended early by kthread_stop()).

    Context: kthread.  Return: seconds left, 0.0 on timeout.
    """
    check_seconds("timeout", seconds, infinite=True)
    set_current_state(INTERRUPTIBLE)
    return schedule_timeout(seconds)


def schedule_timeout_uninterruptible(seconds: float) -> float:
    """schedule_timeout() in TASK_UNINTERRUPTIBLE.  Context: kthread."""
    check_seconds("timeout", seconds, infinite=True)
    set_current_state(UNINTERRUPTIBLE)
    return schedule_timeout(seconds)


def msleep(ms: float) -> None:
    """msleep(): sleep ``ms`` milliseconds, uninterruptibly (runs to its end).

    Context: kthread, or any process (where it is a plain sleep).
    """
    check_seconds("msecs", ms, unit="ms")
    rt = current_runtime()
    if rt is None or rt.self_base is None:
        time.sleep(ms / 1000)
        return
    deadline = time.monotonic() + ms / 1000
    while (left := deadline - time.monotonic()) > 0:
        schedule_timeout_uninterruptible(left)


def msleep_interruptible(ms: float) -> int:
    """msleep_interruptible(): sleep up to ``ms`` ms; kthread_stop() ends it early.

    Context: kthread, or any process (a plain sleep there).
    Return: milliseconds left (int, rounded up), 0 if the sleep ran out.
    """
    check_seconds("msecs", ms, unit="ms")
    rt = current_runtime()
    if rt is None or rt.self_base is None:
        time.sleep(ms / 1000)
        return 0
    deadline = time.monotonic() + ms / 1000
    while (left := deadline - time.monotonic()) > 0 and not signal_pending(rt, rt.self_base):
        schedule_timeout_interruptible(left)
    left = deadline - time.monotonic()
    return max(0, math.ceil(left * 1000)) if signal_pending(rt, rt.self_base) else 0
