"""kproc: the Linux kernel's kthread API (kernel/kthread.c, Linux 6.15) on real processes.

Every kthread is an OS process forked by a ``kthreadd`` process; task state,
flags and completions live in shared memory; waits use futexes (or POSIX
semaphores).  This module exports the kernel's names (kthread.c, completion.c,
smpboot.c, cpuhp) and nothing else; ``kproc.__version__`` is the package's version.

The floors below it, each importing only from those under it:
kproc/_core/ is the self-contained base (errors, the layout of every shared record,
the arena and its slot tables, handles, argument checks, wait backends, the runtime);
kproc/_sched/ task states, schedule() and completions on top of it;
kproc/_kthread/ (kthreadd, creation, control) and kproc/_freezer.py use those;
kproc/_workqueue/ and kproc/_hotplug/ are built from kthreads; this face exports them;
kproc/_cli/ is the ``kproc`` command, a user of this face.
"""

__version__ = "0.1.0"     # the single source: pyproject.toml reads it

from importlib import import_module as _import_module

from ._core.errors import KthreadError, KernelWarning
from ._core.runtime import Runtime, start, shutdown
from ._sched.task import Task, TaskState
from ._kthread.create import (
    NUMA_NO_NODE, kthread_create, kthread_create_on_node, kthread_create_on_cpu,
    kthread_run, kthread_run_on_cpu,
)
from ._kthread.control import (
    wake_up_process, kthread_bind, kthread_bind_mask,
    kthread_affine_preferred, kthread_stop, kthread_stop_put, kthread_park,
    kthread_unpark, kthread_set_per_cpu, kthread_is_per_cpu, kthread_data,
    kthread_probe_data, kthread_func, get_kthread_comm, get_task_struct,
    put_task_struct, task_state, __kthread_should_park,
)
from ._kthread.body import (
    current, kthread_should_stop, kthread_should_park, kthread_should_stop_or_park,
    kthread_parkme, kthread_exit, kthread_complete_and_exit,
)
from ._sched.schedule import (
    set_current_state, schedule, schedule_timeout, schedule_timeout_interruptible,
    msleep, msleep_interruptible,
)
from ._hotplug.cpumask import (
    cpu_possible_mask, cpu_present_mask, cpu_online_mask, housekeeping_cpumask,
    cpu_to_node, cpumask_of_node,
)
from ._core.fakesys import fake_sysfs
from ._workqueue.handles import KthreadWorker, KthreadWork, KthreadDelayedWork
from ._workqueue.worker import (
    KTW_FREEZABLE, kthread_create_worker, kthread_create_worker_on_node,
    kthread_create_worker_on_cpu, kthread_init_worker, kthread_worker_fn,
    kthread_destroy_worker, kthread_init_work, kthread_init_delayed_work,
)
from ._workqueue.queue import kthread_queue_work
from ._workqueue.flush import kthread_flush_work, kthread_flush_worker
from ._workqueue.cancel import kthread_cancel_work_sync, kthread_cancel_delayed_work_sync
from ._workqueue.delayed import kthread_queue_delayed_work, kthread_mod_delayed_work
from ._freezer import (
    freeze_kthreads, thaw_kthreads, set_freezable, freezing, try_to_freeze,
    kthread_freezable_should_stop,
)
from ._sched.policy import sched_set_fifo, sched_set_fifo_low, sched_set_normal
from ._kthread.mm import (
    Mm, get_task_mm, mmput, kthread_use_mm, kthread_unuse_mm, copy_from_user, copy_to_user,
)
from ._kthread.blkcg import kthread_associate_blkcg, kthread_blkcg
from ._pool import remote as _pool_remote  # noqa: F401  the works a pool's workers run
from ._sched.completion import (
    Completion, init_completion, reinit_completion, complete, complete_all,
    wait_for_completion, wait_for_completion_timeout, wait_for_completion_interruptible,
    wait_for_completion_killable, try_wait_for_completion, completion_done,
)

# CPU hotplug and the pool's caller side are resolved on first use (PEP 562,
# ``__getattr__`` below), so that kthreadd, which imports this package first, loads only
# what kthreads commonly run (the names above: kthreads, completions, schedule, the worker
# loop, and the works a pool's workers run): every kthread is a fork of kthreadd, and each
# page kthreadd maps is a page-table entry every fork copies and every exit tears down
# ("A lean kthreadd" in docs/design.md).  The same names as the TYPE_CHECKING imports
# below (tests/test_lean_kthreadd.py checks it).
_LAZY = {
    "._hotplug.api": ("cpu_down", "cpu_up", "cpuhp_setup_state", "cpuhp_setup_state_nocalls",
                      "cpuhp_remove_state", "cpuhp_remove_state_nocalls",
                      "CPUHP_AP_ONLINE_DYN", "CPUHP_BP_PREPARE_DYN"),
    "._hotplug.smpboot": ("SmpHotplugThread", "smpboot_register_percpu_thread",
                          "smpboot_unregister_percpu_thread"),
    "._pool.executor": ("KthreadPoolExecutor",),
}
_LAZY_NAMES = {name: module for module, names in _LAZY.items() for name in names}

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._hotplug.api import (  # typing only
        cpu_down, cpu_up, cpuhp_setup_state, cpuhp_setup_state_nocalls, cpuhp_remove_state,
        cpuhp_remove_state_nocalls, CPUHP_AP_ONLINE_DYN, CPUHP_BP_PREPARE_DYN,
    )
    from ._hotplug.smpboot import (  # typing only
        SmpHotplugThread, smpboot_register_percpu_thread, smpboot_unregister_percpu_thread,
    )
    from ._pool.executor import KthreadPoolExecutor  # typing only


def __getattr__(name: str) -> object:
    """A public name of the lazy table: import its module, bind the name here, return it.

    Context: any process, on the first ``kproc.NAME`` or ``from kproc import NAME`` of
    a lazy name.  Return: the object.  Raises: AttributeError for any other name.
    """
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy ones included.  Return: a sorted list."""
    return sorted(set(globals()) | set(_LAZY_NAMES))


TASK_RUNNING = TaskState.TASK_RUNNING
TASK_INTERRUPTIBLE = TaskState.TASK_INTERRUPTIBLE
TASK_UNINTERRUPTIBLE = TaskState.TASK_UNINTERRUPTIBLE
TASK_PARKED = TaskState.TASK_PARKED
TASK_DEAD = TaskState.TASK_DEAD
TASK_NEW = TaskState.TASK_NEW
TASK_FROZEN = TaskState.TASK_FROZEN

KTHREAD_IS_PER_CPU = 0
KTHREAD_SHOULD_STOP = 1
KTHREAD_SHOULD_PARK = 2

__all__ = [
    "KthreadError", "KernelWarning", "Runtime", "start", "shutdown", "Task",
    "NUMA_NO_NODE", "kthread_create", "kthread_create_on_node", "kthread_create_on_cpu",
    "kthread_run", "kthread_run_on_cpu", "wake_up_process", "kthread_bind",
    "kthread_bind_mask", "kthread_affine_preferred", "kthread_stop", "kthread_stop_put",
    "kthread_park", "kthread_unpark", "kthread_set_per_cpu", "kthread_is_per_cpu",
    "kthread_data", "kthread_probe_data", "kthread_func", "get_kthread_comm",
    "get_task_struct", "put_task_struct", "task_state", "__kthread_should_park",
    "current", "kthread_should_stop", "kthread_should_park", "kthread_should_stop_or_park",
    "kthread_parkme", "kthread_exit", "kthread_complete_and_exit",
    "set_current_state", "schedule", "schedule_timeout", "schedule_timeout_interruptible",
    "msleep", "msleep_interruptible",
    "Completion", "init_completion", "reinit_completion", "complete", "complete_all",
    "wait_for_completion", "wait_for_completion_timeout",
    "wait_for_completion_interruptible", "wait_for_completion_killable",
    "try_wait_for_completion", "completion_done",
    "Mm", "get_task_mm", "mmput", "kthread_use_mm", "kthread_unuse_mm", "copy_from_user",
    "copy_to_user", "kthread_associate_blkcg", "kthread_blkcg",
    "sched_set_fifo", "sched_set_fifo_low", "sched_set_normal",
    "KthreadWorker", "KthreadWork", "KthreadDelayedWork", "KTW_FREEZABLE",
    "kthread_create_worker", "kthread_create_worker_on_node", "kthread_create_worker_on_cpu",
    "kthread_init_worker", "kthread_worker_fn", "kthread_destroy_worker",
    "kthread_init_work", "kthread_init_delayed_work", "kthread_queue_work",
    "kthread_queue_delayed_work", "kthread_mod_delayed_work", "kthread_flush_work",
    "kthread_flush_worker", "kthread_cancel_work_sync", "kthread_cancel_delayed_work_sync",
    "freeze_kthreads", "thaw_kthreads", "set_freezable", "freezing", "try_to_freeze",
    "kthread_freezable_should_stop",
    "cpu_possible_mask", "cpu_present_mask", "cpu_online_mask", "housekeeping_cpumask",
    "cpu_to_node", "cpumask_of_node", "fake_sysfs",
    "cpu_down", "cpu_up", "cpuhp_setup_state", "cpuhp_setup_state_nocalls",
    "cpuhp_remove_state", "cpuhp_remove_state_nocalls", "CPUHP_AP_ONLINE_DYN",
    "CPUHP_BP_PREPARE_DYN", "SmpHotplugThread",
    "smpboot_register_percpu_thread", "smpboot_unregister_percpu_thread",
    "KthreadPoolExecutor",
    "TASK_RUNNING", "TASK_INTERRUPTIBLE", "TASK_UNINTERRUPTIBLE", "TASK_PARKED",
    "TASK_DEAD", "TASK_NEW", "TASK_FROZEN",
    "KTHREAD_IS_PER_CPU", "KTHREAD_SHOULD_STOP", "KTHREAD_SHOULD_PARK",
]
