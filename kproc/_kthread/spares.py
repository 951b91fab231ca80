"""The spare pool: children of kthreadd forked in advance, claimed by creators directly.

A create with a spare ready costs one cross-process hop (creator → spare →
creator) instead of two (creator → kthreadd → spare → creator): the creator
claims a spare itself, through the arena, and kthreadd only replenishes.

The pool is ``HEADER.spares``: ``SPARE_POOL`` words, each the futex word one
spare child sleeps on.  A word is

* ``SPARE_EMPTY``: no spare (kthreadd may fork one onto the entry);
* ``SPARE_FORKING``: kthreadd is forking one; the child turns it READY once
  it is set up and about to sleep (a creator never waits for a fork);
* ``SPARE_READY``: a spare sleeps on it, with no Python running;
* ``SPARE_DISCARD``: kthreadd tells the spare to exit (it lacks a module);
* ``SPARE_CLAIMED + i``: a creator CASed READY to it, giving the spare task
  slot ``i``; the spare ORs in ``SPARE_ACK`` once it has read it.

Who writes what: kthreadd alone turns EMPTY into FORKING (just before the
fork), FORKING or READY into DISCARD, and an ACKed or dead spare's entry back
into EMPTY; the spare alone turns FORKING into READY; a creator (or kthreadd serving
the create list) alone turns READY into CLAIMED, under the arena lock with
the slot already written, so the claim is the last step of a create's
critical section and a creator killed at any point leaves either no claim or
a whole one.  kthreadd learns every claim
(:meth:`SparePool.collect`) before it reaps anything, so the spare is a known
kthread (its slot, its creator) by the time its exit or its creator's death
is handled: reaping, abandoned creates and every fault rule stay kthreadd's.
A spare never misses its claim: a creator killed between its CAS and its
wake is covered by the spare's own tick (``TICK_NS``).

Runs in the caller (:func:`claim_spare`), the spare (:func:`spare_wait`) and
kthreadd (:class:`SparePool`).
"""

from __future__ import annotations

import os
import pickle

from .._core import layout as L
from .._core.blobs import read_blob
from .affinity import fetch_affinity

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._core.runtime import Runtime  # typing only

__all__ = ["claim_spare", "spares_low", "wake_spare", "warm_up", "spare_wait", "SparePool",
           "TICK_NS"]

TICK_NS = 100_000_000          # a spare re-reads its word this often, woken or not
_BASE = L.HEADER.spares
_OFFS = tuple(_BASE + 4 * e for e in range(L.SPARE_POOL))


def claim_spare(rt: Runtime, idx: int) -> int:
    """Give task slot ``idx`` to a ready spare, if there is one (no wake-up yet).

    Context: the arena lock held, the slot's request written whole.
    Return: the claimed entry's word offset (wake it with ``rt.waits.wake``),
    or -1 when no spare is ready.
    """
    mem = rt.mem
    claim = L.SPARE_CLAIMED + idx
    for off in _OFFS:
        if mem.load32(off) == L.SPARE_READY and \
                mem.cmpxchg32(off, L.SPARE_READY, claim) == L.SPARE_READY:
            return off
    return -1


def spares_low(rt: Runtime) -> bool:
    """After a claim: are half or fewer of the pool's spares still ready?

    kthreadd replenishes in batches once the pool is down to half its target
    (:meth:`SparePool.wanted`); a creator wakes it for that only then, so
    most creates cost kthreadd nothing.  The entries in use (ready, forking,
    claimed and not yet collected) stand for the target.
    Context: any process of the runtime.  Return: True when kthreadd should
    be woken.
    """
    mem, ready, used = rt.mem, 0, 0
    for off in _OFFS:
        word = mem.load32(off)
        if word != L.SPARE_EMPTY:
            used += 1
            ready += word == L.SPARE_READY
    return 2 * ready <= used


def wake_spare(rt: Runtime, off: int) -> None:
    """Wake the spare sleeping on pool word ``off`` (one spare per word).

    Context: any process of the runtime; never blocks.
    """
    rt.waits.wake(off, 1)


_WARM_PICKLE = pickle.dumps((os.getpid, None))


def warm_up(rt: Runtime) -> None:
    """In a spare, before it sleeps: run, once and on throwaway data, the code a
    claimed spare runs before it publishes and at its first wake-up (the blob
    read, unpickling, the sysfs reads of its node affinity).

    What a fresh child of kthreadd costs is mostly copy-on-write faults of
    the pages its interpreter writes (reference counts of the objects that
    code touches); taken here they stay off the creator's path.  Nothing is
    changed: slot 0 and the topology are only read.
    Context: a spare child of kthreadd, not yet claimed.
    """
    try:
        base = rt.arena.task_off(0)
        read_blob(rt.arena, 0, base)
        pickle.loads(_WARM_PICKLE)
        fetch_affinity(rt, base)
        rt.topology.usable()
    except Exception:
        pass            # a torn read of a slot being written: it was only a warm-up


def spare_wait(rt: Runtime, off: int) -> int | None:
    """In a spare: sleep on pool word ``off`` until claimed or discarded.

    Context: a spare child of kthreadd.  Return: the task slot it was given,
    or None when kthreadd discarded it (or the entry is no longer its own).
    """
    mem, wait = rt.mem, rt.waits.wait
    mem.cmpxchg32(off, L.SPARE_FORKING, L.SPARE_READY)   # fails only if discarded
    while True:
        word = mem.load32(off)
        if word == L.SPARE_READY:
            wait(off, L.SPARE_READY, TICK_NS, False)
            continue
        if word & L.SPARE_ACK or word < L.SPARE_CLAIMED:
            return None
        mem.store32(off, word | L.SPARE_ACK)
        return word - L.SPARE_CLAIMED


class SparePool:
    """kthreadd's side of the pool: which spare sits on which entry, replenishing.

    Adaptive: the target starts at ``base`` spares (``KPROC_SPARES``, default
    4); a create that finds no spare ready raises it by one (up to
    ``SPARE_POOL``), and :meth:`shrink` (kthreadd idle for a while) drops it
    back to ``base``, discarding the extra spares.
    """

    def __init__(self, rt: Runtime, base: int) -> None:
        self.rt = rt
        self.base = min(base, L.SPARE_POOL)
        self.target = self.base
        self.pids = [0] * L.SPARE_POOL          # the spare on each entry, 0: none
        self.recorded = [False] * L.SPARE_POOL  # its claim is known to kthreadd

    def ready(self) -> int:
        """How many spares wait unclaimed (or are about to)."""
        mem = self.rt.mem
        return sum(1 for e, pid in enumerate(self.pids)
                   if pid and mem.load32(_OFFS[e]) in (L.SPARE_READY, L.SPARE_FORKING))

    def wanted(self) -> list[int]:
        """The entries to fork spares onto now: none while more than half the
        target is ready (so forks come in batches, with no Python between
        them where the C extension is built), else free entries up to the
        target (counting claimed spares not yet collected as gone)."""
        if not self.target:
            return []
        ready = self.ready()
        if ready > self.target // 2:
            return []
        free = [e for e, pid in enumerate(self.pids) if not pid]
        return free[:self.target - ready]

    def open(self, entry: int) -> None:
        """kthreadd is about to fork a spare for ``entry`` (FORKING: the child makes
        it READY, claimable, once it is about to sleep)."""
        self.recorded[entry] = False
        self.rt.mem.store32(_OFFS[entry], L.SPARE_FORKING)

    def add(self, entry: int, pid: int) -> None:
        """kthreadd forked spare ``pid`` for ``entry``."""
        self.pids[entry] = pid

    def unopen(self, entry: int) -> None:
        """The fork for ``entry`` failed (nobody could claim it yet)."""
        self.rt.mem.store32(_OFFS[entry], L.SPARE_EMPTY)

    def missed(self) -> None:
        """A create found no spare ready: keep one more from now on."""
        if self.target:
            self.target = min(L.SPARE_POOL, self.target + 1)

    def claim(self, idx: int) -> int | None:
        """kthreadd serving the create list: give slot ``idx`` to a ready spare.

        Return: the spare's pid (already recorded as claimed), or None.
        """
        off = claim_spare(self.rt, idx)
        if off < 0:
            return None
        entry = _OFFS.index(off)
        self.recorded[entry] = True
        wake_spare(self.rt, off)
        return self.pids[entry]

    def collect(self) -> list[tuple[int, int]]:
        """Claims made since the last call, and entries whose spare has read its claim
        freed.  Return: ``[(pid, slot index), ...]`` of spares claimed by creators."""
        mem, out = self.rt.mem, []
        for e, pid in enumerate(self.pids):
            if not pid:
                continue
            word = mem.load32(_OFFS[e])
            if word < L.SPARE_CLAIMED:
                continue
            if not self.recorded[e]:
                self.recorded[e] = True
                out.append((pid, (word & ~L.SPARE_ACK) - L.SPARE_CLAIMED))
            if word & L.SPARE_ACK:
                self._free(e)
        return out

    def reaped(self, pid: int) -> tuple[int, int] | None:
        """Spare ``pid`` exited: free its entry.  Return: (pid, slot) if it had been
        claimed by a creator and that claim was not collected yet, else None."""
        if pid not in self.pids:
            return None
        e = self.pids.index(pid)
        mem, off = self.rt.mem, _OFFS[e]
        claim = None
        if mem.cmpxchg32(off, L.SPARE_READY, L.SPARE_EMPTY) != L.SPARE_READY:
            word = mem.load32(off)    # claimed, discarded, or it died while FORKING
            if word >= L.SPARE_CLAIMED and not self.recorded[e]:
                claim = (pid, (word & ~L.SPARE_ACK) - L.SPARE_CLAIMED)
        self._free(e)
        return claim

    def _free(self, e: int) -> None:
        self.rt.mem.store32(_OFFS[e], L.SPARE_EMPTY)
        self.pids[e] = 0
        self.recorded[e] = False

    def discard(self, keep: int = 0) -> None:
        """Tell all ready spares but ``keep`` to exit (they are reaped as usual)."""
        mem = self.rt.mem
        for e, pid in enumerate(self.pids):
            word = mem.load32(_OFFS[e])
            if pid and word in (L.SPARE_READY, L.SPARE_FORKING):
                if keep:
                    keep -= 1
                elif mem.cmpxchg32(_OFFS[e], word, L.SPARE_DISCARD) == word:
                    wake_spare(self.rt, _OFFS[e])

    def shrink(self) -> None:
        """kthreadd has been idle: back to ``base`` spares."""
        if self.target > self.base:
            self.target = self.base
            self.discard(keep=self.base)

    def live(self) -> list[int]:
        """Pids of every spare still on an entry (for teardown)."""
        return [pid for pid in self.pids if pid]

    def offset(self, entry: int) -> int:
        """The pool word of ``entry``."""
        return _OFFS[entry]
