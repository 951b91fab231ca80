"""The caller side of CPU hotplug (kernel: kernel/cpu.c, ``cpu_down``,
``cpu_up``, ``cpuhp_setup_state``, ``cpuhp_remove_state``, with
``cpu_add_remove_lock``): argument checks, starting the cpuhp kthread on
demand, and the mailbox request/reply every hotplug call goes through.

Every operation, whichever process asks, is a request in the shared mailbox
(``record``) served by the one cpuhp kthread, so callbacks always run there.
A call checks its arguments here first, so bad input raises before anything
is posted or changed.

Races prevented: the request lock (the kernel's ``cpu_add_remove_lock``) is a
``threading.Lock`` of this process, so that threads of one process wait their
turn, then a pid in shared memory (``owner``), taken by compare-and-swap and
stolen from a dead holder, so that processes do; the holder waits until
``pending`` and ``busy`` are clear before it writes, so a request abandoned by a
killed caller (taken by cpuhp or not yet) is finished before the next one is
written. Two processes starting cpuhp at
once agree through ``state`` (HP_NONE → HP_STARTING by compare-and-swap, by
the one whose pid is then ``starter``); a starter that died is replaced. Every
wait watches the cpuhp kthread: its death ends the wait with
``KthreadError(ESRCH)``, and the next call starts a fresh cpuhp (registrations
are lost with the old one).
A hotplug call made from inside a hotplug callback (in the
cpuhp kthreads, or in a per-CPU thread's smpboot callback) would wait for
itself: it returns -EDEADLK at once (``callbacks.in_callback``).
Context: the caller, any thread of any process of the runtime.
"""

from __future__ import annotations

import errno
import os
import pickle
import threading
import time

from .._core import layout as L
from .._core.errors import KthreadError
from .._core.hung_task import HungTask, task_text
from .._core.runtime import get_runtime
from .._core.syscalls import pid_alive
from .._kthread.create import kthread_run
from .._sched.completion import wait_at
from .._core.funcref import check_callback
from .callbacks import CPUHP_AP_ONLINE_DYN, CPUHP_BP_PREPARE_DYN, in_callback
from .cpuhp import cpuhp_thread
from .record import (H, OP_DOWN, OP_REGISTER, OP_REMOVE, OP_SETUP, OP_UNREGISTER, OP_UP,
                     cpuhp_dead, cpuhp_task_base, get_message, hp_base, put_message)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .._core.runtime import Runtime  # typing only

__all__ = ["cpu_down", "cpu_up", "cpuhp_setup_state", "cpuhp_setup_state_nocalls",
           "cpuhp_remove_state", "cpuhp_remove_state_nocalls", "request", "ensure_cpuhp",
           "CPUHP_AP_ONLINE_DYN", "CPUHP_BP_PREPARE_DYN"]

START_TIMEOUT = 10.0       # s: for the cpuhp kthread to be created and serve
LOCK_TICK = 0.0002         # s: between looks at the request lock and at ``busy``
START_TICK = 0.0005        # s: between looks at a cpuhp being started

# Threads of this process take it before the shared pid lock.
_thread_lock = threading.Lock()


def ensure_cpuhp(rt: Runtime) -> None:
    """Start the cpuhp kthread unless it runs; wait until it serves.

    Context: any process of the runtime but cpuhp; blocks (one kthread
    creation the first time).  Raises: KthreadError from the creation;
    KthreadError(ETIMEDOUT) if cpuhp did not serve within START_TIMEOUT.
    """
    mem, hp = rt.mem, hp_base(rt)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        state = mem.load32(hp + H.state)
        if state == L.HP_RUNNING and not cpuhp_dead(rt):
            return
        if state == L.HP_RUNNING or (state == L.HP_STARTING and
                                     not pid_alive(mem.load32(hp + H.starter))):
            mem.cmpxchg32(hp + H.state, state, L.HP_NONE)     # dead: start again
            continue
        if state == L.HP_NONE and mem.cmpxchg32(hp + H.state, L.HP_NONE,
                                                L.HP_STARTING) == L.HP_NONE:
            L.pack_field(rt.buf, hp, H, "starter", os.getpid())
            try:
                task = kthread_run(cpuhp_thread, None, "cpuhp")
            except BaseException:
                mem.store32(hp + H.state, L.HP_NONE)
                raise
            mem.store32(hp + H.task_gen, task._gen)
            mem.store32(hp + H.task_idx, task._idx + 1)
        rt.check_alive()
        if time.monotonic() > deadline:
            raise KthreadError(errno.ETIMEDOUT, "the cpuhp kthread did not start")
        # cpuhp publishes HP_RUNNING once its loop serves; a creation takes ms
        time.sleep(START_TICK)


def _lock(rt: Runtime) -> None:
    mem, hp, me = rt.mem, hp_base(rt), os.getpid()
    while True:
        owner = mem.load32(hp + H.owner)
        if owner == 0 or not pid_alive(owner):
            if mem.cmpxchg32(hp + H.owner, owner, me) == owner:
                return
            continue
        if owner == me:
            return          # left by a thread of ours that died: _thread_lock is ours now
        rt.check_alive()
        # the holder's request lasts as long as its callbacks: polling costs nothing
        time.sleep(LOCK_TICK)


def _unlock(rt: Runtime) -> None:
    rt.mem.cmpxchg32(hp_base(rt) + H.owner, os.getpid(), 0)


def _cpuhp_peer(rt: Runtime) -> Callable[[], int | None]:
    def check() -> int | None:
        return -errno.ESRCH if cpuhp_dead(rt) else None
    return check


_OP_CALLS = {OP_SETUP: "cpuhp_setup_state", OP_REMOVE: "cpuhp_remove_state",
             OP_DOWN: "cpu_down", OP_UP: "cpu_up", OP_REGISTER: "smpboot_register_percpu_thread",
             OP_UNREGISTER: "smpboot_unregister_percpu_thread"}


def _hung(rt: Runtime, op: int) -> HungTask:
    """The hung-task check of a hotplug call waiting for cpuhp's reply."""
    base = cpuhp_task_base(rt)
    return HungTask(_OP_CALLS.get(op, "a hotplug call"), "to run the hotplug callbacks",
                    task_text(rt, base) if base is not None else "the cpuhp kthread")


def _wait_not_busy(rt: Runtime) -> None:
    """Wait until cpuhp has finished the request before ours (``pending`` and
    ``busy`` clear): one whose requester was killed is still served, as the
    kernel finishes a write already under way, and one posted but not yet taken
    is served too (cpuhp sets ``busy`` before it clears ``pending``, so the two
    are never both clear while a request is in flight; without the ``pending``
    test our message could overwrite one cpuhp is reading, and we would read its
    reply as ours).  Watches cpuhp."""
    hp = hp_base(rt)
    off = hp + H.busy
    while rt.mem.load32(hp + H.pending) or rt.mem.load32(off):
        if cpuhp_dead(rt):
            rt.mem.store32(hp + H.pending, 0)
            rt.mem.store32(off, 0)
            raise KthreadError(errno.ESRCH, "the cpuhp kthread died")
        time.sleep(LOCK_TICK)


def request(op: int, args: object) -> Any:
    """Post request ``op`` with ``args`` to cpuhp and wait for the reply.

    Context: any thread of any process of the runtime; blocks (waits its turn
    behind every other hotplug call).
    Return: the reply value, unpickled: its type is the one ``op``'s handler
    in cpuhp returns (the caller names it); -EDEADLK, with nothing posted,
    from inside a hotplug callback.  Raises: what cpuhp raised for the request
    (ValueError, PermissionError, OSError); ValueError if the request is
    larger than the mailbox; KthreadError(ESRCH) if cpuhp or kthreadd died.
    """
    rt = get_runtime()
    if in_callback() or (rt.self_base is not None and rt.self_base == cpuhp_task_base(rt)):
        return -errno.EDEADLK
    raw = pickle.dumps((op, args), protocol=pickle.HIGHEST_PROTOCOL)
    if len(raw) > L.HP_MSG_MAX:
        raise ValueError("hotplug request too large")
    with _thread_lock:
        ensure_cpuhp(rt)
        mem, hp = rt.mem, hp_base(rt)
        _lock(rt)
        try:
            _wait_not_busy(rt)
            put_message(rt, "req", raw)
            mem.store32(hp + H.done + L.COMPLETION.done, 0)
            mem.store32(hp + H.pending, 1)
            rt.waits.completion_complete(hp + H.req, False)
            verdict = wait_at(rt, hp + H.done, None, "uninterruptible", _cpuhp_peer(rt),
                              _hung(rt, op))
            if verdict:
                raise KthreadError(errno.ESRCH, "the cpuhp kthread died; hotplug state "
                                   "(registered states, per-CPU threads) is lost")
            kind, value = pickle.loads(get_message(rt, "rep"))
        finally:
            _unlock(rt)
    if kind == "raise":
        exc_type, exc_args = value
        raise exc_type(*exc_args)
    return value


def _check_hotplug_cpu(rt: Runtime, cpu: int) -> None:
    rt.topology.check_hotpluggable(cpu)
    rt.topology.check_may_write(cpu)


def cpu_down(cpu: int) -> int:
    """cpu_down(): take ``cpu`` offline, running the teardown callbacks first.

    In descending state order: the AP teardowns on the CPU, in its cpuhp/N
    thread (the dynamic AP states, then the per-CPU threads parked), then
    cpuhp/N parked and ``0`` written to ``cpuN/online`` (retried on
    EBUSY/EAGAIN, read back), then the BP teardowns in the control cpuhp
    kthread.  An AP teardown failing rolls back (the startups of the states
    already torn down, in order) and nothing is written.
    Context: any thread of any process of the runtime; blocks.
    Return: 0 when the CPU went offline, or already was (nothing run); a
    negative errno after a rollback: the failing callback's return value
    (-EFAULT if it raised), or the errno of a failed write; -EDEADLK from
    inside a hotplug callback.
    Raises: TypeError (not an int); ValueError (not possible, not
    hot-pluggable, last online CPU); PermissionError (real sysfs without
    root); KthreadError(ESRCH) if cpuhp or kthreadd died.
    """
    rt = get_runtime()
    _check_hotplug_cpu(rt, cpu)
    rt.topology.check_not_last(cpu)
    rc: int = request(OP_DOWN, cpu)
    return rc


def cpu_up(cpu: int) -> int:
    """cpu_up(): bring ``cpu`` online, running the startup callbacks.

    In ascending state order: the BP startups in the control cpuhp kthread
    (the missing per-CPU threads created, parked; the dynamic BP states),
    ``1`` written to ``cpuN/online`` (retried on EBUSY/EAGAIN, read back),
    cpuhp/N unparked and re-bound, then the AP startups on the CPU, in
    cpuhp/N (per-CPU threads unparked and re-bound, kthreads_online_cpu's
    affinities, the dynamic AP states).  A startup failing rolls back the
    ones run (teardowns in reverse) and takes the CPU offline again.
    Context: any thread of any process of the runtime; blocks.
    Return: 0 when the CPU came online, or already was (nothing run); a
    negative errno after a rollback, as cpu_down(); -EDEADLK from inside a
    hotplug callback.
    Raises: as cpu_down() (but no last-CPU check).
    """
    rt = get_runtime()
    _check_hotplug_cpu(rt, cpu)
    rc: int = request(OP_UP, cpu)
    return rc


def _check_setup(state: object, name: object, startup: object, teardown: object) -> None:
    if isinstance(state, bool) or not isinstance(state, int):
        raise TypeError(f"state must be an int, not {type(state).__name__}")
    if state not in (CPUHP_AP_ONLINE_DYN, CPUHP_BP_PREPARE_DYN):
        raise ValueError(f"state must be CPUHP_AP_ONLINE_DYN ({CPUHP_AP_ONLINE_DYN}) or "
                         f"CPUHP_BP_PREPARE_DYN ({CPUHP_BP_PREPARE_DYN}), not {state}: "
                         "kproc has no fixed states to fill")
    if not isinstance(name, str) or not name:
        raise TypeError("name must be a non-empty str")
    check_callback("startup", startup)
    check_callback("teardown", teardown)


def cpuhp_setup_state(state: int, name: str, startup: Callable[[int], int] | None,
                      teardown: Callable[[int], int] | None) -> int:
    """cpuhp_setup_state(): add a dynamic hotplug state and run ``startup`` on
    every online CPU.

    @state: CPUHP_AP_ONLINE_DYN (the callbacks run on the hotplugged CPU, in
    its cpuhp/N thread: startup once it is online, teardown while it still
    is) or CPUHP_BP_PREPARE_DYN (they run in the control cpuhp kthread:
    startup before the CPU is brought up, teardown after it is dead).
    @name: a label ("subsys:what").  @startup, @teardown: module-level
    functions ``f(cpu) -> int`` (0 or a negative errno; None counts as 0), or
    None.  ``startup`` runs at once on every online CPU, in ascending CPU
    order; if it fails on one, ``teardown`` runs on those already done,
    ascending (cpuhp_rollback_install), and the state is not added.
    Context: any thread of any process of the runtime; blocks.
    Return: the state number (>= ``state``, for cpuhp_remove_state()); a
    negative errno: startup's failure (-EFAULT if it raised), -ENOSPC when
    the section's dynamic range is full, -EDEADLK from inside a hotplug
    callback.  Raises: TypeError (bad state, name, callback not callable or
    not passable by reference); ValueError (not a dynamic section).
    """
    _check_setup(state, name, startup, teardown)
    number: int = request(OP_SETUP, (state, name, startup, teardown, True))
    return number


def cpuhp_setup_state_nocalls(state: int, name: str, startup: Callable[[int], int] | None,
                              teardown: Callable[[int], int] | None) -> int:
    """cpuhp_setup_state_nocalls(): as cpuhp_setup_state() without running
    ``startup`` on the online CPUs now.

    Context: any thread of any process of the runtime; blocks.
    Return: the state number; -ENOSPC; -EDEADLK from inside a hotplug
    callback.  Raises: as cpuhp_setup_state().
    """
    _check_setup(state, name, startup, teardown)
    number: int = request(OP_SETUP, (state, name, startup, teardown, False))
    return number


def _remove(state: object, calls: bool) -> int | None:
    if isinstance(state, bool) or not isinstance(state, int):
        raise TypeError(f"state must be an int, not {type(state).__name__}")
    rc: int | None = request(OP_REMOVE, (state, calls))
    return rc


def cpuhp_remove_state(state: int) -> int | None:
    """cpuhp_remove_state(): run the state's ``teardown`` on every online CPU
    (ascending, where the state runs: an AP state on the CPU) and remove it.

    Context: any thread of any process of the runtime; blocks.
    Return: None; -EDEADLK (nothing done) from inside a hotplug callback.
    Raises: TypeError (not an int); ValueError (no such state).
    """
    return _remove(state, True)


def cpuhp_remove_state_nocalls(state: int) -> int | None:
    """cpuhp_remove_state_nocalls(): remove the state without running teardown.

    Context: any thread of any process of the runtime; blocks.
    Return: None; -EDEADLK from inside a hotplug callback.
    Raises: TypeError (not an int); ValueError (no such state).
    """
    return _remove(state, False)
