"""Trace events (SPEC §3 "Tracing") -- interface stub, filled in by the trace work.

Callers test the module-level ``ENABLED`` flag before calling anything here,
so tracing costs one attribute load when it is off::

    if _trace.ENABLED:
        _trace.work_queue_work(worker_pid, worker_comm, work_id, func_name, flow_id)

Every function below may be called from any process of the runtime.
"""

__all__ = ["ENABLED", "setup", "lifecycle", "kthread_stop", "kthread_stop_ret",
           "work_queue_work", "work_execute_start", "work_execute_end", "flush"]

ENABLED = False


def setup(rt, path):
    """Enable tracing in this process for runtime ``rt``, writing to ``path``."""


def lifecycle(event, pid, comm, **args):
    """A lifecycle instant event: ``event`` in create, wake, park, unpark, exit."""


def kthread_stop(pid, comm):
    """The kernel's ``sched_kthread_stop`` (comm, pid)."""


def kthread_stop_ret(ret):
    """The kernel's ``sched_kthread_stop_ret`` (ret)."""


def work_queue_work(worker_pid, worker_comm, work_id, func_name, flow_id):
    """The kernel's ``sched_kthread_work_queue_work``; ``flow_id`` links it to execution."""


def work_execute_start(work_id, func_name, flow_id):
    """The kernel's ``sched_kthread_work_execute_start``, in the worker's process."""


def work_execute_end(work_id, func_name):
    """The kernel's ``sched_kthread_work_execute_end``, in the worker's process."""


def flush():
    """Write this process's buffered events out (called before a kthread exits)."""
