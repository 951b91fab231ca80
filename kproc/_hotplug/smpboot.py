"""Per-CPU hotplug threads, the caller's side (kernel: kernel/smpboot.c,
``struct smp_hotplug_thread``, ``smpboot_register_percpu_thread``,
``smpboot_unregister_percpu_thread``).

``SmpHotplugThread`` describes a set of per-CPU threads; registering it
posts it to the cpuhp kthread, which creates, parks, unparks and stops the
threads (``hotplug_threads``); each thread runs the smpboot loop
(``smpboot_thread``).  The per-CPU ``store`` (the Task of each CPU) lives in
the arena's SMPBOOT table, so ``ht.task(cpu)`` answers in every process of
the runtime: the caller, the per-CPU threads themselves (which get a copy of
``ht`` registered in cpuhp), cpuhp callbacks, other kthreads.

Invariants: ``ht._reg`` = (runtime id, slot, generation) names the
registration; a slot whose generation moved on, freed, or of another runtime
reads as not registered, so a stale copy never reports another
registration's threads.
Context: the caller (any process of the runtime but the cpuhp kthread).
"""

from __future__ import annotations

import errno
import hashlib
import pickle

from .._core import layout as L
from .._core.errors import KthreadError
from .._core.runtime import current_runtime, get_runtime
from .._sched.task import Task
from .api import request
from .._core.funcref import check_callback
from .record import OP_REGISTER, OP_UNREGISTER, S, find_registration, smpboot_off, store_get

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core.runtime import Runtime  # typing only

__all__ = ["SmpHotplugThread", "smpboot_register_percpu_thread",
           "smpboot_unregister_percpu_thread", "registration_key"]


class SmpHotplugThread:
    """struct smp_hotplug_thread: the description of a set of per-CPU threads.

    @thread_should_run(cpu) -> bool, @thread_fn(cpu): the loop's test and
    body.  @thread_comm: the threads' name, a format with one ``%u`` (e.g.
    ``"ksoftirqd/%u"``).  @create(cpu): called in cpuhp once the thread of a
    CPU exists (parked); @setup(cpu): in the thread, before its first run;
    @cleanup(cpu, online): in the thread when it is stopped; @park(cpu) /
    @unpark(cpu): in the thread around each park.  @selfparking: smpboot
    neither parks nor unparks the threads (they do it themselves).
    Callbacks are module-level functions (passed by reference).
    Raises: TypeError (not callable, not passable by reference, bad comm);
    ValueError (thread_comm without exactly one ``%u``).
    """

    def __init__(self, thread_should_run: Callable[[int], bool],
                 thread_fn: Callable[[int], None], thread_comm: str, *,
                 create: Callable[[int], None] | None = None,
                 setup: Callable[[int], None] | None = None,
                 cleanup: Callable[[int, bool], None] | None = None,
                 park: Callable[[int], None] | None = None,
                 unpark: Callable[[int], None] | None = None,
                 selfparking: bool = False) -> None:
        for name, fn in (("thread_should_run", thread_should_run), ("thread_fn", thread_fn)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, not {type(fn).__name__}")
        for name, callback in (("thread_should_run", thread_should_run),
                               ("thread_fn", thread_fn), ("create", create), ("setup", setup),
                               ("cleanup", cleanup), ("park", park), ("unpark", unpark)):
            check_callback(name, callback)
        if not isinstance(thread_comm, str):
            raise TypeError(f"thread_comm must be a str, not {type(thread_comm).__name__}")
        if thread_comm.count("%") != 1 or "%u" not in thread_comm:
            raise ValueError(f"thread_comm must hold exactly one %u, not {thread_comm!r}")
        self.thread_should_run, self.thread_fn = thread_should_run, thread_fn
        self.thread_comm = thread_comm
        self.create, self.setup, self.cleanup = create, setup, cleanup
        self.park, self.unpark = park, unpark
        self.selfparking = bool(selfparking)
        # (runtime id, slot, generation) once registered
        self._reg: tuple[int, int, int] | None = None
        self._key = registration_key(self)
        self._anywhere = False      # cpuhp/N only: runs its job even off its CPU

    def _registration(self) -> tuple[Runtime, int, int] | None:
        """The runtime, slot and generation this registration is live in, or None.

        A copy that never heard of its registration (the module-level
        SmpHotplugThread of a callback's module, imported afresh in a kthread
        or in cpuhp) finds it by its key, as the kernel's code finds the one
        static ``struct smp_hotplug_thread``.
        """
        rt = current_runtime()
        if rt is None or rt.closed:
            return None
        if self._reg is not None:
            rid, slot, gen = self._reg
            off = smpboot_off(rt, slot)
            if rt.runtime_id == rid and rt.mem.load32(off + S.gen) == gen and \
                    rt.mem.load32(off + S.inuse) and rt.mem.load64(off + S.key) == self._key:
                return rt, slot, gen
        found = find_registration(rt, self._key)
        if found is None:
            return None
        self._reg = (rt.runtime_id,) + found
        return rt, found[0], found[1]

    def task(self, cpu: int) -> Task | None:
        """The kthread of ``cpu`` (the kernel's per-CPU ``store``).

        Context: any process of the runtime; never blocks.
        Return: its Task; None if not registered or no thread was created
        for that CPU yet.  Raises: ValueError (not a CPU number).
        """
        if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < L.SMPBOOT_CPUS:
            raise ValueError(f"cpu must be a CPU number, not {cpu!r}")
        live = self._registration()
        if live is None:
            return None
        rt, slot, _gen = live
        idx, gen = store_get(rt, slot, cpu)
        return Task(rt, idx - 1, gen) if idx else None

    def __repr__(self) -> str:
        return f"<SmpHotplugThread {self.thread_comm!r}{' registered' if self._reg else ''}>"


# base key -> how many SmpHotplugThreads with that description this process made
_made: dict[bytes, int] = {}


def registration_key(ht: SmpHotplugThread) -> int:
    """What names ``ht`` in every process: a hash of its name format and callbacks
    (which travel by reference, so every process's copy hashes alike) and of
    how many alike this process made before it (module-level ones are made in
    the same order in every process that imports their module).  Never 0.
    Context: SmpHotplugThread() only (it counts).
    """
    fns = (ht.thread_should_run, ht.thread_fn, ht.create, ht.setup, ht.cleanup, ht.park,
           ht.unpark)
    base = hashlib.blake2b(pickle.dumps((ht.thread_comm, ht.selfparking, fns), protocol=4),
                           digest_size=8).digest()
    ordinal = _made.get(base, 0)
    _made[base] = ordinal + 1
    digest = hashlib.blake2b(base + ordinal.to_bytes(4, "little"), digest_size=8).digest()
    # 63 bits: the arena's 64-bit loads are signed
    return (int.from_bytes(digest, "little") >> 1) or 1


def _check_ht(ht: object) -> None:
    if not isinstance(ht, SmpHotplugThread):
        raise TypeError(f"ht must be a kproc.SmpHotplugThread, not {type(ht).__name__}")


def smpboot_register_percpu_thread(ht: SmpHotplugThread) -> int:
    """smpboot_register_percpu_thread(): create ``ht``'s thread on every online CPU.

    Each is created with kthread_create_on_cpu(), marked per-CPU, parked,
    handed to ``create(cpu)``, then unparked (unless selfparking).  CPUs
    coming online later get theirs (created parked, then unparked).
    Context: any process of the runtime but cpuhp; blocks.
    Return: 0; a negative errno if a thread could not be created (those
    made are stopped) or -ENOSPC when 32 registrations exist.
    -EDEADLK from inside a hotplug callback.
    Raises: TypeError (not a SmpHotplugThread); KthreadError(EBUSY) if
    ``ht`` is already registered.
    """
    _check_ht(ht)
    if ht._registration() is not None:
        raise KthreadError(errno.EBUSY, f"{ht!r} is already registered")
    rt = get_runtime()
    ht._reg = None
    result: tuple[int, int] | int = request(OP_REGISTER, ht)   # (slot, generation) or errno
    if isinstance(result, tuple):
        ht._reg = (rt.runtime_id,) + result
        return 0
    return result


def smpboot_unregister_percpu_thread(ht: SmpHotplugThread) -> None:
    """smpboot_unregister_percpu_thread(): stop every thread of ``ht``.

    Each runs ``cleanup(cpu, online)`` and exits (kthread_stop; a parked one
    is unparked first).  Context: any process of the runtime but cpuhp;
    blocks.  Return: None.  Raises: TypeError; ValueError if ``ht`` is not
    registered.
    """
    _check_ht(ht)
    live = ht._registration()
    if live is None:
        raise ValueError(f"{ht!r} is not registered")
    _rt, slot, gen = live
    if request(OP_UNREGISTER, (slot, gen)) == -errno.EDEADLK:
        return
    ht._reg = None
