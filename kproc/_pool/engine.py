"""The caller's side of a pool: call slots, dispatch, reaping, cancel, moving calls.

A pool has ``S`` call slots per worker (``channel``), each with its own
``KthreadWork`` (tied to that worker for good) and ``Completion``.  A call
the caller makes is a :class:`Call`; it waits in ``backlog`` until a slot is
free on a worker that is not parked, then is written into the slot and its
work queued (``kthread_queue_work``).  Whichever thread of the caller first
sees the slot DONE -- a ``result()`` waiting on it (``direct.wait_direct``)
or the collector thread (``collector``) -- reaps it under ``lock``: the
outcome is read, the slot freed and the next backlog call placed in it; the
outcome is then decoded and delivered with the lock dropped (a done-callback
may call the pool again).

Choice of worker: among workers that are not parked and have a free slot,
the one with the fewest calls in flight; among idle ones, preferably one not
on the CPU the caller runs on (the caller is about to wait, and a waiter
spinning on the worker's own CPU only delays it).  A worker whose kthread is
asked to park (its CPU going down) gets no new call, and the calls queued on
it are moved to the others (``collector.move_from_parked``).

A map's calls placed together (``map()``, an iterator reaping several) are
a batch (``batch_locked``): each worker's drain work is queued once, at its
end (a drain woken per call ends before the next is placed).  A map's
iterator that reaps feeds its map's calls to the workers off its own CPU
only (``spare``), until it is about to sleep (``direct.wait_direct``).

Races prevented: a slot's state word decides between a cancel and the
worker starting the call (``channel``); a slot is reaped only by the thread
that finds it still holding its call under ``lock``; the direct waiter
announces itself (``SLOT.direct``) before it looks at the state, and kicks
the collector whenever it leaves without reaping, so a DONE slot is never
left for nobody.  Runs in the caller (any of its threads).
"""

from __future__ import annotations

import collections
import contextlib
import os
from concurrent.futures import CancelledError
import threading
from typing import Any

from .._core import layout as L
from .._core import trace as _trace
from .._core.errors import KthreadError
from .._core.runtime import Runtime
from .._sched.task import Task
from .._sched.completion import Completion, complete
from .._workqueue.cancel import kthread_cancel_work_sync
from .._workqueue.fastpath import fast_paths, lock_spin_ns
from .._workqueue.handles import KthreadWork, KthreadWorker
from .._workqueue.lists import wake_worker
from .._workqueue.queue import kthread_queue_work
from .channel import (CANCELLED, DRAIN, FREE, HEADER, INLINE_MAX, QUEUED, SLOT, SLOT_SIZE,
                      PoolMemory, close_fd, put_big, take_big)
from .call import Call
from .codec import OUT_EXC, OUT_NONE, decode_outcome
from .errors import BrokenKthreadPool
from .remote import KIND_INIT, KIND_MAP, DrainRef, SlotRef, run_drain, run_slot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["Engine", "TICK_NS", "current_cpu", "task_of"]


def task_of(worker: KthreadWorker) -> Task:
    """The kthread serving a pool worker.  Raises: KthreadError(ESRCH) if it has none."""
    if (task := worker.task) is None:
        raise KthreadError(3, "the pool worker has no kthread")
    return task


TICK_NS = 100_000_000           # how often a direct wait checks the runtime
T = L.TASK
_RETURNED_NONE: tuple[bool, Any] = (False, None)

_getcpu: Callable[[], int] | None
try:
    from .._native import getcpu as _getcpu   # optional extension: detected here
except ImportError:             # no extension: no CPU preference
    _getcpu = None


def current_cpu() -> int:
    """The CPU this thread runs on, or -1 where the extension is not built."""
    return _getcpu() if _getcpu is not None else -1


class Engine:
    """The shared state of one pool in the process that created it."""

    def __init__(self, rt: Runtime, workers: list[KthreadWorker], cpus: list[int],
                 per_worker: int) -> None:
        self.rt = rt
        self.lock = threading.Lock()
        # a map's iterator whose next call waits in the backlog sleeps here
        self.placed = threading.Condition(self.lock)
        self.place_waiters = 0
        self.workers = workers
        self.cpus = cpus
        self.flags_off = [rt.arena.task_off(task_of(w)._idx) + T.flags for w in workers]
        n = len(workers) * per_worker
        self.per = per_worker
        self.pm = PoolMemory.create(n, len(workers))
        self.kick = Completion()
        self.comps = [Completion() for _ in range(n)]
        self.comp_off = [c._off for c in self.comps]
        self.slot_worker = [s // per_worker for s in range(n)]
        # a work per slot, then one drain work per worker (its map calls: remote.run_drain)
        self.works = [KthreadWork(run_slot, SlotRef(self.pm.key, s, self.comps[s], self.kick))
                      for s in range(n)]
        self.works += [KthreadWork(run_drain, DrainRef(self.pm.key, w, w * per_worker,
                                                       tuple(self.comps[w * per_worker:
                                                                        (w + 1) * per_worker]),
                                                       workers[w]))
                       for w in range(len(workers))]
        self.nslots = n
        self.active_off = [PoolMemory.drain_off(w) + DRAIN.active for w in range(len(workers))]
        self.raw_wait = rt.waits.raw_completion_wait()
        self.cq = fast_paths(rt)[0]
        self.wake_in_c = rt.waits.name == "futex"
        # the C kthread_queue_work()'s arguments per slot, once its work is tied
        self.fast_args: list[tuple[int, int, int, int, int, int, bool] | None] = \
            [None] * len(self.works)
        # each worker's slots are used in ring order; tail: the ticket of its next call
        self.tail = [1] * len(workers)
        self.inflight = [0] * len(workers)
        self.busy = 0           # calls in slots: sum(inflight)
        self.slot_call: list[Call | None] = [None] * n
        self.backlog: collections.deque[Call] = collections.deque()
        self.live = 0
        self.quiet = 0          # KIND_MAP calls in slots (the collector polls for them)
        self.broken: BaseException | None = None
        self.shutting = False
        self.here = -1          # the CPU last published in HEADER.caller_cpu
        # inside a batch (batch_locked): the workers whose drain work is still to queue
        self.deferred: list[int] | None = None

    # -- placing calls ----------------------------------------------------------

    def parked(self, w: int) -> bool:
        return bool(self.rt.mem.load32(self.flags_off[w]) & L.KF_SHOULD_PARK)

    def _pick(self, spare: bool = False) -> int:
        """The worker for the next call, or -1: none has room, all are parked, or
        (@spare) only those on the caller's CPU have room."""
        if self.busy >= self.nslots:
            return -1           # every slot holds a call: no ring has room
        best, here = -1, -1
        if _getcpu is not None:
            here = _getcpu()
            if here != self.here:       # for the drains (remote.run_drain)
                self.here = here
                self.pm.mem.store32(HEADER.caller_cpu, here + 1)
        load32, flags_off, slot_call, inflight, cpus = (self.rt.mem.load32, self.flags_off,
                                                        self.slot_call, self.inflight, self.cpus)
        per, tail = self.per, self.tail
        least = 0
        for w in range(len(flags_off)):
            if slot_call[w * per + tail[w] % per] is not None or \
                    load32(flags_off[w]) & L.KF_SHOULD_PARK or (spare and cpus[w] == here):
                continue
            load = inflight[w]
            if best < 0 or load < least or (load == least and cpus[best] == here and
                                            cpus[w] != here):
                best, least = w, load
        return best

    def submit_locked(self, call: Call) -> None:
        """Count ``call`` live and place it, or queue it behind the backlog.  Lock held."""
        self.live += 1
        if call.kind == KIND_INIT:
            self._place(call, call.worker)
        elif self.backlog or not self._feed_one(call):
            self.backlog.append(call)

    @contextlib.contextmanager
    def batch_locked(self) -> Iterator[None]:
        """Place many map calls, queueing each worker's drain work once, at the end.

        A drain woken for the first of them would otherwise run it alone and
        end before the next is placed (and a worker on the caller's CPU
        preempts the caller at each wake-up).  Lock held throughout.
        """
        if self.deferred is not None:
            yield               # nested: the outer batch queues
            return
        self.deferred = []
        try:
            yield
        finally:
            todo, self.deferred = self.deferred, None
            for w in todo:
                self._queue(w, self.nslots + w)

    def submit_many_locked(self, calls: list[Call]) -> None:
        """submit_locked() of each of ``calls``, in order.  Lock held."""
        self.live += len(calls)
        backlog = self.backlog
        i, n = 0, len(calls)
        if not backlog:             # not spare: map() may be all its caller does
            with self.batch_locked():
                while i < n and self._feed_one(calls[i]):
                    i += 1
        if i < n:
            backlog.extend(calls[i:] if i else calls)

    def _feed_one(self, call: Call, spare: bool = False) -> bool:
        if (w := self._pick(spare and call.kind == KIND_MAP)) < 0:
            return False
        self._place(call, w)
        return True

    def feed_locked(self, spare: bool = False) -> None:
        """Place backlog calls while a worker has room (@spare: see _pick).  Lock held."""
        backlog = self.backlog
        while backlog and self.busy < self.nslots:
            call = backlog[0]
            if call.finished or (call.future is not None and call.future.cancelled()):
                backlog.popleft()
                if not call.finished:
                    self._finished_locked(call)
                continue
            if not self._feed_one(call, spare):
                return
            backlog.popleft()
            if call.kind == KIND_MAP and self.place_waiters:
                self.placed.notify_all()

    def _place(self, call: Call, w: int) -> None:
        pm = self.pm
        ticket = self.tail[w]
        self.tail[w] = ticket + 1
        slot = w * self.per + ticket % self.per
        off = pm.slots_base + slot * SLOT_SIZE
        payload, kind = call.payload, call.kind
        if call.big is None and len(payload) > INLINE_MAX:
            call.big = put_big(payload)
            call.payload = b""
        big = call.big
        act = self.active_off[w] if kind == KIND_MAP else -1
        if big is None and (cmem := pm.cmem) is not None:  # reinit, call, QUEUED...: in C
            was = cmem.pool_place(off, kind, payload, ticket, act, self.rt.mem,
                                  self.comp_off[slot], self.flags_off[w], L.KF_SHOULD_PARK)
        else:
            self.rt.mem.store32(self.comp_off[slot], 0)      # reinit_completion()
            mem = pm.mem
            if big is not None:
                pm.write_body(off, kind, 0, big[2], (os.getpid(), big[0], big[1]))
            else:
                pm.write_call(off, kind, payload)
            mem.store32(off + SLOT.state, QUEUED)
            mem.store64(off + SLOT.ticket, ticket)     # after QUEUED: see remote.run_drain
            was = mem.xchg32(act, 1) if act >= 0 else 0
            if self.parked(w):
                was |= 2
        call.slot = slot
        self.slot_call[slot] = call
        self.inflight[w] += 1
        self.busy += 1
        if kind == KIND_MAP:
            self.quiet += 1
            if not was & 1:
                if self.deferred is not None:
                    self.deferred.append(w)         # queued at the batch's end
                else:
                    self._queue(w, self.nslots + w)     # the worker's drain work
        else:
            self._queue(w, slot)
        if was & 2:
            complete(self.kick)           # parking began meanwhile: have it moved

    def _queue(self, w: int, i: int) -> None:
        """kthread_queue_work() of ``works[i]``, through its C fast path when it takes it."""
        args = self.fast_args[i]
        cq = self.cq
        r = cq(*args) if cq is not None and args is not None and not _trace.ENABLED else -1
        if r < 0:
            kthread_queue_work(self.workers[w], self.works[i])
            worker, work = self.workers[w], self.works[i]
            if self.cq is not None and self.wake_in_c:
                self.fast_args[i] = (worker._off, work._off, worker._idx + 1,
                                     worker._gen, work._gen, lock_spin_ns(), True)
        elif r == 2 and not self.wake_in_c:
            wake_worker(self.rt, self.workers[w]._off)

    def free_slot_locked(self, slot: int) -> None:
        off = self.pm.slot_off(slot)
        self.pm.mem.fetch_add64(off + SLOT.use_seq, 1)
        self.pm.mem.store32(off + SLOT.state, FREE)
        self._forget_slot_locked(slot)

    def _forget_slot_locked(self, slot: int) -> None:
        """The caller's side of freeing a slot (its memory is FREE already)."""
        w, call = self.slot_worker[slot], self.slot_call[slot]
        if call is not None and call.kind == KIND_MAP:
            self.quiet -= 1
        self.slot_call[slot] = None
        self.inflight[w] -= 1
        self.busy -= 1

    def _finished_locked(self, call: Call) -> None:
        if call.big is not None:
            close_fd(call.big[0])
            call.big = None
        call.finished = True
        self.live -= 1

    # -- reaping ----------------------------------------------------------------

    def reap_locked(self, slot: int, spare: bool = False) -> tuple[Call, int, bytes] | None:
        """Take a DONE slot's outcome, free it and feed the backlog (@spare: see _pick).
        Lock held."""
        call = self.slot_call[slot]
        if call is None:
            return None
        pm, off = self.pm, self.pm.slots_base + slot * SLOT_SIZE
        got = cmem.pool_reap(off) if (cmem := pm.cmem) is not None else None  # read, FREE: C
        if got is not None:
            code, data = got
            self._forget_slot_locked(slot)
        else:
            code, data, big = pm.read_outcome(off)
            if big is not None:
                try:
                    data = take_big(*big)
                except OSError as exc:
                    code, data = -1, repr(exc).encode()
            self.free_slot_locked(slot)
        self._finished_locked(call)
        if self.backlog:
            self.feed_locked(spare)
        return call, code, data

    def deliver(self, call: Call, code: int, data: bytes) -> tuple[bool, Any] | None:
        """Decode an outcome and hand it to the call's future.  Lock not held.

        Return: (is_exception, value) as the future now holds it, or None.
        """
        if call.kind == KIND_INIT:
            if code == OUT_EXC or code < 0:
                self.fail(self._init_failed(code, data))
            return None
        if code < 0:
            got: tuple[bool, Any] = (True, self.broken or OSError(data.decode()))
        else:
            got = _RETURNED_NONE if code == OUT_NONE else decode_outcome(code, data)
        fut = call.future
        if fut is None:
            call.result = got           # a map's call: its iterator takes it from here
        else:
            fut.finish(got)
        return got

    def _init_failed(self, code: int, data: bytes) -> BaseException:
        err = BrokenKthreadPool("A worker initializer failed, the pool is not usable anymore")
        if code == OUT_EXC:
            err.__cause__ = decode_outcome(code, data)[1]
        return err

    # -- cancel, move, break ----------------------------------------------------

    def cancel(self, call: Call) -> bool:
        """Make sure ``call`` never starts.  Return: True if it will not, False if it started.

        A map's call cancelled gets CancelledError as its outcome.
        """
        with self.lock:
            if call.finished:
                return False
            slot = call.slot
            if slot < 0:
                try:
                    self.backlog.remove(call)
                except ValueError:
                    return False
                self._cancelled_locked(call)
                return True
            off = self.pm.slot_off(slot)
            if self.pm.mem.cmpxchg32(off + SLOT.state, QUEUED, CANCELLED) != QUEUED:
                return False
            work = self.works[slot]
        if call.kind != KIND_MAP:             # a map's call has no work: its drain skips it
            self.unqueue(slot, work)
        with self.lock:
            self.free_slot_locked(slot)
            self._cancelled_locked(call)
            call.slot = -1
            self._wake(self.comps[slot], True)   # a result() waiting on it leaves now
            self.feed_locked()
        return True

    def _cancelled_locked(self, call: Call) -> None:
        self._finished_locked(call)
        if call.kind == KIND_MAP:
            call.result = (True, CancelledError())

    def drop_backlog_call_locked(self, call: Call) -> None:
        """Cancel a call still in the backlog (it is skipped there).  Lock held."""
        self._cancelled_locked(call)

    def unqueue(self, slot: int, work: KthreadWork) -> None:
        """Take a cancelled slot's work off its worker's list (or wait for the run_slot()
        that sees CANCELLED and returns).  Lock not held."""
        try:
            kthread_cancel_work_sync(work)
        except Exception:
            if self.broken is None:
                raise

    def fail(self, exc: BaseException) -> None:
        """Break the pool: every call not finished fails with ``exc``, now and later."""
        with self.lock:
            if self.broken is not None:
                return
            self.broken = exc
            self.pm.mem.store32(HEADER.broken, 1)
            calls = list(self.backlog)
            self.backlog.clear()
            for slot, call in enumerate(self.slot_call):
                if call is not None:
                    calls.append(call)
                    self.slot_call[slot] = None         # nobody reaps it any more
                    self._wake(self.comps[slot], True)  # direct waiters
            for call in calls:
                if not call.finished:
                    self._finished_locked(call)
                    if call.kind == KIND_MAP:
                        call.result = (True, exc)
            self.placed.notify_all()
        for call in calls:
            if call.future is not None and not call.future.done():
                try:
                    call.future.set_exception(exc)
                except Exception:
                    pass          # cancelled meanwhile
        self._wake(self.kick, False)

    def _wake(self, comp: Completion, everyone: bool) -> None:
        # Not complete(): while the runtime shuts down (closed, kthreadd being
        # stopped: how a pool learns it) the handles refuse, but the waits are
        # still there and our threads must leave them before they go.
        try:
            self.rt.waits.completion_complete(comp._off, everyone)
        except Exception:
            pass                  # the waits are gone: nobody sleeps on them any more
