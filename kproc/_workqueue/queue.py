"""kthread_queue_work(): the C fast path when it can, the checked Python path otherwise.

Mirrors ``kthread_queue_work`` (``queuing_blocked``: a work already pending or
being cancelled is not queued; ``kthread_insert_work``: link at the tail, tie
the work to the worker, wake an idle worker).

The fast path is the hot path of the whole package: its handles are trusted
after a few identity checks, the C extension (``fastpath``) does lock, link,
unlock and wake in one call, and nothing is looked up that a cached name can
give.  Whatever the fast path declines (a generation that differs, a work tied
elsewhere, a timer armed, tracing on, a busy lock) goes through
:func:`_queue_work_checked`, which validates everything, fires due timers and
links under the lock.

Races prevented: the pending test and the link happen under the worker lock,
so two processes queueing one work link it once; the wake-up follows the link
(lists' lost-wake-up rule).  Runs in the caller: any process of the runtime,
including a work running on this very worker.
"""

from .._core import layout as L
from .._core import trace as _trace
from .._core.errors import warn_on_once
from .fastpath import fast_paths, lock_spin_ns
from .handles import (KthreadWork, KthreadWorker, resolve_work, resolve_worker, same_runtime,
                      work_owner_check)
from .lists import Locked, insert_work, wake_worker
from .timers import run_timers

__all__ = ["kthread_queue_work"]

W = L.WORK
K = L.WORKER


def kthread_queue_work(worker, work):
    """kthread_queue_work - queue a kthread_work.

    @worker: target KthreadWorker; @work: KthreadWork (or the ``.work`` of a
    delayed work) to run on it, at the tail of its list.
    Context: any process of the runtime; does not sleep (holds the worker lock).
    Return: True if queued; False if it was already pending (on the work list
    or as a delayed work) or is being cancelled, or (with a KernelWarning) if
    it is tied to another worker.
    Raises: TypeError; KthreadError(ESRCH) for a destroyed worker, a stale
    work, or a work last queued on a destroyed worker.
    """
    # The fast path: handles valid, work idle or tied to this worker, no timer
    # armed, tracing off.  Everything else goes through _queue_work_checked().
    try:
        rt = worker._rt
        cq = (rt.wq_fast or fast_paths(rt))[0]
        if cq is not None and type(worker) is KthreadWorker and work._rt is rt and \
                isinstance(work, KthreadWork) and not rt.closed and not _trace.ENABLED:
            try:
                r = cq(worker._off, work._off, worker._idx + 1, worker._gen, work._gen,
                       lock_spin_ns(), rt.waits.name == "futex")
            except (RuntimeError, ValueError) as exc:
                warn_on_once(True, f"the C work_queue() failed: {exc}")
                return False
            if r > 0:
                if r == 2 and rt.waits.name != "futex":
                    wake_worker(rt, worker._off)
                return True
            if r == 0:
                return False
            return _queue_work_checked(worker, work)
    except AttributeError:
        return _queue_work_checked(worker, work)
    return _queue_work_py(worker, work)


def _queue_work_py(worker, work):
    """kthread_queue_work()'s fast path without the C extension."""
    try:
        rt = worker._rt
        mem = rt.mem
        kbase, base = worker._off, work._off
        fast = (type(worker) is KthreadWorker and isinstance(work, KthreadWork)
                and work._rt is rt and not rt.closed and not _trace.ENABLED
                and mem.load32(kbase) == worker._gen and mem.load32(base) == work._gen
                and mem.load32(kbase + K.inuse) and mem.load32(base + W.inuse))
    except AttributeError:
        fast = False
    if not fast:
        return _queue_work_checked(worker, work)
    widx = worker._idx + 1
    tied = mem.load32(base + W.worker)
    if tied and (tied != widx or mem.load32(base + W.worker_gen) != worker._gen):
        return _queue_work_checked(worker, work)
    idx = work._idx + 1
    lock = kbase + K.lock
    mem.mutex_lock(lock, -1, lock_spin_ns())
    try:
        if mem.load32(kbase + K.thead):
            mem.mutex_unlock(lock)
            lock = None
            return _queue_work_checked(worker, work)
        if mem.load32(base + W.where) or mem.load32(base + W.canceling):
            return False
        # link_before(..., tail) inlined
        prev = mem.load32(kbase + K.tail)
        mem.store32(base + W.next, 0)
        mem.store32(base + W.prev, prev)
        mem.store32(kbase + K.tail, idx)
        if prev:
            mem.store32(rt.arena.work_off(prev - 1) + W.next, idx)
        else:
            mem.store32(kbase + K.head, idx)
        mem.store32(base + W.where, L.ON_WORKLIST)
        mem.store32(base + W.worker, widx)
        mem.store32(base + W.worker_gen, worker._gen)
        mem.fetch_add32(kbase + K.depth, 1)
        wake = not mem.load32(kbase + K.current)
    finally:
        if lock is not None:
            mem.mutex_unlock(lock)
    if wake:
        wake_worker(rt, kbase)
    return True


def _queue_work_checked(worker, work):
    rt, kbase = resolve_worker(worker)
    wrt, base = resolve_work(work)
    same_runtime(rt, wrt, "work")
    if work_owner_check(rt, base, kbase, "kthread_queue_work"):
        return False
    mem = rt.mem
    with Locked(rt, kbase) as lk:
        run_timers(lk)
        if mem.load32(base + W.where) != L.ON_NONE or mem.load32(base + W.canceling):
            return False
        return insert_work(lk, work._idx + 1)
