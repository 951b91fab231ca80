"""Set-up of the work-list code of ``Mem``, and glue to its two fast paths.

The C extension can do the two hot list operations whole, lock to unlock:
kthread_queue_work() when nothing unusual is going on (``Mem.work_queue``),
and the worker's "finish the last work, pop the next", with the expired
timers fired first (``Mem.work_pop``).  Anything unusual (a timer armed, a
flush marker at the head, an orphan to free, a busy lock, a generation that
differs) makes them answer -1, and the Python path in ``lists`` does it
instead, under the same robust mutex, through the ``Mem.wl_*`` primitives
-- the same C code on the same lists.

Invariants: ``Mem`` learns the layout of the worker, work and task records
(``wq_setup``: primitives and fast paths; ``wl_setup``: the primitives only,
all the pure-Python ``Mem`` has) once per runtime and process, before the
first list operation (``lists.Locked`` sees to it); the fast paths exist only
with the native ``Mem``, which is detected, not inferred.

Runs in whichever process queues or pops: the caller, any kthread, the
worker's kthread.
"""

from __future__ import annotations

from .._core import layout as L
from .._core.runtime import Runtime
from .._core.wait import default_spin_ns
from .._sched.task import TASK_NORMAL

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    # Mem.work_queue(kbase, wbase, widx1, kgen, wgen, spin_ns, wake) and
    # Mem.work_pop(kbase, prev_idx1, spin_ns): -1 means "take the Python path".
    WorkQueueFn = Callable[[int, int, int, int, int, int, bool], int]
    WorkPopFn = Callable[[int, int, int], int]
    FastPaths = tuple[WorkQueueFn, WorkPopFn] | tuple[None, None]

__all__ = ["fast_paths", "lock_spin_ns"]

_lock_spin: int | None = None


def lock_spin_ns() -> int:
    """How long a busy worker lock is retried before sleeping (the wait spin budget)."""
    global _lock_spin
    if _lock_spin is None:
        _lock_spin = min(default_spin_ns(), 20_000)
    return _lock_spin


def fast_paths(rt: Runtime) -> FastPaths:
    """(work_queue, work_pop) of the C extension for ``rt``, or (None, None).

    Sets ``Mem`` up for ``rt`` first (``wq_setup``, or ``wl_setup`` without
    the fast paths); the answer is kept in the runtime's ``wq_fast`` (a
    kthread inherits kthreadd's by fork, together with its set-up ``Mem``).
    """
    paths = rt.wq_fast
    if paths is not None:
        return paths
    mem = rt.mem
    layout = L.native_layout(rt.arena.params, TASK_NORMAL)
    if hasattr(mem, "wq_setup") and hasattr(mem, "work_queue") and hasattr(mem, "work_pop"):
        mem.wq_setup(layout)
        paths = (mem.work_queue, mem.work_pop)
    else:
        mem.wl_setup(layout)
        paths = (None, None)
    rt.wq_fast = paths
    return paths
