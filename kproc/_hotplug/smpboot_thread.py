"""The loop every per-CPU hotplug thread runs (kernel: kernel/smpboot.c,
``smpboot_thread_fn``).

stop → ``cleanup(cpu, online)`` and exit; park → ``park(cpu)``,
kthread_parkme(); first run → ``setup(cpu)``; after an unpark that followed
a ``park(cpu)`` → ``unpark(cpu)`` (so only where ``park`` ran, as in
smpboot.c); then ``thread_fn(cpu)`` while ``thread_should_run(cpu)``, else
sleep until woken.  Each test is made in TASK_INTERRUPTIBLE, so a wake-up
between the test and ``schedule()`` is not lost.

Where the kernel has ``BUG_ON(td->cpu != smp_processor_id())`` the loop
checks that it runs on its CPU with affinity ``{cpu}``: a CPU taken down by
someone else (a shell, stress-ng) breaks the binding before cpuhp can park
the thread, so the thread waits to be parked instead of running elsewhere
(cpuhp hears of the change from its uevent, not from the thread: a task's
affinity reads back empty for tens of ms while its CPU dies, and means
nothing then).  ``cpuhp/N`` itself (``_anywhere``) checks in its job.  A
``thread_fn`` already running when its CPU vanishes is migrated by the
kernel mid-run: that, user space cannot prevent.  A CPU of a fake tree that
the host lacks is modelled: its thread runs wherever it may.
Context: the per-CPU threads (``getcpu``: any).
"""

from __future__ import annotations

import os

from .._core.native import native
from .._core.runtime import get_runtime
from .._kthread.body import kthread_parkme, kthread_should_park, kthread_should_stop
from .._sched.schedule import schedule, schedule_timeout_interruptible, set_current_state
from .._sched.task import TaskState
from . import callbacks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core.runtime import Runtime  # typing only
    from .htlike import SmpHotplugThreadLike  # typing only: smpboot sits above

__all__ = ["smpboot_thread_fn", "getcpu"]

HP_THREAD_NONE, HP_THREAD_ACTIVE, HP_THREAD_PARKED = range(3)
OFF_CPU_WAIT = 0.001       # s: a thread off its CPU waits this long for cpuhp, per round

# sched_getcpu() from the extension, where it is usable (``_core.native``) and has it
_native_getcpu: Callable[[], int] | None = getattr(native, "getcpu", None)


def getcpu() -> int:
    """The CPU running the caller (sched_getcpu; /proc/self/stat field 39 without
    the extension).  Context: any.  Return: the CPU number."""
    if _native_getcpu is not None:
        return _native_getcpu()
    with open("/proc/self/stat") as f:
        return int(f.read().rpartition(")")[2].split()[36])


def _on_its_cpu(cpu: int, modelled: bool) -> bool:
    """kernel: td->cpu == smp_processor_id(), plus the binding not broken."""
    if modelled:
        return True
    return os.sched_getaffinity(0) == {cpu} and getcpu() == cpu


def _rebind_if_back(rt: Runtime, cpu: int) -> None:
    """Off our CPU while it is up: take the binding back.

    The binding is lost when the CPU went away under us (an outside offline, or
    an unpark whose re-bind met the CPU offline again in a storm of changes) or
    when someone else set our affinity (the kernel refuses that: per-CPU
    kthreads have PF_NO_SETAFFINITY).  cpuhp re-binds on its replay of the
    change, which may lag behind a storm; meanwhile, once the CPU is online
    again, the thread binds itself, so it never waits unbound on a live CPU.
    While the CPU dies the affinity reads back empty (and ``online`` still lists
    it): nothing is done then, so no run starts on a CPU on its way out.
    """
    allowed = os.sched_getaffinity(0)
    if allowed and allowed != {cpu} and cpu in rt.topology.usable():
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass            # it went down meanwhile


def _call(fn: Callable[..., None] | None, *args: object) -> None:
    """An smpboot callback, marked as a hotplug callback while it runs (a hotplug
    call from it would wait for itself: EDEADLK)."""
    if fn is not None:
        callbacks.enter()
        try:
            fn(*args)
        finally:
            callbacks.leave()


def smpboot_thread_fn(data: tuple[SmpHotplugThreadLike, int]) -> int:
    """threadfn of every per-CPU thread: the smpboot loop (see the module doc).

    @data: (SmpHotplugThread, cpu).  Context: the per-CPU thread.
    Return: 0 when stopped.
    """
    ht, cpu = data
    rt = get_runtime()
    modelled = ht._anywhere or cpu not in rt.topology.host_cpus()
    status = HP_THREAD_NONE
    while True:
        set_current_state(TaskState.TASK_INTERRUPTIBLE)
        if kthread_should_stop():
            set_current_state(TaskState.TASK_RUNNING)
            if ht.cleanup is not None and status != HP_THREAD_NONE:
                _call(ht.cleanup, cpu, rt.topology.is_online(cpu))
            return 0
        if kthread_should_park():
            set_current_state(TaskState.TASK_RUNNING)
            if ht.park is not None and status == HP_THREAD_ACTIVE:
                # smpboot.c: only a park callback makes the status PARKED, and only
                # PARKED calls unpark: no unpark without a park
                _call(ht.park, cpu)
                status = HP_THREAD_PARKED
            kthread_parkme()
            continue
        if not _on_its_cpu(cpu, modelled):
            # Someone else took our CPU down: wait for cpuhp to park us.
            set_current_state(TaskState.TASK_RUNNING)
            _rebind_if_back(rt, cpu)
            schedule_timeout_interruptible(OFF_CPU_WAIT)
            continue
        if status == HP_THREAD_NONE:
            set_current_state(TaskState.TASK_RUNNING)
            _call(ht.setup, cpu)
            status = HP_THREAD_ACTIVE
            continue
        if status == HP_THREAD_PARKED:
            set_current_state(TaskState.TASK_RUNNING)
            _call(ht.unpark, cpu)
            status = HP_THREAD_ACTIVE
            continue
        if not ht.thread_should_run(cpu):
            schedule()
        else:
            set_current_state(TaskState.TASK_RUNNING)
            ht.thread_fn(cpu)
