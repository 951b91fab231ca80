"""Glue to the C fast paths of the work lists: ``Mem.wq_setup``, ``work_queue``, ``work_pop``.

The C extension can do the two hot list operations whole, lock to unlock:
kthread_queue_work() when nothing unusual is going on, and the worker's
"finish the last work, pop the next" (with the expired timers fired first).
Anything unusual (a timer armed, a flush marker at the head, an orphan to
free, a busy lock, a generation that differs) makes them answer -1, and the
Python path in ``lists`` does it instead, under the same robust mutex, so
both paths always see one consistent list.

Invariants: ``wq_setup`` is given the layout of the worker, work and task
records once per runtime and process, before the first fast call; the
fast paths exist only with the native ``Mem`` (the pure-Python one has no
``wq_setup``), which is detected, not inferred.

Runs in whichever process queues or pops: the caller, any kthread, the
worker's kthread.
"""

from .._core import layout as L
from .._core.wait import default_spin_ns
from .._sched.task import TASK_NORMAL

__all__ = ["fast_paths", "lock_spin_ns"]

_lock_spin = None


def lock_spin_ns():
    """How long a busy worker lock is retried before sleeping (the wait spin budget)."""
    global _lock_spin
    if _lock_spin is None:
        _lock_spin = min(default_spin_ns(), 20_000)
    return _lock_spin


def fast_paths(rt):
    """(work_queue, work_pop) of the C extension for ``rt``, or (None, None).

    Set up once per runtime and process: the C side learns where workers,
    works and tasks live (``Mem.wq_setup``), and the answer is kept in the
    runtime's ``wq_fast`` (a kthread inherits kthreadd's by fork, together with
    its set-up ``Mem``).
    """
    paths = rt.wq_fast
    if paths is not None:
        return paths
    mem = rt.mem
    paths = (None, None)
    if hasattr(mem, "wq_setup"):
        p = rt.arena.params
        mem.wq_setup(L.native_layout(p, TASK_NORMAL))
        paths = (mem.work_queue, mem.work_pop)
    rt.wq_fast = paths
    return paths
