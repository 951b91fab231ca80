"""The lifetime of work and worker slots: allocation, orphans, deferred frees, the sweep.

The slot table itself (generations, claim, release) is ``_core.slots``; this
module decides *when* a work or worker slot may go back to it.

Ownership.  The handle a process *constructs* owns the slot; copies made by
pickling (handed to kthreads, or the one a worker passes to ``func``) do not.
When the owning handle is garbage-collected the slot is freed if the work is
idle, or marked orphan (``WF_ORPHAN``) and freed by whoever makes it idle (the
worker after running it, a cancel; see ``lists.free_if_orphan_locked``):
``kthread_queue_work(w, KthreadWork(f))`` and forget works, and a program
that creates and drops a million works runs in bounded memory.

Races prevented:

* ``__del__`` never takes a lock (it may run inside a locked section of this
  very process, from the cyclic GC): it only queues the slot on a
  process-local list, drained at the next allocation, with no lock held.
* A slot is freed only under the worker lock once idle (on no list, not being
  cancelled, not ``current_work``), so a linked or running work is never
  recycled; the generation bump of the free makes every old handle stale.
* A process that died cannot free its works: when the table is full, the
  sweep releases the works of dead owners (a work still queued is left to run
  first).

Runs in the caller and in every kthread that allocates or drops handles.
"""

from __future__ import annotations

import errno
import os

from .._core import layout as L
from .._core.errors import KthreadError
from .._core.runtime import Runtime
from .._core.syscalls import pid_alive
from .lists import Locked, tied_worker, idle_locked
from .payload import write_payload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

__all__ = ["defer_free", "drain_deferred_frees", "alloc_work_slot", "release_work",
           "sweep_works", "reinit_work"]

W = L.WORK
K = L.WORKER

# (runtime, "work" | "worker", idx, gen) whose owner handle died
_deferred: list[tuple[Runtime, Literal["work", "worker"], int, int]] = []


def defer_free(rt: Runtime, what: Literal["work", "worker"], idx: int, gen: int) -> None:
    """The owning handle of slot ``idx`` is being collected: free it at the next allocation.

    Context: ``__del__``; takes no lock.
    """
    _deferred.append((rt, what, idx, gen))


def drain_deferred_frees() -> None:
    """Free the slots whose owning handles were collected.  Context: no lock held."""
    while _deferred:
        rt, what, idx, gen = _deferred.pop()
        if rt.closed:
            continue
        if what == "worker":
            base = rt.arena.worker_off(idx)
            if rt.mem.load32(base + K.gen) == gen and not rt.mem.load32(base + K.task):
                rt.arena.free_worker(idx, gen)
        else:
            release_work(rt, idx, gen)


def alloc_work_slot(rt: Runtime, kind: int, what: str) -> tuple[int, int]:
    """A free work slot of ``kind`` owned by this process: (index, generation).

    Deferred frees are drained first, and a full table is swept once.
    Context: no lock held.  Raises: KthreadError(ENOMEM) naming ``what`` is
    missing when the table stays full.
    """
    drain_deferred_frees()
    got = rt.arena.alloc_work(os.getpid(), kind)
    if got is None:
        sweep_works(rt)
        got = rt.arena.alloc_work(os.getpid(), kind)
        if got is None:
            raise KthreadError(errno.ENOMEM, f"work table full: {what} (start the runtime "
                               "with a larger max_works)")
    return got


def release_work(rt: Runtime, idx: int, gen: int) -> None:
    """The owning handle of work ``idx`` is gone: free it now if idle, else mark it orphan.

    Context: no lock held.
    """
    mem = rt.mem
    base = rt.arena.work_off(idx)
    if mem.load32(base + W.gen) != gen or not mem.load32(base + W.inuse):
        return
    try:
        kbase = tied_worker(rt, base)
    except KthreadError:
        kbase = None          # its worker was destroyed: nothing links it any more
    if kbase is None:
        # A flush marker is tied to no worker; one left by a flusher that gave
        # up may still be linked, and is freed once its worker has unlinked it.
        if mem.load32(base + W.where) == L.ON_NONE:
            rt.arena.free_work(idx, gen)
        return
    with Locked(rt, kbase) as lk:
        if mem.load32(base + W.gen) != gen:
            return
        if idle_locked(lk, base, idx):
            rt.arena.free_work(idx, gen)
        else:
            mem.fetch_or32(base + W.flags, L.WF_ORPHAN)


def sweep_works(rt: Runtime) -> None:
    """Reclaim idle work slots whose owner process died (the table is full).

    Context: no lock held.  A dead process's works cannot be freed by its
    handles; a work still queued is left to run first.
    """
    mem = rt.mem
    dead: dict[int, bool] = {}
    for idx in range(rt.arena.params.max_works):
        base = rt.arena.work_off(idx)
        if not mem.load32(base + W.inuse):
            continue
        owner = L.unpack_field(rt.buf, base, W, "owner")
        if owner not in dead:
            dead[owner] = not pid_alive(owner)
        if dead[owner] or mem.load32(base + W.flags) & L.WF_ORPHAN:
            release_work(rt, idx, mem.load32(base + W.gen))


def reinit_work(rt: Runtime, base: int, idx: int, raw_payload: bytes) -> None:
    """kthread_init_work() on a live work: new payload, no worker.

    Raises: KthreadError(EBUSY) if the work is pending or running.
    """
    try:
        kbase = tied_worker(rt, base)
    except KthreadError:
        kbase = None
    if kbase is not None:
        with Locked(rt, kbase) as lk:
            if not idle_locked(lk, base, idx):
                raise KthreadError(errno.EBUSY, "kthread_init_work() on a work that is "
                                   "pending or running; cancel it first")
            _reinit(rt, base, idx, raw_payload)
    else:
        _reinit(rt, base, idx, raw_payload)


def _reinit(rt: Runtime, base: int, idx: int, raw: bytes) -> None:
    mem = rt.mem
    mem.store32(base + W.worker, 0)
    mem.store32(base + W.worker_gen, 0)
    write_payload(rt, idx, raw)
    mem.store32(base + W.tb_len, 0)
    mem.fetch_add32(base + W.version, 1)
