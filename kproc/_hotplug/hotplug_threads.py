"""The smpboot registrations as the cpuhp kthread keeps them (kernel:
kernel/smpboot.c, the ``hotplug_threads`` list, ``__smpboot_create_thread``,
``smpboot_create_threads``, ``smpboot_unpark_threads``,
``smpboot_park_threads``, ``smpboot_destroy_threads``).

Registrations are walked in smpboot.c's orders: ``hotplug_threads`` holds
the newest first (smpboot_register_percpu_thread's ``list_add``); creating
and unparking a CPU's threads walk it forward (``list_for_each_entry``),
parking walks it backwards (``list_for_each_entry_reverse``).

Each registration has a slot of the arena's SMPBOOT table (``record``):
``inuse``, a generation bumped at each use (a stale SmpHotplugThread never
reads a new occupant's store) and the per-CPU store, written here alone.
As in the kernel, a thread is created with ``kthread_create_on_cpu``, marked
per-CPU and parked before it ever runs (so that it starts right on its
CPU), stored, handed to ``create(cpu)``, and unparked once everything is in
place; kthread_unpark() re-binds it to its CPU.  ``CPUHP_CREATE_THREADS``
(here, on the control side) creates the missing threads of a CPU coming up,
parked; the AP state ``CPUHP_AP_SMPBOOT_THREADS`` (``ap_thread``, on the CPU)
unparks them, and parks them before the CPU goes down.  The walks there read
the registrations' order from shared memory (``record.registrations``).

Races prevented: a store entry is filled before ``create(cpu)`` runs, so
``ht.task(cpu)`` answers in every process as soon as anyone can hear of the
thread; the threads parked here are asleep in TASK_PARKED when
kthread_park() returns, so a CPU goes down with none of them running on it.
Context: the cpuhp kthread only.
"""

from __future__ import annotations

import errno

from .._core.errors import KthreadError
from .._kthread.control import kthread_park, kthread_set_per_cpu, kthread_stop, kthread_unpark
from .._kthread.create import kthread_create_on_cpu
from .callbacks import invoke
from .._core import layout as L
from .._sched.task import Task
from .record import (find_registration, registrations, smpboot_off, smpboot_set_meta,
                     store_get, store_set)
from .smpboot_thread import smpboot_thread_fn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._core.runtime import Runtime  # typing only
    from .htlike import SmpHotplugThreadLike  # typing only: smpboot sits above

__all__ = ["HotplugThreads"]


class HotplugThreads:
    """Registrations, as kept by the cpuhp kthread (kernel: hotplug_threads)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        # (slot, SmpHotplugThread), the newest first
        self.hotplug_threads: list[tuple[int, SmpHotplugThreadLike]] = []

    def reap_stale(self) -> None:
        """A fresh cpuhp (the last one died): the registrations it left are lost;
        their threads are stopped and their slots freed."""
        rt = self.rt
        for slot, _selfparking in registrations(rt):
            off = smpboot_off(rt, slot)
            gen = rt.mem.load32(off + L.SMPBOOT.gen)
            for cpu in sorted(rt.topology.possible()):
                idx, tgen = store_get(rt, slot, cpu)
                if idx:
                    try:
                        kthread_stop(Task(rt, idx - 1, tgen))
                    except KthreadError:
                        pass
                    store_set(rt, slot, cpu, None)
            L.pack_field(rt.buf, off, L.SMPBOOT, "key", 0)
            rt.arena.smpboot_regs.free(slot, gen)

    def register(self, ht: SmpHotplugThreadLike,
                 online: frozenset[int]) -> tuple[int, int] | int:
        """smpboot_register_percpu_thread(), in cpuhp: a slot, then a thread per
        online CPU (created parked, then unparked).

        Return: (slot, generation); -ENOSPC when MAX_SMPBOOT are registered;
        -EBUSY if one with the same key is (see smpboot.registration_key); a
        creation's negative errno (the threads made are stopped).
        """
        if find_registration(self.rt, ht._key) is not None:
            return -errno.EBUSY
        try:
            slot, gen = self.rt.arena.smpboot_regs.alloc(None)
        except KthreadError:
            return -errno.ENOSPC
        smpboot_set_meta(self.rt, slot, ht._key, ht.selfparking)
        ht._reg = (self.rt.runtime_id, slot, gen)
        for cpu in sorted(online):
            rc = self._create(slot, ht, cpu)
            if rc < 0:
                self._destroy(slot, gen, ht)
                return rc
        for cpu in sorted(online):
            self._unpark(ht, cpu)
        # smpboot_register_percpu_thread(): list_add(&plug_thread->list, &hotplug_threads)
        self.hotplug_threads.insert(0, (slot, ht))
        return slot, gen

    def unregister(self, reg: tuple[int, int]) -> None:
        """smpboot_unregister_percpu_thread(), in cpuhp: stop every thread of the
        registration ``reg`` = (slot, generation).  Raises: ValueError (unknown)."""
        slot, gen = reg
        entry = next((e for e in self.hotplug_threads if e[0] == slot), None)
        if entry is None or entry[1]._reg != (self.rt.runtime_id, slot, gen):
            raise ValueError("that SmpHotplugThread is not registered")
        self.hotplug_threads.remove(entry)
        self._destroy(slot, gen, entry[1])

    def _destroy(self, slot: int, gen: int, ht: SmpHotplugThreadLike) -> None:
        """smpboot_destroy_threads(): stop each thread (a parked one is unparked by
        kthread_stop), empty its store entry, free the slot."""
        for cpu in sorted(self.rt.topology.possible()):
            task = ht.task(cpu)
            if task is not None:
                try:
                    kthread_stop(task)
                except KthreadError:
                    pass
                store_set(self.rt, slot, cpu, None)
        L.pack_field(self.rt.buf, smpboot_off(self.rt, slot), L.SMPBOOT, "key", 0)
        self.rt.arena.smpboot_regs.free(slot, gen)

    def _create(self, slot: int, ht: SmpHotplugThreadLike, cpu: int) -> int:
        """__smpboot_create_thread(): create parked, store, create(cpu).
        Return: 0 (also if the thread exists); a creation's negative errno."""
        if ht.task(cpu) is not None:
            return 0
        try:
            task = kthread_create_on_cpu(smpboot_thread_fn, (ht, cpu), cpu, ht.thread_comm)
        except KthreadError as exc:
            return -(exc.errno or errno.ENOMEM)
        kthread_set_per_cpu(task, cpu)
        # Park it before it ever runs, so that it starts right on its CPU.
        kthread_park(task)
        store_set(self.rt, slot, cpu, task)
        if ht.create is not None:
            invoke(ht.create, cpu)
        return 0

    def _unpark(self, ht: SmpHotplugThreadLike, cpu: int) -> None:
        task = ht.task(cpu)
        if task is not None and not ht.selfparking:
            kthread_unpark(task)

    def create_threads(self, cpu: int) -> int:
        """CPUHP_CREATE_THREADS startup (smpboot_create_threads): the missing
        threads of ``cpu`` created (parked), walking the registrations newest
        first (list_for_each_entry).  Return: 0; a creation's negative errno."""
        for slot, ht in self.hotplug_threads:
            rc = self._create(slot, ht, cpu)
            if rc < 0:
                return rc
        return 0
