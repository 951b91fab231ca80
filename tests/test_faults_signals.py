"""Ctrl-C at the worst moments: right after a lock is taken, right after kthreadd was
woken for a create (SPEC §5; issue #11 items 5 and 6)."""

import errno
import signal
import threading

import pytest

import kproc
from kproc._workqueue.lists import Locked
from fns import kthread as kfuncs
from helpers import live_kthreads, wait_until

pytestmark = pytest.mark.timeout(40)


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt in the main thread during the test."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _blocked_in_kernel(tid):
    with open(f"/proc/self/task/{tid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "S"


def _lock_of(rt, which):
    """(offset of the lock, a factory of with-guards taking it), and what to clean up."""
    if which == "arena":
        return rt.arena.lock_off, rt.arena.locked, None
    w = kproc.kthread_create_worker(0, "kw")
    return w._off + kproc._core.layout.WORKER.lock, lambda: Locked(rt, w._off), w


@pytest.mark.parametrize("which", ["arena", "worker"])
def test_ctrl_c_as_the_lock_is_taken_does_not_leak_it(rt, sigint_raises, which):
    """Item 5: a SIGINT that arrives while this thread waits for a lock, so that its
    KeyboardInterrupt falls on the first bytecode after the lock is taken, still
    releases the lock (kernel: a lock holder's section always reaches its unlock;
    SPEC §5: locks survive their holder)."""
    off, make_guard, worker = _lock_of(rt, which)
    main = threading.main_thread()
    holding = threading.Event()

    def holder():
        with make_guard():
            holding.set()
            wait_until(lambda: _blocked_in_kernel(main.native_id), 5.0)
            signal.pthread_kill(main.ident, signal.SIGINT)
    th = threading.Thread(target=holder)
    th.start()
    holding.wait(5)
    with pytest.raises(KeyboardInterrupt):
        with make_guard():
            for _ in range(1000):       # bytecodes: the pending handler runs here
                pass
    th.join(5)

    def try_lock(out):
        rc = rt.mem.mutex_lock(off, 1_000_000_000)
        if rc != 2:
            rt.mem.mutex_unlock(off)
        out.append(rc)
    got = []
    t = threading.Thread(target=try_lock, args=(got,))
    t.start()
    t.join(5)
    assert got == [0], "the lock was left held by this process"
    with make_guard():                    # and this thread can take it again
        pass
    if worker is not None:
        kproc.kthread_destroy_worker(worker)


def test_ctrl_c_right_after_kthreadd_was_woken_leaves_no_kthread(rt, sigint_raises,
                                                                  monkeypatch):
    """Item 6: a Ctrl-C that arrives just after a create request was handed to
    kthreadd gives the request up (kernel __kthread_create_on_node: a creator that
    is interrupted lets the child free itself), so no kthread is left asleep that
    nobody holds, and the slot can be used again."""
    from kproc._core.runtime import Runtime
    from kproc._kthread import create
    real_wake, real_wake_spare = Runtime.wake_kthreadd, create.wake_spare

    def wake_then_ctrl_c(self):
        real_wake(self)
        signal.raise_signal(signal.SIGINT)

    def wake_spare_then_ctrl_c(rt, off):      # the hand-off to a claimed spare
        real_wake_spare(rt, off)
        signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(Runtime, "wake_kthreadd", wake_then_ctrl_c)
    monkeypatch.setattr(create, "wake_spare", wake_spare_then_ctrl_c)
    for _ in range(5):
        with pytest.raises(KeyboardInterrupt):
            kproc.kthread_create(kfuncs.ret_value, 0, "interrupted")
    monkeypatch.undo()
    L = kproc._core.layout

    def settled():      # every slot used is free again or holds a dead kthread
        return all(rt.mem.load32(rt.arena.task_off(i) + L.TASK.slot) in
                   (L.SLOT_FREE, L.SLOT_DEAD) for i in range(rt.arena.params.max_kthreads))
    wait_until(settled, 2.0, message=lambda: f"orphan kthreads: {live_kthreads(rt)}")
    assert not live_kthreads(rt)
    t = kproc.kthread_create(kfuncs.ret_value, 0, "next")
    assert kproc.kthread_stop(t) == -errno.EINTR


def test_ctrl_c_as_cancel_sync_raises_the_count_leaves_the_work_queueable(rt, sigint_raises,
                                                                           monkeypatch):
    """Items 4 and 5: a Ctrl-C that comes while kthread_cancel_work_sync() raises the
    work's canceling count (under the worker lock, so it is raised as the lock is
    dropped) still lowers the count on the way out (kernel
    __kthread_cancel_work_sync: work->canceling-- on every exit)."""
    from fns import work as wfuncs
    L = kproc._core.layout
    w = kproc.kthread_create_worker(0, "kw")
    started, release = kproc.Completion(), kproc.Completion()
    work = kproc.KthreadWork(wfuncs.block, (started, release))
    assert kproc.kthread_queue_work(w, work)
    kproc.wait_for_completion(started)
    real = rt.arena.take_hold

    def hold_then_ctrl_c(*args):
        signal.raise_signal(signal.SIGINT)      # deferred: the worker lock is held
        return real(*args)
    monkeypatch.setattr(rt.arena, "take_hold", hold_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        kproc.kthread_cancel_work_sync(work)
    monkeypatch.undo()
    assert rt.mem.load32(work._off + L.WORK.canceling) == 0
    kproc.complete_all(release)
    kproc.kthread_flush_work(work)
    assert kproc.kthread_queue_work(w, work)
    kproc.kthread_flush_work(work)
    kproc.kthread_destroy_worker(w)
