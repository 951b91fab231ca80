"""Everything done under ``worker->lock``: the work list, the timer list's links, ties.

A worker is a WORKER record in the arena: a robust mutex (``worker->lock``),
the work list, the delayed-work timer list, ``current_work`` and counters.
Works are WORK records linked by slot index + 1 through their
``prev``/``next`` node; ``where`` says which list the node is on
(``list_empty(&work->node)`` is ``where == ON_NONE``).  Every list change
happens under the worker's lock, from whichever process of the runtime asks:
the caller, a kthread, a work running on this very worker.  Every helper
here takes the lock token, :class:`Locked`, as its first argument.

Mirrors: ``kthread_insert_work`` (with ``kthread_insert_work_sanity_check``),
the list half of ``__kthread_cancel_work``, the pop of ``kthread_worker_fn``
(flush markers met on the way are completed there, under the lock).

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

import errno

from .._core import layout as L
from .._core import trace as _trace
from .._core.errors import KthreadError
from .._sched.schedule import wake_up_state
from .._sched.task import TaskState
from .fastpath import lock_spin_ns
from .tracepoints import trace_queue

__all__ = ["Locked", "wake_worker", "link_before", "unlink", "insert_work",
           "cancel_work_locked", "tied_worker", "idle_locked", "free_if_orphan_locked",
           "pop_locked", "add_flusher", "queue_flushers", "complete_flushers",
           "drop_all_locked"]

W = L.WORK
K = L.WORKER
T = L.TASK


class Locked:
    """``raw_spin_lock(&worker->lock)`` as a context manager; remembers a wake to do.

    The wake-up of the worker is done after unlocking (``wake``), so the
    worker does not wake only to block on the lock its waker still holds.
    """

    __slots__ = ("rt", "mem", "kbase", "wake")

    def __init__(self, rt, kbase):
        self.rt, self.mem, self.kbase, self.wake = rt, rt.mem, kbase, False

    def __enter__(self):
        self.mem.mutex_lock(self.kbase + K.lock, -1, lock_spin_ns())
        return self

    def __exit__(self, *exc):
        self.mem.mutex_unlock(self.kbase + K.lock)
        if self.wake:
            wake_worker(self.rt, self.kbase)


def wake_worker(rt, kbase):
    """wake_up_process(worker->task), if the worker has a live task."""
    mem = rt.mem
    t = mem.load32(kbase + K.task)
    if not t:
        return
    tbase = rt.arena.task_off(t - 1)
    if mem.load32(tbase + T.gen) == mem.load32(kbase + K.task_gen):
        wake_up_state(rt, tbase, TaskState.TASK_INTERRUPTIBLE | TaskState.TASK_UNINTERRUPTIBLE)


def _wo(rt, idx1):
    return rt.arena.work_off(idx1 - 1)


def link_before(rt, kbase, head_f, tail_f, idx, before):
    """Insert work ``idx`` (index + 1) before node ``before`` (0: at the tail)."""
    mem = rt.mem
    base = _wo(rt, idx)
    if before:
        prev = mem.load32(_wo(rt, before) + W.prev)
        mem.store32(base + W.next, before)
        mem.store32(_wo(rt, before) + W.prev, idx)
    else:
        prev = mem.load32(kbase + tail_f)
        mem.store32(base + W.next, 0)
        mem.store32(kbase + tail_f, idx)
    mem.store32(base + W.prev, prev)
    if prev:
        mem.store32(_wo(rt, prev) + W.next, idx)
    else:
        mem.store32(kbase + head_f, idx)


def unlink(rt, kbase, head_f, tail_f, idx):
    """list_del_init() of work ``idx`` (index + 1) from the list at head_f/tail_f."""
    mem = rt.mem
    base = _wo(rt, idx)
    prev = mem.load32(base + W.prev)
    nxt = mem.load32(base + W.next)
    if prev:
        mem.store32(_wo(rt, prev) + W.next, nxt)
    else:
        mem.store32(kbase + head_f, nxt)
    if nxt:
        mem.store32(_wo(rt, nxt) + W.prev, prev)
    else:
        mem.store32(kbase + tail_f, prev)
    mem.store32(base + W.prev, 0)
    mem.store32(base + W.next, 0)
    mem.store32(base + W.where, L.ON_NONE)


def insert_work(lk, idx, before=0):
    """kthread_insert_work(): put work ``idx`` (index + 1) on the work list.

    Context: worker lock held (``lk``).  Links before ``before`` (0: tail),
    ties the work to the worker, and asks for a wake-up if the worker is idle.
    """
    rt, mem, kbase = lk.rt, lk.mem, lk.kbase
    base = _wo(rt, idx)
    link_before(rt, kbase, K.head, K.tail, idx, before)
    mem.store32(base + W.where, L.ON_WORKLIST)
    kind = mem.load32(base + W.kind)
    if kind != L.WK_FLUSH:
        mem.store32(base + W.worker, rt.arena.worker_idx(kbase) + 1)
        mem.store32(base + W.worker_gen, mem.load32(kbase + K.gen))
        mem.fetch_add32(kbase + K.depth, 1)
        if _trace.ENABLED:
            trace_queue(rt, kbase, idx, base)
    if not mem.load32(kbase + K.current):
        lk.wake = True


def cancel_work_locked(lk, idx):
    """__kthread_cancel_work(): take work ``idx`` off whichever list it is on.

    Context: worker lock held.  Return: True if it was pending.
    """
    rt, mem, kbase = lk.rt, lk.mem, lk.kbase
    base = _wo(rt, idx)
    where = mem.load32(base + W.where)
    if where == L.ON_WORKLIST:
        unlink(rt, kbase, K.head, K.tail, idx)
        mem.fetch_add32(kbase + K.depth, -1)
        return True
    if where == L.ON_TIMER:
        unlink(rt, kbase, K.thead, K.ttail, idx)
        mem.fetch_add32(kbase + K.ndelayed, -1)
        complete_flushers(lk, idx)
        return True
    return False


def tied_worker(rt, base):
    """The offset of the worker a work was last queued on, or None if never queued.

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


def idle_locked(rt, base, idx, kbase):
    """True if work ``idx`` is on no list, not being cancelled and not running."""
    mem = rt.mem
    return (mem.load32(base + W.where) == L.ON_NONE and not mem.load32(base + W.canceling)
            and (kbase is None or mem.load32(kbase + K.current) != idx + 1))


def free_if_orphan_locked(rt, base, idx, kbase):
    """Free work ``idx`` if its owning handle is gone and it has become idle."""
    mem = rt.mem
    if mem.load32(base + W.flags) & L.WF_ORPHAN and idle_locked(rt, base, idx, kbase):
        rt.arena.free_work(idx, mem.load32(base + W.gen))


def pop_locked(rt, kbase, prev_idx):
    """Finish ``prev_idx``, pop the next work to run and make it current_work.

    Flush markers met on the way are completed here, under the lock.  Also
    frees ``prev_idx`` if it became an idle orphan.
    Context: worker lock held, the worker's kthread.  Return: index + 1, or 0.
    """
    mem = rt.mem
    work_off = rt.arena.work_off
    if prev_idx:
        mem.store32(kbase + K.current, 0)
        pbase = work_off(prev_idx - 1)
        if mem.load32(pbase + W.flags) & L.WF_ORPHAN:
            free_if_orphan_locked(rt, pbase, prev_idx - 1, kbase)
    while True:
        idx = mem.load32(kbase + K.head)
        if not idx:
            return 0
        base = work_off(idx - 1)
        after = mem.load32(base + W.next)       # list_del_init of the head, inlined
        mem.store32(kbase + K.head, after)
        if after:
            mem.store32(work_off(after - 1) + W.prev, 0)
        else:
            mem.store32(kbase + K.tail, 0)
        mem.store32(base + W.next, 0)
        mem.store32(base + W.where, L.ON_NONE)
        if mem.load32(base + W.kind) == L.WK_FLUSH:
            rt.waits.completion_complete(base + W.done, True)
            continue
        mem.fetch_add32(kbase + K.depth, -1)
        mem.store32(kbase + K.current, idx)
        return idx


# -- flush markers waiting on a timer-pending work ---------------------------------------

def add_flusher(lk, idx, marker):
    """Make flush marker ``marker`` wait for timer-pending work ``idx``."""
    mem, rt = lk.mem, lk.rt
    base = _wo(rt, idx)
    mem.store32(_wo(rt, marker) + W.next, mem.load32(base + W.flushers))
    mem.store32(base + W.flushers, marker)


def _pop_flushers(lk, idx):
    mem, rt = lk.mem, lk.rt
    base = _wo(rt, idx)
    chain = []
    m = mem.load32(base + W.flushers)
    while m:
        chain.append(m)
        m = mem.load32(_wo(rt, m) + W.next)
    mem.store32(base + W.flushers, 0)
    return chain


def queue_flushers(lk, idx):
    """The timer moved ``idx`` to the work list: its flush markers go right behind it."""
    for m in _pop_flushers(lk, idx):
        mem = lk.mem
        mem.store32(_wo(lk.rt, m) + W.next, 0)
        insert_work(lk, m, mem.load32(_wo(lk.rt, idx) + W.next))


def complete_flushers(lk, idx):
    """Timer-pending ``idx`` was cancelled: its flushers have nothing left to wait for."""
    for m in _pop_flushers(lk, idx):
        lk.mem.store32(_wo(lk.rt, m) + W.next, 0)
        lk.rt.waits.completion_complete(_wo(lk.rt, m) + W.done, True)


def drop_all_locked(lk):
    """Unlink every work and marker of a stopped worker (kthread_destroy_worker's end).

    Markers and flushers are completed; orphans are freed.
    Context: worker lock held, its kthread gone.  Return: the works dropped.
    """
    rt, mem, kbase = lk.rt, lk.mem, lk.kbase
    left = 0
    for head_f, tail_f in ((K.head, K.tail), (K.thead, K.ttail)):
        while (idx := mem.load32(kbase + head_f)):
            base = rt.arena.work_off(idx - 1)
            unlink(rt, kbase, head_f, tail_f, idx)
            if mem.load32(base + W.kind) == L.WK_FLUSH:
                rt.waits.completion_complete(base + W.done, True)
                continue
            left += 1
            complete_flushers(lk, idx)
            if mem.load32(base + W.flags) & L.WF_ORPHAN:
                rt.arena.free_work(idx - 1, mem.load32(base + W.gen))
    return left
