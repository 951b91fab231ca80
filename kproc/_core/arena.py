"""The shared-memory arena of one runtime.

One arena per runtime holds everything the processes of the runtime share:
the header (with the kthread create list and the arena lock), the task table,
per-task blobs (name, pickled threadfn and data, traceback), the user
completion pool and room for workers and works.  It is sized once, at
``start()``.

Where it lives: an anonymous ``memfd`` (mode 0600), never a name in
``/dev/shm``.  The owner creates it and hands the descriptor to kthreadd,
which the kthreads inherit by fork; the memory goes away with the last
process that maps it, whoever dies and however.  That is how "nothing is
left in /dev/shm on any exit path" holds by construction.  Other users cannot
reach it (opening ``/proc/PID/fd/N`` needs ptrace rights over a process of
the runtime), so everything in it was written by a process of the runtime:
that is the condition under which kproc unpickles blobs.

Slots (tasks, completions) carry a generation bumped at each allocation: a
handle holds (index, generation) and every use compares them, so a stale
handle raises instead of touching the slot's new occupant.

The arena lock is a robust process-shared mutex: if its holder dies the next
locker gets it (EOWNERDEAD is taken as "recovered").  Critical sections under
it only link or unlink slots and are written so that a half-done one leaves
nothing worse than a slot that looks busy.
"""

from __future__ import annotations

import mmap
import os

from . import layout as L
from .errors import KthreadError, stale
from .native import has, load_mem_class, native
from .pymem import PyMem, PyMutexGuard
from .slots import SlotTable, next_gen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .memlike import MemLike  # typing only

__all__ = ["Arena", "ArenaParams", "MutexGuard", "marker_slots"]

# ``with MutexGuard(mem, off, spin_ns):`` holds the robust mutex at ``off``.  The C
# one takes the lock inside __enter__ and runs no bytecode before the block is
# entered, so a KeyboardInterrupt cannot fall between the two and leak the lock.
if TYPE_CHECKING:
    from .._native import MutexGuard  # typing only
else:
    MutexGuard = native.MutexGuard if native is not None and has("MutexGuard") else PyMutexGuard


class TableFull(KthreadError):
    """ENOMEM from a table; ``.exiting`` says a slot is about to be reaped."""

    def __init__(self, exiting: bool, message: str) -> None:
        super().__init__(12, message)
        self.exiting = exiting


class ArenaParams:
    """Sizes an arena is built with; offsets of each region derive from them."""

    # Pages of the memfd are only allocated when touched, so the work blobs
    # (max_works x WORK_BLOB) cost address space, not memory, until used.

    def __init__(self, max_kthreads: int, max_completions: int, max_works: int) -> None:
        # The work table holds the user's ``max_works`` and, past them, flush
        # markers that only flushes may take (a flush never fails for want of a
        # slot: kernel markers live on the flusher's stack).  ``max_works`` is
        # the whole table (list indices and bounds cover markers too).
        self.user_works = max_works
        self.markers = marker_slots(max_kthreads)
        max_works += self.markers
        self.max_kthreads = max_kthreads
        self.max_completions = max_completions
        self.max_works = max_works
        off = L.HEADER.size
        # Queued waiters' nodes first (a queue links them by u32 arena offset), one
        # per possible thread id (swait.thread_node): address space only, a page is
        # allocated when a thread with an id in it first sleeps (4 KiB per 128 ids).
        self.swait = off
        self.max_swait = L.PID_MAX_LIMIT
        off = L.align(off + self.max_swait * L.SWAIT.size, 64)
        self.tasks = off
        off += max_kthreads * L.TASK.size
        off = L.align(off, 4096)
        self.blobs = off
        off += max_kthreads * L.BLOB_SIZE
        self.comps = off
        off += max_completions * L.USERCOMP.size
        off = L.align(off, 4096)
        self.workers = off
        off += max_kthreads * L.WORKER.stride
        self.works = off
        off += max_works * L.WORK.stride
        off = L.align(off, 4096)
        self.work_blobs = off
        off += max_works * L.WORK_BLOB
        self.hotplug = off                    # HOTPLUG, request, reply, AP job, SMPBOOT table
        self.hp_req = off + L.HOTPLUG.size
        self.hp_rep = self.hp_req + L.HP_MSG_MAX
        self.hp_ap = self.hp_rep + L.HP_MSG_MAX   # the AP job cpuhp/N runs
        self.smpboot = L.align(self.hp_ap + L.HP_MSG_MAX, 64)
        off = self.smpboot + L.MAX_SMPBOOT * L.SMPBOOT.size
        self.size = L.align(off, 4096)


def marker_slots(max_kthreads: int) -> int:
    """Flush-marker slots reserved past the user's works: one per kthread (each may
    flush once at a time) and 64 for the owner's threads.  More flushers at once
    than that take user slots, then wait for a marker to be freed."""
    return max_kthreads + 64


class Arena:
    """A mapped arena plus the accessors every other module uses.

    Attributes: ``fd`` (memfd), ``buf`` (the mmap), ``mem`` (atomics object),
    ``params`` (:class:`ArenaParams`), ``runtime_id``.
    """

    def __init__(self, fd: int, buf: mmap.mmap, mem: MemLike, params: ArenaParams) -> None:
        self.fd = fd
        self.buf = buf
        self.mem = mem
        self.params = params
        self.runtime_id = mem.load64(L.HEADER.runtime_id) & 0xFFFFFFFFFFFFFFFF
        self.lock_off = L.HEADER.lock
        self.completions = SlotTable(self, params.comps, L.USERCOMP, params.max_completions,
                                     "comp_hint", "completion")
        self.workers = SlotTable(self, params.workers, L.WORKER, params.max_kthreads,
                                 "worker_hint", "worker", " (start the runtime with a "
                                 "larger max_kthreads)")
        self.works = SlotTable(self, params.works, L.WORK, params.max_works, None, "work")
        self.smpboot_regs = SlotTable(self, params.smpboot, L.SMPBOOT, L.MAX_SMPBOOT, None,
                                      "smpboot registration")

    # -- creation and attachment -------------------------------------------------

    @classmethod
    def create(cls, max_kthreads: int, max_completions: int, max_works: int,
               backend_code: int) -> Arena:
        """Create a fresh arena (owner side).  Context: caller; Raises: OSError."""
        params = ArenaParams(max_kthreads, max_completions, max_works)
        fd = os.memfd_create("kproc-arena", os.MFD_CLOEXEC)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, params.size)
            buf = mmap.mmap(fd, params.size, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        mem = cls._make_mem(buf, fd)
        H = L.HEADER
        mem.store64(H.runtime_id, int.from_bytes(os.urandom(8), "little") >> 1)
        mem.store32(H.max_kthreads, max_kthreads)
        mem.store32(H.max_completions, max_completions)
        mem.store32(H.max_works, params.max_works)
        mem.store32(H.backend, backend_code)
        mem.store32(H.owner_pid, os.getpid())
        mem.mutex_init(H.lock)
        arena = cls(fd, buf, mem, params)
        arena._init_work_stack()
        mem.store32(H.layout_version, L.LAYOUT_VERSION)
        mem.store64(H.magic, L.MAGIC)
        return arena

    @classmethod
    def attach(cls, fd: int) -> Arena:
        """Map an existing arena from its descriptor (kthreadd, ``kproc ps``)."""
        size = os.fstat(fd).st_size
        buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mem = cls._make_mem(buf, fd)
        H = L.HEADER
        problem: str | None = None
        if mem.load64(H.magic) != L.MAGIC:
            problem = "not a kproc arena"
        elif mem.load32(H.layout_version) != L.LAYOUT_VERSION:
            problem = (f"a kproc arena of another layout version "
                       f"({mem.load32(H.layout_version)}, this kproc reads {L.LAYOUT_VERSION})")
        if problem is not None:
            del mem
            buf.close()
            raise KthreadError(22, problem)
        max_kthreads = mem.load32(H.max_kthreads)
        params = ArenaParams(max_kthreads, mem.load32(H.max_completions),
                             mem.load32(H.max_works) - marker_slots(max_kthreads))
        return cls(fd, buf, mem, params)

    @staticmethod
    def _make_mem(buf: mmap.mmap, fd: int) -> MemLike:
        native = load_mem_class()
        if native is not None:
            return native(buf)
        return PyMem(buf, fd)

    def close(self, keep_mapping: bool = False) -> None:
        """Unmap and close (the memory lives on in other processes).

        Handles may outlive the runtime and keep the Mem alive, so its buffer
        export is dropped explicitly (``Mem.release``): mapping and descriptor
        go now.  A C call sleeping in another thread keeps the mapping, and
        ``keep_mapping`` both (a thread in a posix semaphore call, which
        touches the arena and, on the pure path, locks through the
        descriptor as it returns): they then go with the process.
        """
        if keep_mapping:
            return
        if self.mem.release():
            try:
                self.buf.close()
            except BufferError:
                pass  # a memoryview of another thread; the mapping dies with us
        os.close(self.fd)

    # -- the arena lock ----------------------------------------------------------

    def locked(self) -> MutexGuard:
        """``with arena.locked():`` holds the arena lock (robust: a dead holder's
        lock is recovered; a KeyboardInterrupt cannot leak it, see MutexGuard)."""
        return MutexGuard(self.mem, self.lock_off)

    # -- header ------------------------------------------------------------------

    def hget(self, name: str) -> int:
        return L.unpack_field(self.buf, 0, L.HEADER, name)

    def hset(self, name: str, value: int) -> None:
        L.pack_field(self.buf, 0, L.HEADER, name, value)

    # -- task table --------------------------------------------------------------

    def task_off(self, idx: int) -> int:
        """Byte offset of task slot ``idx``."""
        return self.params.tasks + idx * L.TASK.size

    def blob_off(self, idx: int) -> int:
        """Byte offset of task slot ``idx``'s blob."""
        return self.params.blobs + idx * L.BLOB_SIZE

    def alloc_task(self) -> tuple[int, int]:
        """Take a free task slot, or recycle the longest-dead unpinned one.

        Read through strided views (a field of every slot), not a load per slot
        (that cost each create ~1 ms at 4,000 slots, under the arena lock).
        Context: arena lock held.  Return: (index, generation).
        Raises: KthreadError(ENOMEM) when every slot is live or pinned.
        """
        T, n = L.TASK, self.params.max_kthreads
        slots = bytes(self._column(T.slot))          # SLOT_* values are < 256
        hint = self.hget("task_hint")
        idx = slots.find(L.SLOT_FREE, hint)
        if idx < 0:
            idx = slots.find(L.SLOT_FREE, 0, hint)
        if idx >= 0:
            self.hset("task_hint", (idx + 1) % n)
            return idx, self._claim_task(idx)
        refs, deaths = self._column(T.refs), self._column(T.death, True)
        pinned = self.held_pins()
        best, best_death = -1, 0
        idx = slots.find(L.SLOT_DEAD)
        while idx >= 0:
            if refs[idx] == 0 and idx not in pinned and (best < 0 or deaths[idx] < best_death):
                best, best_death = idx, deaths[idx]
            idx = slots.find(L.SLOT_DEAD, idx + 1)
        if best < 0:
            raise TableFull(L.SLOT_EXITING in slots, f"kthread table full: all {n} slots "
                            "are live or pinned (start the runtime with a larger max_kthreads)")
        return best, self._claim_task(best)

    def _column(self, off: int, wide: bool = False) -> list[int]:
        """Field ``off`` of every task slot (32-bit, or 64-bit if ``wide``), as a list."""
        n, start, size = self.params.max_kthreads, self.params.tasks, L.TASK.size
        raw = memoryview(self.buf)[start:start + n * size]
        view = raw.cast("Q") if wide else raw.cast("I")
        try:
            return view[off // view.itemsize::size // view.itemsize].tolist()
        finally:
            view.release()
            raw.release()

    def held_pins(self) -> set[int]:
        """Task slots pinned by a kthread_stop() of a live kthread (its HOLD_PIN words)."""
        T, pinned, slots = L.TASK, set(), None
        for i in range(L.HOLDS):
            words = self._column(T.holds + 4 * i)
            if not any(words):
                continue
            if slots is None:
                slots = self._column(T.slot)
            for idx, word in enumerate(words):
                if word >> L.HOLD_SHIFT == L.HOLD_PIN and \
                        slots[idx] in (L.SLOT_LIVE, L.SLOT_EXITING):
                    pinned.add((word & ((1 << L.HOLD_SHIFT) - 1)) - 1)
        return pinned

    def take_hold(self, self_base: int | None, kind: int, idx: int) -> int | None:
        """Record in the calling kthread's slot (``self_base``) that it holds slot
        ``idx`` (HOLD_PIN, HOLD_CANCEL), so that kthreadd gives it back if the
        kthread dies holding it.

        Context: a kthread (the owner's death ends the runtime: it records
        nothing).  Return: the hold word's offset, or None when not recorded
        (not a kthread, or all HOLDS words in use by its other threads): the
        caller then holds the plain way.
        """
        if self_base is None:
            return None
        word = kind << L.HOLD_SHIFT | (idx + 1)
        for i in range(L.HOLDS):
            off = self_base + L.TASK.holds + 4 * i
            if self.mem.cmpxchg32(off, 0, word) == 0:
                return off
        return None

    def release_hold(self, off: int | None) -> None:
        """Drop a hold taken with take_hold() (None: nothing was recorded)."""
        if off is not None:
            self.mem.store32(off, 0)

    def _claim_task(self, idx: int) -> int:
        mem, T, base = self.mem, L.TASK, self.task_off(idx)
        gen = next_gen(mem.load32(base + T.gen))
        self.buf[base:base + T.size] = bytes(T.size)
        mem.store32(base + T.gen, gen)
        mem.store32(base + T.slot, L.SLOT_CREATING)
        for name in ("cpu", "node"):
            L.pack_field(self.buf, base, T, name, -1)
        return gen

    def free_task(self, idx: int) -> None:
        """Return a slot that never became a kthread.  Context: arena lock held."""
        self.mem.store32(self.task_off(idx) + L.TASK.slot, L.SLOT_FREE)

    def check_task(self, idx: int, gen: int) -> int:
        """Raise if (idx, gen) no longer names the slot's occupant; return its offset."""
        base = self.task_off(idx)
        if (now := self.mem.load32(base + L.TASK.gen)) != gen or \
                self.mem.load32(base + L.TASK.slot) == L.SLOT_FREE:
            raise stale("task", f"slot {idx}, generation {gen}, " + (
                f"was recycled (now {now})" if now != gen else "was freed"))
        return base

    def next_death(self) -> int:
        """Advance and return the death clock.  Context: arena lock held."""
        return self.mem.fetch_add64(L.HEADER.death_clock, 1) + 1

    # -- user completion pool -----------------------------------------------------

    def comp_slot_off(self, idx: int) -> int:
        """Byte offset of user completion slot ``idx``."""
        return self.completions.off(idx)

    def alloc_completion(self, owner_pid: int) -> tuple[int, int, int]:
        """Take a free completion slot.  Return (index, generation, completion offset).

        Raises: KthreadError(ENOMEM) when the pool is exhausted.
        """
        idx, gen = self.completions.alloc(owner_pid)
        return idx, gen, self.completions.off(idx) + L.USERCOMP.comp

    def free_completion(self, idx: int, gen: int) -> None:
        """Release a completion slot if (idx, gen) still owns it."""
        self.completions.free(idx, gen)

    # -- workers and works -----------------------------------------------------------

    def worker_off(self, idx: int) -> int:
        """Byte offset of worker slot ``idx``."""
        return self.params.workers + idx * L.WORKER.stride

    def worker_idx(self, off: int) -> int:
        """Worker slot index of the record at byte offset ``off``."""
        return (off - self.params.workers) // L.WORKER.stride

    def work_off(self, idx: int) -> int:
        """Byte offset of work slot ``idx``."""
        return self.params.works + idx * L.WORK.stride

    def work_blob_off(self, idx: int) -> int:
        """Byte offset of work slot ``idx``'s blob (pickled func and data)."""
        return self.params.work_blobs + idx * L.WORK_BLOB

    def _init_work_stack(self) -> None:
        mem, W, p = self.mem, L.WORK, self.params
        for first, end, head in ((0, p.user_works, "work_free"),
                                 (p.user_works, p.max_works, "marker_free")):
            for idx in range(first, end):
                mem.store32(self.work_off(idx) + W.next, idx + 2 if idx + 1 < end else 0)
            self.hset(head, first + 1 if end > first else 0)

    def _pop_free(self, head: str) -> int:
        top = self.hget(head)
        if top:
            self.hset(head, self.mem.load32(self.work_off(top - 1) + L.WORK.next))
        return top

    def alloc_work(self, owner_pid: int, kind: int) -> tuple[int, int] | None:
        """Pop a free work slot.  Return (index, generation) or None when none is free.

        A flush marker (WK_FLUSH) takes a marker slot, else a user slot; a
        work or delayed work only a user slot.  Context: any; takes the arena lock.
        """
        W = L.WORK
        with self.locked():
            top = self._pop_free("marker_free") if kind == L.WK_FLUSH else 0
            if not top:
                top = self._pop_free("work_free")
            if not top:
                return None
            gen = self.works.claim(top - 1, owner_pid,
                                   lambda base: self.mem.store32(base + W.kind, kind))
            return top - 1, gen

    def free_work(self, idx: int, gen: int) -> bool:
        """Push work slot ``idx`` back if (idx, gen) still owns it.  Return True if freed.

        Context: any; takes the arena lock.  The caller knows the work is on no list.
        """
        with self.locked():
            if not self.works.release(idx, gen):
                return False
            head = "marker_free" if idx >= self.params.user_works else "work_free"
            self.mem.store32(self.work_off(idx) + L.WORK.next, self.hget(head))
            self.hset(head, idx + 1)
            return True

    def check_work(self, idx: int, gen: int) -> int:
        """Raise if (idx, gen) no longer names the work slot's occupant; return its offset."""
        return self.works.check(idx, gen)

    def alloc_worker(self, owner_pid: int) -> tuple[int, int]:
        """Take a free worker slot (its mutex initialised).  Return (index, generation).

        Raises: KthreadError(ENOMEM) when every worker slot is in use.
        """
        return self.workers.alloc(owner_pid,
                                  lambda base: self.mem.mutex_init(base + L.WORKER.lock))

    def free_worker(self, idx: int, gen: int) -> None:
        """Release worker slot ``idx`` if (idx, gen) still owns it."""
        self.workers.free(idx, gen)

    def check_worker(self, idx: int, gen: int) -> int:
        """Raise if (idx, gen) no longer names the worker slot's occupant; return its offset."""
        return self.workers.check(idx, gen)
