"""The work trace events: kthread.c's ``trace_sched_kthread_work_queue_work`` and
``trace_sched_kthread_work_execute_start``/``_end``, as ``kproc._core.trace`` writes them.

A work is named in the trace by ``work_id`` (slot index and generation, so a
recycled slot is a new work) and linked from its queueing to its execution by
a flow id stored in the work record (``WORK.flow``) at queueing time.

Invariants: nothing here is called while tracing is off (callers test
``trace.ENABLED`` first, which keeps the hot paths free of it); the queue event
is emitted under the worker lock, from inside ``kthread_insert_work``, as the
kernel does.  Runs in the process that queues (the caller or any kthread) and
in the worker's kthread (execute events).
"""

from __future__ import annotations

import time

from .._core import layout as L
from .._core import trace as _trace
from .._core.blobs import read_name
from .._core.runtime import Runtime
from .payload import read_payload

__all__ = ["work_id", "trace_queue"]

W = L.WORK
K = L.WORKER
T = L.TASK

_worker_comms: dict[tuple[int, int], str] = {}      # (task slot + 1, pid) -> comm


def work_id(idx: int, gen: int) -> int:
    """The trace id of work slot ``idx`` at generation ``gen``."""
    return (idx << 32) | gen


def _func_name(rt: Runtime, idx: int) -> str:
    try:
        func, _ = read_payload(rt, idx - 1, rt.arena.work_off(idx - 1))
        return getattr(func, "__qualname__", repr(func))
    except Exception:
        return "?"


def trace_queue(rt: Runtime, kbase: int, idx: int, base: int) -> None:
    """sched_kthread_work_queue_work for work ``idx`` (index + 1) on the worker at ``kbase``."""
    mem = rt.mem
    flow = (time.monotonic_ns() ^ (idx << 44)) & ((1 << 53) - 1)
    mem.store64(base + W.flow, flow)
    t = mem.load32(kbase + K.task)
    pid, comm = 0, ""
    if t:
        tbase = rt.arena.task_off(t - 1)
        pid = L.unpack_field(rt.buf, tbase, T, "pid")
        if (t, pid) not in _worker_comms:
            _worker_comms[(t, pid)] = read_name(rt.arena, t - 1, tbase)
        comm = _worker_comms[(t, pid)]
    _trace.work_queue_work(pid, comm, work_id(idx - 1, mem.load32(base + W.gen)),
                           _func_name(rt, idx), flow)
