"""Creating and controlling kthreads from any process (kernel: kthread.c).

The public functions validate every argument before anything is changed or
forked, then follow kthread.c 6.15 step by step:

* create: queue a request on the create list, wake kthreadd, wait for
  ``done``; a caller interrupted meanwhile abandons the request with the
  hand-off word, so the child exits instead of living on as an orphan
  (``__kthread_create_on_node``).
* bind / affine_preferred: only on a kthread still asleep in its first
  TASK_UNINTERRUPTIBLE (``wait_task_inactive``), else ``KernelWarning``.
* park: SHOULD_PARK, wake, wait ``parked``, then wait until the kthread is
  really asleep in TASK_PARKED; unpark re-binds per-CPU kthreads first.
* stop: SHOULD_STOP, unpark, notify (TIF_NOTIFY_SIGNAL), wake, wait ``exited``.

Every wait watches its peers: kthreadd (``Runtime.check_alive``) and the
target kthread (its slot turning dead), so nobody hangs on a dead process.
"""

import errno
import os
import pickle
import time

from .._core import layout as L
from .._core.blobs import read_blob, read_name, read_traceback, write_blob
from .._core.checks import check_cpu, check_int, check_mask
from .._core.funcref import pickle_data, pickle_function
from .._sched import schedule as _sched
from .._core import trace as _trace
from .affinity import apply_mask, fetch_affinity, record_mask
from .body import self_data
from .._core.arena import TableFull
from .._sched.completion import wait_at
from .._core.errors import KthreadError, kernel_warn
from .._core.runtime import get_runtime
from .._sched.task import Task, TaskState, resolve
from .._sched.task import TASK_STATES
from .._freezer import kick_frozen

__all__ = ["kthread_create", "kthread_create_on_node", "kthread_create_on_cpu", "kthread_run",
           "kthread_run_on_cpu", "wake_up_process", "kthread_bind", "kthread_bind_mask",
           "kthread_affine_preferred", "kthread_stop", "kthread_stop_put", "kthread_park",
           "kthread_unpark", "kthread_set_per_cpu", "kthread_is_per_cpu", "kthread_data",
           "kthread_probe_data", "kthread_func", "get_kthread_comm", "get_task_struct",
           "put_task_struct", "task_state", "NUMA_NO_NODE"]

NUMA_NO_NODE = -1
T = L.TASK
INACTIVE_TIMEOUT = 1.0


# -- argument checks -----------------------------------------------------------------

def format_name(namefmt, args):
    """Format a printf-style kthread name (``namefmt % args``).

    Raises: TypeError / ValueError with a clear message on a bad format.
    """
    if not isinstance(namefmt, str):
        raise TypeError(f"namefmt must be a str, not {type(namefmt).__name__}")
    try:
        name = namefmt % tuple(args)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad kthread name format {namefmt!r} for arguments "
                         f"{tuple(args)!r}: {exc}") from None
    raw = name.encode("utf-8")
    if len(raw) > L.NAME_MAX:
        raise ValueError(f"kthread name is {len(raw)} bytes; at most {L.NAME_MAX}")
    if "\0" in name:
        raise ValueError("kthread name must not contain NUL")
    return name, raw


def _check_node(rt, node):
    check_int("node", node)
    if node != NUMA_NO_NODE:
        nodes = rt.topology.nodes()
        if node not in nodes:
            raise ValueError(f"node {node} does not exist (nodes: {sorted(nodes)})")


# -- creation ------------------------------------------------------------------------

def kthread_create_on_node(threadfn, data, node, namefmt, *args):
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


def _create(rt, raw_name, fn_pickle, data_pickle, node):
    arena, mem = rt.arena, rt.mem
    with arena.locked():
        idx, gen = _alloc_task(rt)
        base = arena.task_off(idx)
        write_blob(arena, idx, base, raw_name, fn_pickle, data_pickle)
        L.pack_field(rt.buf, base, T, "node", node)
        L.pack_field(rt.buf, base, T, "creator", os.getpid())
        mem.store64(base + T.create_ns, time.monotonic_ns())
        mem.store32(base + T.state, TaskState.TASK_NEW)
        mem.store32(base + T.refs, 1)              # the creator's pin until published
        tail = arena.hget("create_tail")
        if tail:
            mem.store32(arena.task_off(tail - 1) + T.next, idx + 1)
        else:
            arena.hset("create_head", idx + 1)
        arena.hset("create_tail", idx + 1)
    rt.wake_kthreadd()
    task = Task(rt, idx, gen)
    try:
        wait_at(rt, base + T.done, None, "killable")
    except BaseException:
        _abandon(rt, base, task)
        raise
    mem.fetch_add32(base + T.refs, -1)
    if mem.cmpxchg32(base + T.handoff, L.HANDOFF_PUBLISHED, L.HANDOFF_TAKEN) != \
            L.HANDOFF_PUBLISHED:
        err = -mem.load64(base + T.result) or errno.EAGAIN
        text = read_traceback(arena, idx, base) or "kthread creation failed"
        raise KthreadError(err, text)
    if _trace.ENABLED:
        _trace_event(rt, base, idx, "create", creator=os.getpid())
    return task


def _pid_comm(rt, base, idx):
    """The pid and name of the kthread in slot ``idx``, for trace events."""
    return L.unpack_field(rt.buf, base, T, "pid"), read_name(rt.arena, idx, base)


def _trace_event(rt, base, idx, event, **args):
    _trace.lifecycle(event, *_pid_comm(rt, base, idx), **args)


def _alloc_task(rt):
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


def _abandon(rt, base, task):
    """The creator is leaving (an exception while waiting): give up the request."""
    mem = rt.mem
    prev = mem.cmpxchg32(base + T.handoff, L.HANDOFF_WAITING, L.HANDOFF_ABANDONED)
    mem.fetch_add32(base + T.refs, -1)
    if prev == L.HANDOFF_PUBLISHED:
        # Too late: the kthread exists, asleep and never woken; stop it.
        try:
            _stop(rt, base)
        except KthreadError:
            pass


def kthread_create(threadfn, data, namefmt, *args):
    """kthread_create(): kthread_create_on_node() with NUMA_NO_NODE.  See there."""
    return kthread_create_on_node(threadfn, data, NUMA_NO_NODE, namefmt, *args)


def kthread_create_on_cpu(threadfn, data, cpu, namefmt):
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


def kthread_run(threadfn, data, namefmt, *args):
    """kthread_run(): kthread_create() then wake_up_process().  Return: the Task."""
    task = kthread_create(threadfn, data, namefmt, *args)
    wake_up_process(task)
    return task


def kthread_run_on_cpu(threadfn, data, cpu, namefmt):
    """kthread_run_on_cpu(): kthread_create_on_cpu() then wake_up_process()."""
    task = kthread_create_on_cpu(threadfn, data, cpu, namefmt)
    wake_up_process(task)
    return task


# -- waking and binding ----------------------------------------------------------------

def wake_up_process(task):
    """wake_up_process(): wake ``task`` if it sleeps in TASK_INTERRUPTIBLE or
    TASK_UNINTERRUPTIBLE (the first wake-up of a new kthread included).

    Context: any; never blocks.  Return: True if it was woken, False if it was
    not asleep (running, parked, dead).
    """
    rt, base = resolve(task)
    woken = _sched.wake_up_process_raw(rt, base)
    if woken and _trace.ENABLED:
        _trace_event(rt, base, task._idx, "wake")
    return woken


def _inactive_new(rt, base, fn_name):
    """wait_task_inactive(TASK_UNINTERRUPTIBLE) and !started, or warn and refuse."""
    mem = rt.mem
    if mem.load32(base + T.flags) & L.KF_STARTED or \
            mem.load32(base + T.state) != TaskState.TASK_UNINTERRUPTIBLE:
        kernel_warn(f"{fn_name}() on a kthread that was already woken: refused "
                    "(only a just-created kthread can be bound)", stacklevel=4)
        return False
    return True


def _bind_mask(rt, base, mask, fn_name):
    if not _inactive_new(rt, base, fn_name):
        return
    record_mask(rt, base, "bound", mask)
    rt.mem.fetch_or32(base + T.flags, L.KF_NO_SETAFFINITY)
    apply_mask(rt, L.unpack_field(rt.buf, base, T, "pid"), mask)


def kthread_bind(task, cpu):
    """kthread_bind(): bind a just-created kthread to ``cpu``.

    The CPU must be possible and may be offline (applied when it comes up).
    The kthread is marked no-setaffinity: kproc will not re-affine it.
    Context: any; before the kthread's first wake-up, else KernelWarning and
    nothing is changed.  Raises: TypeError/ValueError on a bad CPU.
    """
    rt, base = resolve(task)
    check_cpu(rt.topology, cpu)
    _bind_mask(rt, base, frozenset((cpu,)), "kthread_bind")


def kthread_bind_mask(task, cpus):
    """kthread_bind_mask(): bind a just-created kthread to the CPUs in ``cpus``.

    Context and errors: as kthread_bind().
    """
    rt, base = resolve(task)
    _bind_mask(rt, base, check_mask(rt.topology, cpus), "kthread_bind_mask")


def kthread_affine_preferred(task, cpus):
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


def kthread_set_per_cpu(task, cpu):
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


def kthread_is_per_cpu(task):
    """kthread_is_per_cpu(): Return: True if ``task`` is marked per-CPU."""
    rt, base = resolve(task)
    return bool(rt.mem.load32(base + T.flags) & L.KF_IS_PER_CPU)


# -- park, unpark, stop ---------------------------------------------------------------

def _dead_peer(rt, base):
    """Peer check for waits on a kthread: a value once it died."""
    def check():
        if rt.mem.load32(base + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD):
            return -errno.ENOSYS
        return None
    return check


def _wait_inactive(rt, base, state, timeout=INACTIVE_TIMEOUT):
    """wait_task_inactive(): until the task sleeps in ``state``.  Return: bool."""
    mem = rt.mem
    deadline = time.monotonic() + timeout
    delay = 0
    while not (mem.load32(base + T.state) == state and mem.load32(base + T.sleeping)):
        if mem.load32(base + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD) or \
                time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(0.001, delay + 0.00005)
    return True


def kthread_park(task):
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
    verdict = wait_at(rt, base + T.parked, None, "uninterruptible", _dead_peer(rt, base))
    if verdict:
        return verdict
    if not _wait_inactive(rt, base, TaskState.TASK_PARKED):
        if mem.load32(base + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD):
            return -errno.ENOSYS
        kernel_warn("kthread_park(): kthread did not go to sleep parked", stacklevel=3)
    if _trace.ENABLED:
        _trace_event(rt, base, task._idx, "park")
    return 0


def kthread_unpark(task):
    """kthread_unpark(): let a parked kthread run again (no-op unless asked to park).

    A per-CPU kthread is re-bound to its CPU first.  Context: any; never blocks.
    """
    rt, base = resolve(task)
    if _trace.ENABLED and rt.mem.load32(base + T.flags) & L.KF_SHOULD_PARK:
        _trace_event(rt, base, task._idx, "unpark")
    _unpark(rt, base)


def _unpark(rt, base):
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


def _stop(rt, base):
    mem = rt.mem
    mem.fetch_add32(base + T.refs, 1)
    try:
        mem.fetch_or32(base + T.flags, L.KF_SHOULD_STOP)
        _unpark(rt, base)
        _sched.notify_signal(rt, base)
        _sched.wake_up_state(rt, base, _sched.TASK_NORMAL, stop_wake=True)
        if mem.load32(base + T.state) == _sched.FROZEN:
            kick_frozen(rt)
        wait_at(rt, base + T.exited, None, "uninterruptible")
        return mem.load64(base + T.result)
    finally:
        mem.fetch_add32(base + T.refs, -1)


def kthread_stop(task):
    """kthread_stop(): ask ``task`` to stop, wake it, and wait for it to exit.

    Ends interruptible kproc sleeps at once; an uninterruptible timed sleep
    (msleep, wait_for_completion, schedule_timeout in TASK_UNINTERRUPTIBLE)
    runs to its end first.  A threadfn blocked in a foreign call (time.sleep,
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
        return _stop(rt, base)
    pid, comm = _pid_comm(rt, base, task._idx)
    _trace.kthread_stop(pid, comm)
    ret = _stop(rt, base)
    _trace.kthread_stop_ret(ret, pid)
    return ret


def kthread_stop_put(task):
    """kthread_stop_put(): kthread_stop() then put_task_struct().  Return: as kthread_stop()."""
    result = kthread_stop(task)
    put_task_struct(task)
    return result


# -- accessors ---------------------------------------------------------------------------

def _payload(task):
    rt, base = resolve(task)
    if rt.self_base == base and self_data() is not None:
        return self_data()
    _, fn_pickle, data_pickle = read_blob(rt.arena, task._idx, base)
    return pickle.loads(fn_pickle), pickle.loads(data_pickle)


def kthread_data(task):
    """kthread_data(): the ``data`` given at creation.

    In the kthread itself, the very object threadfn received; elsewhere a copy.
    Context: any.  Raises: TypeError if not a Task; KthreadError if stale.
    """
    return _payload(task)[1]


def kthread_probe_data(task):
    """kthread_probe_data(): like kthread_data(), but None instead of an error
    for anything that is not a live kthread handle.  Context: any; never raises.
    """
    try:
        return _payload(task)[1]
    except Exception:
        return None


def kthread_func(task):
    """kthread_func(): the threadfn ``task`` was created with.  Context: any."""
    return _payload(task)[0]


def get_kthread_comm(task):
    """get_kthread_comm(): the full name (comm is cut to 15 bytes).  Context: any."""
    resolve(task)
    return task.name


def get_task_struct(task):
    """get_task_struct(): pin ``task``'s slot (it is not recycled until put).

    Context: any.  Return: ``task``.
    """
    rt, base = resolve(task)
    rt.mem.fetch_add32(base + T.refs, 1)
    return task


def put_task_struct(task):
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


def task_state(task):
    """The task's state (a TaskState: TASK_RUNNING, TASK_PARKED, TASK_DEAD...).

    Context: any; a snapshot.
    """
    rt, base = resolve(task)
    if rt.mem.load32(base + T.slot) == L.SLOT_DEAD:
        return TaskState.TASK_DEAD
    value = rt.mem.load32(base + T.state)
    return TASK_STATES.get(value, value)
