"""Per-CPU hotplug threads (kernel: kernel/smpboot.c): ``SmpHotplugThread``,
``smpboot_register_percpu_thread``, ``smpboot_unregister_percpu_thread`` and
the smpboot loop every per-CPU thread runs.

A registration lives in the cpuhp kthread (``_cpuhp``), which creates,
parks, unparks and stops the threads; its per-CPU ``store`` (the Task of each
CPU) lives in the arena's SMPBOOT table, so ``ht.task(cpu)`` answers in every
process.  As in the kernel, each thread is created with
``kthread_create_on_cpu`` and marked per-CPU, parked before it ever runs, and
unparked once everything is in place; the ``smpboot:threads`` hotplug state
parks a CPU's threads before it goes down, and creates (parked) the missing
ones and unparks them after it comes up (kthread_unpark re-binds them).

The loop (``smpboot_thread_fn``) is the kernel's: stop → ``cleanup(cpu,
online)`` and exit; park → ``park(cpu)``, kthread_parkme(); first run →
``setup(cpu)``; after an unpark → ``unpark(cpu)``; then ``thread_fn(cpu)``
while ``thread_should_run(cpu)``, else sleep until woken.  Where the kernel
has ``BUG_ON(td->cpu != smp_processor_id())`` the loop checks that it runs
on its CPU with affinity ``{cpu}``: a CPU taken down by someone else (a
shell, stress-ng) breaks the binding before cpuhp can park the thread, so
the thread kicks cpuhp and waits to be parked instead of running elsewhere.
A ``thread_fn`` already running when its CPU vanishes is migrated by the
kernel mid-run: that, user space cannot prevent.
"""

import errno
import os

from .._core import layout as L
from .._core.errors import KthreadError

__all__ = ["SmpHotplugThread", "smpboot_register_percpu_thread",
           "smpboot_unregister_percpu_thread", "smpboot_thread_fn", "Smpboot", "getcpu"]

S = L.SMPBOOT
HP_THREAD_NONE, HP_THREAD_ACTIVE, HP_THREAD_PARKED = range(3)
OFF_CPU_WAIT = 0.001       # s: a thread off its CPU waits this long for cpuhp, per round

try:
    from .._native import getcpu as _native_getcpu
except ImportError:
    _native_getcpu = None


def getcpu():
    """The CPU running the caller (sched_getcpu; /proc/self/stat field 39 without
    the extension).  Context: any."""
    if _native_getcpu is not None and os.environ.get("KPROC_NATIVE") != "0":
        return _native_getcpu()
    with open("/proc/self/stat") as f:
        return int(f.read().rpartition(")")[2].split()[36])


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

    _callbacks = ("thread_should_run", "thread_fn", "create", "setup", "cleanup", "park",
                  "unpark")

    def __init__(self, thread_should_run, thread_fn, thread_comm, *, create=None, setup=None,
                 cleanup=None, park=None, unpark=None, selfparking=False):
        from .callbacks import check_callback
        for name, fn in (("thread_should_run", thread_should_run), ("thread_fn", thread_fn)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, not {type(fn).__name__}")
        for name, fn in (("thread_should_run", thread_should_run), ("thread_fn", thread_fn),
                         ("create", create), ("setup", setup), ("cleanup", cleanup),
                         ("park", park), ("unpark", unpark)):
            check_callback(name, fn)
        if not isinstance(thread_comm, str):
            raise TypeError(f"thread_comm must be a str, not {type(thread_comm).__name__}")
        if thread_comm.count("%") != 1 or "%u" not in thread_comm:
            raise ValueError(f"thread_comm must hold exactly one %u, not {thread_comm!r}")
        self.thread_should_run, self.thread_fn = thread_should_run, thread_fn
        self.thread_comm = thread_comm
        self.create, self.setup, self.cleanup = create, setup, cleanup
        self.park, self.unpark = park, unpark
        self.selfparking = bool(selfparking)
        self._reg = None            # (runtime id, slot, generation) once registered

    def _store(self, cpu):
        from .._core.runtime import current_runtime
        if self._reg is None:
            return None, None
        rt = current_runtime()
        rid, slot, gen = self._reg
        if rt is None or rt.closed or rt.runtime_id != rid:
            return None, None
        off = rt.arena.params.smpboot + slot * S.size
        if rt.mem.load32(off + S.gen) != gen or not rt.mem.load32(off + S.inuse):
            return None, None
        return rt, off + S.store + cpu * 8

    def task(self, cpu):
        """The kthread of ``cpu`` (the kernel's per-CPU ``store``), or None if
        not registered or no thread was created for that CPU yet.
        Context: any process of the runtime; never blocks."""
        from .._sched.task import Task
        if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < L.SMPBOOT_CPUS:
            raise ValueError(f"cpu must be a CPU number, not {cpu!r}")
        rt, off = self._store(cpu)
        if rt is None:
            return None
        idx = rt.mem.load32(off)
        return Task(rt, idx - 1, rt.mem.load32(off + 4)) if idx else None

    def __repr__(self):
        return f"<SmpHotplugThread {self.thread_comm!r}{' registered' if self._reg else ''}>"


def smpboot_register_percpu_thread(ht):
    """smpboot_register_percpu_thread(): create ``ht``'s thread on every online CPU.

    Each is created with kthread_create_on_cpu(), marked per-CPU, parked,
    handed to ``create(cpu)``, then unparked (unless selfparking).  CPUs
    coming online later get theirs (created parked, then unparked).
    Context: any process of the runtime but cpuhp; blocks.
    Return: 0; a negative errno if a thread could not be created (those
    made are stopped).  Raises: TypeError (not a SmpHotplugThread);
    KthreadError(EBUSY) if ``ht`` is already registered.
    """
    from .api import request
    from .record import OP_REGISTER
    from .._core.runtime import get_runtime
    if not isinstance(ht, SmpHotplugThread):
        raise TypeError(f"ht must be a kproc.SmpHotplugThread, not {type(ht).__name__}")
    if ht._reg is not None and ht._store(0)[0] is not None:
        raise KthreadError(errno.EBUSY, f"{ht!r} is already registered")
    rt = get_runtime()
    ht._reg = None
    result = request(OP_REGISTER, ht)
    if isinstance(result, tuple):
        ht._reg = (rt.runtime_id,) + result
        return 0
    return result


def smpboot_unregister_percpu_thread(ht):
    """smpboot_unregister_percpu_thread(): stop every thread of ``ht``.

    Each runs ``cleanup(cpu, online)`` and exits (kthread_stop; a parked one
    is unparked first).  Context: any process of the runtime but cpuhp;
    blocks.  Raises: TypeError; ValueError if ``ht`` is not registered.
    """
    from .api import request
    from .record import OP_UNREGISTER
    if not isinstance(ht, SmpHotplugThread):
        raise TypeError(f"ht must be a kproc.SmpHotplugThread, not {type(ht).__name__}")
    if ht._reg is None or ht._store(0)[0] is None:
        raise ValueError(f"{ht!r} is not registered")
    request(OP_UNREGISTER, ht._reg[1:])
    ht._reg = None


# -- the cpuhp side --------------------------------------------------------------

class Smpboot:
    """Registrations, as kept by the cpuhp kthread (kernel: hotplug_threads)."""

    def __init__(self, rt):
        self.rt = rt
        self.regs = {}              # slot -> SmpHotplugThread

    def _slot_off(self, slot):
        return self.rt.arena.params.smpboot + slot * S.size

    def _set(self, slot, cpu, task):
        off = self._slot_off(slot) + S.store + cpu * 8
        mem = self.rt.mem
        mem.store32(off + 4, task._gen if task else 0)
        mem.store32(off, task._idx + 1 if task else 0)

    def register(self, ht, online):
        mem = self.rt.mem
        slot = next((i for i in range(L.MAX_SMPBOOT)
                     if not mem.load32(self._slot_off(i) + S.inuse)), None)
        if slot is None:
            return -errno.ENOSPC
        off = self._slot_off(slot)
        gen = (mem.load32(off + S.gen) + 1) & 0xFFFFFFFF or 1
        mem.store32(off + S.gen, gen)
        mem.store32(off + S.inuse, 1)
        ht._reg = (self.rt.runtime_id, slot, gen)
        for cpu in sorted(online):
            rc = self._create(slot, ht, cpu)
            if rc < 0:
                self._destroy(slot, ht)
                return rc
        for cpu in sorted(online):
            self._unpark(ht, cpu)
        self.regs[slot] = ht
        return slot, gen

    def unregister(self, reg):
        slot, gen = reg
        ht = self.regs.get(slot)
        if ht is None or ht._reg[2] != gen:
            raise ValueError("that SmpHotplugThread is not registered")
        del self.regs[slot]
        self._destroy(slot, ht)

    def _destroy(self, slot, ht):
        from .._kthread.control import kthread_stop
        for cpu in sorted(self.rt.topology.possible()):
            task = ht.task(cpu)
            if task is not None:
                try:
                    kthread_stop(task)
                except KthreadError:
                    pass
                self._set(slot, cpu, None)
        self.rt.mem.store32(self._slot_off(slot) + S.inuse, 0)

    def _create(self, slot, ht, cpu):
        """__smpboot_create_thread(): create parked, store, create(cpu)."""
        from .._kthread.control import kthread_create_on_cpu, kthread_park, kthread_set_per_cpu
        from .callbacks import invoke
        if ht.task(cpu) is not None:
            return 0
        try:
            task = kthread_create_on_cpu(smpboot_thread_fn, (ht, cpu), cpu, ht.thread_comm)
        except KthreadError as exc:
            return -(exc.errno or errno.ENOMEM)
        kthread_set_per_cpu(task, cpu)
        # Park it before it ever runs, so that it starts right on its CPU.
        kthread_park(task)
        self._set(slot, cpu, task)
        if ht.create is not None:
            invoke(ht.create, cpu)
        return 0

    def _unpark(self, ht, cpu):
        from .._kthread.control import kthread_unpark
        task = ht.task(cpu)
        if task is not None and not ht.selfparking:
            kthread_unpark(task)

    def unparked_pids(self, cpu):
        """Pids of the per-CPU threads of ``cpu`` that startup() unparks (and so
        re-binds), for the affinity pass that follows not to bind them again."""
        return {ht.task(cpu).pid for ht in self.regs.values()
                if not ht.selfparking and ht.task(cpu) is not None}

    def startup(self, cpu):
        """smpboot_create_threads + smpboot_unpark_threads for ``cpu``."""
        for slot, ht in list(self.regs.items()):
            rc = self._create(slot, ht, cpu)
            if rc < 0:
                return rc
        for ht in self.regs.values():
            self._unpark(ht, cpu)
        return 0

    def teardown(self, cpu):
        """smpboot_park_threads for ``cpu``."""
        from .._kthread.control import kthread_park
        for ht in self.regs.values():
            task = ht.task(cpu)
            if task is not None and not ht.selfparking:
                kthread_park(task)
        return 0


# -- the per-CPU thread --------------------------------------------------------------

def _on_its_cpu(cpu, modelled):
    """kernel: td->cpu == smp_processor_id(), plus the binding not broken."""
    if modelled:
        return True
    return os.sched_getaffinity(0) == {cpu} and getcpu() == cpu


def _kick_cpuhp(rt):
    from .record import kick_cpuhp
    kick_cpuhp(rt)


def smpboot_thread_fn(data):
    """threadfn of every per-CPU thread: the smpboot loop (see module doc)."""
    from .._kthread.body import kthread_parkme, kthread_should_park, kthread_should_stop
    from .._core.runtime import get_runtime
    from .._sched.task import TaskState
    from .._sched.schedule import schedule, schedule_timeout_interruptible, set_current_state
    ht, cpu = data
    rt = get_runtime()
    modelled = cpu not in rt.topology.host_cpus()
    status = HP_THREAD_NONE
    while True:
        set_current_state(TaskState.TASK_INTERRUPTIBLE)
        if kthread_should_stop():
            set_current_state(TaskState.TASK_RUNNING)
            if ht.cleanup is not None and status != HP_THREAD_NONE:
                ht.cleanup(cpu, rt.topology.is_online(cpu))
            return 0
        if kthread_should_park():
            set_current_state(TaskState.TASK_RUNNING)
            if status == HP_THREAD_ACTIVE:
                if ht.park is not None:
                    ht.park(cpu)
                status = HP_THREAD_PARKED
            kthread_parkme()
            continue
        if not _on_its_cpu(cpu, modelled):
            # Someone else took our CPU down: wait for cpuhp to park us.
            set_current_state(TaskState.TASK_RUNNING)
            _kick_cpuhp(rt)
            schedule_timeout_interruptible(OFF_CPU_WAIT)
            continue
        if status == HP_THREAD_NONE:
            set_current_state(TaskState.TASK_RUNNING)
            if ht.setup is not None:
                ht.setup(cpu)
            status = HP_THREAD_ACTIVE
            continue
        if status == HP_THREAD_PARKED:
            set_current_state(TaskState.TASK_RUNNING)
            if ht.unpark is not None:
                ht.unpark(cpu)
            status = HP_THREAD_ACTIVE
            continue
        if not ht.thread_should_run(cpu):
            schedule()
        else:
            set_current_state(TaskState.TASK_RUNNING)
            ht.thread_fn(cpu)
