"""Wait backends: how a process sleeps on a 32-bit word of the arena.

Two backends share one interface (kernel analogue: the wait-queue / futex
layer under ``schedule()`` and ``wait_for_completion()``):

* :class:`FutexWaits` (``"futex"``, the default where ``kproc._native`` is
  built): spin briefly on the word, then ``FUTEX_WAIT``; completions are
  acquired and completed in C.
* :class:`PosixWaits` (``"posix"``): named POSIX semaphores (``posix_ipc``)
  used as a small hashed table of wait channels, like the kernel's hashed
  wait-queue table.  A waiter registers in its channel, re-checks the word and
  sleeps on the channel's semaphore; a waker changes the word first, then
  posts once per registered waiter.  Waiters of other words sharing a channel
  wake spuriously and sleep again.  A post is not addressed, so a waiter
  arriving after a wake could take the post made for one asleep before it,
  and that one slept on to its next slice (100 ms): each channel word
  therefore holds the waiter count (low 16 bits) and a wake generation (high
  16 bits), moved together atomically, and a waiter leaving its channel
  keeps exactly the posts of the wakes that counted it: it gives back one
  it took uncounted and takes the ones it was counted for but did not
  consume (kernel analogue: futex_wake() wakes only waiters of its key).

Both are free of lost wake-ups by the same Dekker pairing: the sleeper
publishes itself (``sleepers``/channel count) and then reads the word; the
waker writes the word and then reads the sleeper count.  Sequentially
consistent atomics guarantee that at least one side sees the other.

Completions: a waiter first tries and spins on ``done`` (``completion_wait``
with no sleep), then queues itself (``completion_enqueue``) and sleeps on its
own node's word until ``complete()`` grants it a count, first in, first out
(``_core/swait.py``, ``native/swait.c``); ``completion_dequeue`` takes it
off the queue when it gives up.

Return conventions (shared): ``wait`` -> True (changed or woken) / False
(timeout); ``completion_wait`` -> 1 acquired, 0 timeout, 2 woken without
acquiring (re-check and call again); ``completion_enqueue`` -> 1 acquired,
0 queued; ``completion_dequeue`` -> 1 it had been granted, 0 not.
"""

from __future__ import annotations

import os
import signal
import time

from .checks import env_number
from .layout import COMPLETION, HEADER
from .semaphores import POSIX_CHANNELS, SemaphoreUsers
from .swait import PySwait, sigmask
from .topology import parse_cpulist

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Set
    from typing import Literal

    import posix_ipc

    from .._native import Mem  # typing only: the extension may be missing at run time
    from .memlike import MemLike  # typing only

    # ``f(off, snap, timeout_ns, spin_ns, gen_off, gen)``: one completion_wait
    # with the generation check (-1: stale), as the hot path calls it.
    RawWait = Callable[[int, int, int, int, int, int], int]

__all__ = ["FutexWaits", "PosixWaits", "POSIX_CHANNELS", "default_spin_ns"]

COUNT_BITS = 16                 # a posix channel word: waiters | wake generation << 16
COUNT_MASK = (1 << COUNT_BITS) - 1
GEN_ONE = 1 << COUNT_BITS
CLOSED_NAP_S = 0.001            # a wait after close() sleeps this long instead of spinning
OWED_POST_NS = 100_000_000      # a waker posts right after counting: wait this long at most
UINT_MAX = 0xFFFFFFFF
SIGNAL_SLICE_NS = 100_000_000
_BLOCKED = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV,
                                     signal.SIGBUS, signal.SIGFPE, signal.SIGILL}


def default_spin_ns() -> int:
    """Spin budget before sleeping: ``KPROC_SPIN_US`` or 50 µs, 0 on one CPU.

    Spinning pays only when waker and waiter can run at the same time: on a
    VM a futex wake of a halted vCPU costs ~40 µs, a spin hand-off ~0.1 µs.
    With a single online CPU spinning only delays the peer.  (The caller's
    own affinity does not matter: a caller pinned to CPU 0 talking to a
    kthread on CPU 1 is exactly the case spinning is for.)
    """
    env = env_number("KPROC_SPIN_US")
    if env is not None:
        return int(env * 1000)
    if len(os.sched_getaffinity(0) | _online_cpus()) < 2:
        return 0
    return 50_000


def _online_cpus() -> Set[int]:
    try:
        with open("/sys/devices/system/cpu/online") as f:
            text = f.read()
    except OSError:
        return set()
    return parse_cpulist(text)


class FutexWaits:
    """The futex backend (needs ``kproc._native``)."""

    name: Literal["futex"] = "futex"

    def __init__(self, mem: Mem, spin_ns: int) -> None:
        self.mem = mem
        self.spin_ns = spin_ns
        self._wait_change = mem.wait_change
        self.completion_try = mem.completion_try
        self.completion_done = mem.completion_done
        self.completion_complete = mem.completion_complete
        self.completion_enqueue = mem.completion_enqueue
        self.completion_dequeue = mem.completion_dequeue

    def wait(self, off: int, expected: int, timeout_ns: int, spin: bool = True) -> bool:
        """Sleep while the word at ``off`` equals ``expected``."""
        return self._wait_change(off, expected, timeout_ns,
                                 self.spin_ns if spin else 0) == 0

    def wake(self, off: int, n: int = 0x7FFFFFFF) -> None:
        """Wake up to ``n`` sleepers of the word at ``off``."""
        self.mem.futex_wake(off, n)

    def completion_wait(self, off: int, snap: int, timeout_ns: int) -> int:
        """One attempt at acquiring the completion at ``off`` (see module doc)."""
        return self.mem.completion_wait(off, snap, timeout_ns, self.spin_ns)

    def raw_completion_wait(self) -> RawWait:
        """``f(off, snap, timeout_ns, spin_ns, gen_off, gen)`` for the hot path."""
        return self.mem.completion_wait

    def close(self) -> None:
        pass

    def in_use(self) -> bool:
        """Whether a thread of this process sleeps outside the Mem's own calls: never
        here (the native Mem itself keeps its mapping while one of its calls sleeps)."""
        return False


class PosixWaits:
    """The POSIX-semaphore backend: hashed wait channels over ``posix_ipc``.

    The hot path makes no system call the raw semaphore does not: a wait
    tries, then spins on the word for ``spin_ns`` (the futex backend's
    budget, read from the arena header; in C with the GIL released where
    ``kproc._native`` is built, else in Python), and only then registers in
    its channel and sleeps; a waker posts only when its channel has a
    registered sleeper.  A zero timeout never touches the semaphore.
    """

    name: Literal["posix"] = "posix"

    def __init__(self, mem: MemLike, semaphores: list[posix_ipc.Semaphore],
                 waiters_off: int, spin_ns: int | None = None) -> None:
        import posix_ipc      # only the posix backend needs it; cached for the hot path
        self.mem = mem
        self.spin_ns = mem.load32(HEADER.spin_ns) if spin_ns is None else spin_ns
        self.sems = semaphores
        self._channels = len(semaphores)
        self.waiters_off = waiters_off
        users = SemaphoreUsers(semaphores)
        self._users = users
        self._enter, self._leave = users.enter, users.leave
        self._busy = posix_ipc.BusyError
        # The C spins of the futex backend, where the extension is built: they
        # only read the arena (timeout 0: spin, never sleep, no system call).
        self._c_spin_word: Callable[[int, int, int, int], int] | None = \
            getattr(mem, "wait_change", None)
        self._c_spin_comp: Callable[[int, int, int, int], int] | None = \
            getattr(mem, "completion_wait", None)
        # The queue: in C under the GIL where the extension is built (no signal
        # mask to set: no Python code runs inside; the granted nodes are posted
        # through ``wake`` after the lock is let go), else PySwait.
        self._c_complete: Callable[..., int] | None = getattr(mem, "completion_complete", None)
        c_enqueue: Callable[[int, int, Callable[[int], None]], int] | None = \
            getattr(mem, "completion_enqueue", None)
        swait = PySwait(mem, self.wake)
        self._settle = swait.settle
        if c_enqueue is not None:
            wake = self.wake

            def enqueue(off: int, node: int) -> int:
                return c_enqueue(off, node, wake)
            self.completion_enqueue: Callable[[int, int], int] = enqueue
            self.completion_dequeue: Callable[[int, int], int] = \
                mem.completion_dequeue  # type: ignore[attr-defined]
        else:
            self.completion_enqueue = swait.enqueue
            self.completion_dequeue = swait.dequeue

    def _channel(self, off: int) -> int:
        return ((off >> 2) * 2654435761 >> 7) % self._channels

    def _spin_word(self, off: int, expected: int, spin_ns: int) -> bool:
        """Spin up to ``spin_ns`` while the word equals ``expected``: True if it changed."""
        if self._c_spin_word is not None:
            return self._c_spin_word(off, expected, 0, spin_ns) == 0
        load, clock = self.mem.load32, time.monotonic_ns
        end = clock() + spin_ns
        while True:
            for _ in range(16):
                if load(off) != expected:
                    return True
            if clock() >= end:
                return False

    def _spin_completion(self, off: int, snap: int, spin_ns: int) -> int:
        """Spin up to ``spin_ns`` on the completion: 1 acquired, 2 seq moved, 0 neither."""
        if self._c_spin_comp is not None:
            return self._c_spin_comp(off, snap, 0, spin_ns)
        load, clock = self.mem.load32, time.monotonic_ns
        seq_off = off + COMPLETION.seq
        end = clock() + spin_ns
        while True:
            for _ in range(16):
                if load(off) and self.completion_try(off):
                    return 1
                if load(seq_off) != snap:
                    return 1 if self.completion_try(off) else 2
            if clock() >= end:
                return 0

    def wait(self, off: int, expected: int, timeout_ns: int, spin: bool = True) -> bool:
        """Sleep while the word at ``off`` equals ``expected``.

        With ``spin`` the wait first spins for ``spin_ns`` (in full; the
        timeout bounds the sleep after it, as on the futex backend).
        posix_ipc runs Python signal handlers itself on EINTR and replaces any
        exception they raise (but KeyboardInterrupt) with its SignalError, so
        a handler's exception would be lost.  Signals are therefore blocked
        around the semaphore wait, which is cut into slices of at most
        SIGNAL_SLICE_NS: handlers run in Python, at most one slice late.
        A slice that ends reports a wake-up (callers re-check).
        """
        mem = self.mem
        if spin and self.spin_ns > 0 and self._spin_word(off, expected, self.spin_ns):
            return True
        if timeout_ns == 0:
            return mem.load32(off) != expected
        ch = self._channel(off)
        count_off = self.waiters_off + 4 * ch
        gen = mem.fetch_add32(count_off, 1) >> COUNT_BITS
        took = 0
        try:
            if mem.load32(off) != expected:
                return True
            sliced = timeout_ns < 0 or timeout_ns > SIGNAL_SLICE_NS
            timeout = SIGNAL_SLICE_NS / 1e9 if sliced else timeout_ns / 1e9
            if not self._enter():
                time.sleep(min(timeout, CLOSED_NAP_S))   # closed: callers re-check, not spin
                return True
            old = sigmask(signal.SIG_BLOCK, _BLOCKED)
            try:
                self.sems[ch].acquire(timeout)
                took = 1
            except self._busy:
                return sliced or mem.load32(off) != expected
            finally:
                sigmask(signal.SIG_SETMASK, old)
                self._leave()
            return True
        finally:
            counted = ((mem.fetch_add32(count_off, -1) >> COUNT_BITS) - gen) & COUNT_MASK
            if counted != took:
                self._settle_posts(ch, counted - took)

    def _settle_posts(self, ch: int, owed: int) -> None:
        """A waiter leaving channel ``ch`` keeps the posts of the wakes that counted
        it: ``owed`` < 0 gives back one taken that was someone else's (and lets
        them run), ``owed`` > 0 takes those made for it that it did not consume
        (so none is left for a waiter that no wake counted)."""
        if not self._enter():
            return
        sem = self.sems[ch]
        if owed < 0:
            try:
                sem.release()
            finally:
                self._leave()
            os.sched_yield()
            return
        old = sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            for _ in range(owed):
                sem.acquire(OWED_POST_NS / 1e9)
        except self._busy:
            pass              # its waker died between counting and posting
        finally:
            sigmask(signal.SIG_SETMASK, old)
            self._leave()

    def wake(self, off: int, n: int = 0x7FFFFFFF) -> None:
        """Post once per sleeper registered in ``off``'s channel (none: no system call)."""
        mem = self.mem
        ch = self._channel(off)
        count_off = self.waiters_off + 4 * ch
        if not mem.load32(count_off) & COUNT_MASK:
            return            # a waiter registering now sees the word changed
        waiters = mem.fetch_add32(count_off, GEN_ONE) & COUNT_MASK
        if not self._enter():
            return            # this process's runtime is shut down
        try:
            release = self.sems[ch].release
            for _ in range(waiters):
                release()
        finally:
            self._leave()

    def completion_try(self, off: int) -> bool:
        """try_wait_for_completion on the record at ``off``."""
        mem = self.mem
        while True:
            done = mem.load32(off)
            if done == UINT_MAX:
                return True
            if done == 0:
                return False
            if mem.cmpxchg32(off, done, done - 1) == done:
                return True

    def completion_done(self, off: int) -> bool:
        """completion_done on the record at ``off``: a count is there, or granted to a
        queued waiter that has not taken it yet (the kernel's ``done`` until it runs)."""
        mem = self.mem
        return mem.load32(off) != 0 or mem.load32(off + COMPLETION.granted) != 0

    def completion_complete(self, off: int, all: bool = False, gen_off: int = -1,
                            gen: int = 0) -> int:
        """complete / complete_all on the record at ``off``.

        Return: 0; -1 (nothing done) if the u32 at ``gen_off`` is not ``gen``.
        """
        mem = self.mem
        if self._c_complete is not None:
            if self._c_complete(off, all, gen_off, gen, self.wake) < 0:
                return -1
            self.wake(off + COMPLETION.seq)
            return 0
        if gen_off >= 0 and mem.load32(gen_off) != gen:
            return -1
        if all:
            mem.store32(off, UINT_MAX)
        else:
            while True:
                done = mem.load32(off)
                if done >= UINT_MAX - 1:
                    break
                if mem.cmpxchg32(off, done, done + 1) == done:
                    break
        mem.fetch_add32(off + COMPLETION.seq, 1)
        self.wake(off + COMPLETION.seq)
        if mem.load32(off + COMPLETION.head):
            self._settle(off)
        return 0

    def raw_completion_wait(self) -> RawWait:
        """``f(off, snap, timeout_ns, spin_ns, gen_off, gen)`` for the hot path."""
        return self._checked_wait

    def _checked_wait(self, off: int, snap: int, timeout_ns: int, spin_ns: int = 0,
                      gen_off: int = -1, gen: int = 0) -> int:
        mem = self.mem
        if gen_off >= 0 and mem.load32(gen_off) != gen:
            return -1
        if snap < 0:
            snap = mem.load32(off + COMPLETION.seq)
        if self.completion_try(off):
            return 1
        if spin_ns > 0 and (rc := self._spin_completion(off, snap, spin_ns)) != 0:
            return rc
        if timeout_ns == 0:
            return 2 if mem.load32(off + COMPLETION.seq) != snap else 0
        return self.completion_wait(off, snap, timeout_ns)

    def completion_wait(self, off: int, snap: int, timeout_ns: int) -> int:
        """One attempt at acquiring the completion at ``off`` (see module doc)."""
        if self.completion_try(off):
            return 1
        woken = self.wait(off + COMPLETION.seq, snap, timeout_ns, spin=False)
        if self.completion_try(off):
            return 1
        return 2 if woken else 0

    def in_use(self) -> bool:
        """Whether a thread of this process is inside a semaphore call: it will touch
        the arena again when the call returns, so the mapping must stay."""
        return self._users.busy()

    def close(self) -> None:
        """Close the semaphores (shutdown), now or as the last thread using them leaves."""
        self._users.close()
