"""Creating kthreads from any process (kernel: kthread.c kthread_create_on_node()).

The caller checks every argument, takes a free task slot, writes the name and
the pickled threadfn and data into its blob, then, in the same critical
section, claims a ready spare child of kthreadd (``spares``: the spare
becomes the kthread, one hop) or, with none ready, queues the slot on the
create list (``kthread_create_list``) for kthreadd; it wakes the one or the
other and waits on the slot's ``done`` completion.  The child publishes
itself and sleeps in TASK_UNINTERRUPTIBLE until its first ``wake_up_process``;
after a claim that left half the pool or less ready, kthreadd is woken to
replenish it (``spares_low``).

The race this prevents (``__kthread_create_on_node``): a caller interrupted
(or killed) while waiting abandons the request through the hand-off word
(the kernel's ``xchg(&create->done, NULL)``), so the child exits instead of
living on as an orphan nobody holds.  The wait watches kthreadd, so its
death ends it with ``KthreadError(ESRCH)``.

Runs in the caller (any process of the runtime).
"""

from __future__ import annotations

import errno
import os
import time

from .._core import layout as L
from .._core import syscalls as _sys
from .._core import trace as _trace
from .._core.arena import TableFull
from .._core.blobs import read_traceback, write_blob
from .._core.checks import check_cpu, check_format_widths, check_int
from .._core.errors import KthreadError
from .._core.funcref import pickle_data, pickle_function
from .._core.runtime import Runtime, get_runtime
from .._sched.completion import wait_at
from .._sched.task import Task, TaskState
from .control import kthread_bind, request_stop, trace_event, wake_up_process
from .spares import claim_spare, spares_low, wake_spare

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import TypeVar

    D = TypeVar("D")              # a threadfn's data: what it is called with

__all__ = ["kthread_create", "kthread_create_on_node", "kthread_create_on_cpu", "kthread_run",
           "kthread_run_on_cpu", "format_name", "NUMA_NO_NODE"]

NUMA_NO_NODE = -1
T = L.TASK


# -- argument checks -----------------------------------------------------------------

def format_name(namefmt: str, args: Iterable[object]) -> tuple[str, bytes]:
    """Format a printf-style kthread name (``namefmt % args``).

    Return: the name and its UTF-8 bytes.
    Raises: TypeError / ValueError with a clear message on a bad format.
    """
    if not isinstance(namefmt, str):
        raise TypeError(f"namefmt must be a str, not {type(namefmt).__name__}")
    args = tuple(args)
    if len(namefmt) > 4 * L.NAME_MAX:
        raise ValueError(f"namefmt is {len(namefmt)} characters; a kthread name is at most "
                         f"{L.NAME_MAX} bytes")
    check_format_widths("namefmt", namefmt, args, L.NAME_MAX)
    try:
        name = namefmt % args
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad kthread name format {namefmt!r} for arguments "
                         f"{tuple(args)!r}: {exc}") from None
    raw = name.encode("utf-8")
    if len(raw) > L.NAME_MAX:
        raise ValueError(f"kthread name is {len(raw)} bytes; at most {L.NAME_MAX}")
    if "\0" in name:
        raise ValueError("kthread name must not contain NUL")
    return name, raw


def _check_node(rt: Runtime, node: int) -> None:
    check_int("node", node)
    if node != NUMA_NO_NODE:
        nodes = rt.topology.nodes()
        if node not in nodes:
            raise ValueError(f"node {node} does not exist (nodes: {sorted(nodes)})")


# -- creation ------------------------------------------------------------------------

def kthread_create_on_node(threadfn: Callable[[D], int | None], data: D, node: int,
                           namefmt: str, *args: object) -> Task:
    """kthread_create_on_node(): create a kthread, asleep until woken.

    @threadfn: ``threadfn(data) -> int``, a module-level function (passed by
    reference).  @data: any picklable object.  @node: NUMA node whose CPUs the
    kthread prefers after its first wake-up, or NUMA_NO_NODE.  @namefmt, @args:
    printf-style name (``namefmt % args``).

    Context: any process of the runtime; blocks until the kthread exists.
    Return: its Task, asleep in TASK_UNINTERRUPTIBLE: wake it with
    wake_up_process(), or stop it (its result is then -EINTR).
    Raises: TypeError / ValueError on bad arguments (before anything is done);
    KthreadError(ENOMEM) when the task table is full; KthreadError(EINVAL) when
    the kthread could not load threadfn or data; KthreadError(ESRCH) if
    kthreadd died.
    """
    fn_pickle = pickle_function(threadfn)
    data_pickle = pickle_data(data)
    name, raw = format_name(namefmt, args)
    size = len(fn_pickle) + len(data_pickle) + L.FN_LEN.size
    if size > L.PAYLOAD_MAX:
        raise ValueError(f"threadfn and data pickle to {size} bytes; a kthread can be "
                         f"given at most {L.PAYLOAD_MAX}: pass a path or a key instead")
    rt = get_runtime()
    _check_node(rt, node)
    rt.check_alive()
    return _create(rt, raw, fn_pickle, data_pickle, node)


def _create(rt: Runtime, raw_name: bytes, fn_pickle: bytes, data_pickle: bytes,
            node: int) -> Task:
    """Queue the request, wake kthreadd, wait for the hand-off and take the Task.

    Asynchronous signals (Ctrl-C) are deferred except during the wait, so a
    KeyboardInterrupt is raised only where the request can be given up as a
    whole: before it is queued, in the wait, or once the Task is taken (then
    the new kthread is stopped).  Whatever interrupts, no kthread is left that
    nobody holds (the kernel's ``xchg(&create->done, NULL)``).
    """
    arena, mem = rt.arena, rt.mem
    mask = _sys.signal_mask()
    base, pinned, spare = -1, False, -1
    try:
        _sys.block_async_signals(mask)
        with arena.locked():
            idx, gen = _alloc_task(rt)
            base = arena.task_off(idx)
            write_blob(arena, idx, base, raw_name, fn_pickle, data_pickle)
            L.pack_field(rt.buf, base, T, "node", node)
            L.pack_field(rt.buf, base, T, "creator", os.getpid())
            mem.store64(base + T.create_ns, time.monotonic_ns())
            mem.store32(base + T.state, TaskState.TASK_NEW)
            mem.store32(base + T.refs, 1)              # the creator's pin until published
            pinned = True
            spare = claim_spare(rt, idx)
            if spare < 0:
                tail = arena.hget("create_tail")
                if tail:
                    mem.store32(arena.task_off(tail - 1) + T.next, idx + 1)
                else:
                    arena.hset("create_head", idx + 1)
                arena.hset("create_tail", idx + 1)
        if spare < 0:
            rt.wake_kthreadd()
        else:
            wake_spare(rt, spare)
        task = Task(rt, idx, gen)
        _sys.restore_signal_mask(mask)     # a Ctrl-C deferred so far is raised here
        wait_at(rt, base + T.done, None, "killable")
        _sys.block_async_signals(mask)
        if spare >= 0 and spares_low(rt):
            rt.wake_kthreadd()             # to replenish the pool, off the critical path
        mem.fetch_add32(base + T.refs, -1)
        pinned = False
        if mem.cmpxchg32(base + T.handoff, L.HANDOFF_PUBLISHED, L.HANDOFF_TAKEN) != \
                L.HANDOFF_PUBLISHED:
            base = -1                      # it failed: nothing to give up
            err = -mem.load64(arena.task_off(idx) + T.result) or errno.EAGAIN
            text = read_traceback(arena, idx, arena.task_off(idx)) or "kthread creation failed"
            raise KthreadError(err, text)
        if _trace.ENABLED:
            trace_event(rt, arena.task_off(idx), idx, "create", creator=os.getpid())
        _sys.restore_signal_mask(mask)     # ours now: a Ctrl-C here stops it (below)
        mask = None
        return task
    except BaseException:
        if base >= 0:
            _abandon(rt, base, pinned)
        raise
    finally:
        _sys.restore_signal_mask(mask)


def _alloc_task(rt: Runtime) -> tuple[int, int]:
    """alloc_task(), waiting out slots whose kthread exited but is not reaped yet.

    kthread_stop() returns as soon as the kthread has exited; kthreadd reaps
    it a moment later.  A full table with such a slot is only briefly full.
    Context: arena lock held (released while waiting).
    """
    deadline = time.monotonic() + 1.0
    while True:
        try:
            return rt.arena.alloc_task()
        except TableFull as exc:
            if not exc.exiting or time.monotonic() > deadline:
                raise
        rt.mem.mutex_unlock(rt.arena.lock_off)
        try:
            time.sleep(0.0005)
        finally:
            rt.mem.mutex_lock(rt.arena.lock_off)


def _abandon(rt: Runtime, base: int, pinned: bool) -> None:
    """The creator is leaving with an exception (Ctrl-C): give up the request.

    Not served yet: kthreadd skips it; served, not published: the child exits;
    published or already taken (the exception came after the hand-off): the
    kthread exists, asleep and never woken, and is stopped here.
    """
    mem = rt.mem
    prev = mem.cmpxchg32(base + T.handoff, L.HANDOFF_WAITING, L.HANDOFF_ABANDONED)
    if pinned:
        mem.fetch_add32(base + T.refs, -1)
    if prev in (L.HANDOFF_PUBLISHED, L.HANDOFF_TAKEN):
        try:
            request_stop(rt, base)
        except KthreadError:
            pass


def kthread_create(threadfn: Callable[[D], int | None], data: D, namefmt: str,
                   *args: object) -> Task:
    """kthread_create(): kthread_create_on_node() with NUMA_NO_NODE.  See there."""
    return kthread_create_on_node(threadfn, data, NUMA_NO_NODE, namefmt, *args)


def kthread_create_on_cpu(threadfn: Callable[[D], int | None], data: D, cpu: int,
                          namefmt: str) -> Task:
    """kthread_create_on_cpu(): create a kthread bound to ``cpu``.

    @namefmt: a name with (at most) one ``%u``, filled with the CPU number.
    The CPU must be possible and may be offline (the binding then applies when
    it comes up).  Context: any.  Return: the Task, asleep until woken.
    Raises: as kthread_create_on_node(); ValueError for a CPU that is not possible.
    """
    rt = get_runtime()
    check_cpu(rt.topology, cpu)
    fmt_args = (cpu,) if isinstance(namefmt, str) and "%" in namefmt else ()
    task = kthread_create_on_node(threadfn, data, rt.topology.cpu_to_node(cpu), namefmt,
                                  *fmt_args)
    kthread_bind(task, cpu)
    L.pack_field(rt.buf, task._base, T, "cpu", cpu)
    return task


def kthread_run(threadfn: Callable[[D], int | None], data: D, namefmt: str,
                *args: object) -> Task:
    """kthread_run(): kthread_create() then wake_up_process().  Return: the Task."""
    task = kthread_create(threadfn, data, namefmt, *args)
    wake_up_process(task)
    return task


def kthread_run_on_cpu(threadfn: Callable[[D], int | None], data: D, cpu: int,
                       namefmt: str) -> Task:
    """kthread_run_on_cpu(): kthread_create_on_cpu() then wake_up_process()."""
    task = kthread_create_on_cpu(threadfn, data, cpu, namefmt)
    wake_up_process(task)
    return task
