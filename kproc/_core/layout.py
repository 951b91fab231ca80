"""Shared-memory record layouts, defined once.

Every record that lives in the arena is described here as a :class:`Record`:
an ordered list of named fields with ``struct`` formats, laid out with natural
alignment.  Code reads ``TASK.pid`` (a byte offset inside the record) instead
of a magic number, and the arena places whole records at fixed strides.

Records:

* ``HEADER``     one per arena: identity, sizes, kthreadd's pid, the arena
                 lock, the kthread create list (kernel: ``kthread_create_list``).
* ``TASK``       one per kthread slot: the kernel's ``struct kthread`` plus the
                 parts of ``task_struct`` kproc models (state, flags, pid, cpu).
* ``COMPLETION`` 32 bytes: ``done`` / ``seq`` (the futex word) / ``sleepers``,
                 and the lock, head and tail of its queue of sleeping waiters.
* ``SWAIT``      a sleeping waiter's node in that queue (one per thread id).
* ``USERCOMP``   a slot of the user completion pool: generation, owner, and a
                 ``COMPLETION``.
* ``WORKER``     one per worker slot: ``struct kthread_worker`` (lock, work
                 list, delayed-work timer list, current work, counters).
* ``WORK``       one per work slot: ``struct kthread_work`` / ``kthread_delayed_work``
                 (list node, worker, canceling, timer expiry, flush completion);
                 its pickled (func, data) lives in the slot's work blob.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from _typeshed import ReadableBuffer, WriteableBuffer

    # A field's format: a struct code ("I", "q"...) or ("bytes", n) for a raw area.
    Fmt = str | tuple[str, int]

__all__ = ["Record", "Field", "HEADER", "TASK", "TASK_BLOB", "COMPLETION", "USERCOMP",
           "SWAIT", "WORKER", "WORK", "HOTPLUG", "SMPBOOT", "SMPBOOT_ENTRY", "FN_LEN",
           "SPARE_POOL", "SPARE_EMPTY", "SPARE_READY", "SPARE_DISCARD", "SPARE_CLAIMED",
           "SPARE_FORKING", "SPARE_ACK",
           "CPUMASK_BYTES", "MAGIC", "LAYOUT_VERSION", "PID_MAX_LIMIT", "align"]

MAGIC = 0x4B50524F43303031  # "KPROC001"
# Bumped whenever a record below changes shape: ``kproc ps`` reads arenas of
# other runtimes (maybe of another kproc version) only when theirs matches.
LAYOUT_VERSION = 8          # 8: HOTPLUG.ap_job/ap_plan; 7: COMPLETION.granted, a SWAIT
#                             node per thread id; 6: HEADER's spare pool; 5: HOTPLUG's AP job
CPUMASK_BYTES = 128          # 1024 CPUs, like CONFIG_NR_CPUS=1024 / CPU_SETSIZE
# include/linux/threads.h PID_MAX_LIMIT on 64-bit: no thread id reaches it, so a
# SWAIT node per possible thread id is enough by construction (swait.thread_node).
PID_MAX_LIMIT = 1 << 22

_SIZES: dict[str, int] = {"I": 4, "i": 4, "Q": 8, "q": 8, "H": 2}
# Attributes of a Record itself: a field named so would hide (or be hidden by) one.
_RECORD_ATTRS = frozenset(("name", "formats", "codes", "size", "stride", "fields"))


class Field(int):
    """A field's byte offset inside its record (an int), knowing its format.

    ``width`` is 32 or 64 for scalars (which atomics fit it), 0 for a raw area.
    :meth:`Record.fields` gives them; the record's attributes are plain ints.
    """

    fmt: Fmt
    width: int

    def __new__(cls, offset: int, fmt: Fmt) -> Field:
        self = super().__new__(cls, offset)
        self.fmt = fmt
        self.width = 0 if isinstance(fmt, tuple) else _SIZES[fmt] * 8
        return self


def align(n: int, a: int) -> int:
    """Round ``n`` up to a multiple of ``a``."""
    return (n + a - 1) // a * a


class Record:
    """A fixed-size shared-memory record with named byte offsets.

    ``fields`` is a sequence of ``(name, fmt)`` where fmt is a ``struct`` code
    (``I`` u32, ``i`` s32, ``Q`` u64, ``q`` s64) or ``("bytes", n)`` for a raw
    area, aligned to 8.  Attributes named after fields hold their offsets as
    plain ints (``base + TASK.state`` is on every hot path, and CPython's int
    fast paths take exact ints only: an int subclass there cost the worker loop
    5-8 %); :meth:`fields` gives them as :class:`Field`, which knows its format;
    ``codes`` maps each scalar field to its ``struct``
    format (native byte order).  ``stride`` is the room each record gets in
    its table (default: its size); a record that outgrows it, or a field
    named like one of its own attributes, fails at import.
    """

    def __init__(self, name: str, fields: Sequence[tuple[str, Fmt]], size_align: int = 8,
                 stride: int | None = None) -> None:
        self.name = name
        self.formats: dict[str, Fmt] = {}
        self.codes: dict[str, str] = {}
        off = 0
        for fname, fmt in fields:
            if fname in _RECORD_ATTRS or fname in self.formats:
                raise ImportError(f"record {name}: field name {fname!r} is taken")
            if isinstance(fmt, tuple):
                size, al = fmt[1], 8
            else:
                size = al = _SIZES[fmt]
                self.codes[fname] = "=" + fmt
            off = align(off, al)
            setattr(self, fname, off)
            self.formats[fname] = fmt
            off += size
        self.size = align(off, size_align)
        self.stride = self.size if stride is None else stride
        if self.size > self.stride:
            raise ImportError(f"record {name} is {self.size} bytes, more than its "
                              f"stride of {self.stride}")

    def fields(self) -> list[tuple[str, Field]]:
        """The (name, Field) pairs, in layout order."""
        return [(n, Field(getattr(self, n), fmt)) for n, fmt in self.formats.items()]

    def __repr__(self) -> str:
        return f"<Record {self.name} size={self.size}>"

    if TYPE_CHECKING:
        # The fields are attributes set from ``fields`` at construction.
        def __getattr__(self, name: str) -> int: ...


COMPLETION = Record("completion", [
    ("done", "I"), ("seq", "I"), ("sleepers", "I"),
    ("lock", "I"),             # pid holding the waiter queue, 0 = free
    ("head", "I"), ("tail", "I"),   # queued SWAIT nodes (arena offsets), 0 = none
    ("granted", "I"),          # counts handed to queued waiters, not yet taken
    ("reserved", "I"),
], size_align=32)

# A sleeping waiter's node in a completion's FIFO queue (kernel: struct
# swait_queue); one per possible thread id, in the arena's first 4 GiB.
SWAIT = Record("swait", [
    ("owner", "i"),            # pid of the thread's process, 0 = free
    ("wake", "I"),             # the futex word it sleeps on, bumped at every wake
    ("granted", "I"),          # 1 a count from complete(), 2 complete_all(); 0 once taken
    ("next", "I"), ("prev", "I"),   # queue links (arena offsets), 0 = none
    ("pad", "I"),
    ("comp", "Q"),             # the completion it is queued on, 0 = none
])

# Mutex size is the host's pthread_mutex_t; 64 bytes covers glibc and musl.
MUTEX_BYTES = 64

HEADER = Record("header", [
    ("magic", "Q"),
    ("layout_version", "I"),
    ("exiting_head", "I"),     # kthreads leaving, to reap by pid: slot + 1, via TASK.next
    ("runtime_id", "Q"),
    ("max_kthreads", "I"),
    ("max_completions", "I"),
    ("max_works", "I"),
    ("backend", "I"),
    ("owner_pid", "i"),
    ("kthreadd_pid", "i"),
    ("alive", "I"),            # 1 while kthreadd serves, 0 once it is going away
    ("spin_ns", "I"),
    ("create_head", "I"),      # kthread_create_list: slot index + 1, 0 = empty
    ("create_tail", "I"),
    ("task_hint", "I"),
    ("comp_hint", "I"),
    ("death_clock", "Q"),      # orders dead slots for recycling, oldest first
    ("work_free", "I"),        # free work slots: a stack linked through WORK.next
    ("marker_free", "I"),      # free flush-marker slots (past the user's max_works), same
    ("worker_hint", "I"),
    ("freezing", "I"),         # pm_freezing: freeze_kthreads() in force
    ("freeze_seq", "I"),       # futex word frozen kthreads sleep on
    ("spares", ("bytes", 4 * 16)),             # the spare pool: SPARE_POOL words, SPARE_*
    ("lock", ("bytes", MUTEX_BYTES)),          # kthread_create_lock + table lock
    ("posix_waiters", ("bytes", 4 * 64)),      # posix backend: waiters, wake gen per channel
    ("allowed", ("bytes", CPUMASK_BYTES)),  # CPUs kthreadd may use (cpuset)
], size_align=4096)

TASK = Record("task", [
    ("gen", "I"),              # bumped at every allocation: stale handles mismatch
    ("slot", "I"),             # SLOT_* below
    ("refs", "I"),             # get_task_struct() pins
    ("state", "I"),            # TASK_* (kernel values)
    ("wake_seq", "I"),         # futex word schedule() sleeps on
    ("flags", "I"),            # KF_* bits
    ("wait_off", "I"),         # futex word of an interruptible wait, 0 = none
    ("sleeping", "I"),         # 1 while really asleep (wait_task_inactive)
    ("pid", "i"),
    ("cpu", "i"),
    ("node", "i"),
    ("creator", "i"),          # pid that asked for the create
    ("handoff", "I"),          # HANDOFF_*: the kernel's xchg(&create->done, NULL)
    ("next", "I"),             # create list link: slot index + 1
    ("exit_kind", "I"),        # EXIT_*
    ("signal", "i"),           # signal that killed it, 0 if none
    ("result", "q"),
    ("death", "Q"),            # death_clock value at reap
    ("create_ns", "Q"),
    ("name_len", "I"),
    ("payload_len", "I"),
    ("tb_len", "I"),
    ("holds", ("bytes", 4 * 4)),  # HOLD words: what this kthread holds of others, by kind
    ("done", ("bytes", COMPLETION.size)),     # create->done
    ("parked", ("bytes", COMPLETION.size)),
    ("exited", ("bytes", COMPLETION.size)),
    ("bound", ("bytes", CPUMASK_BYTES)),      # kthread_bind_mask(): PF_NO_SETAFFINITY
    ("preferred", ("bytes", CPUMASK_BYTES)),  # kthread_affine_preferred()
], size_align=64)

# Per-task blob area (kproc._core.blobs): name, pickled (threadfn, data), the
# tail of the last traceback.  The payload starts with an FN_LEN header.
BLOB_SIZE = 64 * 1024
TB_MAX = 8 * 1024
NAME_MAX = 1024
PAYLOAD_MAX = BLOB_SIZE - TB_MAX - NAME_MAX
TASK_BLOB = Record("task_blob", [
    ("fullname", ("bytes", NAME_MAX)),
    ("payload", ("bytes", PAYLOAD_MAX)),
    ("traceback", ("bytes", TB_MAX)),
], stride=BLOB_SIZE)
FN_LEN = struct.Struct("<I")          # length of the threadfn pickle in the payload

# The spare pool (HEADER.spares, kproc._kthread.spares): one word per entry, the
# futex word its spare child sleeps on.  EMPTY: no spare; FORKING: kthreadd is
# forking one (it turns the word READY once it waits); READY: a spare waits;
# DISCARD: kthreadd tells it to exit; CLAIMED + i: a creator gave it task slot i;
# | ACK once the spare has read that (kthreadd may then reuse the entry).
SPARE_POOL = 16
SPARE_EMPTY, SPARE_READY, SPARE_DISCARD, SPARE_FORKING, SPARE_CLAIMED = 0, 1, 2, 3, 4
SPARE_ACK = 1 << 31

USERCOMP = Record("usercomp", [
    ("gen", "I"), ("inuse", "I"), ("owner", "i"), ("pad", "I"),
    ("comp", ("bytes", COMPLETION.size)),
], size_align=32)

WORKER = Record("worker", [
    ("gen", "I"),              # bumped at every allocation
    ("inuse", "I"),
    ("flags", "I"),            # KTW_* (kthread_worker->flags)
    ("owner", "i"),            # pid of the process that allocated it
    ("task", "I"),             # worker->task: task slot index + 1, 0 = none
    ("task_gen", "I"),
    ("current", "I"),          # worker->current_work: work slot index + 1
    ("head", "I"),             # work_list (work slot index + 1)
    ("tail", "I"),
    ("thead", "I"),            # delayed_work_list, sorted by expiry: the timers
    ("ttail", "I"),
    ("depth", "I"),            # works on work_list (flush markers excluded)
    ("ndelayed", "I"),         # works on the timer list
    ("pad", "I"),
    ("executed", "Q"),         # works run so far
    ("errors", "Q"),           # works that raised
    ("lock", ("bytes", MUTEX_BYTES)),   # worker->lock (robust)
], size_align=64, stride=512)

WORK = Record("work", [
    ("gen", "I"),
    ("inuse", "I"),
    ("kind", "I"),             # WK_*
    ("flags", "I"),            # WF_*
    ("owner", "i"),            # pid whose handle owns the slot
    ("worker", "I"),           # work->worker: worker slot index + 1, 0 = never queued
    ("worker_gen", "I"),
    ("where", "I"),            # ON_*: which list work->node is on
    ("prev", "I"),             # work->node (slot index + 1)
    ("next", "I"),             # also the free-stack link
    ("canceling", "I"),        # work->canceling
    ("version", "I"),          # bumped by kthread_init_work(): workers re-read func
    ("flushers", "I"),         # flush markers waiting for a timer-pending work
    ("payload_len", "I"),
    ("tb_len", "I"),
    ("pad", "I"),
    ("expires", "q"),          # timer->expires, CLOCK_MONOTONIC ns
    ("runs", "Q"),             # times executed
    ("flow", "Q"),             # trace flow id of the pending queueing
    ("done", ("bytes", COMPLETION.size)),   # flush marker: kthread_flush_work's fwork.done
], size_align=64, stride=256)

WORK_BLOB = 8 * 1024          # pickled (func, data) + the tail of the last traceback
WORK_TB_MAX = 2 * 1024
WORK_PAYLOAD_MAX = WORK_BLOB - WORK_TB_MAX

# WORK.kind / WORK.where / WORK.flags
WK_WORK, WK_DELAYED, WK_FLUSH = 1, 2, 3
ON_NONE, ON_WORKLIST, ON_TIMER = 0, 1, 2
WF_ORPHAN = 1 << 0            # its owning handle is gone: freed once idle

# TASK.slot values
SLOT_FREE, SLOT_CREATING, SLOT_LIVE, SLOT_EXITING, SLOT_DEAD = range(5)

# TASK.holds: what a kthread holds of other slots while it waits, so that
# kthreadd can give it back when the kthread dies mid-wait: HOLDS words, each
# HOLD_kind << HOLD_SHIFT | (slot index + 1), 0 when free.
HOLDS = 4
HOLD_SHIFT = 28
HOLD_PIN = 1          # a kthread_stop() pin on task slot ``index`` (instead of refs)
HOLD_CANCEL = 2       # one count of work ``index``'s canceling (cancel_*_sync)

# TASK.handoff values: who owns a pending create (kernel: xchg(&create->done, NULL)).
# TAKEN: the creator returned with the Task; until then a dead creator's
# kthread is an orphan that kthreadd stops.
HANDOFF_WAITING, HANDOFF_PUBLISHED, HANDOFF_ABANDONED, HANDOFF_FAILED, HANDOFF_TAKEN = range(5)

# TASK.exit_kind values
(EXIT_NONE, EXIT_RETURNED, EXIT_EXITED, EXIT_EXCEPTION, EXIT_SIGNALED,
 EXIT_NEVER_RAN, EXIT_ABANDONED, EXIT_LOST) = range(8)

# TASK.flags bits.  The first three mirror enum KTHREAD_BITS.
KF_IS_PER_CPU = 1 << 0
KF_SHOULD_STOP = 1 << 1
KF_SHOULD_PARK = 1 << 2
KF_STARTED = 1 << 8          # kthread->started
KF_NO_SETAFFINITY = 1 << 9   # PF_NO_SETAFFINITY (kthread_bind)
KF_PREFERRED = 1 << 10       # kthread->preferred_affinity != NULL
KF_EXITING = 1 << 11         # PF_EXITING
KF_FREEZABLE = 1 << 12       # set_freezable()
KF_WORKER = 1 << 14          # runs kthread_worker_fn


# CPU hotplug (kproc._hotplug.cpuhp, kproc._hotplug.smpboot): one HOTPLUG record, then the
# request and reply areas, then MAX_SMPBOOT registrations of per-CPU threads.
HOTPLUG = Record("hotplug", [
    ("state", "I"),            # HP_* below: is there a cpuhp kthread
    ("starter", "i"),          # pid creating it (HP_STARTING)
    ("task_idx", "I"),         # the cpuhp kthread: task slot index + 1
    ("task_gen", "I"),
    ("owner", "i"),            # pid holding the request lock, 0 = free (cpu_add_remove_lock)
    ("pending", "I"),          # 1: a request waits in the request area
    ("busy", "I"),             # 1 while cpuhp serves a request
    ("netlink", "I"),          # 1 if cpuhp watches kobject uevents, 0 if it polls
    ("req_len", "I"),
    ("rep_len", "I"),
    ("events", "Q"),           # changes made by someone else, handled after the fact
    ("event_ns", "Q"),         # CLOCK_MONOTONIC when the last one was noticed
    ("teardown_ns", "Q"),      # phases of the last cpu_down/cpu_up served
    ("write_ns", "Q"),
    ("startup_ns", "Q"),
    ("req", ("bytes", COMPLETION.size)),      # cpuhp sleeps on it (requests, uevents)
    ("done", ("bytes", COMPLETION.size)),     # the requester sleeps on it
    ("known", ("bytes", CPUMASK_BYTES)),      # CPUs whose startup callbacks have run
    ("ap_cpu", "I"),           # cpu + 1 whose cpuhp/N is asked to run the AP job, 0 = none
    ("ap_len", "I"),           # bytes of the AP job in the ap area
    ("ap_rc", "i"),            # the AP job's result
    ("ap_off_cpu", "I"),       # 1: cpuhp/N found itself off its CPU and ran nothing
    ("ap_done", ("bytes", COMPLETION.size)),  # control sleeps on it while cpuhp/N works
    ("smpboot_seq", "I"),      # registration counter (SMPBOOT.order)
    ("ap_job", "I"),           # the AP job's steps by number (cached in cpuhp/N), 0 = none
    ("ap_plan", "I"),          # 1 once the AP job's plan is in the ap area (cpuhp/N waits)
    ("ap_plan_len", "I"),      # bytes of the plan, after the steps; 0 = none
], size_align=64)
HP_NONE, HP_STARTING, HP_RUNNING = range(3)
HP_MSG_MAX = 8 * 1024          # request and reply areas, each
MAX_SMPBOOT = 32               # registered SmpHotplugThreads at once
SMPBOOT_CPUS = CPUMASK_BYTES * 8

# One entry of a registration's per-CPU store (the kernel's per_cpu_ptr(ht->store, cpu)).
SMPBOOT_ENTRY = Record("smpboot_entry", [
    ("task", "I"),             # task slot index + 1, 0 = none
    ("gen", "I"),
])
# One registration: its per-CPU store, SMPBOOT_ENTRY.size bytes per CPU.
SMPBOOT = Record("smpboot", [
    ("gen", "I"), ("inuse", "I"),
    ("key", "Q"),              # what names the SmpHotplugThread in every process (smpboot)
    ("order", "I"),            # registration number: hotplug_threads is newest first
    ("selfparking", "I"),
    ("store", ("bytes", SMPBOOT_CPUS * SMPBOOT_ENTRY.size)),
], size_align=64)


def mask_to_bytes(cpus: Iterable[int]) -> bytes:
    """Encode a CPU set as a CPUMASK_BYTES little-endian bitmap."""
    bits = 0
    for c in cpus:
        bits |= 1 << c
    return bits.to_bytes(CPUMASK_BYTES, "little")


def bytes_to_mask(raw: bytes) -> frozenset[int]:
    """Decode a CPUMASK_BYTES bitmap into a frozenset."""
    bits = int.from_bytes(raw, "little")
    out = []
    cpu = 0
    while bits:
        if bits & 1:
            out.append(cpu)
        bits >>= 1
        cpu += 1
    return frozenset(out)


def pack_field(buf: WriteableBuffer, base: int, record: Record, name: str, value: int) -> None:
    """Store a scalar field ``name`` of ``record`` at ``base`` (non-atomic)."""
    struct.pack_into(record.codes[name], buf, base + getattr(record, name), value)


def unpack_field(buf: ReadableBuffer, base: int, record: Record, name: str) -> int:
    """Load a scalar field ``name`` of ``record`` at ``base`` (non-atomic)."""
    value: int = struct.unpack_from(record.codes[name], buf, base + getattr(record, name))[0]
    return value


if TYPE_CHECKING:
    from typing import Protocol

    class _TableParams(Protocol):
        """What :func:`native_layout` reads of an arena's ``ArenaParams``."""
        tasks: int
        max_kthreads: int
        works: int
        max_works: int


def native_layout(params: _TableParams, task_normal: int) -> dict[str, int]:
    """The layout as the C extension reads it: ``{"RECORD.field": offset, ...}``.

    Derived from the records above, never retyped: every field of every
    :class:`Record` under ``"<NAME>.<field>"``, NAME being the record's name
    in this module (``"WORKER.head"``, ``"TASK_BLOB.fullname"``); each record's
    ``"<NAME>.size"`` and ``"<NAME>.stride"``; where this arena's task and
    work tables start and how many slots they have (``"TASK.base"``,
    ``"TASK.count"``, ``"WORK.base"``, ``"WORK.count"``); and the constants the
    work lists use (``ON_*``, ``WK_FLUSH``, ``WF_ORPHAN``, ``TASK_NORMAL``).
    ``Mem.wq_setup`` / ``Mem.wl_setup`` look each name they need up once, and
    name any that is missing.

    @params: the arena's ``ArenaParams``; @task_normal: ``TASK_NORMAL`` (task
    states live on a floor above this module).
    Context: any.  Return: a new dict of ints.
    Raises: ValueError if a record has a field named like one of the other
    keys (``size``, ``stride``, ``base``, ``count``).
    """
    fields: dict[str, int] = {}
    other: dict[str, int] = {"TASK.base": params.tasks, "TASK.count": params.max_kthreads,
             "WORK.base": params.works, "WORK.count": params.max_works}
    for name, rec in [(k, v) for k, v in globals().items() if isinstance(v, Record)]:
        fields.update((f"{name}.{field}", int(off)) for field, off in rec.fields())
        other[f"{name}.size"], other[f"{name}.stride"] = rec.size, rec.stride
    clash = sorted(fields.keys() & other.keys())
    if clash:
        raise ValueError(f"record fields named like layout keys: {clash}")
    return {**fields, **other, "ON_NONE": ON_NONE, "ON_WORKLIST": ON_WORKLIST,
            "ON_TIMER": ON_TIMER, "WK_FLUSH": WK_FLUSH, "WF_ORPHAN": WF_ORPHAN,
            "TASK_NORMAL": int(task_normal)}
