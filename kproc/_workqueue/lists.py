"""kthread_worker: work lists, queueing, flushing, cancelling (kernel/kthread.c 6.15).

A worker is a WORKER record in the arena: a robust mutex (``worker->lock``),
the work list, the delayed-work timer list (``_delayed``), ``current_work``
and counters.  Works are WORK records linked by slot index through their
``prev``/``next`` node; ``where`` says which list the node is on
(``list_empty(&work->node)`` is ``where == ON_NONE``).  Every list change
happens under the worker's lock, from whichever process of the runtime asks:
the caller, a kthread, a work running on this very worker.

Mirrors: ``kthread_worker_fn``, ``kthread_queue_work`` (``queuing_blocked``,
``kthread_insert_work``), ``kthread_flush_work`` (a flush marker -- a WK_FLUSH
work whose completion the worker completes -- right behind the work, or at the
head if it is running), ``kthread_flush_worker``, ``__kthread_cancel_work``,
``__kthread_cancel_work_sync`` (the ``canceling`` counter blocks queueing while
the lock is dropped to wait for a running work), ``kthread_destroy_worker``.

Races prevented:

* Lost wake-up: the worker publishes TASK_INTERRUPTIBLE *before* looking at
  its list, and a queuer wakes it after linking when ``current_work`` is
  empty (the kernel's pairing of ``set_current_state`` with
  ``wake_up_process``).
* A flush marker is never ``current_work``: the worker completes markers while
  it holds the lock, so a marker slot freed by its flusher cannot be mistaken
  for a running work when it is recycled.
* A flush or cancel_sync waiting on a worker whose kthread died ends with
  KthreadError(ESRCH) at the next tick instead of hanging (SPEC §5).

Where kproc differs, on purpose: a work is tied to one worker and queueing it
on another is refused with a KernelWarning (the kernel only warns and goes
on); a work last queued on a destroyed worker raises until
``kthread_init_work()``; a flush, cancel_sync or destroy that would wait on
the calling worker's own kthread warns and returns instead of deadlocking.
"""

import errno
import os
import sys
import time
import traceback

from .._core import layout as L
from .._core import trace as _trace
from .._core.errors import KthreadError, kernel_warn
from .._sched.task import TaskState, TASK_NORMAL
from .._sched.schedule import wake_up_state, _sleep
from .._core.syscalls import pid_alive
from .._kthread.body import parkme
from .handles import (KthreadWork, KthreadWorker, resolve_work, resolve_worker,
                    work_handle_for_exec, store_work_traceback)

__all__ = ["Locked", "kthread_queue_work", "kthread_flush_work", "kthread_flush_worker",
           "kthread_cancel_work_sync", "kthread_cancel_delayed_work_sync",
           "release_work", "reinit_work", "sweep_works", "worker_loop", "insert_work",
           "work_owner_check", "wake_worker"]

W = L.WORK
K = L.WORKER
T = L.TASK

INTERRUPTIBLE = TaskState.TASK_INTERRUPTIBLE
RUNNING = TaskState.TASK_RUNNING


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


_lock_spin = None


def lock_spin_ns():
    """How long a busy worker lock is retried before sleeping (the wait spin budget)."""
    global _lock_spin
    if _lock_spin is None:
        from .._core.wait import default_spin_ns
        _lock_spin = min(default_spin_ns(), 20_000)
    return _lock_spin


def fast_paths(rt):
    """(work_queue, work_pop) of the C extension for ``rt``, or (None, None).

    Set up once per runtime and process: the C side learns where workers,
    works and tasks live (``Mem.wq_setup``).
    """
    fp = rt.wq_fast
    if fp is None:
        mem = rt.mem
        fp = (None, None)
        if hasattr(mem, "wq_setup"):
            p = rt.arena.params
            mem.wq_setup(L.native_layout(p, TASK_NORMAL))
            fp = (mem.work_queue, mem.work_pop)
        rt.wq_fast = fp
    return fp


def wake_worker(rt, kbase):
    """wake_up_process(worker->task), if the worker has a live task."""
    mem = rt.mem
    t = mem.load32(kbase + K.task)
    if not t:
        return
    tbase = rt.arena.task_off(t - 1)
    if mem.load32(tbase + T.gen) == mem.load32(kbase + K.task_gen):
        wake_up_state(rt, tbase, INTERRUPTIBLE | TaskState.TASK_UNINTERRUPTIBLE)


# -- list primitives (worker lock held) ---------------------------------------------

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


def _work_id(idx, gen):
    return (idx << 32) | gen


def _func_name(rt, idx):
    from .handles import _read_payload
    try:
        func, _ = _read_payload(rt, idx - 1, _wo(rt, idx))
        return getattr(func, "__qualname__", repr(func))
    except Exception:
        return "?"


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
            _trace_queue(rt, kbase, idx, base)
    if not mem.load32(kbase + K.current):
        lk.wake = True


_worker_comms = {}      # (task slot + 1, pid) -> comm, for trace events


def _trace_queue(rt, kbase, idx, base):
    mem = rt.mem
    flow = (time.monotonic_ns() ^ (idx << 44)) & ((1 << 53) - 1)
    mem.store64(base + W.flow, flow)
    t = mem.load32(kbase + K.task)
    pid, comm = 0, ""
    if t:
        tbase = rt.arena.task_off(t - 1)
        pid = L.unpack_field(rt.buf, tbase, T, "pid")
        comm = _worker_comms.get((t, pid))
        if comm is None:
            from .._core.blobs import read_name
            comm = _worker_comms[(t, pid)] = read_name(rt.arena, t - 1, tbase)
    _trace.work_queue_work(pid, comm, _work_id(idx - 1, mem.load32(base + W.gen)),
                           _func_name(rt, idx), flow)


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
        _delayed.complete_flushers(lk, idx)
        return True
    return False


# -- argument checks ------------------------------------------------------------------

def work_worker_base(rt, base):
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


def work_owner_check(rt, base, kbase, fn_name):
    """WARN_ON_ONCE(work->worker && work->worker != worker): True if tied elsewhere."""
    other = work_worker_base(rt, base)
    if other is not None and other != kbase:
        kernel_warn(f"{fn_name}(): the work is tied to another worker (a work must not "
                    "be used with more than one worker; kthread_init_work() it first); "
                    "refused", stacklevel=4)
        return True
    return False


def _same_runtime(rt, other_rt, what):
    if rt is not other_rt:
        raise ValueError(f"the {what} belongs to another kproc runtime")


# -- queueing -------------------------------------------------------------------------

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
            r = cq(worker._off, work._off, worker._idx + 1, worker._gen, work._gen,
                   _lock_spin if _lock_spin is not None else lock_spin_ns(),
                   rt.waits.name == "futex")
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
    mem.mutex_lock(lock, -1, _lock_spin if _lock_spin is not None else lock_spin_ns())
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
    _same_runtime(rt, wrt, "work")
    if work_owner_check(rt, base, kbase, "kthread_queue_work"):
        return False
    mem = rt.mem
    with Locked(rt, kbase) as lk:
        _delayed.run_timers(lk)
        if mem.load32(base + W.where) != L.ON_NONE or mem.load32(base + W.canceling):
            return False
        insert_work(lk, work._idx + 1)
        return True


# -- flushing ----------------------------------------------------------------------------

def _alloc_marker(rt):
    from .handles import drain_deferred_frees
    drain_deferred_frees()
    got = rt.arena.alloc_work(os.getpid(), L.WK_FLUSH)
    if got is None:
        sweep_works(rt)
        got = rt.arena.alloc_work(os.getpid(), L.WK_FLUSH)
        if got is None:
            raise KthreadError(errno.ENOMEM, "work table full: no slot left for a flush "
                               "marker (start the runtime with a larger max_works)")
    return got


def _own_worker(rt, kbase):
    """True if the caller is the worker's own kthread (a wait would deadlock)."""
    me = rt.self_base
    if me is None:
        return False
    t = rt.mem.load32(kbase + K.task)
    return bool(t) and rt.arena.task_off(t - 1) == me


def _worker_dead_check(rt, kbase):
    """A peer check for waits on a worker: raise once its kthread is gone."""
    mem = rt.mem
    t = mem.load32(kbase + K.task)
    tgen = mem.load32(kbase + K.task_gen)

    def check():
        if not t:
            return None
        tbase = rt.arena.task_off(t - 1)
        if mem.load32(tbase + T.gen) != tgen or \
                mem.load32(tbase + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD, L.SLOT_FREE):
            raise KthreadError(errno.ESRCH, "the worker's kthread died while a flush was "
                               "waiting for it")
        return None
    return check


def wait_marker(rt, kbase, midx, mgen):
    """Wait for flush marker ``midx`` to be run, then free it (kthread_flush_work's wait)."""
    from .._sched.completion import wait_at
    mbase = rt.arena.work_off(midx)
    try:
        wait_at(rt, mbase + W.done, None, "uninterruptible", peer=_worker_dead_check(rt, kbase))
    except BaseException:
        # The marker may still be linked on a dead worker's list: leave it to
        # destroy (or the owner-death sweep) instead of freeing a linked slot.
        rt.mem.fetch_or32(mbase + W.flags, L.WF_ORPHAN)
        raise
    rt.arena.free_work(midx, mgen)


def kthread_flush_work(work):
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
    kbase = work_worker_base(rt, base)
    if kbase is None:
        return
    _flush_work_at(rt, kbase, work._idx + 1, "kthread_flush_work")


def _flush_work_at(rt, kbase, idx, fn_name):
    mem = rt.mem
    base = _wo(rt, idx)
    midx, mgen = _alloc_marker(rt)
    own = _own_worker(rt, kbase)
    with Locked(rt, kbase) as lk:
        _delayed.run_timers(lk)
        where = mem.load32(base + W.where)
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
                _delayed.add_flusher(lk, idx, midx + 1)
            else:
                insert_work(lk, midx + 1, max(pos, 0))
    if pos is None or own:
        rt.arena.free_work(midx, mgen)
        if pos is not None:
            kernel_warn(f"{fn_name}() called from the worker's own kthread would wait "
                        "for itself forever; not waiting", stacklevel=4)
        return
    wait_marker(rt, kbase, midx, mgen)


def kthread_flush_worker(worker):
    """kthread_flush_worker - wait for every work queued on @worker so far.

    Context: any process of the runtime but the worker's own kthread
    (KernelWarning, no wait); may block.  Return: None.
    Raises: TypeError; KthreadError(ESRCH) (destroyed worker; its kthread died).
    """
    rt, kbase = resolve_worker(worker)
    if _own_worker(rt, kbase):
        kernel_warn("kthread_flush_worker() called from the worker's own kthread would "
                    "wait for itself forever; not waiting", stacklevel=3)
        return
    midx, mgen = _alloc_marker(rt)
    with Locked(rt, kbase) as lk:
        _delayed.run_timers(lk)          # expired works were queued before us
        insert_work(lk, midx + 1)
    wait_marker(rt, kbase, midx, mgen)


# -- cancelling ---------------------------------------------------------------------------

def _cancel_sync(work, is_dwork, fn_name):
    rt, base = resolve_work(work, delayed=is_dwork)
    kbase = work_worker_base(rt, base)
    if kbase is None:
        return False
    mem = rt.mem
    idx = work._idx + 1
    with Locked(rt, kbase) as lk:
        _delayed.run_timers(lk)
        ret = cancel_work_locked(lk, idx)
        if mem.load32(kbase + K.current) != idx:
            _free_if_orphan_locked(rt, base, work._idx, kbase)
            return ret
        if _own_worker(rt, kbase):
            kernel_warn(f"{fn_name}() called from the work itself would wait for itself "
                        "forever; not waiting", stacklevel=3)
            return ret
        # The work is running: wait with the lock dropped; meanwhile the
        # canceling counter makes every queueing attempt fail.
        mem.fetch_add32(base + W.canceling, 1)
    try:
        _flush_work_at(rt, kbase, idx, fn_name)
    finally:
        with Locked(rt, kbase):
            mem.fetch_add32(base + W.canceling, -1)
            _free_if_orphan_locked(rt, base, work._idx, kbase)
    return ret


def kthread_cancel_work_sync(work):
    """kthread_cancel_work_sync - cancel a work and wait for its execution to finish.

    Works also when the work re-queues itself.  On return the work is neither
    pending nor running anywhere.  Use kthread_cancel_delayed_work_sync() for
    delayed works.
    Context: any process of the runtime; may block.  Called from the work
    itself it cannot wait for itself: KernelWarning, and only the pending
    instance is cancelled.
    Return: True if @work was pending, False otherwise.
    Raises: TypeError; KthreadError(ESRCH) (stale work, destroyed worker, the
    worker's kthread died while waiting).
    """
    return _cancel_sync(work, False, "kthread_cancel_work_sync")


def kthread_cancel_delayed_work_sync(dwork):
    """kthread_cancel_delayed_work_sync - kthread_cancel_work_sync() for delayed works.

    Stops the timer (the timer callback runs under the worker lock here, so
    there is never one in flight to wait for, which is what del_timer_sync()
    waits for in the kernel), takes the work off its list and waits for a
    running execution.  Context, Raises: as kthread_cancel_work_sync().
    Return: True if @dwork was pending (timer armed or on the work list).
    """
    return _cancel_sync(dwork, True, "kthread_cancel_delayed_work_sync")


# -- work slot lifetime -------------------------------------------------------------------

def _idle_locked(rt, base, idx, kbase):
    mem = rt.mem
    return (mem.load32(base + W.where) == L.ON_NONE and not mem.load32(base + W.canceling)
            and (kbase is None or mem.load32(kbase + K.current) != idx + 1))


def _free_if_orphan_locked(rt, base, idx, kbase):
    mem = rt.mem
    if mem.load32(base + W.flags) & L.WF_ORPHAN and _idle_locked(rt, base, idx, kbase):
        rt.arena.free_work(idx, mem.load32(base + W.gen))


def release_work(rt, idx, gen):
    """The owning handle of work ``idx`` is gone: free it now if idle, else mark it orphan.

    Context: no lock held.
    """
    mem = rt.mem
    base = rt.arena.work_off(idx)
    if mem.load32(base + W.gen) != gen or not mem.load32(base + W.inuse):
        return
    try:
        kbase = work_worker_base(rt, base)
    except KthreadError:
        kbase = None          # its worker was destroyed: nothing links it any more
    if kbase is None:
        rt.arena.free_work(idx, gen)
        return
    with Locked(rt, kbase):
        if mem.load32(base + W.gen) != gen:
            return
        if _idle_locked(rt, base, idx, kbase):
            rt.arena.free_work(idx, gen)
        else:
            mem.fetch_or32(base + W.flags, L.WF_ORPHAN)


def sweep_works(rt):
    """Reclaim idle work slots whose owner process died (the table is full).

    Context: no lock held.  A dead process's works cannot be freed by its
    handles; a work still queued is left to run first.
    """
    mem = rt.mem
    dead = {}
    for idx in range(rt.arena.params.max_works):
        base = rt.arena.work_off(idx)
        if not mem.load32(base + W.inuse):
            continue
        owner = L.unpack_field(rt.buf, base, W, "owner")
        if owner not in dead:
            dead[owner] = not pid_alive(owner)
        if dead[owner] or mem.load32(base + W.flags) & L.WF_ORPHAN:
            release_work(rt, idx, mem.load32(base + W.gen))


def reinit_work(work, raw_payload):
    """kthread_init_work() on a live work: new payload, no worker.

    Raises: KthreadError(EBUSY) if the work is pending or running.
    """
    from .handles import _write_payload
    rt, base = resolve_work(work)
    try:
        kbase = work_worker_base(rt, base)
    except KthreadError:
        kbase = None
    if kbase is not None:
        with Locked(rt, kbase):
            if not _idle_locked(rt, base, work._idx, kbase):
                raise KthreadError(errno.EBUSY, "kthread_init_work() on a work that is "
                                   "pending or running; cancel it first")
            _reinit_locked(rt, base, work._idx, raw_payload, _write_payload)
    else:
        _reinit_locked(rt, base, work._idx, raw_payload, _write_payload)


def _reinit_locked(rt, base, idx, raw, write_payload):
    mem = rt.mem
    mem.store32(base + W.worker, 0)
    mem.store32(base + W.worker_gen, 0)
    write_payload(rt, idx, raw)
    mem.store32(base + W.tb_len, 0)
    mem.fetch_add32(base + W.version, 1)


# -- the worker's side ------------------------------------------------------------------

def _pop_locked(rt, kbase, prev_idx):
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
            _free_if_orphan_locked(rt, pbase, prev_idx - 1, kbase)
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


def worker_loop(rt, kbase, tbase, name):
    """The body of kthread_worker_fn() once the worker is attached to this kthread.

    Return: 0 when kthread_stop() ends it.  Context: the worker's kthread.
    """
    mem = rt.mem
    lock = kbase + K.lock
    spin = lock_spin_ns()
    lk = Locked(rt, kbase)
    cpop = fast_paths(rt)[1]
    cache = {}
    idx = 0
    freezable = bool(mem.load32(kbase + K.flags) & 1)
    while True:
        mem.store32(tbase + T.state, INTERRUPTIBLE)      # pairs with wake_worker()
        flags = mem.load32(tbase + T.flags)
        if flags & L.KF_SHOULD_PARK and not flags & L.KF_SHOULD_STOP:
            # Not in the kernel's kthread_worker_fn (kthread_park() on a worker
            # would hang there): parked between works, works wait on the list.
            parkme(rt, tbase)
            continue
        if flags & L.KF_SHOULD_STOP:
            mem.store32(tbase + T.state, RUNNING)
            with Locked(rt, kbase):
                if idx:
                    mem.store32(kbase + K.current, 0)
                    _free_if_orphan_locked(rt, rt.arena.work_off(idx - 1), idx - 1, kbase)
                mem.store32(kbase + K.task, 0)
            return 0
        deadline = None
        if cpop is not None and not _trace.ENABLED:
            nxt = cpop(kbase, idx, spin)
            if nxt > 0:
                idx = nxt
                mem.store32(tbase + T.state, RUNNING)
                _execute(rt, kbase, idx, name, cache)
                if freezable:
                    _freezer.try_to_freeze_at(rt, tbase)
                continue
            if nxt == 0:
                idx = 0
                if not (freezable and _freezer.freezing_at(rt, tbase)):
                    _sleep(rt, tbase, None)
                else:
                    mem.store32(tbase + T.state, RUNNING)
                if freezable:
                    _freezer.try_to_freeze_at(rt, tbase)
                continue
        mem.mutex_lock(lock, -1, spin)
        try:
            if mem.load32(kbase + K.thead):
                _delayed.run_timers(lk, wake=False)
            idx = _pop_locked(rt, kbase, idx)
            first = 0 if idx else mem.load32(kbase + K.thead)
            if first:
                deadline = _delayed.next_expiry(lk)
                first_gen = mem.load32(rt.arena.work_off(first - 1))
        finally:
            mem.mutex_unlock(lock)
        if first:
            _prefetch(rt, kbase, first, first_gen, name, cache)
        if idx:
            mem.store32(tbase + T.state, RUNNING)
            _execute(rt, kbase, idx, name, cache)
        elif not (freezable and _freezer.freezing_at(rt, tbase)):
            if _trace.ENABLED:
                _trace.flush()          # idle: a kthread killed at shutdown loses nothing
            _timer_sleep(rt, tbase, deadline)
        else:
            mem.store32(tbase + T.state, RUNNING)
        if freezable:
            _freezer.try_to_freeze_at(rt, tbase)


def timer_spin_ns():
    """How long before a timer's expiry an idle worker wakes to spin (0: never).

    Waking a halted vCPU from a timer costs tens of µs on a VM; waking this
    much earlier and spinning on the wake word until the expiry removes that
    from a delayed work's lateness, for at most this much CPU per timer.
    ``KPROC_TIMER_SPIN_US`` sets it; 0 on a single CPU or the posix backend.
    """
    global _timer_spin
    if _timer_spin is None:
        from .._core.wait import default_spin_ns
        env = os.environ.get("KPROC_TIMER_SPIN_US")
        _timer_spin = int(float(env) * 1000) if env is not None else \
            (100_000 if default_spin_ns() else 0)
    return _timer_spin


_timer_spin = None


def _timer_sleep(rt, tbase, deadline):
    """schedule() until woken or ``deadline`` (the first timer), waking early to spin."""
    spin = timer_spin_ns() if deadline is not None and rt.waits.name == "futex" else 0
    if not spin:
        _sleep(rt, tbase, deadline)
        return
    mem = rt.mem
    seq = mem.load32(tbase + T.wake_seq)
    if deadline - time.monotonic_ns() > spin and not _sleep(rt, tbase, deadline - spin):
        return                                    # woken before the timer: go look
    mem.store32(tbase + T.state, RUNNING)
    left = deadline - time.monotonic_ns()
    if left > 0:
        mem.wait_change(tbase + T.wake_seq, seq, 0, left)


def _prefetch(rt, kbase, idx, gen, name, cache):
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


def _execute(rt, kbase, idx, name, cache):
    mem = rt.mem
    base = rt.arena.work_off(idx - 1)
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
        _trace.work_execute_start(_work_id(idx - 1, gen), fname, mem.load64(base + W.flow))
    try:
        handle._func(handle)
    except Exception:
        _report(rt, kbase, idx, name, handle)
    mem.fetch_add64(base + W.runs, 1)
    mem.fetch_add64(kbase + K.executed, 1)
    if traced:
        _trace.work_execute_end(_work_id(idx - 1, gen), fname)


def _report(rt, kbase, idx, name, handle):
    """A work raised: print the traceback with the worker's name, keep it, go on."""
    what = getattr(getattr(handle, "_func", None), "__qualname__", "a work")
    text = (f"kproc: work {what} on worker {name!r} (pid {os.getpid()}) raised:\n"
            + traceback.format_exc())
    sys.stderr.write(text)
    store_work_traceback(rt, idx - 1, text)
    rt.mem.fetch_add64(kbase + K.errors, 1)


from . import delayed as _delayed  # noqa: E402  (it builds on the primitives above)
from .. import _freezer  # noqa: E402
