"""The work lists' invariants, reported through warn_on_once (kproc._workqueue.lists).

What kthread.c 6.15's kthread_insert_work_sanity_check() checks
(``lockdep_assert_held(&worker->lock)``, ``WARN_ON_ONCE(!list_empty(&work->node))``,
``WARN_ON_ONCE(work->worker && work->worker != worker)``), links that name no work
slot, and kproc's own "a flush marker is unlinked before it is completed".  The first
two and the links are checked by the Mem.wl_* primitives (native/wl_methods.c, or
kproc._core.pymem), the others in Python; every refusal goes through warn_on_once,
which raises under KPROC_STRICT=1 (set by conftest), so each broken invariant fails
loudly here.

Each test breaks one invariant on purpose, through the shared memory or by calling a
lock-held helper the wrong way, on a worker no kthread serves (nothing else walks its
list meanwhile), checks that nothing was linked, and repairs what it broke.
"""

import threading

import pytest

import kproc
from kproc._core import layout as L
from kproc._workqueue.lists import Locked, insert_work, unlink
from fns import work as wfuncs
from helpers import wait_until

W, K = L.WORK, L.WORKER
BROKEN = (AssertionError, kproc.KernelWarning)   # what warn_on_once raises when strict


@pytest.fixture
def idle_worker(rt):
    """A worker with no kthread: what is linked on it stays there."""
    w = kproc.KthreadWorker()
    kproc.kthread_init_worker(w)
    return w


def field(worker, name):
    return worker._rt.mem.load32(worker._off + getattr(K, name))


@pytest.mark.parametrize("name", ["tail", "thead"])
def test_a_list_link_outside_the_work_table_is_reported_not_followed(rt, idle_worker, name):
    """A corrupt tail is found by the C fast path (or, without the extension, by the
    Python insert); a corrupt timer head by the timer callback the slow path runs first."""
    queued, refused = kproc.KthreadWork(wfuncs.noop), kproc.KthreadWork(wfuncs.noop)
    assert kproc.kthread_queue_work(idle_worker, queued)
    off = idle_worker._off + getattr(K, name)
    good = rt.mem.load32(off)
    rt.mem.store32(off, rt.arena.params.max_works + 7)
    try:
        with pytest.raises(BROKEN, match="invariant broken"):
            kproc.kthread_queue_work(idle_worker, refused)
    finally:
        rt.mem.store32(off, good)
    assert rt.mem.load32(refused._off + W.where) == L.ON_NONE
    assert idle_worker.queued == 1
    assert kproc.kthread_cancel_work_sync(queued) is True


def test_insert_sanity_check_refuses_a_work_already_on_a_list(rt, idle_worker):
    """kthread_insert_work_sanity_check(): WARN_ON_ONCE(!list_empty(&work->node))."""
    work = kproc.KthreadWork(wfuncs.noop)
    assert kproc.kthread_queue_work(idle_worker, work)
    with Locked(rt, idle_worker._off) as lk:
        with pytest.raises(BROKEN, match="already on a list"):
            insert_work(lk, work._idx + 1)
    assert field(idle_worker, "head") == field(idle_worker, "tail") == work._idx + 1
    assert idle_worker.queued == 1
    assert kproc.kthread_cancel_work_sync(work) is True


def test_insert_sanity_check_refuses_a_work_tied_to_another_worker(rt, idle_worker):
    """kthread_insert_work_sanity_check(): WARN_ON_ONCE(work->worker && work->worker !=
    worker), below the API's own refusal (which warns and returns False)."""
    other = kproc.KthreadWorker()
    kproc.kthread_init_worker(other)
    work = kproc.KthreadWork(wfuncs.noop)
    assert kproc.kthread_queue_work(idle_worker, work)
    assert kproc.kthread_cancel_work_sync(work) is True      # idle, still tied
    with Locked(rt, other._off) as lk:
        with pytest.raises(BROKEN, match="not tied to"):
            insert_work(lk, work._idx + 1)
    assert field(other, "head") == 0 and other.queued == 0


def test_list_helpers_refuse_to_run_without_the_worker_lock(rt, idle_worker):
    """kthread_insert_work_sanity_check(): lockdep_assert_held(&worker->lock)."""
    work = kproc.KthreadWork(wfuncs.noop)
    with pytest.raises(BROKEN, match="worker lock is not held"):
        insert_work(Locked(rt, idle_worker._off), work._idx + 1)
    with pytest.raises(BROKEN, match="worker lock is not held"):
        unlink(Locked(rt, idle_worker._off), work._idx + 1, L.ON_WORKLIST)
    assert rt.mem.load32(work._off + W.where) == L.ON_NONE
    assert field(idle_worker, "head") == 0


def test_a_flush_marker_completed_while_still_linked_is_reported(rt, idle_worker):
    """The worker unlinks a marker before completing it; a flusher woken by a marker still
    on the list reports it and leaves the slot alone instead of freeing a linked slot."""
    errors = []

    def flush():
        try:
            kproc.kthread_flush_worker(idle_worker)
        except BaseException as exc:
            errors.append(exc)
    flusher = threading.Thread(target=flush, daemon=True)
    flusher.start()
    marker = wait_until(lambda: field(idle_worker, "head"))
    mbase = rt.arena.work_off(marker - 1)
    try:
        rt.waits.completion_complete(mbase + W.done, True)     # completed, never unlinked
        flusher.join(5.0)
        assert not flusher.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], BROKEN)
        assert "still linked" in str(errors[0])
    finally:
        with Locked(rt, idle_worker._off) as lk:
            assert unlink(lk, marker, L.ON_WORKLIST)
        rt.arena.free_work(marker - 1, rt.mem.load32(mbase + W.gen))
