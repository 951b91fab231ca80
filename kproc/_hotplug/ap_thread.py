"""The per-CPU ``cpuhp/N`` threads and the AP states built in (kernel:
kernel/cpu.c, ``cpuhp_threads``, ``cpuhp_should_run``, ``cpuhp_thread_fun``,
``cpuhp_invoke_ap_callback``; kernel/smpboot.c, ``smpboot_unpark_threads``,
``smpboot_park_threads``; kernel/kthread.c, ``kthreads_online_cpu``).

``cpuhp/N`` is an smpboot thread like any other (registered first, by the
control cpuhp kthread when it starts, ``selfparking``: the control side
parks it before its CPU goes down and unparks it, re-bound, once the CPU is
up).  The control side hands it one AP job at a time (``post_ap_job``): a
pickled list of steps in the HOTPLUG record's AP area, ``ap_cpu`` = N + 1,
then a wake-up; ``cpuhp_thread_fun`` runs the steps on its CPU, stores the
result and completes ``ap_done``.  A cpuhp/N that finds itself off its CPU
(taken down meanwhile by someone else) runs nothing and says so
(``ap_off_cpu``): the control side then runs the steps itself, after the
fact.

The built-in AP callbacks read the smpboot registrations from shared memory
(``record.registrations``), so they run in any process: on the CPU in
cpuhp/N, or after the fact in the control cpuhp kthread.
Context: the cpuhp/N threads (the loop), the control cpuhp kthread
(``post_ap_job``, ``CpuhpThreads``).
"""

from __future__ import annotations

import errno
import os
import pickle
import sys

from .._core import layout as L
from .._core import trace as _trace
from .._core.funcref import prepare_main
from .._core.runtime import get_runtime
from .._kthread.affinity import kthreads_online_cpu
from .._kthread.control import (__kthread_should_park, kthread_park,
                                kthread_unpark_usable, wake_up_process)
from .._sched.completion import wait_at
from .._sched.task import Task
from .callbacks import mark_hotplug_process, run_steps
from .record import H, get_message, hp_base, put_message, registrations, store_get
from .smpboot_thread import getcpu

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._core.runtime import Runtime  # typing only
    from .callbacks import Step  # typing only

__all__ = ["CpuhpThreads", "CPUHP_THREADS_KEY", "cpuhp_should_run", "cpuhp_thread_fun",
           "post_ap_job", "smpboot_unpark_threads", "smpboot_park_threads",
           "kthreads_online", "on_its_cpu"]

CPUHP_THREADS_KEY = 0x63707568705f4e   # "cpuhp_N": the registration's key, fixed


_host_cpus: frozenset[int] | None = None


def on_its_cpu(rt: Runtime, cpu: int) -> bool:
    """kernel: td->cpu == smp_processor_id(), with the binding intact.  A CPU of a
    fake tree that the host lacks is modelled: always True there."""
    global _host_cpus
    if _host_cpus is None:
        _host_cpus = rt.topology.host_cpus()     # the host's possible CPUs: fixed
    if cpu not in _host_cpus:
        return True
    return os.sched_getaffinity(0) == {cpu} and getcpu() == cpu


# -- the cpuhp/N thread -------------------------------------------------------------

def cpuhp_should_run(cpu: int) -> bool:
    """cpuhp_should_run(): an AP job is posted for this CPU."""
    rt = get_runtime()
    return rt.mem.load32(hp_base(rt) + H.ap_cpu) == cpu + 1


def cpuhp_thread_fun(cpu: int) -> None:
    """cpuhp_thread_fun(): run the posted AP job on ``cpu`` and report.

    Context: cpuhp/N.
    """
    mark_hotplug_process()
    rt = get_runtime()
    mem, hp = rt.mem, hp_base(rt)
    if mem.load32(hp + H.ap_cpu) != cpu + 1:
        return
    raw = get_message(rt, "ap")
    mem.store32(hp + H.ap_cpu, 0)
    off_cpu = not on_its_cpu(rt, cpu)
    rc = 0
    if not off_cpu:
        if b"_main__" in raw:         # __main__ or __mp_main__
            prepare_main(rt)              # callbacks from the caller's script
        try:
            steps, up = pickle.loads(raw)
        except Exception as exc:      # a callback's module failed to import here
            sys.stderr.write(f"kproc: cpuhp/{cpu}: cannot load the AP job: {exc!r}\n")
            rc = -errno.EFAULT
        else:
            rc = run_steps(cpu, steps, up, on_cpu=getcpu())
    mem.store32(hp + H.ap_off_cpu, int(off_cpu))
    mem.store32(hp + H.ap_rc, rc & 0xFFFFFFFF)
    rt.waits.completion_complete(hp + H.ap_done, False)
    if _trace.ENABLED:
        _trace.flush()              # cpuhp/N is killed, not stopped, at shutdown


class CpuhpThreads:
    """The ``cpuhp_threads`` registration (a struct smp_hotplug_thread)."""

    def __init__(self) -> None:
        self.thread_should_run: Callable[[int], bool] = cpuhp_should_run
        self.thread_fn: Callable[[int], None] = cpuhp_thread_fun
        self.thread_comm = "cpuhp/%u"
        self.create: Callable[[int], None] | None = None
        self.setup: Callable[[int], None] | None = None
        self.park: Callable[[int], None] | None = None
        self.unpark: Callable[[int], None] | None = None
        self.cleanup: Callable[[int, bool], None] | None = None
        self.selfparking = True
        self._anywhere = True
        self._key = CPUHP_THREADS_KEY
        self._reg: tuple[int, int, int] | None = None

    def task(self, cpu: int) -> Task | None:
        """cpuhp/N of ``cpu``, or None before it was created."""
        if self._reg is None:
            return None
        rt = get_runtime()
        idx, gen = store_get(rt, self._reg[1], cpu)
        return Task(rt, idx - 1, gen) if idx else None


def post_ap_job(rt: Runtime, task: Task, cpu: int, steps: Sequence[Step],
                up: bool) -> int | None:
    """cpuhp_invoke_ap_callback(): have cpuhp/N (``task``) run ``steps`` on ``cpu``
    and wait for it.

    Context: the control cpuhp kthread; blocks.
    Return: the job's result (0 or a negative errno); None if cpuhp/N was off
    its CPU and ran nothing; -ESRCH if cpuhp/N died.
    """
    mem, hp = rt.mem, hp_base(rt)
    put_message(rt, "ap", pickle.dumps((list(steps), up), protocol=pickle.HIGHEST_PROTOCOL))
    mem.store32(hp + H.ap_done + L.COMPLETION.done, 0)
    mem.store32(hp + H.ap_off_cpu, 0)
    mem.store32(hp + H.ap_cpu, cpu + 1)
    wake_up_process(task)
    base = rt.arena.task_off(task._idx)

    def dead() -> int | None:
        if mem.load32(base + L.TASK.gen) != task._gen or \
                mem.load32(base + L.TASK.slot) in (L.SLOT_EXITING, L.SLOT_DEAD, L.SLOT_FREE):
            return -errno.ESRCH
        return None
    verdict = wait_at(rt, hp + H.ap_done, None, "uninterruptible", dead)
    mem.store32(hp + H.ap_cpu, 0)
    if verdict:
        return verdict
    if mem.load32(hp + H.ap_off_cpu):
        return None
    rc = mem.load32(hp + H.ap_rc)
    return rc - (1 << 32) if rc & 0x80000000 else rc


# -- the built-in AP states -----------------------------------------------------------

def _percpu_tasks(rt: Runtime, cpu: int) -> list[Task]:
    """The per-CPU threads smpboot parks and unparks on ``cpu``, newest
    registration first (selfparking ones, cpuhp/N among them, are not)."""
    tasks = []
    for slot, selfparking in registrations(rt):
        if selfparking:
            continue
        idx, gen = store_get(rt, slot, cpu)
        if idx:
            tasks.append(Task(rt, idx - 1, gen))
    return tasks


def smpboot_unpark_threads(cpu: int) -> int:
    """CPUHP_AP_SMPBOOT_THREADS startup: unpark (and so re-bind) ``cpu``'s per-CPU
    threads, walking the registrations newest first (list_for_each_entry).
    Return: 0."""
    rt = get_runtime()
    usable = rt.topology.usable()           # read once for the walk
    for task in _percpu_tasks(rt, cpu):
        kthread_unpark_usable(task, usable)
    return 0


def smpboot_park_threads(cpu: int) -> int:
    """CPUHP_AP_SMPBOOT_THREADS teardown: park ``cpu``'s per-CPU threads, walking
    the registrations oldest first (list_for_each_entry_reverse).  Return: 0."""
    for task in reversed(_percpu_tasks(get_runtime(), cpu)):
        if not __kthread_should_park(task):       # parked already: created meanwhile
            kthread_park(task)
    return 0


def kthreads_online(cpu: int) -> int:
    """CPUHP_AP_KTHREADS_ONLINE startup (kthreads_online_cpu): affinities re-applied;
    the per-CPU threads smpboot has just unparked (and bound) are left alone.
    Return: 0."""
    rt = get_runtime()
    kthreads_online_cpu(rt, cpu, {t.pid for t in _percpu_tasks(rt, cpu)})
    return 0
