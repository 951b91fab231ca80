"""CPU affinity of kthreads (kernel: kthread_fetch_affinity, kthread_affine_node,
__kthread_bind_mask, do_set_cpus_allowed).

Masks are recorded in the task slot (``bound``, ``preferred``) and applied
with ``os.sched_setaffinity``.  What is applied is always the recorded mask
restricted to CPUs that really exist and are online here
(``Topology.applicable``): a CPU of a fake sysfs tree that the host lacks, or
an offline CPU, is recorded and shown, not applied; CPU hotplug re-applies
recorded masks when CPUs come up.
"""

from __future__ import annotations

import os

from .._core import layout as L
from .._core.runtime import Runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Set

__all__ = ["apply_mask", "fetch_affinity", "kthread_affine_node", "record_mask",
           "recorded_mask"]

T = L.TASK


def apply_mask(rt: Runtime, pid: int, mask: Iterable[int],
               usable: Set[int] | None = None) -> frozenset[int]:
    """Apply ``mask`` (restricted to usable CPUs) to ``pid``; return what was applied.

    Nothing is applied when none of the CPUs is usable (e.g. binding to an
    offline CPU): the binding then waits for the CPU to come up.
    @usable: Topology.usable() if the caller already has it.
    """
    mask = frozenset(mask) & (rt.topology.usable() if usable is None else usable)
    if mask:
        try:
            os.sched_setaffinity(pid, mask)
        except OSError:
            return frozenset()
    return mask


def record_mask(rt: Runtime, base: int, field: str, mask: Iterable[int]) -> None:
    off = base + getattr(T, field)
    rt.buf[off:off + L.CPUMASK_BYTES] = L.mask_to_bytes(mask)


def recorded_mask(rt: Runtime, base: int, field: str) -> frozenset[int]:
    off = base + getattr(T, field)
    return L.bytes_to_mask(rt.buf[off:off + L.CPUMASK_BYTES])


def fetch_affinity(rt: Runtime, base: int, hk: frozenset[int] | None = None,
                   nodes: Mapping[int, frozenset[int]] | None = None) -> frozenset[int]:
    """kthread_fetch_affinity(): preferred (or node) CPUs ∩ housekeeping, or housekeeping.

    @hk, @nodes: housekeeping_cpumask() and Topology.nodes() if the caller
    already read them (one read for a whole pass over the task table).
    """
    hk = rt.housekeeping() if hk is None else hk
    if rt.mem.load32(base + T.flags) & L.KF_PREFERRED:
        pref = recorded_mask(rt, base, "preferred")
    else:
        node = L.unpack_field(rt.buf, base, T, "node")
        if node < 0:
            return hk
        pref = rt.topology.cpumask_of_node(node) if nodes is None else \
            nodes.get(node, frozenset())
    return (pref & hk) or hk


def kthread_affine_node(rt: Runtime, base: int) -> None:
    """kthread_affine_node(): a kthread's own affinity after its first wake-up."""
    apply_mask(rt, 0, fetch_affinity(rt, base))


def _live_slots(rt: Runtime) -> Iterator[int]:
    """Offsets of every live kthread slot (published, not exiting).

    The slot words are read through one strided memoryview (aligned 32-bit
    loads): 4x faster than a load32() per slot, which matters right after a
    CPU came online, when cpuhp runs starved by the kernel's own work.
    """
    mem, arena = rt.mem, rt.arena
    n, start = arena.params.max_kthreads, arena.params.tasks
    words = memoryview(rt.buf)[start:start + n * T.size].cast("I")
    stride = T.size // 4
    live = [i for i, v in enumerate(words[T.slot // 4::stride]) if v == L.SLOT_LIVE]
    words.release()
    for idx in live:
        base = arena.task_off(idx)
        if mem.load32(base + T.slot) == L.SLOT_LIVE and \
                not mem.load32(base + T.flags) & L.KF_EXITING:
            yield base


class _Snapshot:
    """Topology read once for a whole re-affining pass (sysfs reads cost ~50 µs)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.hk = rt.housekeeping()
        self.nodes = rt.topology.nodes()
        self.usable = rt.topology.usable()

    def fetch(self, base: int) -> frozenset[int]:
        return fetch_affinity(self.rt, base, self.hk, self.nodes)

    def apply(self, pid: int, mask: Iterable[int]) -> None:
        apply_mask(self.rt, pid, mask, self.usable)


def kthreads_online_moves(rt: Runtime, cpu: int,
                          rebound: Set[int] = frozenset()) -> list[tuple[int, frozenset[int]]]:
    """What kthreads_online_cpu() applies now that ``cpu`` is online, without
    applying it: (pid, mask restricted to usable CPUs) per kthread, in task
    table order; a kthread with nothing usable is left out.  Read where the
    topology reads are cheap, applied elsewhere (cpuhp/N) with apply_moves().
    Context: any process of the runtime.
    """
    mem, snap = rt.mem, _Snapshot(rt)
    moves = []
    for base in _live_slots(rt):
        flags = mem.load32(base + T.flags)
        pid = L.unpack_field(rt.buf, base, T, "pid")
        if pid in rebound:
            continue
        if flags & L.KF_NO_SETAFFINITY:
            mask = recorded_mask(rt, base, "bound")
            if cpu not in mask:
                continue
        elif flags & (L.KF_STARTED | L.KF_PREFERRED):
            mask = snap.fetch(base)
        else:
            continue
        mask &= snap.usable
        if mask:
            moves.append((pid, mask))
    return moves


def apply_moves(moves: Iterable[tuple[int, frozenset[int]]]) -> None:
    """sched_setaffinity() for each (pid, mask) of kthreads_online_moves(); a
    kthread gone meanwhile is skipped.  Context: any."""
    for pid, mask in moves:
        try:
            os.sched_setaffinity(pid, mask)
        except OSError:
            pass


def kthreads_online_cpu(rt: Runtime, cpu: int, rebound: Set[int] = frozenset()) -> int:
    """kthreads_online_cpu(): re-apply affinities now that ``cpu`` is online.

    Node-affine and preferred-affine kthreads get kthread_fetch_affinity()
    again (housekeeping now holds ``cpu``); bound kthreads whose recorded
    mask names ``cpu`` get that mask applied (a binding to an offline CPU
    waits for this moment), except the pids in ``rebound``, which their
    unpark has just bound.  Context: the cpuhp kthread.  Return: how many
    kthreads were re-affined.
    """
    moves = kthreads_online_moves(rt, cpu, rebound)
    apply_moves(moves)
    return len(moves)


def kthreads_offline_cpu(rt: Runtime, cpu: int) -> int:
    """Keep node- and preferred-affine kthreads off ``cpu``, which went offline.

    On real sysfs the scheduler already does so; on a fake tree the host CPU
    stays up, so the affinity is narrowed here.  Bound kthreads are left to
    the scheduler (and to kthread_unpark(), which re-binds per-CPU ones).
    Context: the cpuhp kthread.  Return: how many kthreads were re-affined.
    """
    mem, n, snap = rt.mem, 0, _Snapshot(rt)
    for base in _live_slots(rt):
        flags = mem.load32(base + T.flags)
        if not flags & L.KF_NO_SETAFFINITY and flags & (L.KF_STARTED | L.KF_PREFERRED):
            snap.apply(L.unpack_field(rt.buf, base, T, "pid"), snap.fetch(base))
            n += 1
    return n
