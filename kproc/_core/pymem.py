"""Pure-Python stand-in for ``kproc._native.Mem`` (portable fallback).

Used with the posix backend when the C extension is not built (or with
``KPROC_NATIVE=0``), in whichever process opened the arena.  Every "atomic"
operation takes one arena-wide lock: a ``threading.Lock`` (threads of this
process) plus an ``fcntl`` record lock on byte 0 of the arena's memfd (other
processes).  Record locks are released by the kernel when their holder dies,
so this lock survives a SIGKILL of its holder, as the robust pthread mutex of
the native path does.  Slow (two syscalls per operation) but correct.
``mutex_*`` use a record lock on the mutex's first byte in the same way, and
remember which thread holds each, so that a caller can be checked.

The kthread_worker list primitives (``wl_setup``, ``wl_link_before``,
``wl_unlink``, ``wl_pop``, ``wl_fire_timers``) are those of native/worklist.c
and native/wl_methods.c, with the same arguments, results and exceptions (the
documentation is there); they run under the worker lock, held by the caller.
What C compiles in, the fast paths ``wq_setup``/``work_queue``/``work_pop``,
is absent here on purpose: kproc feature-detects it.
"""

from __future__ import annotations

import fcntl
import operator
import os
import struct
import threading
import time

from .syscalls import block_async_signals, restore_signal_mask, signal_mask

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable, Mapping
    from typing import TypeVar

    R = TypeVar("R")

__all__ = ["PyMem", "PyMutexGuard"]

_U32 = struct.Struct("=I")
_I64 = struct.Struct("=q")

# The fields the list primitives read: layout name -> (attribute, bound, width).
# As LIST_FIELDS in native/kproc_native.h: a field of a slot must lie wholly
# inside it (the slot's size is the bound field), naturally aligned.
_WL_FIELDS: dict[str, tuple[str, str | None, int]] = {
    "WORK.base": ("works", None, 0), "WORK.stride": ("stride", None, 0),
    "WORK.count": ("count", None, 0), "WORKER.size": ("ksize", None, 0),
    "WORKER.lock": ("lock", "WORKER.size", 8), "WORKER.head": ("head", "WORKER.size", 4),
    "WORKER.tail": ("tail", "WORKER.size", 4), "WORKER.depth": ("depth", "WORKER.size", 4),
    "WORKER.thead": ("thead", "WORKER.size", 4), "WORKER.ttail": ("ttail", "WORKER.size", 4),
    "WORKER.ndelayed": ("ndelayed", "WORKER.size", 4),
    "WORK.kind": ("kind", "WORK.stride", 4), "WORK.where": ("where", "WORK.stride", 4),
    "WORK.prev": ("prev", "WORK.stride", 4), "WORK.next": ("next", "WORK.stride", 4),
    "WORK.canceling": ("canceling", "WORK.stride", 4),
    "WORK.flushers": ("flushers", "WORK.stride", 4),
    "WORK.expires": ("expires", "WORK.stride", 8),
    "ON_NONE": ("on_none", None, 0), "ON_WORKLIST": ("on_worklist", None, 0),
    "ON_TIMER": ("on_timer", None, 0), "WK_FLUSH": ("wk_flush", None, 0),
}


class _Lists:
    """What ``wl_setup`` learnt: an attribute per field, and the two lists by ``where``."""

    __slots__ = tuple(attr for attr, _, _ in _WL_FIELDS.values()) + ("by_where",)

    on_none: int
    on_worklist: int
    on_timer: int
    wk_flush: int
    works: int
    stride: int
    count: int
    ksize: int
    lock: int
    head: int
    tail: int
    depth: int
    thead: int
    ttail: int
    ndelayed: int
    kind: int
    where: int
    prev: int
    next: int
    canceling: int
    flushers: int
    expires: int
    by_where: dict[int, tuple[int, int, int]]

    def __init__(self, values: Mapping[str, int]) -> None:
        for name, (attr, _, _) in _WL_FIELDS.items():
            setattr(self, attr, values[name])
        # where -> (head, tail, counter) fields of WORKER
        self.by_where = {self.on_worklist: (self.head, self.tail, self.depth),
                         self.on_timer: (self.thead, self.ttail, self.ndelayed)}


class PyMem:
    """Lock-based atomics over a writable buffer backed by file descriptor ``fd``."""

    MUTEX_SIZE = 8

    def __init__(self, buf: mmap.mmap, fd: int) -> None:
        self.buf = buf
        self.fd = fd
        self.size = len(buf)
        self._tlock = threading.Lock()
        self._mutex_tlocks: dict[int, threading.Lock] = {}
        self._mutex_owner: dict[int, int] = {}  # mutex offset -> thread ident holding it
        self._wl: _Lists | None = None          # once wl_setup() succeeded

    def _locked(self, fn: Callable[[], R]) -> R:
        with self._tlock:
            fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, 0, os.SEEK_SET)
            try:
                return fn()
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, 0, os.SEEK_SET)

    def _check(self, off: int, width: int) -> None:
        if off < 0 or off + width > self.size or off % width:
            raise ValueError(f"offset {off} out of bounds or misaligned")

    def load32(self, off: int, /) -> int:
        self._check(off, 4)
        value: int = _U32.unpack_from(self.buf, off)[0]
        return value

    def store32(self, off: int, value: int, /) -> None:
        self._check(off, 4)
        self._locked(lambda: _U32.pack_into(self.buf, off, value & 0xFFFFFFFF))

    def _rmw32(self, off: int, fn: Callable[[int], int]) -> int:
        self._check(off, 4)

        def op() -> int:
            old: int = _U32.unpack_from(self.buf, off)[0]
            _U32.pack_into(self.buf, off, fn(old) & 0xFFFFFFFF)
            return old
        return self._locked(op)

    def xchg32(self, off: int, value: int, /) -> int:
        return self._rmw32(off, lambda old: value)

    def cmpxchg32(self, off: int, expected: int, new: int, /) -> int:
        return self._rmw32(off, lambda old: new if old == expected else old)

    def fetch_add32(self, off: int, delta: int, /) -> int:
        return self._rmw32(off, lambda old: old + delta)

    def fetch_or32(self, off: int, mask: int, /) -> int:
        return self._rmw32(off, lambda old: old | mask)

    def fetch_and32(self, off: int, mask: int, /) -> int:
        return self._rmw32(off, lambda old: old & mask)

    def load64(self, off: int, /) -> int:
        self._check(off, 8)
        value: int = _I64.unpack_from(self.buf, off)[0]
        return value

    def store64(self, off: int, value: int, /) -> None:
        self._check(off, 8)
        self._locked(lambda: _I64.pack_into(self.buf, off, value))

    def fetch_add64(self, off: int, delta: int, /) -> int:
        self._check(off, 8)

        def op() -> int:
            old: int = _I64.unpack_from(self.buf, off)[0]
            _I64.pack_into(self.buf, off, old + delta)
            return old
        return self._locked(op)

    def release(self) -> bool:
        """Drop nothing (no buffer export is kept): the mapping may be closed."""
        return True

    def mutex_init(self, off: int, /) -> None:
        self._check(off, 4)

    def mutex_lock(self, off: int, /, timeout_ns: int = -1, spin_ns: int = 0) -> int:
        deadline = None if timeout_ns < 0 else time.monotonic() + timeout_ns / 1e9
        tlock = self._mutex_tlocks.setdefault(off, threading.Lock())
        wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not tlock.acquire(timeout=wait):
            return 2
        while True:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, off, os.SEEK_SET)
                self._mutex_owner[off] = threading.get_ident()
                return 0
            except OSError:
                if deadline is not None and time.monotonic() >= deadline:
                    tlock.release()
                    return 2
                time.sleep(0.0002)

    def mutex_unlock(self, off: int, /) -> None:
        self._mutex_owner.pop(off, None)
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, off, os.SEEK_SET)
        self._mutex_tlocks[off].release()

    # -- the kthread_worker lists (native/worklist.c) ---------------------------------

    def wl_setup(self, layout: Mapping[str, int], /) -> None:
        """Learn where the work lists live from ``layout``, the dict of native_layout()."""
        if not isinstance(layout, dict):
            raise TypeError("wl_setup() needs the dict of kproc/_core/layout.py "
                            f"native_layout(), not {type(layout).__name__}")
        self._wl = None
        values: dict[str, int] = {}
        for name in _WL_FIELDS:
            if name not in layout:
                raise KeyError(f"wl_setup(): the layout has no {name!r} (kproc/_core/"
                               "layout.py native_layout() gives every field C reads)")
            values[name] = operator.index(layout[name])
            if values[name] < 0:
                raise ValueError(f"wl_setup(): {name!r} is negative ({values[name]})")
        self._check_fields(values)
        self._wl = _Lists(values)

    def _check_fields(self, v: Mapping[str, int]) -> None:
        for name, (_, bound, width) in _WL_FIELDS.items():
            if bound is not None and (v[name] % width or v[name] + width > v[bound]):
                raise ValueError(f"wl_setup(): {name!r} ({v[name]}) is not a {width}-aligned "
                                 f"field of {width} bytes inside {bound!r} ({v[bound]})")
        base, stride, count = v["WORK.base"], v["WORK.stride"], v["WORK.count"]
        if stride <= 0 or stride % 8 or base % 8 or base + count * stride > self.size:
            raise ValueError("wl_setup(): tables beyond the buffer (or strides not "
                             "positive multiples of 8, or bases misaligned)")
        if v["ON_NONE"] != 0 or not v["ON_WORKLIST"] or not v["ON_TIMER"] or \
                v["ON_WORKLIST"] == v["ON_TIMER"]:
            raise ValueError("wl_setup(): ON_NONE must be 0 and ON_WORKLIST, ON_TIMER "
                             "two other values")

    def _worker(self, kbase: int, fname: str) -> _Lists:
        """The set-up layout, once ``kbase`` is a worker whose lock this thread holds."""
        wl = self._wl
        if wl is None:
            raise RuntimeError(f"{fname}() before wl_setup() or wq_setup()")
        kbase = operator.index(kbase)
        if kbase < 0 or kbase + wl.ksize > self.size or kbase % 8:
            raise ValueError(f"offset {kbase}: a worker there is out of bounds or misaligned")
        if self._mutex_owner.get(kbase + wl.lock) != threading.get_ident():
            raise RuntimeError(f"{fname}(): the worker lock is not held by this thread "
                               "(take it with mutex_lock() first)")
        return wl

    def _list(self, wl: _Lists, where: int, fname: str) -> tuple[int, int, int]:
        lst = wl.by_where.get(operator.index(where))
        if lst is None:
            raise ValueError(f"{fname}(): list {where} is neither ON_WORKLIST "
                             f"({wl.on_worklist}) nor ON_TIMER ({wl.on_timer})")
        return lst

    def _slot(self, wl: _Lists, idx: int, fname: str) -> int:
        """Offset of work slot ``idx`` (index + 1).  Raises: ValueError."""
        idx = operator.index(idx)
        if not 1 <= idx <= wl.count:
            raise ValueError(f"{fname}(): {idx} is not a work slot (index + 1, 1..{wl.count})")
        return wl.works + (idx - 1) * wl.stride

    def _link(self, wl: _Lists, kbase: int, idx1: int) -> int:
        """Offset of the work a link names, or RuntimeError: the lists are corrupt."""
        if not 1 <= idx1 <= wl.count:
            raise RuntimeError(f"the lists of the worker at offset {kbase} are corrupt "
                               "(a link is not a work slot)")
        return wl.works + (idx1 - 1) * wl.stride

    def _counted(self, wl: _Lists, where: int, off: int) -> bool:
        """Counted on list ``where``: all but a flush marker on the work list."""
        return where == wl.on_timer or self.load32(off + wl.kind) != wl.wk_flush

    def wl_link_before(self, kbase: int, where: int, idx: int, before: int, /) -> None:
        """Link work ``idx`` before ``before`` (0: at the tail) of list ``where``."""
        wl = self._worker(kbase, "wl_link_before")
        lst = self._list(wl, where, "wl_link_before")
        off = self._slot(wl, idx, "wl_link_before")
        boff = self._slot(wl, before, "wl_link_before") if before else 0
        if self.load32(off + wl.where):
            raise ValueError(f"wl_link_before(): work {idx} is already on a list")
        if before and self.load32(boff + wl.where) != where:
            raise ValueError(f"wl_link_before(): work {before} is not on list {where}")
        if where == wl.on_timer and self.load32(off + wl.kind) == wl.wk_flush:
            raise ValueError(f"wl_link_before(): flush marker {idx} on the timer list")
        self._link_before(wl, kbase, lst, where, idx, off, before,
                          self._counted(wl, where, off))

    def _link_before(self, wl: _Lists, kbase: int, lst: tuple[int, int, int], where: int,
                     idx: int, off: int, before: int, counted: bool) -> None:
        head, tail, count = lst
        if before:
            boff = self._link(wl, kbase, before)
            prev = self.load32(boff + wl.prev)
        else:
            prev = self.load32(kbase + tail)
        poff = self._link(wl, kbase, prev) if prev else 0
        self.store32(off + wl.next, before)
        self.store32(off + wl.prev, prev)
        self.store32(boff + wl.prev if before else kbase + tail, idx)
        self.store32(poff + wl.next if prev else kbase + head, idx)
        self.store32(off + wl.where, where)
        if counted:
            self.fetch_add32(kbase + count, 1)

    def wl_unlink(self, kbase: int, where: int, idx: int, /) -> None:
        """list_del_init() of work ``idx`` from list ``where``."""
        wl = self._worker(kbase, "wl_unlink")
        lst = self._list(wl, where, "wl_unlink")
        off = self._slot(wl, idx, "wl_unlink")
        if self.load32(off + wl.where) != where:
            raise ValueError(f"wl_unlink(): work {idx} is not on list {where}")
        head, tail, count = lst
        prev, nxt = self.load32(off + wl.prev), self.load32(off + wl.next)
        poff = self._link(wl, kbase, prev) if prev else 0
        noff = self._link(wl, kbase, nxt) if nxt else 0
        counted = self._counted(wl, where, off)
        self.store32(poff + wl.next if prev else kbase + head, nxt)
        self.store32(noff + wl.prev if nxt else kbase + tail, prev)
        self.store32(off + wl.prev, 0)
        self.store32(off + wl.next, 0)
        self.store32(off + wl.where, 0)
        if counted:
            self.fetch_add32(kbase + count, -1)

    def wl_pop(self, kbase: int, /) -> int:
        """The head of the work list, unlinked (index + 1), or 0 if it is empty."""
        wl = self._worker(kbase, "wl_pop")
        head = self.load32(kbase + wl.head)
        if head:
            lst = wl.by_where[wl.on_worklist]
            hoff = self._link(wl, kbase, head)
            self._pop_head(wl, kbase, lst, hoff, self._counted(wl, wl.on_worklist, hoff))
        return head

    def _pop_head(self, wl: _Lists, kbase: int, lst: tuple[int, int, int], hoff: int,
                  counted: bool) -> None:
        head, tail, count = lst
        nxt = self.load32(hoff + wl.next)
        noff = self._link(wl, kbase, nxt) if nxt else 0
        self.store32(kbase + head, nxt)
        self.store32(noff + wl.prev if nxt else kbase + tail, 0)
        self.store32(hoff + wl.next, 0)
        self.store32(hoff + wl.where, 0)
        if counted:
            self.fetch_add32(kbase + count, -1)

    def wl_fire_timers(self, kbase: int, now: int, /) -> tuple[int, int]:
        """Every timer expired by ``now`` onto the work list.  Return (fired, stopped)."""
        wl = self._worker(kbase, "wl_fire_timers")
        now = operator.index(now)
        works, timers = wl.by_where[wl.on_worklist], wl.by_where[wl.on_timer]
        fired = 0
        while True:
            t = self.load32(kbase + wl.thead)
            if not t:
                return fired, 0
            toff = self._link(wl, kbase, t)
            if self.load64(toff + wl.expires) > now:
                return fired, 0
            canceling = self.load32(toff + wl.canceling)
            flushers = self.load32(toff + wl.flushers)
            if canceling and flushers:
                return fired, t
            self._pop_head(wl, kbase, timers, toff, True)
            if canceling:
                continue
            self._link_before(wl, kbase, works, wl.on_worklist, t, toff, 0, True)
            fired += 1
            if flushers:
                self._queue_flushers(wl, kbase, works, toff, flushers)

    def _queue_flushers(self, wl: _Lists, kbase: int, works: tuple[int, int, int],
                        toff: int, m: int) -> None:
        self.store32(toff + wl.flushers, 0)
        while m:
            moff = self._link(wl, kbase, m)
            older = self.load32(moff + wl.next)
            self._link_before(wl, kbase, works, wl.on_worklist, m, moff,
                              self.load32(toff + wl.next), False)
            m = older


class PyMutexGuard:
    """``kproc._native.MutexGuard`` without the extension: ``with`` on the mutex at ``off``.

    __exit__ unlocks, then calls ``self._unlocked()`` if a subclass defines
    it.  The C guard takes the lock with no Python in between, so a signal
    handler that raises (Ctrl-C) cannot leave it held; here Python runs
    between the lock and the block, so asynchronous signals are deferred
    while the lock changes hands, and a handler that raises as they are
    restored, the lock taken, releases it before the exception goes on.
    """

    __slots__ = ("_mem", "_off", "_spin", "_held", "recovered")

    def __init__(self, mem: PyMem, off: int, spin_ns: int = 0) -> None:
        self._mem, self._off, self._spin, self._held = mem, off, spin_ns, False
        self.recovered = False

    def __enter__(self) -> PyMutexGuard:
        mask = signal_mask()
        block_async_signals(mask)          # a handler due now raises with nothing held
        try:
            self.recovered = self._mem.mutex_lock(self._off, -1, self._spin) == 1
            self._held = True
        finally:
            if not self._held:
                restore_signal_mask(mask)
        try:
            restore_signal_mask(mask)      # deferred handlers run here, the lock held
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        mask = signal_mask()
        block_async_signals(mask)
        try:
            self._release()
        finally:
            restore_signal_mask(mask)      # after the unlock: nothing leaks
        hook = getattr(self, "_unlocked", None)
        if hook is not None:
            hook()

    def _release(self) -> None:
        self._held = False
        self._mem.mutex_unlock(self._off)
