"""Controlling kthreads from any process (kernel: kthread.c).

The public functions validate every argument before anything is changed,
then follow kthread.c 6.15 step by step (creation is in ``create``):

* wake: ``wake_up_process``, the first one starting threadfn.
* bind / affine_preferred: only on a kthread still asleep in its first
  TASK_UNINTERRUPTIBLE (``wait_task_inactive``), else ``KernelWarning``.
* park: SHOULD_PARK, wake, wait ``parked``, then wait until the kthread is
  really asleep in TASK_PARKED; unpark re-binds per-CPU kthreads first.
* stop: SHOULD_STOP, unpark, notify (TIF_NOTIFY_SIGNAL), wake, wait ``exited``.

Every wait watches its peers: kthreadd (``Runtime.check_alive``) and the
target kthread (its slot turning dead), so nobody hangs on a dead process.

Runs in the caller (any process of the runtime).
"""

from __future__ import annotations

import errno
import pickle
import time

from .._core import layout as L
from .._core.blobs import read_blob, read_name
from .._core.checks import check_cpu, check_int, check_mask
from .._sched import schedule as _sched
from .._core import trace as _trace
from .affinity import apply_mask, fetch_affinity, record_mask
from .body import self_data
from .._sched.completion import wait_at
from .._core.errors import KthreadError, kernel_warn
from .._core.hung_task import HungTask, task_text
from .._sched.task import Task, TaskState, resolve
from .._sched.task import TASK_NORMAL, TASK_STATES
from .._freezer import kick_frozen
from .._core.runtime import Runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from .._sched.task import ThreadFn  # typing only

__all__ = ["wake_up_process", "kthread_bind", "kthread_bind_mask",
           "kthread_affine_preferred", "kthread_stop", "kthread_stop_put", "kthread_park",
           "kthread_unpark", "kthread_set_per_cpu", "kthread_is_per_cpu", "kthread_data",
           "kthread_probe_data", "kthread_func", "get_kthread_comm", "get_task_struct",
           "put_task_struct", "task_state"]

T = L.TASK
INACTIVE_TIMEOUT = 1.0


def pid_comm(rt: Runtime, base: int, idx: int) -> tuple[int, str]:
    """The pid and name of the kthread in slot ``idx``, for trace events."""
    return L.unpack_field(rt.buf, base, T, "pid"), read_name(rt.arena, idx, base)


def trace_event(rt: Runtime, base: int, idx: int, event: str, /, **args: object) -> None:
    _trace.lifecycle(event, *pid_comm(rt, base, idx), **args)


# -- waking and binding ----------------------------------------------------------------

def wake_up_process(task: Task) -> bool:
    """wake_up_process(): wake ``task`` if it sleeps in TASK_INTERRUPTIBLE or
    TASK_UNINTERRUPTIBLE (the first wake-up of a new kthread included).

    Context: any; never blocks.  Return: True if it was woken, False if it was
    not asleep (running, parked, dead).
    """
    rt, base = resolve(task)
    woken = _sched.wake_up_process_raw(rt, base)
    if woken and _trace.ENABLED:
        trace_event(rt, base, task._idx, "wake")
    return woken


def _inactive_new(rt: Runtime, base: int, fn_name: str) -> bool:
    """wait_task_inactive(TASK_UNINTERRUPTIBLE) and !started, or warn and refuse."""
    mem = rt.mem
    if mem.load32(base + T.flags) & L.KF_STARTED or \
            mem.load32(base + T.state) != TaskState.TASK_UNINTERRUPTIBLE:
        kernel_warn(f"{fn_name}() on a kthread that was already woken: refused "
                    "(only a just-created kthread can be bound)", stacklevel=4)
        return False
    return True


def _bind_mask(rt: Runtime, base: int, mask: frozenset[int], fn_name: str) -> None:
    if not _inactive_new(rt, base, fn_name):
        return
    record_mask(rt, base, "bound", mask)
    rt.mem.fetch_or32(base + T.flags, L.KF_NO_SETAFFINITY)
    apply_mask(rt, L.unpack_field(rt.buf, base, T, "pid"), mask)


def kthread_bind(task: Task, cpu: int) -> None:
    """kthread_bind(): bind a just-created kthread to ``cpu``.

    The CPU must be possible and may be offline (applied when it comes up).
    The kthread is marked no-setaffinity: kproc will not re-affine it.
    Context: any; before the kthread's first wake-up, else KernelWarning and
    nothing is changed.  Raises: TypeError/ValueError on a bad CPU.
    """
    rt, base = resolve(task)
    check_cpu(rt.topology, cpu)
    _bind_mask(rt, base, frozenset((cpu,)), "kthread_bind")


def kthread_bind_mask(task: Task, cpus: Iterable[int]) -> None:
    """kthread_bind_mask(): bind a just-created kthread to the CPUs in ``cpus``.

    Context and errors: as kthread_bind().
    """
    rt, base = resolve(task)
    _bind_mask(rt, base, check_mask(rt.topology, cpus), "kthread_bind_mask")


def kthread_affine_preferred(task: Task, cpus: Iterable[int]) -> int:
    """kthread_affine_preferred(): prefer ``cpus`` (∩ housekeeping) for a new kthread.

    Re-applied when a CPU comes online.  Context: any; before the first
    wake-up.  Return: 0; -EINVAL (with a KernelWarning) if the kthread was
    already woken or is bound.  Raises: TypeError/ValueError on a bad mask.
    """
    rt, base = resolve(task)
    mask = check_mask(rt.topology, cpus)
    if not _inactive_new(rt, base, "kthread_affine_preferred"):
        return -errno.EINVAL
    if rt.mem.load32(base + T.flags) & L.KF_NO_SETAFFINITY:
        kernel_warn("kthread_affine_preferred() on a bound kthread: refused", stacklevel=3)
        return -errno.EINVAL
    if rt.mem.load32(base + T.flags) & L.KF_PREFERRED:
        kernel_warn("kthread_affine_preferred() called twice", stacklevel=3)
    record_mask(rt, base, "preferred", mask)
    rt.mem.fetch_or32(base + T.flags, L.KF_PREFERRED)
    apply_mask(rt, L.unpack_field(rt.buf, base, T, "pid"), fetch_affinity(rt, base))
    return 0


def kthread_set_per_cpu(task: Task, cpu: int) -> None:
    """kthread_set_per_cpu(): mark ``task`` per-CPU for ``cpu`` (cpu < 0 clears it).

    Context: any.  KernelWarning if the kthread is not bound.
    """
    rt, base = resolve(task)
    check_int("cpu", cpu)
    mem = rt.mem
    if not mem.load32(base + T.flags) & L.KF_NO_SETAFFINITY:
        kernel_warn("kthread_set_per_cpu() on a kthread that is not bound", stacklevel=3)
    if cpu < 0:
        mem.fetch_and32(base + T.flags, ~L.KF_IS_PER_CPU & 0xFFFFFFFF)
        return
    check_cpu(rt.topology, cpu)
    L.pack_field(rt.buf, base, T, "cpu", cpu)
    mem.fetch_or32(base + T.flags, L.KF_IS_PER_CPU)


def kthread_is_per_cpu(task: Task) -> bool:
    """kthread_is_per_cpu(): Return: True if ``task`` is marked per-CPU."""
    rt, base = resolve(task)
    return bool(rt.mem.load32(base + T.flags) & L.KF_IS_PER_CPU)


# -- park, unpark, stop ---------------------------------------------------------------

def _dead_peer(rt: Runtime, base: int) -> Callable[[], int | None]:
    """Peer check for waits on a kthread: a value once it died."""
    def check() -> int | None:
        if rt.mem.load32(base + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD):
            return -errno.ENOSYS
        return None
    return check


def _wait_inactive(rt: Runtime, base: int, state: int, timeout: float = INACTIVE_TIMEOUT) -> bool:
    """wait_task_inactive(): until the task sleeps in ``state``.  Return: bool."""
    mem = rt.mem
    deadline = time.monotonic() + timeout
    delay: float = 0
    while not (mem.load32(base + T.state) == state and mem.load32(base + T.sleeping)):
        if mem.load32(base + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD) or \
                time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(0.001, delay + 0.00005)
    return True


def kthread_park(task: Task) -> int:
    """kthread_park(): park ``task`` (it sleeps in TASK_PARKED until unparked).

    Works on a created, never-woken kthread: it parks without calling threadfn.
    Called by the kthread on itself, it only sets the bit.
    Context: any; blocks until the kthread is parked.
    Return: 0 when parked; -ENOSYS if it exited (or is exiting);
    -EBUSY if it was already asked to park (both with a KernelWarning).
    """
    rt, base = resolve(task)
    mem = rt.mem
    if mem.load32(base + T.flags) & L.KF_EXITING or \
            mem.load32(base + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD):
        kernel_warn("kthread_park() on an exiting kthread", stacklevel=3)
        return -errno.ENOSYS
    if mem.fetch_or32(base + T.flags, L.KF_SHOULD_PARK) & L.KF_SHOULD_PARK:
        kernel_warn("kthread_park() on a kthread already asked to park", stacklevel=3)
        return -errno.EBUSY
    if rt.self_base == base:
        return 0
    _sched.wake_up_process_raw(rt, base)
    # Wait for __kthread_parkme() to complete(): it then *will* be in
    # TASK_PARKED and about to sleep; then wait for that sleep itself.
    hung = HungTask("kthread_park", "to park (it has not called kthread_parkme())",
                    task_text(rt, base))
    verdict = wait_at(rt, base + T.parked, None, "uninterruptible", _dead_peer(rt, base), hung)
    if verdict:
        return verdict
    if not _wait_inactive(rt, base, TaskState.TASK_PARKED):
        if mem.load32(base + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD):
            return -errno.ENOSYS
        kernel_warn("kthread_park(): kthread did not go to sleep parked", stacklevel=3)
    if _trace.ENABLED:
        trace_event(rt, base, task._idx, "park")
    return 0


def kthread_unpark(task: Task) -> None:
    """kthread_unpark(): let a parked kthread run again (no-op unless asked to park).

    A per-CPU kthread is re-bound to its CPU first.  Context: any; never blocks.
    """
    rt, base = resolve(task)
    if _trace.ENABLED and rt.mem.load32(base + T.flags) & L.KF_SHOULD_PARK:
        trace_event(rt, base, task._idx, "unpark")
    _unpark(rt, base)


def _unpark(rt: Runtime, base: int) -> None:
    mem = rt.mem
    flags = mem.load32(base + T.flags)
    if not flags & L.KF_SHOULD_PARK:
        return
    if flags & L.KF_IS_PER_CPU:
        cpu = L.unpack_field(rt.buf, base, T, "cpu")
        record_mask(rt, base, "bound", frozenset((cpu,)))
        mem.fetch_or32(base + T.flags, L.KF_NO_SETAFFINITY)
        apply_mask(rt, L.unpack_field(rt.buf, base, T, "pid"), frozenset((cpu,)))
    mem.fetch_and32(base + T.flags, ~L.KF_SHOULD_PARK & 0xFFFFFFFF)
    # __kthread_parkme() will either see !SHOULD_PARK or get the wake-up.
    _sched.wake_up_state(rt, base, TaskState.TASK_PARKED)


def request_stop(rt: Runtime, base: int) -> int:
    """The body of kthread_stop(): stop the task at ``base``, wait, return its result.

    The target's slot is pinned while waiting (kernel: get_task_struct()).  A
    kthread pins through a hold word in its own slot (``Arena.take_hold``),
    which kthreadd clears if the kthread dies mid-stop, so a stopper killed
    here never leaves the slot pinned; the owner (whose death ends the
    runtime) and a kthread whose hold words are all in use count in ``refs``.
    """
    mem, arena = rt.mem, rt.arena
    idx = (base - arena.params.tasks) // T.size
    hung = HungTask("kthread_stop", "to exit (it has not returned from threadfn)",
                    task_text(rt, base))
    hold, pinned = None, False
    try:
        hold = arena.take_hold(rt.self_base, L.HOLD_PIN, idx)
        if hold is None:
            pinned = True       # set first: no signal check falls between the two
            mem.fetch_add32(base + T.refs, 1)
        mem.fetch_or32(base + T.flags, L.KF_SHOULD_STOP)
        _unpark(rt, base)
        _sched.notify_signal(rt, base)
        _sched.wake_up_state(rt, base, TASK_NORMAL)
        if mem.load32(base + T.state) == _sched.FROZEN:
            kick_frozen(rt)
        wait_at(rt, base + T.exited, None, "uninterruptible", hung=hung)
        return mem.load64(base + T.result)
    finally:
        if pinned:
            mem.fetch_add32(base + T.refs, -1)
        arena.release_hold(hold)


def kthread_stop(task: Task) -> int:
    """kthread_stop(): ask ``task`` to stop, wake it, and wait for it to exit.

    Ends interruptible kproc sleeps at once, and its wake ends a schedule() or
    schedule_timeout() in TASK_UNINTERRUPTIBLE too (with the time left); sleeps
    that loop until their condition (msleep, wait_for_completion and
    wait_for_completion_killable: TIF_NOTIFY_SIGNAL is not a fatal signal)
    run to their end first.  A threadfn blocked in a foreign call (time.sleep,
    a socket) is not interrupted: it sees kthread_should_stop() when it next
    checks.  Context: any process but ``task`` itself; blocks.
    Return: threadfn's return value, the value given to kthread_exit(),
    -EINTR if the kthread was never woken, -EFAULT if threadfn raised,
    -EOWNERDEAD if it was killed (``task.exit_signal`` says by what).
    Raises: KthreadError(EDEADLK) when called by ``task`` itself;
    KthreadError(ESRCH) if kthreadd dies meanwhile or the handle is stale.
    """
    rt, base = resolve(task)
    if rt.self_base == base:
        raise KthreadError(errno.EDEADLK, "kthread_stop() on the calling kthread would "
                           "wait for itself; return from threadfn or call kthread_exit()")
    if not _trace.ENABLED:
        return request_stop(rt, base)
    pid, comm = pid_comm(rt, base, task._idx)
    _trace.kthread_stop(pid, comm)
    ret = request_stop(rt, base)
    _trace.kthread_stop_ret(ret, pid)
    return ret


def kthread_stop_put(task: Task) -> int:
    """kthread_stop_put(): kthread_stop() then put_task_struct().  Return: as kthread_stop()."""
    result = kthread_stop(task)
    put_task_struct(task)
    return result


# -- accessors ---------------------------------------------------------------------------

def _payload(task: Task) -> tuple[ThreadFn, Any]:
    rt, base = resolve(task)
    mine = self_data()
    if rt.self_base == base and mine is not None:
        return mine
    _, fn_pickle, data_pickle = read_blob(rt.arena, task._idx, base)
    return pickle.loads(fn_pickle), pickle.loads(data_pickle)


def kthread_data(task: Task) -> Any:
    """kthread_data(): the ``data`` given at creation.

    In the kthread itself, the very object threadfn received; elsewhere a copy.
    Context: any.  Raises: TypeError if not a Task; KthreadError if stale.
    """
    return _payload(task)[1]


def kthread_probe_data(task: Task) -> Any:
    """kthread_probe_data(): like kthread_data(), but None instead of an error
    for anything that is not a live kthread handle.  Context: any; never raises.
    """
    try:
        return _payload(task)[1]
    except Exception:
        return None


def kthread_func(task: Task) -> ThreadFn:
    """kthread_func(): the threadfn ``task`` was created with.  Context: any."""
    return _payload(task)[0]


def get_kthread_comm(task: Task) -> str:
    """get_kthread_comm(): the full name (comm is cut to 15 bytes).  Context: any."""
    resolve(task)
    return task.name


def get_task_struct(task: Task) -> Task:
    """get_task_struct(): pin ``task``'s slot (it is not recycled until put).

    Context: any.  Return: ``task``.
    """
    rt, base = resolve(task)
    rt.mem.fetch_add32(base + T.refs, 1)
    return task


def put_task_struct(task: Task) -> None:
    """put_task_struct(): drop a pin taken with get_task_struct().

    Context: any.  KernelWarning (and nothing done) if not pinned.
    """
    rt, base = resolve(task)
    mem = rt.mem
    while True:
        refs = mem.load32(base + T.refs)
        if refs == 0:
            kernel_warn("put_task_struct() without a matching get_task_struct()",
                        stacklevel=3)
            return
        if mem.cmpxchg32(base + T.refs, refs, refs - 1) == refs:
            return


def task_state(task: Task) -> TaskState | int:
    """The task's state (a TaskState: TASK_RUNNING, TASK_PARKED, TASK_DEAD...).

    Context: any; a snapshot.
    """
    rt, base = resolve(task)
    if rt.mem.load32(base + T.slot) == L.SLOT_DEAD:
        return TaskState.TASK_DEAD
    value = rt.mem.load32(base + T.state)
    return TASK_STATES.get(value, value)
