"""kthreadd's reaping: how each kthread ended, and what a dead process held.

Part of kthreadd (a mixin of ``kthreadd.Kthreadd``).  On SIGCHLD kthreadd
reaps every exited child and, for each kthread (kernel: what ``do_exit`` and
the parent's wait leave in the task):

* records how it ended: its own result, or, for a death without one (a
  signal, ``os._exit``), ``-EOWNERDEAD`` and the signal; a create that failed
  keeps the kthread's own report for its creator;
* completes ``exited`` and ``parked`` so nobody waits on a dead task, before
  the slot can be recycled;
* gives back what it held while waiting (its HOLD words: kthread_stop() pins,
  cancel_*_sync counts), so a kthread killed mid-wait pins nothing forever;
* abandons the pending creates of a dead creator (``xchg(&create->done, NULL)``).

Runs in kthreadd only.
"""

from __future__ import annotations

import errno
import os

from .._core import layout as L
from .._core.blobs import store_traceback
from .._sched.schedule import wake_up_process_raw

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._core.arena import Arena  # typing only
    from .._core.runtime import Runtime  # typing only

__all__ = ["Reaper", "KILLED_RESULT"]

KILLED_RESULT = -errno.EOWNERDEAD


class Reaper:
    """Reaping, exit records and reclaim, for kthreadd's children."""

    arena: Arena
    rt: Runtime
    children: dict[int, tuple[int, int] | None]   # pid -> (slot index, generation)
    inflight: dict[int, int]                      # slot index -> creator pid
    exiting: dict[int, int]                       # pid -> slot: said it leaves, unreaped

    def _fail_create(self, base: int, err: int, text: str) -> None:
        mem, T = self.arena.mem, L.TASK
        if mem.cmpxchg32(base + T.handoff, L.HANDOFF_WAITING, L.HANDOFF_FAILED) != \
                L.HANDOFF_WAITING:
            return
        mem.store64(base + T.result, err)
        store_traceback(self.arena, base, text)
        self.rt.waits.completion_complete(base + T.done, False)

    def before_reap(self) -> None:
        """Called before any child is reaped (kthreadd: record the claims made so far)."""

    def reaped_spare(self, pid: int) -> None:
        """Child ``pid`` exited (kthreadd: the spare pool entry it still has, if any,
        is freed, and a claim of it not collected yet is recorded)."""

    # -- reaping -----------------------------------------------------------------

    def reap(self) -> bool:
        """Reap exited children and record how each kthread ended.

        ``waitpid(-1)`` walks every child in the kernel (``wait_consider_task``,
        ~0.2 µs per live kthread), so the kthreads known to be leaving (each
        pushed its slot on the arena's exiting stack) are reaped by pid first,
        and the sweep over all children (for kthreads killed, spares, anything
        else) runs only when that found none: a SIGCHLD of a kill alone is
        handled at once.
        Return: True when a sweep is still owed (the caller runs
        :meth:`sweep` soon: a kill may have come with the same SIGCHLD).
        """
        self.before_reap()
        if self._reap_exiting():
            return True
        self.sweep()
        return False

    def sweep(self) -> None:
        """Reap every exited child (``waitpid(-1, WNOHANG)`` until none is left)."""
        self.before_reap()
        self._take_exiting()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._reaped(pid, status)

    def _reaped(self, pid: int, status: int) -> None:
        self.exiting.pop(pid, None)
        # A spare, or a kthread that was one: a spare killed after its claim was
        # recorded but before it acknowledged it still holds its entry, which no
        # collect frees (kept, its dead pid could name a later child).
        self.reaped_spare(pid)
        entry = self.children.pop(pid, None)
        if entry is not None:
            self._record_exit(pid, status, *entry)
        self._abandon_creates_of(pid)

    def _take_exiting(self) -> None:
        """Move the arena's stack of exiting kthreads (``HEADER.exiting_head``, each
        kthread pushed its slot as it left) into :attr:`exiting`, as pid -> slot.

        Called before anything is reaped: a slot stays on the stack only while
        its kthread is unreaped, so its ``next`` link is not reused meanwhile
        (a reaped slot can be recycled and pushed again).
        """
        arena, mem, T = self.arena, self.arena.mem, L.TASK
        head, n = mem.xchg32(L.HEADER.exiting_head, 0), arena.params.max_kthreads
        for _ in range(n):          # bounded: a scribbled link cannot loop kthreadd
            if not 0 < head <= n:
                break               # the end (0), or a scribbled link: the sweep reaps
            idx = head - 1
            base = arena.task_off(idx)
            head = mem.load32(base + T.next)
            pid = L.unpack_field(arena.buf, base, T, "pid")
            entry = self.children.get(pid)
            if entry is not None and entry[0] == idx:
                self.exiting[pid] = idx

    def _reap_exiting(self) -> int:
        """Reap by pid the kthreads that said they are leaving.  Return: how many.

        Costs what the exits cost, whatever the number of live kthreads: no
        slot is looked at but those on the stack (:meth:`_take_exiting`).
        """
        self._take_exiting()
        reaped = 0
        for pid in list(self.exiting):
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self.exiting.pop(pid, None)
                continue
            if got == pid:
                self._reaped(pid, status)
                reaped += 1
        return reaped

    def _record_exit(self, pid: int, status: int, idx: int, gen: int,
                     teardown: bool = False) -> None:
        """Record how the kthread in slot ``idx`` ended; ``teardown``: the owner is
        gone and nothing else runs, so no lock is taken (the owner may have died
        holding one)."""
        arena, mem, T = self.arena, self.arena.mem, L.TASK
        base = arena.task_off(idx)
        self.inflight.pop(idx, None)
        if mem.load32(base + T.gen) != gen:
            return
        waits = self.rt.waits
        handoff = mem.load32(base + T.handoff)
        if handoff == L.HANDOFF_WAITING:
            self._fail_create(base, -errno.ECHILD,
                              f"kthread died before it was published (status {status})")
            handoff = L.HANDOFF_FAILED
        if mem.load32(base + T.slot) != L.SLOT_EXITING and handoff != L.HANDOFF_FAILED:
            # Died without writing a result: killed, or left behind kproc's back.
            # (A failed creation keeps the kthread's own report for its creator.)
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            L.pack_field(arena.buf, base, T, "signal", sig)
            mem.store64(base + T.result, KILLED_RESULT)
            mem.store32(base + T.exit_kind, L.EXIT_SIGNALED if sig else L.EXIT_LOST)
        if not teardown:
            self._reclaim_holds(base)
        mem.fetch_or32(base + T.flags, L.KF_EXITING)
        mem.store32(base + T.state, 0x80)      # TASK_DEAD
        mem.store32(base + T.sleeping, 0)
        # Complete before the slot can be recycled: once it is DEAD (or FREE) with no
        # refs, a creator may claim it, and a late complete would end the new
        # occupant's kthread_stop() before it ran.
        waits.completion_complete(base + T.exited, True)
        waits.completion_complete(base + T.parked, True)
        if teardown:
            mem.store32(base + T.slot, L.SLOT_DEAD)
            return
        with arena.locked():
            if handoff == L.HANDOFF_ABANDONED:
                arena.free_task(idx)       # nobody ever held a handle on it
            else:
                mem.store64(base + T.death, arena.next_death())
                mem.store32(base + T.slot, L.SLOT_DEAD)

    def _reclaim_holds(self, base: int) -> None:
        """The kthread at ``base`` died: give back what it held while waiting.

        Its HOLD words name each pin (a kthread_stop() it was in: clearing the
        word unpins the target) and each canceling count (a cancel_*_sync it
        was in: the count is dropped under the work's worker lock, so the work
        can be queued again).  Kernel: what a task holds goes with its exit.
        """
        mem = self.arena.mem
        mask = (1 << L.HOLD_SHIFT) - 1
        for i in range(L.HOLDS):
            word = mem.xchg32(base + L.TASK.holds + 4 * i, 0)
            if word >> L.HOLD_SHIFT == L.HOLD_CANCEL:
                self._drop_canceling((word & mask) - 1)

    def _drop_canceling(self, widx: int) -> None:
        arena, mem, W = self.arena, self.arena.mem, L.WORK
        if not 0 <= widx < arena.params.max_works:
            return
        wbase = arena.work_off(widx)
        kidx = mem.load32(wbase + W.worker)
        if not kidx or kidx > arena.params.max_kthreads:
            return
        lock = arena.worker_off(kidx - 1) + L.WORKER.lock
        if mem.mutex_lock(lock, 2_000_000_000) == 2:
            return          # held for 2 s by a live process: leave the count
        try:
            while True:
                n = mem.load32(wbase + W.canceling)
                if n == 0 or mem.cmpxchg32(wbase + W.canceling, n, n - 1) == n:
                    break
        finally:
            mem.mutex_unlock(lock)

    def _abandon_creates_of(self, pid: int) -> None:
        """A creator died: abandon its creates (kernel: xchg(&create->done, NULL)).

        A request not yet served is skipped; a kthread not yet published exits
        by itself when it sees ABANDONED; one published but never *taken* by
        its creator (who died first) would sleep forever unseen, so it is
        stopped here: it exits with -EINTR and its slot is freed.
        """
        arena, mem, T = self.arena, self.arena.mem, L.TASK
        for idx, creator in list(self.inflight.items()):
            base = arena.task_off(idx)
            handoff = mem.load32(base + T.handoff)
            if handoff not in (L.HANDOFF_WAITING, L.HANDOFF_PUBLISHED):
                del self.inflight[idx]
            elif creator == pid:
                if mem.cmpxchg32(base + T.handoff, handoff, L.HANDOFF_ABANDONED) == \
                        L.HANDOFF_PUBLISHED:
                    mem.fetch_or32(base + T.flags, L.KF_SHOULD_STOP)
                    wake_up_process_raw(self.rt, base)
                del self.inflight[idx]
        with arena.locked():
            head = arena.hget("create_head")
            while head:
                base = arena.task_off(head - 1)
                if L.unpack_field(arena.buf, base, T, "creator") == pid:
                    mem.cmpxchg32(base + T.handoff, L.HANDOFF_WAITING, L.HANDOFF_ABANDONED)
                head = mem.load32(base + T.next)
