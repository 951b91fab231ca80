"""The FIFO queue of a completion's sleeping waiters (kernel: kernel/sched/swait.c).

complete() wakes waiters "in the same order in which they were queued"
(completion.c).  A thread that has to sleep on a completion links its own
node (:data:`layout.SWAIT`, one per thread id, in the arena's node table) at the
tail of the completion's queue and sleeps on the node's own ``wake`` word;
complete() hands its count to the head node (``granted``) and wakes that
word only.  A waiter woken for another reason (its liveness tick, a stray
``wake_up_process``, kthread_stop()'s notification) is still linked where it
was, so it keeps its place; a timeout, an interrupted wait or an exception
takes the node off the queue (``dequeue``), and a count granted meanwhile is
the waiter's (or, after an exception, passed on).

This module holds what both backends share: the node table (a node per
possible thread id, so every thread that can sleep has one: see
:func:`thread_node`), :func:`take_grant` (the waiter's own decrement of
``done``: until then completion_done() stays true, as in the kernel) and
:class:`PySwait`, the queue operations over any :class:`MemLike` for the
posix backend without the C extension.  Where it is built, both backends run
the same operations in C (native/swait.c, documented there, with the
lost-wake-up argument); both use the completion's ``lock`` word the same way:
the holder's pid, taken over from a dead holder.  The Python critical
sections run with signals blocked, so a handler's exception cannot leave a
queue half linked.

Runs in every process of a runtime.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time

from . import layout as L

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .arena import Arena  # typing only
    from .memlike import MemLike  # typing only

__all__ = ["PySwait", "thread_node", "take_grant", "pid_dead", "sigmask"]

C = L.COMPLETION
N = L.SWAIT
DONE_ALL = 0xFFFFFFFF
GRANT_COUNT = 1         # node.granted: one count of ``done``, accounted in comp.granted
GRANT_ALL = 2           # node.granted: passed by complete_all (``done`` stays UINT_MAX)
LOCK_SPINS = 64
_ALL_SIGNALS = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}


def _raw_sigmask() -> Callable[[int, Iterable[int]], set[int]]:
    """pthread_sigmask() without the enums.

    signal.pthread_sigmask() wraps CPython's C function (module ``_signal``)
    only to turn the old mask it returns into a set of Signals enums: ~35 µs
    for a full mask on this VM, and the posix backend blocks and restores
    around every sleep.  The C function returns plain ints: ~1 µs the pair.
    """
    try:
        fn: Callable[[int, Iterable[int]], set[int]] = \
            importlib.import_module("_signal").pthread_sigmask
    except (ImportError, AttributeError):
        return signal.pthread_sigmask
    return fn


sigmask = _raw_sigmask()


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


def take_grant(mem: MemLike, off: int, node: int) -> bool:
    """Take the count complete() granted to ``node`` (queued on the completion at
    ``off``), if it did: the waiter's own decrement of ``done`` in the kernel.

    Context: the node's thread (or, for a dead one, the thread taking its node over).
    Return: True if a grant was there (now taken), False if not.
    """
    how = mem.load32(node + N.granted)
    if not how:
        return False
    mem.store32(node + N.granted, 0)
    mem.store64(node + N.comp, 0)
    if how == GRANT_COUNT:
        mem.fetch_add32(off + C.granted, -1)
    return True


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
        """Grant the available counts to the queue, head first; the lock is held.

        A counted grant is kept in the completion's ``granted`` until its
        waiter takes it (``take_grant``), so completion_done() stays true in
        between, as the kernel's ``done`` stays up until the woken waiter
        decrements it (completion.c do_wait_for_common()).  ``granted`` goes
        up before ``done`` goes down: a reader of ``done`` then ``granted``
        never sees both zero while the count is in flight.
        """
        mem = self.mem
        bound = 1 << 20
        while (node := mem.load32(off + C.head)) and bound > 0:
            bound -= 1
            if pid_dead(mem.load32(node + N.owner), me):
                self._unlink(off, node)
                continue
            done = mem.load32(off + C.done)
            if done == 0:
                return 0
            how = GRANT_ALL if done == DONE_ALL else GRANT_COUNT
            if how == GRANT_COUNT:
                mem.fetch_add32(off + C.granted, 1)
            if not self._take(off):
                if how == GRANT_COUNT:
                    mem.fetch_add32(off + C.granted, -1)
                return 0
            self._unlink(off, node)
            mem.store64(node + N.comp, off)         # until taken: a takeover passes it on
            mem.store32(node + N.granted, how)
            mem.fetch_add32(node + N.wake, 1)
            self.wake(node + N.wake)
        return 0

    def _critical(self, off: int, fn: Callable[[int], int]) -> int:
        me = os.getpid()
        old = sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        try:
            self._lock(off, me)
            try:
                return fn(me)
            finally:
                self.mem.store32(off + C.lock, 0)
        finally:
            sigmask(signal.SIG_SETMASK, old)

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
            return 1 if take_grant(mem, off, node) else 0
        return self._critical(off, link)

    def dequeue(self, off: int, node: int) -> int:
        """completion_dequeue(): 1 it had been granted a count, 0 taken off without."""
        mem = self.mem

        def unlink(me: int) -> int:
            if take_grant(mem, off, node):
                return 1
            if mem.load64(node + N.comp) == off:
                self._unlink(off, node)
            return 0
        return self._critical(off, unlink)


# -- the node table: one node per possible thread id -------------------------------

class _Node:
    """This thread's node; marked free when the thread (or its runtime) ends."""

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


def thread_node(arena: Arena, dequeue: Callable[[int, int], int],
                complete: Callable[[int, bool], int]) -> int:
    """The calling thread's node (its arena offset): the node of its thread id.

    Thread ids are unique among live threads and below PID_MAX_LIMIT, so every
    thread that can sleep has a node and no two live threads share one.  A
    node whose earlier thread (same id) belonged to a process that died while
    queued is unlinked first (``dequeue``); a count granted to it and never
    taken is passed on (``complete``).
    Context: any thread of a runtime process.  Return: the offset.
    Raises: RuntimeError for a thread id at or above PID_MAX_LIMIT (none exists).
    """
    mine: _Node | None = getattr(_local, "node", None)
    if mine is not None and mine.arena is arena and mine.pid == os.getpid():
        return mine.off
    tid = threading.get_native_id()
    if not 0 < tid < arena.params.max_swait:
        raise RuntimeError(f"thread id {tid} is outside 1..{arena.params.max_swait - 1}")
    off = arena.params.swait + tid * N.size
    mem = arena.mem
    comp = mem.load64(off + N.comp)
    if comp and dequeue(comp, off):
        complete(comp, False)
    mem.store32(off + N.granted, 0)
    mem.store32(off + N.owner, os.getpid())
    _local.node = _Node(arena, off)
    return off
