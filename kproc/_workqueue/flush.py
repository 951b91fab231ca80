"""kthread_flush_work() and kthread_flush_worker(): flush markers and waiting for them.

Mirrors ``kthread_flush_work`` and ``kthread_flush_worker`` (kernel/kthread.c
6.15): a flush marker -- a WK_FLUSH work whose completion the worker
completes when it meets the marker on its list -- goes right behind the work
(or at the head of the list if the work is running, or at the tail for a
whole-worker flush), and the flusher waits for it.  A delayed work whose timer
is pending is waited for through its timer: the marker hangs on the work
(``lists.add_flusher``) and follows it onto the work list at expiry (the
kernel would put the marker on its delayed list, where nothing runs it).

Races prevented:

* Due timers are fired before the marker is placed, so a work whose timer
  expired before the flush is on the list, and waited for.
* The marker is allocated before the lock is taken (allocation takes the arena
  lock), and freed only once it has run (the worker unlinked it).
* A flush waiting on a worker whose kthread died ends with KthreadError(ESRCH)
  at the next tick instead of hanging (SPEC §5); the marker, maybe still linked
  on the dead worker's list, is left orphan for destroy instead of freed.
* A flush from the worker's own kthread would wait for itself forever: it
  warns and returns instead.

Runs in the caller: any process of the runtime but the worker's own kthread.
"""

from __future__ import annotations

import errno
import time

from .._core import layout as L
from .._core.errors import KthreadError, kernel_warn, warn_on_once
from .._core.hung_task import HungTask, task_text
from .._sched.completion import wait_at
from .._core.runtime import Runtime
from .handles import KthreadWork, KthreadWorker, resolve_work, resolve_worker
from .lists import Locked, insert_work, add_flusher, tied_worker
from .lifetime import alloc_work_slot
from .timers import run_timers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal

__all__ = ["kthread_flush_work", "kthread_flush_worker", "flush_work_at", "own_worker"]

W = L.WORK
K = L.WORKER
T = L.TASK


def _alloc_marker(rt: Runtime) -> tuple[int, int]:
    """A slot for a flush marker, never ENOMEM: one of the marker slots reserved past
    the user's works (``arena.marker_slots``), else a user slot; when every one is
    taken (more flushers at once than kthreads + 64), wait until one is freed.
    (The kernel's marker lives on the flusher's stack: a flush cannot fail.)
    """
    while True:
        try:
            return alloc_work_slot(rt, L.WK_FLUSH, "no slot left for a flush marker")
        except KthreadError as exc:
            if exc.errno != errno.ENOMEM:
                raise
        rt.check_alive()
        time.sleep(0.001)


def own_worker(rt: Runtime, kbase: int) -> bool:
    """True if the caller is the worker's own kthread (a wait would deadlock)."""
    me = rt.self_base
    if me is None:
        return False
    t = rt.mem.load32(kbase + K.task)
    return bool(t) and rt.arena.task_off(t - 1) == me


def _worker_dead_check(rt: Runtime, kbase: int) -> Callable[[], None]:
    """A peer check for waits on a worker: raise once its kthread is gone."""
    mem = rt.mem
    t = mem.load32(kbase + K.task)
    tgen = mem.load32(kbase + K.task_gen)

    def check() -> None:
        if not t:
            return None
        tbase = rt.arena.task_off(t - 1)
        if mem.load32(tbase + T.gen) != tgen or \
                mem.load32(tbase + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD, L.SLOT_FREE):
            raise KthreadError(errno.ESRCH, "the worker's kthread died while a flush was "
                               "waiting for it")
        return None
    return check


def _hung(rt: Runtime, kbase: int, fn_name: str) -> HungTask:
    """The hung-task check of a flush waiting on the worker at ``kbase``."""
    t = rt.mem.load32(kbase + K.task)
    who = task_text(rt, rt.arena.task_off(t - 1)) if t else "a worker without a kthread"
    return HungTask(fn_name, "to run the flush marker (the works before it are still "
                    "running)", who)


def _wait_marker(rt: Runtime, kbase: int, midx: int, mgen: int, fn_name: str) -> None:
    """Wait for flush marker ``midx`` to be run, then free it (kthread_flush_work's wait)."""
    mbase = rt.arena.work_off(midx)
    try:
        wait_at(rt, mbase + W.done, None, "uninterruptible", peer=_worker_dead_check(rt, kbase),
                hung=_hung(rt, kbase, fn_name))
    except BaseException:
        # The marker may still be linked on a dead worker's list: leave it to
        # destroy (or the owner-death sweep) instead of freeing a linked slot.
        rt.mem.fetch_or32(mbase + W.flags, L.WF_ORPHAN)
        raise
    # Whoever completed the marker unlinked it first, under the lock, and
    # nothing touches it after: a marker still linked here is a broken list.
    if rt.mem.load32(mbase + W.where) != L.ON_NONE:
        rt.mem.fetch_or32(mbase + W.flags, L.WF_ORPHAN)
        warn_on_once(True, f"flush marker {midx + 1} was completed while still linked")
        return
    rt.arena.free_work(midx, mgen)


def kthread_flush_work(work: KthreadWork) -> None:
    """kthread_flush_work - wait for a work's current execution to finish.

    If @work is queued, a flush marker goes right behind it; if it is
    running, at the head of the list; the call returns once the marker has
    run.  If it is idle, returns at once.  A delayed work whose timer is
    pending is waited for through its timer and run (the kernel would put the
    marker on its delayed list, where nothing runs it).
    Context: any process of the runtime but the worker's own kthread (there:
    KernelWarning, no wait); may block.  Return: None.
    Raises: TypeError; KthreadError(ESRCH) (stale work, destroyed worker,
    the worker's kthread died while waiting).
    """
    rt, base = resolve_work(work)
    kbase = tied_worker(rt, base)
    if kbase is None:
        return
    flush_work_at(rt, kbase, work._idx + 1, "kthread_flush_work")


def flush_work_at(rt: Runtime, kbase: int, idx: int, fn_name: str) -> None:
    """Flush work ``idx`` (index + 1) on the worker at ``kbase``: the body of
    kthread_flush_work(), also the wait of a cancel_sync for a running work.

    Context: no lock held; may block.  Return: None.
    """
    mem = rt.mem
    base = rt.arena.work_off(idx - 1)
    midx, mgen = _alloc_marker(rt)
    own = own_worker(rt, kbase)
    with Locked(rt, kbase) as lk:
        run_timers(lk)
        where = mem.load32(base + W.where)
        pos: int | Literal["timer"] | None      # where the marker goes: before, timer, none
        if where == L.ON_WORKLIST:
            pos = mem.load32(base + W.next) or -1
        elif where == L.ON_TIMER:
            pos = "timer"
        elif mem.load32(kbase + K.current) == idx:
            pos = mem.load32(kbase + K.head) or -1
        else:
            pos = None
        if pos is not None and not own:
            if pos == "timer":
                add_flusher(lk, idx, midx + 1)
            elif not insert_work(lk, midx + 1, max(pos, 0)):
                pos = None            # refused (warned): nothing will run the marker
    if pos is None or own:
        rt.arena.free_work(midx, mgen)
        if pos is not None:
            kernel_warn(f"{fn_name}() called from the worker's own kthread would wait "
                        "for itself forever; not waiting", stacklevel=4)
        return
    _wait_marker(rt, kbase, midx, mgen, fn_name)


def kthread_flush_worker(worker: KthreadWorker) -> None:
    """kthread_flush_worker - wait for every work queued on @worker so far.

    Context: any process of the runtime but the worker's own kthread
    (KernelWarning, no wait); may block.  Return: None.
    Raises: TypeError; KthreadError(ESRCH) (destroyed worker; its kthread died).
    """
    rt, kbase = resolve_worker(worker)
    if own_worker(rt, kbase):
        kernel_warn("kthread_flush_worker() called from the worker's own kthread would "
                    "wait for itself forever; not waiting", stacklevel=3)
        return
    midx, mgen = _alloc_marker(rt)
    with Locked(rt, kbase) as lk:
        run_timers(lk)          # expired works were queued before us
        placed = insert_work(lk, midx + 1)
    if not placed:
        rt.arena.free_work(midx, mgen)    # refused (warned): nothing will run it
        return
    _wait_marker(rt, kbase, midx, mgen, "kthread_flush_worker")
