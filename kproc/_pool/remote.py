"""What a pool worker runs: the work function of every call slot.

Each call slot of a pool is one ``KthreadWork`` on one worker, whose func is
:func:`run_slot` and whose data is a :class:`SlotRef`.  ``run_slot`` claims
the slot (QUEUED -> RUNNING by compare-and-swap: a cancel that won first
leaves it CANCELLED and the call never starts), decodes the call, runs it,
publishes the outcome (inline, or through the side channel when large),
marks the slot DONE and completes the slot's completion (``complete_all``:
the slot has one event per use; the caller re-initialises it before the
next).  It wakes the pool's collector thread only when the collector asked
(``HEADER.want``) and no thread of the caller is already waiting on this very
slot (``SLOT.direct``), so a ``submit(f).result()`` round trip costs one
wake-up, not two.

A map's calls (KIND_MAP) have no work each: the caller numbers the calls it
places on a worker (``SLOT.ticket``, in the ring order of the worker's
slots) and makes sure the worker's one *drain work* (:func:`run_drain`, its
data a :class:`DrainRef`) is queued; the drain runs the worker's map calls
in ticket order, many per wake-up, skipping tickets whose call was
cancelled or moved.  ``DRAIN.active`` is 1 while the drain is queued or
running: the caller publishes a ticket, then swaps ``active`` to 1 and
queues the drain if it was 0; the drain, finding no next ticket, stores 0
and looks once more (and takes ``active`` back if a ticket appeared), so a
ticket is never left without a drain.

Where the extension is built, ``run_slot`` and ``run_drain`` call
``native/pool.c`` (``pool_run``, ``pool_drain``): the claim, the decoding of
an inline call whose function this worker has cached, the call, the
encoding and publishing of an inline outcome and the DONE all in C, many map
calls per C call; what C hands back (a function seen for the first time, a
call or result in the side channel, an exception, a ticket with a direct
waiter) is done here, on the Python path that ``KPROC_NATIVE=0`` uses for
everything.  A drain out of tickets first spins up to ``DRAIN_SPIN_NS`` for
the next one, unless the caller runs on its CPU (``HEADER.caller_cpu``): a
map's caller then places its next calls without queueing the drain again.

Races prevented: the collector publishes ``want`` before it looks at the
slots and sleeps; a worker publishes DONE before it reads ``want``: one of
the two always sees the other (sequentially consistent atomics).  A result
in the side channel stays reachable (this process keeps its descriptor)
until the caller has moved the slot on (its ``seq`` changed), checked at
every later call of the pool on this worker.

Runs in the pool's worker kthreads only.
"""

from __future__ import annotations

import os

from .._core.runtime import get_runtime
from .._sched.completion import Completion, complete, complete_all
from .._core import layout as L
from .._workqueue.handles import KthreadWorker
from .._workqueue.queue import kthread_queue_work
from .channel import (DONE, DRAIN, HEADER, QUEUED, RUNNING, SLOT, INLINE_MAX, PoolMemory,
                      close_fd, put_big, take_big)
from .codec import OUT_EXC, OUT_VALUE, worker_fns, decode_call, encode_exception, encode_result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    from .._native import Mem  # typing only: the extension may be missing

__all__ = ["SlotRef", "DrainRef", "run_slot", "run_drain", "run_chunk", "KIND_CALL", "KIND_MAP",
           "KIND_INIT"]

# KIND_MAP: a call of map(); its iterator reaps it, so it never wakes the collector
KIND_CALL, KIND_MAP, KIND_INIT = 0, 1, 2
T = L.TASK
# what native/pool.c's pool_run / pool_drain answer (besides a too-big result's pickle)
POOL_LOST, POOL_SLOW = -1, -2
DRAIN_IDLE, DRAIN_PARK, DRAIN_BROKEN, DRAIN_DIRECT = 0, 1, 2, 3
DRAIN_SPIN_NS = 20_000          # a drain out of tickets spins this long for the next one

if TYPE_CHECKING:
    class SlotRef(NamedTuple):
        key: tuple[int, int, int, int, int]
        slot: int
        comp: Completion
        kick: Completion

    class DrainRef(NamedTuple):
        key: tuple[int, int, int, int, int]
        w: int                          # the worker's index in the pool
        first: int                      # its first slot
        comps: tuple[Completion, ...]   # its slots' completions
        worker: KthreadWorker
else:
    from collections import namedtuple
    SlotRef = namedtuple("SlotRef", "key slot comp kick")
    SlotRef.__module__ = __name__
    DrainRef = namedtuple("DrainRef", "key w first comps worker")
    DrainRef.__module__ = __name__


class _Attached:
    """A pool's memory as this worker maps it, and the side-channel fds it still holds."""

    __slots__ = ("pm", "held", "_complete")

    def __init__(self, pm: PoolMemory) -> None:
        self.pm = pm
        self.held: dict[int, tuple[int, int]] = {}     # slot -> (fd, seq)
        self._complete = get_runtime().waits.completion_complete

    def complete_all(self, comp: Completion) -> None:
        """complete_all() of a slot's completion, without re-checking the handle each time."""
        if self._complete(comp._off, True, comp._gen_off, comp._gen) < 0:
            complete_all(comp)         # stale: raises the right error

    def release_taken(self) -> None:
        """Close result payloads whose slot the caller has moved on from."""
        mem, pm = self.pm.mem, self.pm
        for slot, (fd, seq) in list(self.held.items()):
            if mem.load64(pm.slot_off(slot) + SLOT.use_seq) != seq:
                close_fd(fd)
                del self.held[slot]


_attached: dict[tuple[int, int, int, int, int], _Attached] = {}


def _pool(key: tuple[int, int, int, int, int]) -> _Attached:
    att = _attached.get(key)
    if att is None:
        att = _attached[key] = _Attached(PoolMemory.attach(key))
    return att


def _read_call(pm: PoolMemory, off: int, n: int, pid: int, fd: int, ino: int) -> bytes:
    """The encoded call of the slot at ``off``, inline or from the side channel."""
    if pid:
        return take_big(pid, fd, ino, n)
    return pm.read_inline(off, n)


def run_chunk(fn: Any, chunk: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """map(chunksize > 1)'s call: ``fn`` over one chunk of argument tuples, in order.

    Context: a pool worker.  Return: the results.  Raises: the first call's exception.
    """
    return [fn(*args) for args in chunk]


def _execute(raw: bytes) -> tuple[int, bytes]:
    try:
        fn, args, kwargs = decode_call(get_runtime(), raw)
    except BaseException as exc:
        return encode_exception(exc)
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        return encode_exception(exc)
    return encode_result(value)


def _publish(att: _Attached, slot: int, off: int, kind: int, code: int, data: bytes) -> None:
    pm = att.pm
    if len(data) > INLINE_MAX:
        try:
            fd, ino, n = put_big(data)
        except OSError as exc:
            code, data = encode_exception(exc)
        else:
            pm.write_body(off, kind, code, n, (os.getpid(), fd, ino))
            att.held[slot] = (fd, pm.mem.load64(off + SLOT.use_seq))
            return
    pm.write_inline(off, data)
    pm.write_body(off, kind, code, len(data), None)


def run_slot(work: Any) -> None:
    """The work function of a pool call slot: run the call queued in it, if still queued.

    @work: the slot's KthreadWork; its data is a SlotRef.
    Context: a pool worker kthread (called by kthread_worker_fn).  Return: None.
    An initializer that raises marks the pool broken here, so the calls
    queued behind it on this worker never start.
    """
    ref = work._data
    att = _pool(ref.key)
    if att.held:
        att.release_taken()
    pm = att.pm
    mem = pm.mem
    off = pm.slot_off(ref.slot)
    cmem = pm.cmem
    if cmem is not None:
        try:
            r = cmem.pool_run(off, worker_fns)       # claim, run, publish: in C
        except BaseException as exc:
            r = _finish(att, ref.slot, off, *encode_exception(exc))
        else:
            if r == POOL_LOST:
                return                    # cancelled, moved, or the pool is broken
            if r == POOL_SLOW:
                _run_claimed(att, ref.slot, off)
            elif not isinstance(r, int):      # a result too big for the slot
                _finish(att, ref.slot, off, OUT_VALUE, r)
    elif mem.load32(HEADER.broken) or \
            mem.cmpxchg32(off + SLOT.state, QUEUED, RUNNING) != QUEUED:
        return                        # cancelled, moved, or the pool is broken
    else:
        _run_claimed(att, ref.slot, off)
    att.complete_all(ref.comp)
    if mem.load32(HEADER.want) and not mem.load32(off + SLOT.direct) and \
            mem.load32(off + SLOT.kind) != KIND_MAP:
        if mem.xchg32(HEADER.want, 0):
            complete(ref.kick)


def _run_claimed(att: _Attached, slot: int, off: int) -> int:
    """Run the call of a slot this worker has just claimed (RUNNING); mark it DONE.

    Return: the slot's kind.
    """
    pm = att.pm
    _kind, _code, n, pid, fd, ino = pm.read_body(off)
    try:
        raw = _read_call(pm, off, n, pid, fd, ino)
    except BaseException as exc:
        code, data = encode_exception(exc)
    else:
        code, data = _execute(raw)
    return _finish(att, slot, off, code, data)


def _finish(att: _Attached, slot: int, off: int, code: int, data: bytes) -> int:
    """Publish the outcome of a claimed slot's call and mark it DONE.  Return: its kind."""
    mem = att.pm.mem
    kind = mem.load32(off + SLOT.kind)
    _publish(att, slot, off, kind, code, data)
    if kind == KIND_INIT and code == OUT_EXC:
        mem.store32(HEADER.broken, 1)
    mem.store32(off + SLOT.state, DONE)
    return kind


def drain_spin_ns() -> int:
    """How long a drain out of tickets spins for the next one before it ends (ns)."""
    return min(get_runtime().waits.spin_ns, DRAIN_SPIN_NS)


def run_drain(work: Any) -> None:
    """The drain work of a pool worker: run its queued map calls in ticket order.

    @work: the worker's drain KthreadWork; its data is a DrainRef.
    Context: a pool worker kthread (called by kthread_worker_fn).  Return: None.
    Runs until no ticket is left (then clears DRAIN.active: see the module's
    doc), the pool is broken, or the worker is asked to park (it then queues
    itself again and returns, so the worker parks between two calls and goes
    on where it was once unparked).
    """
    ref = work._data
    att = _pool(ref.key)
    pm = att.pm
    rt = get_runtime()
    flags_off = (rt.self_base or 0) + T.flags
    if pm.cmem is not None:
        _drain_native(att, work, ref, pm.cmem, rt.mem, flags_off)
    else:
        _drain_python(att, work, ref, rt.mem, flags_off)


def _drain_native(att: _Attached, work: Any, ref: DrainRef, cmem: Mem, amem: Any,
                  flags_off: int) -> None:
    """run_drain() over native/pool.c's pool_drain(): Python only for what it hands back."""
    pm = att.pm
    mem = pm.mem
    doff = pm.drain_off(ref.w)
    args = (doff, ref.first, len(ref.comps), pm.slots_base, amem, flags_off, L.KF_SHOULD_PARK,
            drain_spin_ns(), worker_fns)
    drain = cmem.pool_drain
    while True:
        if att.held:
            att.release_taken()
        try:
            r = drain(*args)
        except BaseException as exc:              # the call at DRAIN.cur raised
            slot = mem.load32(doff + DRAIN.cur)
            off = pm.slot_off(slot)
            _finish(att, slot, off, *encode_exception(exc))
            if mem.load32(off + SLOT.direct):
                att.complete_all(ref.comps[slot - ref.first])
            continue
        if r == DRAIN_IDLE or r == DRAIN_BROKEN:
            return
        if r == DRAIN_PARK:
            kthread_queue_work(ref.worker, work)
            return
        slot = mem.load32(doff + DRAIN.cur)
        off = pm.slot_off(slot)
        if r == POOL_SLOW:
            _run_claimed(att, slot, off)
        elif not isinstance(r, int):              # a result too big for the slot
            _finish(att, slot, off, OUT_VALUE, r)
        if r == DRAIN_DIRECT or mem.load32(off + SLOT.direct):
            att.complete_all(ref.comps[slot - ref.first])


def _drain_python(att: _Attached, work: Any, ref: DrainRef, amem: Any, flags_off: int) -> None:
    """run_drain() in Python (no native/pool.c): the same loop, the same DRAIN record."""
    pm = att.pm
    mem = pm.mem
    doff = pm.drain_off(ref.w)
    act = doff + DRAIN.active
    nslots = len(ref.comps)
    h = mem.load64(doff + DRAIN.next_ticket)
    try:
        while True:
            if mem.load32(HEADER.broken):
                mem.store32(act, 0)
                return
            if amem.load32(flags_off) & L.KF_SHOULD_PARK:
                kthread_queue_work(ref.worker, work)
                return
            slot = ref.first + h % nslots
            off = pm.slot_off(slot)
            t = mem.load64(off + SLOT.ticket)
            if t < h:                     # ticket h not placed yet: done, unless it is now
                mem.store32(act, 0)
                if mem.load64(off + SLOT.ticket) < h or mem.xchg32(act, 1):
                    return
                continue
            h += 1
            if t > h - 1 or mem.load32(off + SLOT.kind) != KIND_MAP or \
                    mem.cmpxchg32(off + SLOT.state, QUEUED, RUNNING) != QUEUED:
                continue                  # cancelled or moved; not a map call
            if att.held:
                att.release_taken()
            _run_claimed(att, slot, off)
            if mem.load32(off + SLOT.direct):
                att.complete_all(ref.comps[slot - ref.first])
    finally:
        mem.store64(doff + DRAIN.next_ticket, h)
