"""Completions in shared memory (kernel: kernel/sched/completion.c).

A completion is a 16-byte record (``done``, ``seq``, ``sleepers``): ``complete``
adds one to ``done`` and wakes one sleeper, ``complete_all`` sets it to
UINT_MAX (every present and future waiter passes until ``reinit``), a wait
takes one.  The hot path (try, spin, futex) is one call into the backend.

User completions (:class:`Completion`) live in a pool of generation-checked
slots; the process that created one owns it and frees its slot when the
object is garbage collected; pickled copies handed to other processes name
the same slot and raise once it is freed.  Internal completions (a task's
``done``, ``parked``, ``exited``) live in the task slot.

Every blocking wait ticks (``TICK_NS``) to check its peers: the runtime
(kthreadd alive) and, for internal waits, a caller-supplied ``peer`` check,
so a dead peer ends the wait instead of hanging it.

A wait that has to sleep queues itself, first in, first out
(``_core/swait.py``): complete() wakes the waiters one at a time in the order
they queued, on both backends.  In a kthread every wait publishes its node's
word (``wait_off``): a wake-up (wake_up_process, kthread_stop) wakes it, and
the waiter publishes its state again and sleeps on, in its place, unless the
wait is interruptible and kthread_stop() was called.
"""

from __future__ import annotations

import collections
import math
import os
import time

from .._core import layout as L
from .._core.checks import check_seconds
from .._core.errors import KthreadError, stale
from .._core.handle import Handle
from .._core.runtime import Runtime, get_runtime, TICK_NS
from .._core.swait import take_grant, thread_node
from .task import TaskState

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal

    from .._core.hung_task import HungTask  # typing only
    from .._core.wait import RawWait  # typing only

    WaitMode = Literal["uninterruptible", "interruptible", "killable"]

__all__ = ["Completion", "init_completion", "reinit_completion", "complete", "complete_all",
           "wait_for_completion", "wait_for_completion_timeout",
           "wait_for_completion_interruptible", "wait_for_completion_killable",
           "try_wait_for_completion", "completion_done", "completion_waiters", "wait_at",
           "ERESTARTSYS"]

ERESTARTSYS = 512
C = L.COMPLETION
N = L.SWAIT
T = L.TASK

# Slots of completions collected while the arena lock may be held by this very
# thread (GC can run anywhere): freed at the next allocation instead.
_pending_free: collections.deque[tuple[Runtime, int, int]] = collections.deque()


class Completion(Handle):
    """A completion in shared memory (DECLARE_COMPLETION / init_completion).

    Picklable: any process of the runtime can complete or wait on it.
    Raises (constructor): KthreadError(ENOMEM) when the pool is full.
    """

    __slots__ = ("_off", "_gen_off", "_owner", "_complete", "_wait", "_spin", "__weakref__")
    _what = "completion"
    _off: int
    _gen_off: int
    _owner: int | None
    _complete: Callable[[int, bool, int, int], int]
    _wait: RawWait
    _spin: int

    def __init__(self) -> None:
        rt = get_runtime()
        while _pending_free:
            prt, idx, gen = _pending_free.popleft()
            if prt is rt and not rt.closed:
                rt.arena.free_completion(idx, gen)
        idx, gen, off = rt.arena.alloc_completion(os.getpid())
        self._bind(rt, idx, gen, off)
        self._owner = os.getpid()

    def _bind(self, rt: Runtime, idx: int, gen: int, off: int) -> None:
        self._rt = rt
        self._idx = idx
        self._gen = gen
        self._off = off
        self._gen_off = rt.arena.comp_slot_off(idx) + L.USERCOMP.gen
        # Cached for the hot path (complete / wait_for_completion): one call
        # each, the generation check included (the handle raises once stale).
        self._complete = rt.waits.completion_complete
        self._wait = rt.waits.raw_completion_wait()
        self._spin = rt.waits.spin_ns

    def __del__(self) -> None:
        try:
            if self._owner == os.getpid() and not self._rt.closed:
                _pending_free.append((self._rt, self._idx, self._gen))
        except AttributeError:
            pass

    def __repr__(self) -> str:
        try:
            done = self._rt.mem.load32(_check(self))
            return f"<Completion done={'ALL' if done == 0xFFFFFFFF else done}>"
        except KthreadError:
            return "<Completion (stale)>"


    @classmethod
    def _attach(cls, rt: Runtime, idx: int, gen: int) -> Completion:
        c = cls.__new__(cls)
        c._bind(rt, idx, gen, rt.arena.comp_slot_off(idx) + L.USERCOMP.comp)
        c._owner = None
        return c


def _check(c: object) -> int:
    """Offset of ``c``'s record; raises if ``c`` is not a live Completion."""
    if not isinstance(c, Completion):
        raise TypeError(f"expected a kproc.Completion, not {type(c).__name__}")
    rt = c._live_runtime()            # ESRCH once shut down (or in a forked child)
    if rt.mem.load32(c._gen_off) != c._gen:
        raise stale("completion")
    return c._off


def init_completion(c: Completion) -> None:
    """init_completion(): reset ``c`` to not done.  Context: any; no waiter may be
    sleeping on it (as in the kernel)."""
    off = _check(c)
    c._rt.mem.store32(off, 0)


def reinit_completion(c: Completion) -> None:
    """reinit_completion(): reset ``done`` to 0 (after complete_all). Context: any."""
    off = _check(c)
    c._rt.mem.store32(off, 0)


def complete(c: Completion) -> None:
    """complete(): let one waiter (present or future) through.  Context: any; never blocks."""
    if c.__class__ is not Completion or c._rt.closed or \
            c._complete(c._off, False, c._gen_off, c._gen) < 0:
        _check(c)                     # raises the right error


def complete_all(c: Completion) -> None:
    """complete_all(): let every present and future waiter through until reinit.

    Context: any; never blocks.
    """
    off = _check(c)
    c._rt.waits.completion_complete(off, True)


def try_wait_for_completion(c: Completion) -> bool:
    """try_wait_for_completion(): take ``c`` if done, without blocking.

    Return: True if taken, False if it was not done.
    """
    off = _check(c)
    return c._rt.waits.completion_try(off)


def completion_done(c: Completion) -> bool:
    """completion_done(): True if a wait on ``c`` would not block."""
    off = _check(c)
    return c._rt.waits.completion_done(off)


def wait_for_completion(c: Completion) -> None:
    """wait_for_completion(): wait (uninterruptibly) until ``c`` is completed.

    Context: any process of the runtime; blocks.
    Raises: KthreadError(ESRCH) if kthreadd dies meanwhile; KeyboardInterrupt
    and signal-handler exceptions propagate.
    """
    if c.__class__ is not Completion or c._rt.closed:
        _check(c)                     # raises the right error
    # Fast path: try, then spin (timeout 0: no sleep) before the full wait loop.
    got = c._wait(c._off, -1, 0, c._spin, c._gen_off, c._gen)
    if got == 1:
        return
    if got < 0:
        _check(c)
    wait_at(c._rt, c._off, None, "uninterruptible", _live(c))


def wait_for_completion_timeout(c: Completion, timeout: float) -> float:
    """wait_for_completion_timeout(): wait at most ``timeout`` seconds.

    Return: seconds left (> 0) if completed, 0 on timeout.
    Raises: ValueError for a negative/NaN timeout.
    """
    check_seconds("timeout", timeout, infinite=True)
    off = _check(c)
    rt = c._rt
    start = time.monotonic()
    if rt.waits.completion_try(off):
        return max(timeout, 1e-9)
    forever = math.isinf(timeout)               # allowed: waits like wait_for_completion
    if wait_at(rt, off, None if forever else timeout, "uninterruptible", _live(c)) is None:
        return 0
    return max(timeout - (time.monotonic() - start), 1e-9)


def wait_for_completion_interruptible(c: Completion) -> int:
    """wait_for_completion_interruptible(): as wait_for_completion, but in a
    kthread kthread_stop() ends it.

    Return: 0 when completed, -ERESTARTSYS (-512) when interrupted.
    """
    off = _check(c)
    rt = c._rt
    if rt.waits.completion_try(off):
        return 0
    return wait_at(rt, off, None, "interruptible", _live(c)) or 0  # untimed: never None


def wait_for_completion_killable(c: Completion) -> int:
    """wait_for_completion_killable(): wait until ``c`` is completed or a fatal
    signal comes.

    kthread_stop() does not end it: its TIF_NOTIFY_SIGNAL is a pending signal,
    not a fatal one (completion.c: the wait checks signal_pending_state(
    TASK_KILLABLE)).  A kthread's only fatal signal is SIGKILL, which ends
    its process.  Context: any process of the runtime; blocks.
    Return: 0 when completed.
    """
    off = _check(c)
    rt = c._rt
    if rt.waits.completion_try(off):
        return 0
    return wait_at(rt, off, None, "killable", _live(c)) or 0  # untimed: never None


def completion_waiters(c: Completion) -> list[int]:
    """The pids of the processes queued on ``c``, head (next to be woken) first.

    A snapshot read without the queue's lock (for ``kproc ps`` and tests).
    Context: any; never blocks.
    """
    off = _check(c)
    mem = c._rt.mem
    pids: list[int] = []
    node = mem.load32(off + C.head)
    while node and len(pids) < c._rt.arena.params.max_swait:
        pids.append(mem.load32(node + N.owner))
        node = mem.load32(node + N.next)
    return pids


def _live(c: Completion) -> Callable[[], None]:
    """A peer check for user completions: raise once ``c`` is freed."""
    def check() -> None:
        _check(c)
    return check


def wait_at(rt: Runtime, off: int, timeout: float | None, mode: WaitMode,
            peer: Callable[[], int | None] | None = None,
            hung: HungTask | None = None) -> int | None:
    """Wait on the completion record at ``off``; the slow path of every wait.

    The waiter queues its thread's node at the tail of the completion's queue
    and sleeps on the node's own word until complete() grants it a count,
    first in, first out (``_core/swait.py``).  A wake for another reason (the
    tick, a stray wake_up_process(), kthread_stop()'s notification) leaves
    the node where it is: the waiter keeps its place, publishes its state
    again (completion.c do_wait_for_common() loops back to
    __set_current_state()) and sleeps on.

    @timeout: seconds or None.  @mode: "uninterruptible", "interruptible" or
    "killable" (in a kthread, kthread_stop() ends only an interruptible wait:
    TIF_NOTIFY_SIGNAL is not a fatal signal).  @peer: called every tick;
    raises or returns a value to end the wait early (that value is returned).
    @hung: the hung-task check of a control call, ticked with the others.
    Return: 0 when acquired; -ERESTARTSYS when interrupted by kthread_stop();
    None on timeout; whatever ``peer`` returned if not None.  A count granted
    while the wait was giving up is taken: the result is then 0.
    """
    waits = rt.waits
    node = thread_node(rt.arena, waits.completion_dequeue, waits.completion_complete)
    if waits.completion_enqueue(off, node):
        return 0
    mem, me = rt.mem, rt.self_base
    if me is not None:
        mem.store32(me + T.wait_off, node + N.wake)
    try:
        verdict = _sleep_queued(rt, off, node, timeout, mode, peer, hung)
    except BaseException:
        if waits.completion_dequeue(off, node):
            waits.completion_complete(off, False)     # pass the count on
        raise
    finally:
        if me is not None:
            mem.store32(me + T.wait_off, 0)
            mem.store32(me + T.state, TaskState.TASK_RUNNING)
    if verdict != 0 and waits.completion_dequeue(off, node):
        return 0
    return verdict


def _sleep_queued(rt: Runtime, off: int, node: int, timeout: float | None, mode: WaitMode,
                  peer: Callable[[], int | None] | None, hung: HungTask | None) -> int | None:
    """Sleep with ``node`` queued on the completion at ``off`` until granted or given up."""
    mem, waits = rt.mem, rt.waits
    me = rt.self_base
    interruptible = mode == "interruptible" and me is not None
    state = TaskState.TASK_INTERRUPTIBLE if interruptible else TaskState.TASK_UNINTERRUPTIBLE
    wake_off = node + N.wake
    now = time.monotonic_ns()
    deadline = None if timeout is None else now + int(timeout * 1e9)
    next_check = now + TICK_NS
    while True:
        if me is not None:
            mem.store32(me + T.state, state)
        snap = mem.load32(wake_off)
        if take_grant(mem, off, node):
            return 0
        if interruptible and mem.load32(me + T.flags) & L.KF_SHOULD_STOP:  # type: ignore[operator]
            return -ERESTARTSYS
        now = time.monotonic_ns()
        if now >= next_check:
            next_check = now + TICK_NS
            rt.check_alive()
            if peer is not None and (verdict := peer()) is not None:
                return verdict
            if hung is not None:
                hung.check()
        tick = next_check - now
        if deadline is not None:
            if deadline <= now:
                return None
            tick = min(tick, deadline - now)
        waits.wait(wake_off, snap, tick, spin=False)
