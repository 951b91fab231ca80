"""Everything done under ``worker->lock``: the work list, the timer list's links, ties.

A worker is a WORKER record in the arena: a robust mutex (``worker->lock``),
the work list, the delayed-work timer list, ``current_work`` and counters.
Works are WORK records linked by slot index + 1 through their
``prev``/``next`` node; ``where`` says which list the node is on
(``list_empty(&work->node)`` is ``where == ON_NONE``).  Every list change
happens under the worker's lock, from whichever process of the runtime asks:
the caller, a kthread, a work running on this very worker.  Every helper
here that needs the lock takes the lock token, :class:`Locked`, first.

The list primitives themselves -- link, unlink, pop, fire the timers -- are
written once, in C (``native/worklist.c``), and reached here as ``Mem.wl_*``
(``kproc._core.pymem`` supplies the same methods without the extension): the
C fast paths and this slow path run the very same code on the lists.  What
stays in Python is policy: which list, where in it, ties, markers, orphans.

Mirrors: ``kthread_insert_work`` and ``kthread_insert_work_sanity_check``,
the list half of ``__kthread_cancel_work``, the pop of ``kthread_worker_fn``
(flush markers met on the way are completed there, under the lock).

Invariants, checked in code: the lock is held by the calling thread
(``lockdep_assert_held``) and a work being linked is on no list
(``WARN_ON_ONCE(!list_empty)``) -- both checked by every ``wl_*`` call, with
every link followed; a work is tied to no other worker; a flush marker
waiting on a timer is on no list.  A broken one is "can't happen": it goes
through ``warn_on_once`` (which raises under ``KPROC_STRICT=1``) and the
operation is refused rather than corrupt the list further.

Races prevented:

* Lost wake-up: a queuer asks for a wake-up after linking when
  ``current_work`` is empty, and the wake is done after unlocking, so the
  worker does not wake only to block on the lock its waker still holds.
* A flush marker is never ``current_work``: the worker completes markers while
  it holds the lock, so a marker slot freed by its flusher cannot be mistaken
  for a running work when it is recycled.
* An orphan work (its owning handle gone) is freed only by whoever makes it
  idle, under the lock, so a work is never freed while linked or running.

Runs in every process of the runtime: the caller, any kthread, the worker's
kthread.
"""

from __future__ import annotations

import errno

from .._core import layout as L
from .._core import trace as _trace
from .._core.arena import MutexGuard
from .._core.errors import KthreadError, warn_on_once
from .._core.runtime import Runtime
from .._sched.schedule import wake_up_state
from .._sched.task import TaskState
from .fastpath import fast_paths, lock_spin_ns
from .tracepoints import trace_queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._core.memlike import MemLike  # typing only (a Protocol)

__all__ = ["Locked", "wake_worker", "refused", "node_off", "link_before", "unlink",
           "insert_sanity_check", "insert_work", "cancel_work_locked", "pop_locked",
           "drop_all_locked", "tie_locked", "tied_worker", "idle_locked",
           "free_if_orphan_locked", "add_flusher", "complete_flushers"]

W = L.WORK
K = L.WORKER
T = L.TASK
HEADS = {L.ON_WORKLIST: K.head, L.ON_TIMER: K.thead}


class Locked(MutexGuard):
    """``raw_spin_lock(&worker->lock)`` as a context manager: the lock token.

    Remembers a wake-up to do (``wake``), done after unlocking, so the worker
    does not wake only to block on the lock its waker still holds.  Making
    one sets up the ``wl_*`` primitives of this process, once per runtime.
    The lock is taken and released by ``MutexGuard`` (in C), so a
    KeyboardInterrupt cannot fall between taking it and entering the block.
    """

    __slots__ = ("rt", "mem", "kbase", "wake")
    rt: Runtime
    mem: MemLike
    kbase: int
    wake: bool

    def __init__(self, rt: Runtime, kbase: int) -> None:
        if rt.wq_fast is None:
            fast_paths(rt)
        super().__init__(rt.mem, kbase + K.lock, lock_spin_ns())
        self.rt, self.mem, self.kbase, self.wake = rt, rt.mem, kbase, False

    def _unlocked(self) -> None:
        # MutexGuard.__exit__ calls this once the lock is released.
        if self.wake:
            self.wake = False
            wake_worker(self.rt, self.kbase)


def wake_worker(rt: Runtime, kbase: int) -> None:
    """wake_up_process(worker->task), if the worker has a live task."""
    mem = rt.mem
    t = mem.load32(kbase + K.task)
    if not t:
        return
    tbase = rt.arena.task_off(t - 1)
    if mem.load32(tbase + T.gen) == mem.load32(kbase + K.task_gen):
        wake_up_state(rt, tbase, TaskState.TASK_INTERRUPTIBLE | TaskState.TASK_UNINTERRUPTIBLE)


# -- sanity checks ------------------------------------------------------------------
#
# A check builds its message only once it has failed: the common case is one
# load and one compare.

def _broken(message: str) -> bool:
    """A list invariant does not hold: warn_on_once() it.  Return: False (refuse)."""
    warn_on_once(True, message)
    return False


def refused(exc: Exception) -> bool:
    """A ``wl_*`` primitive refused (RuntimeError: lock not held, corrupt lists;
    ValueError: not the state it needs): warn_on_once() it.  Return: False.
    """
    return _broken(f"the work lists refused: {exc}")


def node_off(lk: Locked, idx: int, what: str) -> int | None:
    """Offset of work ``idx`` (index + 1), or None (warned) if it names no work slot."""
    if 0 < idx <= lk.rt.arena.params.max_works:
        return lk.rt.arena.work_off(idx - 1)
    _broken(f"corrupt work list: {what} {idx} is not a work slot")
    return None


def insert_sanity_check(lk: Locked, base: int, idx: int) -> bool:
    """kthread_insert_work_sanity_check(): False (warned) if work ``idx`` is tied to
    another worker; its other two checks (lock held, list_empty) are wl_link_before()'s.

    Flush markers are tied to none.  Context: worker lock held.
    """
    mem = lk.mem
    tied = mem.load32(base + W.worker)
    if tied and (tied != lk.rt.arena.worker_idx(lk.kbase) + 1
                 or mem.load32(base + W.worker_gen) != mem.load32(lk.kbase + K.gen)):
        return _broken(f"work {idx} is inserted on a worker it is not tied to")
    return True


# -- list primitives ----------------------------------------------------------------

def link_before(lk: Locked, where: int, idx: int, before: int) -> bool:
    """list_add_tail(): link work ``idx`` before ``before`` (0: at the tail) of the list
    ``where`` names (ON_WORKLIST, ON_TIMER); records and counts it (``wl_link_before``).

    Context: worker lock held.  Return: False (warned, nothing changed) if refused.
    """
    try:
        lk.mem.wl_link_before(lk.kbase, where, idx, before)
    except (RuntimeError, ValueError) as exc:
        return refused(exc)
    return True


def unlink(lk: Locked, idx: int, where: int) -> bool:
    """list_del_init() of work ``idx`` from the list ``where`` names (``wl_unlink``).

    Context: worker lock held.  Return: False (warned, nothing changed) if it
    is not on that list or the list is corrupt.
    """
    try:
        lk.mem.wl_unlink(lk.kbase, where, idx)
    except (RuntimeError, ValueError) as exc:
        return refused(exc)
    return True


def insert_work(lk: Locked, idx: int, before: int = 0) -> bool:
    """kthread_insert_work(): put work ``idx`` (index + 1) on the work list.

    Links before ``before`` (0: tail), ties the work to the worker, and asks
    for a wake-up if the worker is idle.  Context: worker lock held.
    Return: True; False (warned, nothing changed) if a sanity check failed.
    """
    rt, mem, kbase = lk.rt, lk.mem, lk.kbase
    base = node_off(lk, idx, "work")
    if base is None or not insert_sanity_check(lk, base, idx) or \
            not link_before(lk, L.ON_WORKLIST, idx, before):
        return False
    if mem.load32(base + W.kind) != L.WK_FLUSH:
        tie_locked(lk, base)
        if _trace.ENABLED:
            trace_queue(rt, kbase, idx, base)
    if not mem.load32(kbase + K.current):
        lk.wake = True
    return True


def cancel_work_locked(lk: Locked, idx: int) -> bool:
    """__kthread_cancel_work(): take work ``idx`` off whichever list it is on.

    A timer-pending work's flush markers are completed.  Context: worker lock
    held.  Return: True if it was pending.
    """
    where = lk.mem.load32(lk.rt.arena.work_off(idx - 1) + W.where)
    if where == L.ON_NONE or not unlink(lk, idx, where):
        return False
    if where == L.ON_TIMER:
        complete_flushers(lk, idx)
    return True


def pop_locked(lk: Locked, prev_idx: int) -> int:
    """Finish ``prev_idx``, pop the next work to run and make it current_work.

    Flush markers met on the way are completed here, under the lock.  Also
    frees ``prev_idx`` if it became an idle orphan.
    Context: worker lock held, the worker's kthread.
    Return: index + 1, or 0 (nothing to run, or a corrupt list: warned).
    """
    rt, mem, kbase = lk.rt, lk.mem, lk.kbase
    if prev_idx:
        mem.store32(kbase + K.current, 0)
        free_if_orphan_locked(lk, prev_idx - 1)
    while True:
        try:
            idx = mem.wl_pop(kbase)
        except (RuntimeError, ValueError) as exc:
            refused(exc)
            return 0
        if not idx:
            return 0
        base = rt.arena.work_off(idx - 1)
        if mem.load32(base + W.kind) == L.WK_FLUSH:
            rt.waits.completion_complete(base + W.done, True)
            continue
        mem.store32(kbase + K.current, idx)
        return idx


def drop_all_locked(lk: Locked) -> int:
    """Unlink every work and marker of a stopped worker (kthread_destroy_worker's end).

    Markers and flushers are completed; orphans are freed.  A corrupt list
    is abandoned where it breaks (warned): the worker is freed next.
    Context: worker lock held, its kthread gone.  Return: the works dropped.
    """
    rt, mem, kbase = lk.rt, lk.mem, lk.kbase
    left = 0
    for where, head_f in HEADS.items():
        while (idx := mem.load32(kbase + head_f)):
            if not unlink(lk, idx, where):
                break
            base = rt.arena.work_off(idx - 1)
            if mem.load32(base + W.kind) == L.WK_FLUSH:
                rt.waits.completion_complete(base + W.done, True)
                continue
            left += 1
            complete_flushers(lk, idx)
            if mem.load32(base + W.flags) & L.WF_ORPHAN:
                rt.arena.free_work(idx - 1, mem.load32(base + W.gen))
    return left


# -- ties and slot lifetime under the lock --------------------------------------------

def tie_locked(lk: Locked, base: int) -> None:
    """work->worker = worker, for the work at ``base`` (stores only when untied:
    insert_sanity_check() has refused a tie to another worker).

    Context: worker lock held.
    """
    mem = lk.mem
    if not mem.load32(base + W.worker):
        mem.store32(base + W.worker, lk.rt.arena.worker_idx(lk.kbase) + 1)
        mem.store32(base + W.worker_gen, mem.load32(lk.kbase + K.gen))


def tied_worker(rt: Runtime, base: int) -> int | None:
    """The offset of the worker a work was last queued on, or None if never queued.

    Context: any; no lock needed (the tie only changes under the lock of the
    worker it names, and a destroyed worker's generation has moved on).
    Raises: KthreadError(ESRCH) if that worker has been destroyed.
    """
    mem = rt.mem
    w = mem.load32(base + W.worker)
    if not w:
        return None
    kbase = rt.arena.worker_off(w - 1)
    if mem.load32(kbase + K.gen) != mem.load32(base + W.worker_gen) or \
            not mem.load32(kbase + K.inuse):
        raise KthreadError(errno.ESRCH, "the work was last queued on a worker that has "
                           "been destroyed; kthread_init_work() it before using it again")
    return kbase


def queuing_blocked(lk: Locked, base: int) -> bool:
    """kthread.c queuing_blocked(): the work at ``base`` is pending or being cancelled.

    Context: worker lock held.  Return: True if it may not be queued now.
    """
    mem = lk.mem
    return mem.load32(base + W.where) != L.ON_NONE or bool(mem.load32(base + W.canceling))


def idle_locked(lk: Locked, base: int, idx: int) -> bool:
    """True if work ``idx`` is on no list, not being cancelled and not running.

    Context: worker lock held (of the worker it is tied to).
    """
    return not queuing_blocked(lk, base) and lk.mem.load32(lk.kbase + K.current) != idx + 1


def free_if_orphan_locked(lk: Locked, idx: int) -> None:
    """Free work slot ``idx`` if its owning handle is gone and it has become idle.

    Context: worker lock held.
    """
    mem = lk.mem
    base = lk.rt.arena.work_off(idx)
    if mem.load32(base + W.flags) & L.WF_ORPHAN and idle_locked(lk, base, idx):
        lk.rt.arena.free_work(idx, mem.load32(base + W.gen))


# -- flush markers waiting on a timer-pending work ---------------------------------------

def add_flusher(lk: Locked, idx: int, marker: int) -> None:
    """Make flush marker ``marker`` wait for timer-pending work ``idx``.

    The markers of a work are chained through their (unused) ``next`` link.
    Context: worker lock held.
    """
    mem, work_off = lk.mem, lk.rt.arena.work_off
    base = work_off(idx - 1)
    mem.store32(work_off(marker - 1) + W.next, mem.load32(base + W.flushers))
    mem.store32(base + W.flushers, marker)


def complete_flushers(lk: Locked, idx: int) -> None:
    """Timer-pending ``idx`` was cancelled: its flushers have nothing left to wait for.

    Context: worker lock held.
    """
    mem, waits = lk.mem, lk.rt.waits
    base = lk.rt.arena.work_off(idx - 1)
    m = mem.load32(base + W.flushers)
    mem.store32(base + W.flushers, 0)
    while m:
        mbase = node_off(lk, m, "flush marker")
        if mbase is None:
            return
        if mem.load32(mbase + W.kind) != L.WK_FLUSH or mem.load32(mbase + W.where) != L.ON_NONE:
            _broken(f"flush marker {m} waiting on the timer of {idx} is left linked")
            return
        m = mem.load32(mbase + W.next)
        mem.store32(mbase + W.next, 0)
        waits.completion_complete(mbase + W.done, True)
