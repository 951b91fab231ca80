"""The FIFO queue of a completion's sleeping waiters (kernel: kernel/sched/swait.c).

complete() wakes waiters "in the same order in which they were queued"
(completion.c).  A thread that has to sleep on a completion links its own
node (:data:`layout.SWAIT`, one per thread, in the arena's node table) at the
tail of the completion's queue and sleeps on the node's own ``wake`` word;
complete() hands its count to the head node (``granted``) and wakes that
word only.  A waiter woken for another reason (its liveness tick, a stray
``wake_up_process``, kthread_stop()'s notification) is still linked where it
was, so it keeps its place; a timeout, an interrupted wait or an exception
takes the node off the queue (``dequeue``), and a count granted meanwhile is
the waiter's (or, after an exception, passed on).

This module holds what both backends share: the node table (a node per
thread, claimed on the thread's first sleep and given back when the thread
ends; nodes of dead processes are taken over, unlinked first if they were
still queued) and :class:`PySwait`, the queue operations over any
:class:`MemLike` for the posix backend.  The futex backend runs the same
operations in C (native/swait.c, documented there, with the lost-wake-up
argument); both use the completion's ``lock`` word the same way: the holder's
pid, taken over from a dead holder.  The Python critical sections run with
signals blocked, so a handler's exception cannot leave a queue half linked.

Runs in every process of a runtime.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from . import layout as L

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .arena import Arena  # typing only
    from .memlike import MemLike  # typing only

__all__ = ["PySwait", "thread_node", "pid_dead"]

C = L.COMPLETION
N = L.SWAIT
DONE_ALL = 0xFFFFFFFF
LOCK_SPINS = 64
_ALL_SIGNALS = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}


def pid_dead(pid: int, me: int) -> bool:
    """True if ``pid`` names no process (a queued waiter or lock holder that died)."""
    if pid <= 0 or pid == me:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class PySwait:
    """The queue operations of native/swait.c over MemLike atomics (posix backend).

    @wake: ``wake(off)`` wakes the sleepers of the word at ``off``.
    """

    def __init__(self, mem: MemLike, wake: Callable[[int], None]) -> None:
        self.mem = mem
        self.wake = wake

    def _lock(self, off: int, me: int) -> None:
        mem = self.mem
        spins = 0
        while True:
            holder = mem.cmpxchg32(off + C.lock, 0, me)
            if holder == 0:
                return
            spins += 1
            if spins % LOCK_SPINS == 0 and pid_dead(holder, me) and \
                    mem.cmpxchg32(off + C.lock, holder, me) == holder:
                return
            time.sleep(0)           # lets another thread of this process finish

    def _unlink(self, off: int, node: int) -> None:
        mem = self.mem
        prev, nxt = mem.load32(node + N.prev), mem.load32(node + N.next)
        mem.store32((prev + N.next) if prev else (off + C.head), nxt)
        mem.store32((nxt + N.prev) if nxt else (off + C.tail), prev)
        mem.store32(node + N.next, 0)
        mem.store32(node + N.prev, 0)
        mem.store64(node + N.comp, 0)

    def _take(self, off: int) -> bool:
        mem = self.mem
        while True:
            done = mem.load32(off + C.done)
            if done == DONE_ALL:
                return True
            if done == 0:
                return False
            if mem.cmpxchg32(off + C.done, done, done - 1) == done:
                return True

    def _settle_locked(self, off: int, me: int) -> int:
        """Grant the available counts to the queue, head first; the lock is held."""
        mem = self.mem
        bound = 1 << 20
        while (node := mem.load32(off + C.head)) and bound > 0:
            bound -= 1
            if pid_dead(mem.load32(node + N.owner), me):
                self._unlink(off, node)
                continue
            if not self._take(off):
                return 0
            self._unlink(off, node)
            mem.store32(node + N.granted, 1)
            mem.fetch_add32(node + N.wake, 1)
            self.wake(node + N.wake)
        return 0

    def _critical(self, off: int, fn: Callable[[int], int]) -> int:
        me = os.getpid()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        try:
            self._lock(off, me)
            try:
                return fn(me)
            finally:
                self.mem.store32(off + C.lock, 0)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def settle(self, off: int) -> None:
        """After ``done`` moved: hand what is there to the queue, head first."""
        if self.mem.load32(off + C.head):
            self._critical(off, lambda me: self._settle_locked(off, me))

    def enqueue(self, off: int, node: int) -> int:
        """completion_enqueue(): 1 acquired at once, 0 queued at the tail."""
        mem = self.mem

        def link(me: int) -> int:
            if self._take(off):
                return 1
            mem.store32(node + N.granted, 0)
            mem.store64(node + N.comp, off)
            mem.store32(node + N.next, 0)
            tail = mem.load32(off + C.tail)
            mem.store32(node + N.prev, tail)
            mem.store32((tail + N.next) if tail else (off + C.head), node)
            mem.store32(off + C.tail, node)
            self._settle_locked(off, me)
            if mem.load32(node + N.granted):
                mem.store32(node + N.granted, 0)
                return 1
            return 0
        return self._critical(off, link)

    def dequeue(self, off: int, node: int) -> int:
        """completion_dequeue(): 1 it had been granted a count, 0 taken off without."""
        mem = self.mem

        def unlink(me: int) -> int:
            if mem.load32(node + N.granted):
                mem.store32(node + N.granted, 0)
                return 1
            if mem.load64(node + N.comp) == off:
                self._unlink(off, node)
            return 0
        return self._critical(off, unlink)


# -- the node table: one node per sleeping thread ------------------------------------

class _Node:
    """This thread's node; given back when the thread (or its runtime) ends."""

    __slots__ = ("arena", "off", "pid")

    def __init__(self, arena: Arena, off: int) -> None:
        self.arena = arena
        self.off = off
        self.pid = os.getpid()

    def __del__(self) -> None:
        try:
            if self.pid == os.getpid() and not self.arena.buf.closed:
                self.arena.mem.cmpxchg32(self.off + N.owner, self.pid, 0)
        except Exception:
            pass


_local = threading.local()


def thread_node(arena: Arena, dequeue: Callable[[int, int], int]) -> int:
    """The calling thread's node (its arena offset), claimed on first use.

    @dequeue: the backend's completion_dequeue, to unlink a dead process's
    node that was still queued before taking it over.
    Context: any thread of a runtime process.  Return: the offset, or 0 when
    every node is taken by a live thread (the caller then polls).
    """
    mine: _Node | None = getattr(_local, "node", None)
    if mine is not None and mine.arena is arena and mine.pid == os.getpid():
        return mine.off
    off = _claim(arena, dequeue)
    _local.node = _Node(arena, off) if off else None
    return off


def _claim(arena: Arena, dequeue: Callable[[int, int], int]) -> int:
    mem, params = arena.mem, arena.params
    me = os.getpid()
    count = params.max_swait
    start = (me * 7919 + threading.get_ident()) % count
    offs = [params.swait + ((start + i) % count) * N.size for i in range(count)]
    for off in offs:
        if mem.load32(off + N.owner) == 0 and mem.cmpxchg32(off + N.owner, 0, me) == 0:
            return off
    for off in offs:
        owner = mem.load32(off + N.owner)
        if pid_dead(owner, me) and mem.cmpxchg32(off + N.owner, owner, me) == owner:
            comp = mem.load64(off + N.comp)
            if comp:
                dequeue(comp, off)
            mem.store32(off + N.granted, 0)
            return off
    return 0
