"""Slot tables: fixed-stride records that handles name by (index, generation).

Every table of the arena (tasks, user completions, workers, works, smpboot
registrations) follows the same rules, kept here once:

* a slot's generation is bumped at every allocation *and* every free
  (:func:`next_gen`, never 0), so a handle made for an earlier occupant
  mismatches and raises instead of touching the new one;
* a fresh occupant starts from a zeroed record;
* allocation and free run under the arena lock (the caller holds it or the
  table takes it), so two processes never claim one slot.

How a table finds a free slot is its own: :meth:`SlotTable.alloc` scans from
a hint in the header (completions, workers, smpboot); works keep a free stack
and tasks recycle the oldest dead slot (``arena``).  Runs in every process.
"""

from __future__ import annotations

from . import layout as L
from .errors import KthreadError, stale

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable
    from contextlib import AbstractContextManager
    from typing import Protocol

    from .memlike import MemLike  # typing only

    class TableArena(Protocol):
        """What a table needs of its arena: ``arena.Arena``, which imports this module."""

        mem: MemLike
        buf: mmap.mmap

        def locked(self) -> AbstractContextManager[object]: ...
        def hget(self, name: str) -> int: ...
        def hset(self, name: str, value: int) -> None: ...

__all__ = ["SlotTable", "next_gen"]


def next_gen(gen: int) -> int:
    """The generation after ``gen`` (32-bit, skipping 0, which means "never used")."""
    return (gen + 1) & 0xFFFFFFFF or 1


class SlotTable:
    """A table of ``count`` records of ``record`` at ``base``, ``record.stride`` apart.

    The record has ``gen`` and ``inuse`` fields and, if ``owned``, an ``owner`` pid.
    @hint: the HEADER field where the next scan starts, or None.
    @what: how errors name a slot ("completion", "worker", ...).
    """

    __slots__ = ("arena", "base", "record", "count", "hint", "what", "full_hint")

    def __init__(self, arena: TableArena, base: int, record: L.Record, count: int,
                 hint: str | None, what: str, full_hint: str = "") -> None:
        self.arena = arena
        self.base = base
        self.record = record
        self.count = count
        self.hint = hint
        self.what = what
        self.full_hint = full_hint

    def off(self, idx: int) -> int:
        """Byte offset of slot ``idx``."""
        return self.base + idx * self.record.stride

    def claim(self, idx: int, owner_pid: int | None,
              prepare: Callable[[int], object] | None = None) -> int:
        """Make slot ``idx`` a fresh occupant's: a zeroed record with a new generation.

        @prepare: called as ``prepare(base)`` on the zeroed record before it is
        marked in use (to set a kind, initialise a mutex...).
        Context: arena lock held.  Return: the new generation.
        """
        mem, R, base = self.arena.mem, self.record, self.off(idx)
        gen = next_gen(mem.load32(base + R.gen))
        self.arena.buf[base:base + R.size] = bytes(R.size)
        if prepare is not None:
            prepare(base)
        mem.store32(base + R.gen, gen)
        if owner_pid is not None:
            L.pack_field(self.arena.buf, base, R, "owner", owner_pid)
        mem.store32(base + R.inuse, 1)
        return gen

    def alloc(self, owner_pid: int | None,
              prepare: Callable[[int], object] | None = None) -> tuple[int, int]:
        """Take the first free slot from the hint on.

        @prepare: as for :meth:`claim`.
        Context: any; takes the arena lock.  Return: (index, generation).
        Raises: KthreadError(ENOMEM) when every slot is in use.
        """
        arena, mem, R = self.arena, self.arena.mem, self.record
        with arena.locked():
            hint = arena.hget(self.hint) if self.hint else 0
            for i in range(self.count):
                idx = (hint + i) % self.count
                base = self.off(idx)
                if not mem.load32(base + R.inuse):
                    if self.hint:
                        arena.hset(self.hint, (idx + 1) % self.count)
                    return idx, self.claim(idx, owner_pid, prepare)
        raise KthreadError(12, f"{self.what} table full: all {self.count} slots are in "
                           f"use{self.full_hint}")

    def release(self, idx: int, gen: int) -> bool:
        """Free slot ``idx`` if (idx, gen) still names its occupant.

        Context: arena lock held.  Return: True if it was freed.
        """
        mem, R, base = self.arena.mem, self.record, self.off(idx)
        if mem.load32(base + R.gen) != gen or not mem.load32(base + R.inuse):
            return False
        mem.store32(base + R.inuse, 0)
        mem.store32(base + R.gen, next_gen(gen))
        return True

    def free(self, idx: int, gen: int) -> bool:
        """:meth:`release` under the arena lock.  Context: any.  Return: as release."""
        with self.arena.locked():
            return self.release(idx, gen)

    def check(self, idx: int, gen: int) -> int:
        """Offset of slot ``idx`` if (idx, gen) names its live occupant.

        Context: any; does not block.  Raises: KthreadError(ESRCH) if stale.
        """
        mem, R, base = self.arena.mem, self.record, self.off(idx)
        if mem.load32(base + R.gen) != gen or not mem.load32(base + R.inuse):
            raise stale(self.what)
        return base
