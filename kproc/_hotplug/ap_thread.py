"""The per-CPU ``cpuhp/N`` threads and the AP states built in (kernel:
kernel/cpu.c, ``cpuhp_threads``, ``cpuhp_should_run``, ``cpuhp_thread_fun``,
``cpuhp_invoke_ap_callback``; kernel/smpboot.c, ``smpboot_unpark_threads``,
``smpboot_park_threads``; kernel/kthread.c, ``kthreads_online_cpu``).

``cpuhp/N`` is an smpboot thread like any other (registered first, by the
control cpuhp kthread when it starts, ``selfparking``: the control side
parks it before its CPU goes down and unparks it, re-bound, once the CPU is
up).  The control side hands it one AP job at a time (``post_ap_job``): the
pickled list of steps in the HOTPLUG record's AP area with its number
(``ap_job``), ``ap_cpu`` = N + 1, then a wake-up (``kick_ap``); for a CPU
coming up, the job is posted before the CPU's ``1`` is written and the
unpark of cpuhp/N is its wake-up.  ``cpuhp_thread_fun`` runs the steps on
its CPU, stores the result and completes ``ap_done``; ``wait_ap_job`` waits
for it.  A cpuhp/N that finds itself off its CPU (taken down meanwhile by
someone else) runs nothing and says so (``ap_off_cpu``): the control side
then runs the steps itself, after the fact.

Why the job is shaped so (docs/design.md, "CPU hotplug"): on a CPU that has
just come up every code path and page touched for the first time costs
tens to hundreds of µs (cold caches and TLB), so cpuhp/N does as little
there as it can.  The steps of a whole AP section are numbered by the
control side (a new number whenever the states change): cpuhp/N unpickles a
number once and keeps the steps.  And a CPU coming up gets a *plan*: what
``CPUHP_AP_SMPBOOT_THREADS`` and ``CPUHP_AP_KTHREADS_ONLINE`` would read
(the usable CPUs, the CPU's per-CPU threads, each kthread's new mask), read
by the control side right after the write while cpuhp/N wakes up, and
posted after the steps (``ap_plan``); cpuhp/N applies it, on its CPU, at
those states' place in the order.  Without a plan (none posted, too large,
or late) the states read for themselves.

The built-in AP callbacks read the smpboot registrations from shared memory
(``record.registrations``), so they run in any process: on the CPU in
cpuhp/N, or after the fact in the control cpuhp kthread.
Context: the cpuhp/N threads (the loop), the control cpuhp kthread
(``post_ap_job``, ``make_plan``, ``CpuhpThreads``).
"""

from __future__ import annotations

import errno
import os
import pickle
import sys
import time

from .._core import layout as L
from .._core import trace as _trace
from .._core.funcref import prepare_main
from .._core.runtime import get_runtime
from .._kthread.affinity import apply_moves, kthreads_online_cpu, kthreads_online_moves
from .._kthread.control import (__kthread_should_park, kthread_park,
                                kthread_unpark_usable, wake_up_process)
from .._sched.completion import wait_at
from .._sched.task import Task
from .callbacks import mark_hotplug_process, run_steps
from .record import (H, cpuhp_dead, get_message, hp_base, put_message, registrations,
                     store_get)
from .smpboot_thread import getcpu

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core.runtime import Runtime  # typing only
    from .callbacks import Step  # typing only

    # (usable CPUs, the CPU's per-CPU threads as (slot index, generation) newest
    # registration first, kthreads_online's (pid, mask) moves)
    Plan = tuple[frozenset[int], list[tuple[int, int]], list[tuple[int, frozenset[int]]]]

__all__ = ["CpuhpThreads", "CPUHP_THREADS_KEY", "cpuhp_should_run", "cpuhp_thread_fun",
           "post_ap_job", "post_ap_plan", "withdraw_ap_job", "kick_ap", "wait_ap_job",
           "make_plan",
           "smpboot_unpark_threads", "smpboot_park_threads", "kthreads_online", "on_its_cpu"]

CPUHP_THREADS_KEY = 0x63707568705f4e   # "cpuhp_N": the registration's key, fixed
PLAN_WAIT_NS = 1_000_000    # cpuhp/N's wait for the plan, per round (it watches the clock)
PLAN_TIMEOUT_NS = 200_000_000   # then it reads for itself (the control side is stuck)
COME_UP_WAIT_NS = 500_000   # cpuhp/N's rounds while its CPU is being brought up

_host_cpus: frozenset[int] | None = None
# cpuhp/N: the steps of each numbered job seen (one process, one cpuhp, for good)
_jobs: dict[int, tuple[list[Step], bool]] = {}
# cpuhp/N, while it runs a job that came with a plan: (cpu, plan)
_plan: tuple[int, Plan] | None = None


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


def _load_job(rt: Runtime, cpu: int) -> tuple[list[Step], bool] | None:
    """The posted job's (steps, up): a numbered one from the cache, else
    unpickled.  Return: None if it cannot be loaded (said on stderr)."""
    mem, hp = rt.mem, hp_base(rt)
    number = mem.load32(hp + H.ap_job)
    job = _jobs.get(number) if number else None
    if job is not None:
        return job
    raw = get_message(rt, "ap")
    if b"_main__" in raw:         # __main__ or __mp_main__
        prepare_main(rt)              # callbacks from the caller's script
    try:
        steps, up = pickle.loads(raw)
    except Exception as exc:      # a callback's module failed to import here
        sys.stderr.write(f"kproc: cpuhp/{cpu}: cannot load the AP job: {exc!r}\n")
        return None
    if number:
        _jobs.clear()             # an older number is never posted again
        _jobs[number] = (steps, up)
    return steps, up


def _take_plan(rt: Runtime, cpu: int) -> None:
    """Wait for the plan the control side is making (see the module doc), and
    keep it for the built-in states; none if it does not come in time."""
    global _plan
    mem, hp = rt.mem, hp_base(rt)
    deadline = time.monotonic_ns() + PLAN_TIMEOUT_NS
    while not mem.load32(hp + H.ap_plan) and time.monotonic_ns() < deadline:
        rt.waits.wait(hp + H.ap_plan, 0, PLAN_WAIT_NS, False)
    n = mem.load32(hp + H.ap_plan_len) if mem.load32(hp + H.ap_plan) else 0
    if n:
        off = rt.arena.params.hp_ap + mem.load32(hp + H.ap_len)
        _plan = (cpu, pickle.loads(bytes(rt.buf[off:off + n])))


def _come_up(rt: Runtime, cpu: int) -> bool:
    """cpuhp/N unparked while its CPU is being brought up (kernel:
    cpuhp_online_idle(), CPUHP_AP_ONLINE_IDLE): bind to the CPU as soon as it
    runs tasks, then wait for the plan, which the control side posts once the
    write returned.  Return: False if the job was withdrawn (the write failed)."""
    mem, hp = rt.mem, hp_base(rt)
    bound = False
    while not mem.load32(hp + H.ap_plan):
        if not bound:
            try:
                os.sched_setaffinity(0, {cpu})
                bound = True
            except OSError:         # not active yet (or a CPU the host lacks)
                pass
        rt.waits.wait(hp + H.ap_plan, 0, COME_UP_WAIT_NS, False)
        if cpuhp_dead(rt):
            return False
    if not bound:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    return mem.load32(hp + H.ap_cpu) == cpu + 1


def cpuhp_thread_fun(cpu: int) -> None:
    """cpuhp_thread_fun(): run the posted AP job on ``cpu`` and report.

    Context: cpuhp/N.
    """
    global _plan
    mark_hotplug_process()
    rt = get_runtime()
    mem, hp = rt.mem, hp_base(rt)
    if mem.load32(hp + H.ap_cpu) != cpu + 1:
        return
    job = None
    if not mem.load32(hp + H.ap_plan):        # unparked before its CPU's write
        job = _load_job(rt, cpu)              # meanwhile, wherever it runs
        if not _come_up(rt, cpu):
            return
    mem.store32(hp + H.ap_cpu, 0)
    off_cpu = not on_its_cpu(rt, cpu)
    rc = 0
    if not off_cpu:
        if job is None:
            job = _load_job(rt, cpu)
        if job is None:
            rc = -errno.EFAULT
        else:
            steps, up = job
            try:
                if up:
                    _take_plan(rt, cpu)
                rc = run_steps(cpu, steps, up, on_cpu=getcpu())
            finally:
                _plan = None
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


# -- the control side of a job ----------------------------------------------------------

def post_ap_job(rt: Runtime, cpu: int, raw: bytes, number: int, plan: bool) -> None:
    """Post an AP job for cpuhp/N of ``cpu`` (it runs it once woken, or once
    unparked): ``raw``, the pickled (steps, up); ``number``, what names those
    steps (0: an unnamed job, always unpickled); @plan: a plan follows
    (post_ap_plan), which cpuhp/N waits for.  Context: the control cpuhp
    kthread, with no job under way.  Raises: ValueError (the job is larger
    than the AP area)."""
    if len(raw) > L.HP_MSG_MAX:
        raise ValueError(f"the AP job of CPU {cpu} is too large ({len(raw)} bytes)")
    mem, hp = rt.mem, hp_base(rt)
    put_message(rt, "ap", raw)
    mem.store32(hp + H.ap_job, number)
    mem.store32(hp + H.ap_plan_len, 0)
    mem.store32(hp + H.ap_plan, 0 if plan else 1)
    mem.store32(hp + H.ap_done + L.COMPLETION.done, 0)
    mem.store32(hp + H.ap_off_cpu, 0)
    mem.store32(hp + H.ap_cpu, cpu + 1)


def post_ap_plan(rt: Runtime, raw: bytes | None) -> None:
    """Post the plan announced by post_ap_job (``None``, or one too large for
    the area: none, cpuhp/N reads for itself) and wake cpuhp/N if it waits.
    Context: the control cpuhp kthread."""
    mem, hp = rt.mem, hp_base(rt)
    if raw is not None:
        n = mem.load32(hp + H.ap_len)
        if n + len(raw) <= L.HP_MSG_MAX:
            off = rt.arena.params.hp_ap + n
            rt.buf[off:off + len(raw)] = raw
            mem.store32(hp + H.ap_plan_len, len(raw))
    mem.store32(hp + H.ap_plan, 1)
    rt.waits.wake(hp + H.ap_plan)


def withdraw_ap_job(rt: Runtime) -> None:
    """Withdraw a posted job that cpuhp/N may be waiting to run (its CPU's write
    failed): it returns without running it.  Context: the control cpuhp kthread."""
    mem, hp = rt.mem, hp_base(rt)
    mem.store32(hp + H.ap_cpu, 0)
    mem.store32(hp + H.ap_plan, 1)
    rt.waits.wake(hp + H.ap_plan)


def kick_ap(task: Task) -> None:
    """cpuhp_kick_ap_work(): wake cpuhp/N for the posted job."""
    wake_up_process(task)


def wait_ap_job(rt: Runtime, task: Task) -> int | None:
    """Wait for cpuhp/N (``task``) to finish the posted job.

    Context: the control cpuhp kthread; blocks.
    Return: the job's result (0 or a negative errno); None if cpuhp/N was off
    its CPU and ran nothing; -ESRCH if cpuhp/N died.
    """
    mem, hp = rt.mem, hp_base(rt)
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


def make_plan(rt: Runtime, cpu: int) -> bytes:
    """The plan of ``cpu``'s startup job (see the module doc), pickled.
    Context: the control cpuhp kthread, once ``cpu`` is online."""
    usable = rt.topology.usable()
    tasks = _percpu_tasks(rt, cpu)
    moves = kthreads_online_moves(rt, cpu, {t.pid for t in tasks})
    plan: Plan = (usable, [(t._idx, t._gen) for t in tasks], moves)
    return pickle.dumps(plan, protocol=pickle.HIGHEST_PROTOCOL)


def _plan_of(cpu: int) -> Plan | None:
    return _plan[1] if _plan is not None and _plan[0] == cpu else None


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
    plan = _plan_of(cpu)
    if plan is not None:
        usable, tasks = plan[0], [Task(rt, idx, gen) for idx, gen in plan[1]]
    else:
        usable, tasks = rt.topology.usable(), _percpu_tasks(rt, cpu)   # one read for all
    for task in tasks:
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
    plan = _plan_of(cpu)
    if plan is not None:
        apply_moves(plan[2])
    else:
        rt = get_runtime()
        kthreads_online_cpu(rt, cpu, {t.pid for t in _percpu_tasks(rt, cpu)})
    return 0
