"""The pool's CPU-hotplug state: its workers park with their CPU and come back bound.

A pool worker is a per-CPU kthread (``kthread_set_per_cpu``), so a CPU going
down must not leave it running elsewhere: the pool installs a dynamic
hotplug state (``cpuhp_setup_state``, in the ONLINE section) whose teardown
parks the pool's workers on that CPU (``kthread_park``: between two calls;
one running finishes first, while the CPU is still up) and whose startup
unparks them (``kthread_unpark`` re-binds a per-CPU kthread to its CPU), as
the kernel's workqueue does with ``workqueue_offline_cpu`` /
``workqueue_online_cpu``.  Both then kick the pool's collector, which moves
the calls still queued on a parked worker to the others
(``collector.move_from_parked``) or, once the CPU is back, feeds the worker again.

Why move rather than wait: a pool makes no promise about where a call runs,
only that it runs; a CPU can stay offline indefinitely (an experiment, a
power policy), and a ``map()`` or ``as_completed()`` must not stall on it.
The kernel moves pending work off a dying CPU the same way (workqueue's
``unbind_workers``, softirq's ``takeover_tasklets``).  Only if every worker
of the pool is parked do calls wait, in the backlog, for a CPU to return.

The callbacks run in the cpuhp kthread(s), so they are module-level
functions bound with ``functools.partial`` to picklable handles (the pool's
workers and its kick completion).  Runs in the caller (setup, remove) and in
cpuhp (the callbacks).
"""

from __future__ import annotations

import functools

from .._core.errors import KthreadError
from .._hotplug import api as _api
from .._kthread.control import kthread_park, kthread_unpark
from .._sched.completion import Completion, complete
from .._workqueue.handles import KthreadWorker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from .._sched.task import Task  # typing only

__all__ = ["install", "remove", "pool_cpu_online", "pool_cpu_offline"]


def _for_workers_of(workers: tuple[tuple[int, KthreadWorker], ...], kick: Completion,
                    cpu: int, op: Callable[[Task], object]) -> int:
    """Apply ``op`` to the task of each of the pool's workers of ``cpu``, then kick
    the collector; a pool going away (KthreadError) is no failure.  Return: 0."""
    for wcpu, worker in workers:
        if wcpu == cpu:
            try:
                task = worker.task
                if task is not None:
                    op(task)
            except KthreadError:
                pass              # the pool is going away
    try:
        complete(kick)
    except KthreadError:
        pass
    return 0


def pool_cpu_offline(workers: tuple[tuple[int, KthreadWorker], ...], kick: Completion,
                     cpu: int) -> int:
    """Teardown: park the pool's workers of ``cpu``.  Context: cpuhp.  Return: 0."""
    return _for_workers_of(workers, kick, cpu, kthread_park)


def pool_cpu_online(workers: tuple[tuple[int, KthreadWorker], ...], kick: Completion,
                    cpu: int) -> int:
    """Startup: unpark (and so re-bind) the pool's workers of ``cpu``.  Context: cpuhp.

    Return: 0.
    """
    return _for_workers_of(workers, kick, cpu, kthread_unpark)


def _setup(name: str, startup: Callable[[int], int], teardown: Callable[[int], int]) -> int:
    # _nocalls: the workers were just created on online CPUs, nothing to start
    return _api.cpuhp_setup_state_nocalls(_api.CPUHP_AP_ONLINE_DYN, name, startup, teardown)


def install(workers: list[KthreadWorker], cpus: list[int], kick: Completion,
            name: str) -> int:
    """Install the pool's hotplug state.  Context: the caller; blocks (cpuhp).

    Return: the state number, or a negative errno (the pool then does not
    follow hotplug).
    """
    pairs = tuple(zip(cpus, workers))
    return _setup(name, functools.partial(pool_cpu_online, pairs, kick),
                  functools.partial(pool_cpu_offline, pairs, kick))


def remove(state: int) -> None:
    """Remove the pool's hotplug state (its workers are gone: the teardowns find nothing)."""
    fn = _api.cpuhp_remove_state_nocalls
    try:
        fn(state)
    except (KthreadError, ValueError):
        pass
