"""Where CPU hotplug lives in the arena: the HOTPLUG record, the request and
reply areas of the cpuhp mailbox, and the SMPBOOT table of per-CPU stores.

The kernel keeps this state in kernel/cpu.c (``cpuhp_state``,
``cpu_add_remove_lock``) and kernel/smpboot.c (``hotplug_threads``, each
registration's per-CPU ``store``); here it is shared memory, so that every
process of the runtime can post a request, read the counters and answer
``ht.task(cpu)``.  This module only names the fields and reads or writes them;
who may write what is decided by the mailbox's two sides (``api`` in the
caller, ``cpuhp`` in the cpuhp kthread) and by ``hotplug_threads`` (cpuhp
alone writes the stores).

Invariants: ``task_idx``/``task_gen`` name the cpuhp kthread; one that is
gone (generation changed, slot exiting, dead or free) counts as no cpuhp, so
a wait on it ends.  A store entry is (task slot index + 1, generation), the
index written last so that a reader never pairs a new index with an old
generation.
Context: any process of the runtime; nothing here blocks.
"""

from __future__ import annotations

from .._core import layout as L
from .._core.runtime import get_runtime

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    from .._core.runtime import Runtime  # typing only
    from .._sched.task import Task  # typing only

__all__ = ["H", "S", "OP_SETUP", "OP_REMOVE", "OP_DOWN", "OP_UP", "OP_REGISTER",
           "OP_UNREGISTER", "hp_base", "cpuhp_task_base", "cpuhp_dead", "kick_cpuhp",
           "put_message", "get_message", "store_known", "read_known", "store_get",
           "store_set", "smpboot_off", "hotplug_stats", "smpboot_set_meta",
           "registrations", "find_registration"]

H = L.HOTPLUG
S = L.SMPBOOT
E = L.SMPBOOT_ENTRY
T = L.TASK
STORE_ENTRY = L.SMPBOOT_ENTRY.size   # bytes per CPU in a store: slot index + 1, then generation

# Requests of the mailbox, as pickled (op, args).
OP_SETUP, OP_REMOVE, OP_DOWN, OP_UP, OP_REGISTER, OP_UNREGISTER = range(1, 7)


def hp_base(rt: Runtime) -> int:
    """Offset of the HOTPLUG record in ``rt``'s arena."""
    return rt.arena.params.hotplug


def cpuhp_task_base(rt: Runtime) -> int | None:
    """Offset of the recorded cpuhp kthread's task slot, or None if none was recorded."""
    idx = rt.mem.load32(hp_base(rt) + H.task_idx)
    return rt.arena.task_off(idx - 1) if idx else None


def cpuhp_dead(rt: Runtime) -> bool:
    """True if the recorded cpuhp kthread is gone (or never was)."""
    base = cpuhp_task_base(rt)
    if base is None:
        return True
    mem = rt.mem
    return mem.load32(base + T.gen) != mem.load32(hp_base(rt) + H.task_gen) or \
        mem.load32(base + T.slot) in (L.SLOT_EXITING, L.SLOT_DEAD, L.SLOT_FREE)


def kick_cpuhp(rt: Runtime) -> None:
    """Wake the cpuhp kthread's main loop (a request, a uevent, a thread off its CPU)."""
    rt.waits.completion_complete(hp_base(rt) + H.req, False)


def _area(rt: Runtime, which: Literal["req", "rep", "ap"]) -> tuple[int, int]:
    params = rt.arena.params
    if which == "ap":
        return params.hp_ap, H.ap_len
    return (params.hp_req, H.req_len) if which == "req" else (params.hp_rep, H.rep_len)


def put_message(rt: Runtime, which: Literal["req", "rep", "ap"], raw: bytes) -> None:
    """Write ``raw`` (at most HP_MSG_MAX bytes) and its length into the ``"req"``,
    ``"rep"`` or ``"ap"`` area.  The caller owns the area (see api and cpuhp)."""
    off, len_field = _area(rt, which)
    rt.buf[off:off + len(raw)] = raw
    rt.mem.store32(hp_base(rt) + len_field, len(raw))


def get_message(rt: Runtime, which: Literal["req", "rep", "ap"]) -> bytes:
    """The bytes last put into the ``"req"``, ``"rep"`` or ``"ap"`` area."""
    off, len_field = _area(rt, which)
    n = rt.mem.load32(hp_base(rt) + len_field)
    return bytes(rt.buf[off:off + n])


def store_known(rt: Runtime, cpus: frozenset[int]) -> None:
    """Publish the CPUs whose startup callbacks have run (written by cpuhp alone)."""
    off = hp_base(rt) + H.known
    rt.buf[off:off + L.CPUMASK_BYTES] = L.mask_to_bytes(cpus)


def read_known(rt: Runtime) -> frozenset[int]:
    """The CPUs cpuhp has brought up (or seen up), as last published."""
    off = hp_base(rt) + H.known
    return L.bytes_to_mask(rt.buf[off:off + L.CPUMASK_BYTES])


def smpboot_off(rt: Runtime, slot: int) -> int:
    """Offset of SMPBOOT registration ``slot``."""
    return rt.arena.smpboot_regs.off(slot)


def store_get(rt: Runtime, slot: int, cpu: int) -> tuple[int, int]:
    """The store entry of ``cpu`` in registration ``slot``: (index + 1, generation);
    index 0 means no thread."""
    off = smpboot_off(rt, slot) + S.store + cpu * STORE_ENTRY
    return rt.mem.load32(off + E.task), rt.mem.load32(off + E.gen)


def store_set(rt: Runtime, slot: int, cpu: int, task: Task | None) -> None:
    """Record ``task`` (or None) as ``cpu``'s thread of registration ``slot``."""
    off = smpboot_off(rt, slot) + S.store + cpu * STORE_ENTRY
    rt.mem.store32(off + E.gen, task._gen if task else 0)
    rt.mem.store32(off + E.task, task._idx + 1 if task else 0)


def smpboot_set_meta(rt: Runtime, slot: int, key: int, selfparking: bool) -> None:
    """Name registration ``slot`` by ``key`` and number it after every earlier one
    (written by cpuhp alone, before the first thread is created)."""
    off = smpboot_off(rt, slot)
    order = rt.mem.fetch_add32(hp_base(rt) + H.smpboot_seq, 1) + 1
    L.pack_field(rt.buf, off, S, "order", order)
    L.pack_field(rt.buf, off, S, "selfparking", int(selfparking))
    L.pack_field(rt.buf, off, S, "key", key)


def registrations(rt: Runtime) -> list[tuple[int, bool]]:
    """The live registrations as (slot, selfparking), newest first: the kernel's
    ``hotplug_threads`` list, which smpboot_register_percpu_thread() ``list_add``s to."""
    mem, regs = rt.mem, []
    for slot in range(L.MAX_SMPBOOT):
        off = smpboot_off(rt, slot)
        if mem.load32(off + S.inuse) and mem.load64(off + S.key):
            regs.append((mem.load32(off + S.order), slot, bool(mem.load32(off + S.selfparking))))
    regs.sort(reverse=True)
    return [(slot, selfparking) for _order, slot, selfparking in regs]


def find_registration(rt: Runtime, key: int) -> tuple[int, int] | None:
    """(slot, generation) of the live registration named ``key``, or None."""
    mem = rt.mem
    for slot in range(L.MAX_SMPBOOT):
        off = smpboot_off(rt, slot)
        if mem.load32(off + S.inuse) and mem.load64(off + S.key) == key:
            gen = mem.load32(off + S.gen)
            if mem.load32(off + S.inuse) and mem.load64(off + S.key) == key:
                return slot, gen
    return None


def hotplug_stats() -> dict[str, int | bool]:
    """Counters of this runtime's cpuhp.

    Context: any process of the runtime; never blocks.
    Return: {events, event_ns, teardown_ns, write_ns, startup_ns, netlink,
    running}: changes made by someone else and handled after the fact, when
    the last was noticed (CLOCK_MONOTONIC ns), the phases of the last
    cpu_down/cpu_up served (ns), whether cpuhp watches uevents, whether it runs.
    """
    rt = get_runtime()
    hp = hp_base(rt)
    out: dict[str, int | bool] = {k: L.unpack_field(rt.buf, hp, H, k)
           for k in ("events", "event_ns", "teardown_ns", "write_ns", "startup_ns")}
    out["netlink"] = bool(rt.mem.load32(hp + H.netlink))
    out["running"] = rt.mem.load32(hp + H.state) == L.HP_RUNNING and not cpuhp_dead(rt)
    return out
