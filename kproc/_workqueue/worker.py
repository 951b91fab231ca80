"""Creating, running and destroying kthread workers (kernel: kthread_create_worker*,
kthread_init_worker, kthread_worker_fn, kthread_destroy_worker, kthread_init_work).

A worker made by ``kthread_create_worker*()`` is a worker slot plus a kthread
running :func:`kthread_worker_fn` on it, woken at once (bound first for
``_on_cpu``).  ``kthread_init_worker()`` + ``kthread_run(kthread_worker_fn,
worker, ...)`` is the same by hand.  Teardown mirrors setup:
``kthread_destroy_worker()`` flushes, stops the kthread, warns about (and
unlinks) whatever is still queued, then frees the slot, after which every
handle on the worker, and every work last queued on it, raises.

Races prevented: worker->task is recorded under the worker lock, both by the
creator (before the first wake) and by kthread_worker_fn() itself, so a
queuer never wakes a task that is not the worker's; a KTW_FREEZABLE worker's
task is marked freezable before it is woken, so a freeze right after the
create cannot miss it; destroy flushes before it stops the kthread, and
unlinks what is left only once the kthread is gone (nothing pops meanwhile).

Runs in the caller (create, init, destroy, init_work) and in the worker's
kthread (kthread_worker_fn).
"""

from __future__ import annotations

import errno

from .._core import layout as L
from .._core import syscalls as _sys
from .._core.blobs import read_name
from .._core.checks import check_cpu, check_int
from .._core.errors import KthreadError, kernel_warn
from .._core.runtime import Runtime, get_runtime
from .._freezer import set_freezable_at
from .._kthread.control import kthread_bind, kthread_stop, wake_up_process
from .._kthread.create import NUMA_NO_NODE, kthread_create_on_node
from .._sched.schedule import need_current
from .._sched.task import Task
from .flush import kthread_flush_worker, own_worker
from .handles import (KthreadDelayedWork, KthreadWork, KthreadWorker, KTW_FREEZABLE,
                      resolve_worker, resolve_work, same_runtime)
from .lists import Locked, drop_all_locked
from .loop import worker_loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    Work = TypeVar("Work", bound=KthreadWork)   # what kthread_init_work()'s func is called with

__all__ = ["kthread_create_worker", "kthread_create_worker_on_node",
           "kthread_create_worker_on_cpu", "kthread_init_worker", "kthread_worker_fn",
           "kthread_destroy_worker", "kthread_init_work", "kthread_init_delayed_work",
           "KTW_FREEZABLE"]

K = L.WORKER
W = L.WORK
T = L.TASK
KTW_ALL = KTW_FREEZABLE
WORKER_TIMERSLACK_NS = 1000    # timers of delayed works fire at most ~1 µs late


def _check_flags(flags: int) -> None:
    check_int("flags", flags)
    if flags & ~KTW_ALL or flags < 0:
        raise ValueError(f"unknown worker flags {flags:#x} (only KTW_FREEZABLE is defined)")


def kthread_init_worker(worker: KthreadWorker) -> None:
    """kthread_init_worker - (re)initialise a worker: empty lists, no flags, no task.

    @worker: a KthreadWorker, typically fresh (``KthreadWorker()``), to be run
    by ``kthread_run(kthread_worker_fn, worker, name)``.
    Context: any process of the runtime.  Return: None.
    Raises: TypeError; KthreadError(ESRCH) for a destroyed worker;
    KthreadError(EBUSY) if a kthread is serving it or works are queued on it.
    """
    rt, kbase = resolve_worker(worker)
    mem = rt.mem
    with Locked(rt, kbase):
        if mem.load32(kbase + K.task) or mem.load32(kbase + K.head) or \
                mem.load32(kbase + K.thead):
            raise KthreadError(errno.EBUSY, "kthread_init_worker() on a worker that has a "
                               "kthread or queued works; destroy it instead")
        for name in ("flags", "current", "depth", "ndelayed"):
            mem.store32(kbase + getattr(K, name), 0)
        mem.store64(kbase + K.executed, 0)
        mem.store64(kbase + K.errors, 0)


def kthread_worker_fn(worker: KthreadWorker) -> int:
    """kthread_worker_fn - the threadfn of a worker's kthread: run its works until stopped.

    Sleeps while the list is empty (until the first delayed work expires, if
    any); runs each work's ``func(work)``; reports a work that raises (the
    traceback, with the worker's name, goes to stderr and is kept in
    ``work.exception``) and goes on.  A KTW_FREEZABLE worker freezes between
    works.  Context: a kthread (pass it as the threadfn, the worker as data).
    Return: 0 when kthread_stop() ends it.
    Raises: RuntimeError outside a kthread; TypeError.
    """
    rt, tbase = need_current("kthread_worker_fn")
    me, my_gen = rt.self_idx, rt.self_gen
    if me is None or my_gen is None:        # set with self_base, which need_current() saw
        raise RuntimeError("kthread_worker_fn() must be called from a kthread")
    wrt, kbase = resolve_worker(worker)
    same_runtime(rt, wrt, "worker")
    mem = rt.mem
    with Locked(rt, kbase):
        t = mem.load32(kbase + K.task)
        if t and rt.arena.task_off(t - 1) != tbase:
            kernel_warn("kthread_worker_fn(): the worker already has another kthread",
                        stacklevel=2)
        mem.store32(kbase + K.task, me + 1)
        mem.store32(kbase + K.task_gen, my_gen)
    mem.fetch_or32(tbase + T.flags, L.KF_WORKER)
    try:
        _sys.set_timerslack(WORKER_TIMERSLACK_NS)
    except OSError:
        pass
    if mem.load32(kbase + K.flags) & KTW_FREEZABLE:
        set_freezable_at(rt, tbase)
    return worker_loop(rt, kbase, tbase, read_name(rt.arena, me, tbase))


def kthread_create_worker_on_node(flags: int, node: int, namefmt: str,
                                  *args: object) -> KthreadWorker:
    """kthread_create_worker_on_node - create a worker and its kthread, and wake it.

    @flags: 0 or KTW_FREEZABLE; @node: NUMA node for the kthread's affinity
    (NUMA_NO_NODE: housekeeping CPUs); @namefmt, @args: its name.
    Context: any process of the runtime; blocks while the kthread is created.
    Return: the KthreadWorker.
    Raises: TypeError/ValueError (bad flags, node, name); KthreadError(ENOMEM)
    (tables full), or what kthread_create_on_node() raises.
    """
    _check_flags(flags)
    worker = KthreadWorker()
    task = _attach_task(worker, flags,
                        lambda: kthread_create_on_node(kthread_worker_fn, worker, node,
                                                       namefmt, *args))
    wake_up_process(task)
    return worker


def _attach_task(worker: KthreadWorker, flags: int, create: Callable[[], Task]) -> Task:
    """Create the worker's kthread (not woken) and record it as worker->task."""
    rt, kbase = resolve_worker(worker)
    mem = rt.mem
    mem.store32(kbase + K.flags, flags)
    try:
        task = create()
    except BaseException:
        worker._owner = False
        rt.arena.free_worker(worker._idx, worker._gen)
        raise
    with Locked(rt, kbase):
        mem.store32(kbase + K.task, task._idx + 1)
        mem.store32(kbase + K.task_gen, task._gen)
    if flags & KTW_FREEZABLE:
        # Freezable from birth, so a freeze_kthreads() right after the create
        # cannot miss it (kthread_worker_fn's set_freezable() comes later).
        mem.fetch_or32(rt.arena.task_off(task._idx) + T.flags, L.KF_FREEZABLE)
    return task


def kthread_create_worker(flags: int, namefmt: str, *args: object) -> KthreadWorker:
    """kthread_create_worker - kthread_create_worker_on_node(flags, NUMA_NO_NODE, ...).

    Context, Return, Raises: as kthread_create_worker_on_node().
    """
    return kthread_create_worker_on_node(flags, NUMA_NO_NODE, namefmt, *args)


def kthread_create_worker_on_cpu(cpu: int, flags: int, namefmt: str) -> KthreadWorker:
    """kthread_create_worker_on_cpu - create a worker bound to @cpu (and its node).

    @namefmt gets the CPU number as its one argument (e.g. ``"helper/%u"``);
    a name without a conversion (``"plain"``) is used as it is.
    Context: any process of the runtime; blocks while the kthread is created.
    Return: the KthreadWorker, its kthread bound to @cpu and woken.
    Raises: ValueError (CPU not possible, bad name, bad flags); TypeError;
    KthreadError(ENOMEM).
    """
    _check_flags(flags)
    rt = get_runtime()
    check_cpu(rt.topology, cpu)
    node = rt.topology.cpu_to_node(cpu)
    # The kernel's vsnprintf ignores an argument the format does not use
    # (kthread.c kthread_create_worker_on_cpu: "plain" is a valid name).
    fmt_args = (cpu,) if isinstance(namefmt, str) and "%" in namefmt.replace("%%", "") else ()
    worker = KthreadWorker()
    task = _attach_task(worker, flags,
                        lambda: kthread_create_on_node(kthread_worker_fn, worker, node,
                                                       namefmt, *fmt_args))
    kthread_bind(task, cpu)
    wake_up_process(task)
    return worker


def kthread_destroy_worker(worker: KthreadWorker) -> None:
    """kthread_destroy_worker - flush, stop and free a worker.

    Waits for the works queued so far, stops the kthread, and warns
    (KernelWarning) about works still queued or delayed, which are unlinked
    (their flushers released).  Afterwards the worker and works last queued on
    it raise until kthread_init_work().
    Context: any process of the runtime but the worker's own kthread; blocks.
    Return: None.  A worker with no kthread: KernelWarning, nothing done.
    Raises: TypeError; KthreadError(ESRCH) for a destroyed worker.
    """
    rt, kbase = resolve_worker(worker)
    task = worker.task
    if task is None:
        kernel_warn("kthread_destroy_worker(): the worker has no kthread", stacklevel=2)
        return
    if own_worker(rt, kbase):
        kernel_warn("kthread_destroy_worker() called from the worker's own kthread; "
                    "not destroying", stacklevel=2)
        return
    try:
        kthread_flush_worker(worker)
    except KthreadError as exc:
        if exc.errno != errno.ESRCH:
            raise                       # its kthread died: nothing left to flush
    try:
        kthread_stop(task)
    except KthreadError as exc:
        if exc.errno != errno.ESRCH:
            raise
    left = _unlink_all(rt, kbase)
    if left:
        kernel_warn(f"kthread_destroy_worker(): {left} work(s) were still queued or "
                    "delayed; they were dropped", stacklevel=2)
    worker._owner = False
    rt.arena.free_worker(worker._idx, worker._gen)


def _unlink_all(rt: Runtime, kbase: int) -> int:
    with Locked(rt, kbase) as lk:
        left = drop_all_locked(lk)
        rt.mem.store32(kbase + K.task, 0)
        rt.mem.store32(kbase + K.current, 0)
        lk.wake = False
    return left


def kthread_init_work(work: Work, func: Callable[[Work], object]) -> None:
    """kthread_init_work - (re)initialise @work to run @func, tied to no worker.

    Context: any process of the runtime.  Return: None.
    Raises: TypeError; KthreadError(EBUSY) if the work is pending or running;
    KthreadError(ESRCH) for a stale work.
    """
    resolve_work(work)
    work._reinit(func)


def kthread_init_delayed_work(dwork: KthreadDelayedWork,
                              func: Callable[[KthreadDelayedWork], object]) -> None:
    """kthread_init_delayed_work - kthread_init_work() for a KthreadDelayedWork.

    Context: any process of the runtime.  Return: None.
    Raises: TypeError if @dwork is not a KthreadDelayedWork; as kthread_init_work().
    """
    resolve_work(dwork, "dwork", delayed=True)
    dwork._reinit(func)

