"""kthread_queue_work(): the C fast path when it can, the checked Python path otherwise.

Mirrors ``kthread_queue_work`` (``queuing_blocked``: a work already pending or
being cancelled is not queued; ``kthread_insert_work``: link at the tail, tie
the work to the worker, wake an idle worker).

The fast path is the hot path of the whole package: its handles are trusted
after a few identity checks, the C extension (``fastpath``) does lock, link,
unlock and wake in one call, and what it needs from the runtime (the bound
``Mem.work_queue``, the lock spin, who wakes) is kept in this module's
globals, so no attribute is looked up that a cached name can give.  Whatever
the fast path declines (a generation that differs, a work tied elsewhere, a
timer armed, tracing on, a busy lock, no C extension) goes through
:func:`_queue_work_checked`, which validates everything, fires due timers and
links under the lock with ``lists.insert_work`` and its sanity checks.

Races prevented: the pending test and the link happen under the worker lock,
so two processes queueing one work link it once; the wake-up follows the link
(lists' lost-wake-up rule).  An inconsistency the C side finds (a link out of
the work table) is reported through ``warn_on_once`` and the work is not
queued.  Runs in the caller: any process of the runtime, including a work
running on this very worker.
"""

from __future__ import annotations

from .._core import trace as _trace
from .._core.errors import warn_on_once
from .._core.runtime import Runtime
from .fastpath import fast_paths, lock_spin_ns
from .handles import KthreadWork, KthreadWorker, resolve_queue_args, work_owner_check
from .lists import Locked, insert_work, queuing_blocked, wake_worker
from .timers import run_timers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .fastpath import WorkQueueFn  # typing only: an alias

__all__ = ["kthread_queue_work"]


# The runtime the globals below were taken from (this process's last one).
_fast_rt: Runtime | None = None
_cq: WorkQueueFn | None = None  # its Mem.work_queue, or None without the C extension
_spin_ns = 0                    # lock_spin_ns()
_wake_in_c = False              # True: work_queue() wakes the worker itself (futex backend)


def _take_fast_path(rt: Runtime) -> None:
    global _fast_rt, _cq, _spin_ns, _wake_in_c
    _cq = fast_paths(rt)[0]
    _spin_ns = lock_spin_ns()
    _wake_in_c = rt.waits.name == "futex"
    _fast_rt = rt


def kthread_queue_work(worker: KthreadWorker, work: KthreadWork) -> bool:
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
    try:
        rt = worker._rt
        if rt is not _fast_rt:
            _take_fast_path(rt)
        if _cq is None or type(worker) is not KthreadWorker or work._rt is not rt or \
                not isinstance(work, KthreadWork) or rt.closed or _trace.ENABLED:
            r = -1
        else:
            r = _cq(worker._off, work._off, worker._idx + 1, worker._gen, work._gen,
                    _spin_ns, _wake_in_c)
    except AttributeError:
        r = -1                  # not handles: the checked path says what is wrong
    except (RuntimeError, ValueError) as exc:
        warn_on_once(True, f"the C work_queue() failed: {exc}")
        return False
    if r > 0:
        if r == 2 and not _wake_in_c:
            wake_worker(rt, worker._off)
        return True
    if r == 0:
        return False
    return _queue_work_checked(worker, work)


def _queue_work_checked(worker: KthreadWorker, work: KthreadWork) -> bool:
    rt, kbase, base = resolve_queue_args(worker, work)
    if work_owner_check(rt, base, kbase, "kthread_queue_work"):
        return False
    with Locked(rt, kbase) as lk:
        run_timers(lk)
        if queuing_blocked(lk, base):
            return False
        return insert_work(lk, work._idx + 1)
