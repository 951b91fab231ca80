"""Faults inside kthreads and their payloads: hostile pickles, fork() in threadfn, a
threadfn that cannot be loaded (SPEC §5; issue #11 items 8, 9, 13)."""

import errno

import psutil
import pytest

import kproc
from fns import faults as ffuncs
from fns import kthread as kfuncs

pytestmark = pytest.mark.timeout(60)


def test_kthreadd_never_runs_a_threadfn_pickle(rt):
    """Item 8: a threadfn whose unpickling runs code (``__reduce__`` → os._exit) is
    only ever unpickled by its own kthread (SPEC §5: nothing read from shared memory
    is unpickled but by a process it belongs to): kthreadd and the runtime live on,
    and the create reports the kthread's death."""
    kthreadd = psutil.Process(rt.kthreadd_pid)
    with pytest.raises(kproc.KthreadError) as ei:
        kproc.kthread_create(ffuncs.ExitOnUnpickle(), None, "hostile")
    assert ei.value.errno == errno.ECHILD
    assert kthreadd.is_running() and kthreadd.status() != psutil.STATUS_ZOMBIE
    done = kproc.Completion()
    t = kproc.kthread_run(kfuncs.complete_then_return, (done, 5), "after")
    kproc.wait_for_completion(done)
    assert kproc.kthread_stop(t) == 5


def test_unloadable_payload_always_gives_einval(rt):
    """Item 13: a kthread that cannot load its threadfn or data fails the create
    with KthreadError(EINVAL), every time: kthreadd reaping it first must not turn
    the kthread's own report into -EOWNERDEAD (kernel: create_kthread() hands the
    creator the child's error)."""
    got = set()
    for _ in range(60):
        with pytest.raises(kproc.KthreadError) as ei:
            kproc.kthread_create(kfuncs.ret_value, ffuncs.Unloadable(), "unloadable")
        got.add(ei.value.errno)
        assert "cannot load" in str(ei.value)
    assert got == {errno.EINVAL}


@pytest.mark.parametrize("fn, result", [(ffuncs.fork_and_return, 7),
                                        (ffuncs.fork_and_raise, 5)])
def test_child_forked_in_threadfn_does_not_publish(rt, fn, result):
    """Item 9: a process forked inside threadfn that leaves threadfn (returns or
    raises) is not the kthread: only the kthread's own process writes the result
    and completes ``exited`` (kernel: kthread_exit() is the kthread's own), so
    kthread_stop() waits for the kthread and returns *its* result."""
    forked, go = kproc.Completion(), kproc.Completion()
    t = kproc.kthread_run(fn, (forked, go), "forker")
    kproc.wait_for_completion(forked)        # the child has left threadfn, reaped
    L = kproc._core.layout
    assert kproc.task_state(t) != kproc.TASK_DEAD
    assert rt.mem.load32(t._base + L.TASK.slot) == L.SLOT_LIVE   # nothing published
    assert rt.mem.load32(t._base + L.TASK.exited) == 0            # exited not completed
    assert t.pid and psutil.pid_exists(t.pid)
    kproc.complete(go)
    assert kproc.kthread_stop(t) == result
    assert t.exception is None
