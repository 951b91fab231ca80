"""What a process holds is given back when it dies: kthread_stop() pins and cancel
counts of a killed kthread, and teardown that needs no free slot (SPEC §5; issue #11
items 3, 4 and 12)."""

import errno
import os
import signal

import pytest

import kproc
from kproc._core import layout as L
from fns import faults as ffuncs
from fns import work as wfuncs
from helpers import wait_until

pytestmark = pytest.mark.timeout(60)


def _run_waiting(fn, extra, name):
    """kthread_run(fn, (started, *extra)); wait until it completed ``started`` and
    sleeps in TASK_UNINTERRUPTIBLE (inside the blocking call it makes)."""
    started = kproc.Completion()
    t = kproc.kthread_run(fn, (started, *extra), name)
    kproc.wait_for_completion(started)
    wait_until(lambda: kproc.task_state(t) == kproc.TASK_UNINTERRUPTIBLE, 2.0,
               message=f"{name} never blocked")
    return t


@pytest.mark.runtime(max_kthreads=4)
def test_stoppers_killed_mid_stop_leave_no_pin(rt):
    """Item 3: three kthreads SIGKILLed inside kthread_stop() of a fourth leave its
    slot unpinned (kernel: the stopper's get_task_struct() reference goes with the
    stopper, put_task_struct in kthread_stop), so once it is dead every slot of a
    full table can be used again (SPEC §5: nothing running is harmed by a full
    table, and nothing dead holds it)."""
    go = kproc.Completion()
    target = _run_waiting(ffuncs.wait_go_then_stop, (go,), "target")
    stoppers = [_run_waiting(ffuncs.stop_target, (target,), f"stopper{i}") for i in range(3)]
    assert rt.mem.load32(target._base + L.TASK.flags) & L.KF_SHOULD_STOP
    for s in stoppers:
        os.kill(s.pid, signal.SIGKILL)
    for s in stoppers:
        assert kproc.kthread_stop(s) == -errno.EOWNERDEAD
    kproc.complete(go)
    assert kproc.kthread_stop(target) == 3
    del stoppers, target
    fresh = [kproc.kthread_create(ffuncs.wait_go_then_stop, (None, go), f"fresh{i}")
             for i in range(4)]                     # needs every slot, the target's too
    assert [kproc.kthread_stop(t) for t in fresh] == [-errno.EINTR] * 4


def test_canceller_killed_mid_cancel_leaves_the_work_queueable(rt):
    """Item 4: a kthread SIGKILLed inside kthread_cancel_work_sync() of a running
    work does not leave the work's canceling count raised (kernel: the count is the
    canceller's, dropped as it leaves __kthread_cancel_work_sync), so the work can
    be queued again once it has run."""
    w = kproc.kthread_create_worker(0, "kw")
    started, release = kproc.Completion(), kproc.Completion()
    work = kproc.KthreadWork(wfuncs.block, (started, release))
    assert kproc.kthread_queue_work(w, work)
    kproc.wait_for_completion(started)
    canceller = _run_waiting(ffuncs.cancel_work, (work,), "canceller")
    wait_until(lambda: rt.mem.load32(work._off + L.WORK.canceling) == 1, 2.0)
    assert not kproc.kthread_queue_work(w, work)    # blocked while being cancelled
    os.kill(canceller.pid, signal.SIGKILL)
    assert kproc.kthread_stop(canceller) == -errno.EOWNERDEAD
    kproc.complete_all(release)
    kproc.kthread_flush_work(work)
    wait_until(lambda: rt.mem.load32(work._off + L.WORK.canceling) == 0, 2.0,
               message="the dead canceller's count was never dropped")
    assert kproc.kthread_queue_work(w, work)        # queueable again, and it runs
    kproc.kthread_flush_work(work)
    kproc.kthread_destroy_worker(w)


def _fill_work_table(rt):
    """KthreadWorks until the table is full (ENOMEM); return them."""
    keep = []
    while True:
        try:
            keep.append(kproc.KthreadWork(wfuncs.noop))
        except kproc.KthreadError as exc:
            assert exc.errno == errno.ENOMEM
            return keep


@pytest.mark.runtime(max_works=16)
def test_teardown_with_a_full_work_table(rt):
    """Item 12: flush, cancel_sync of a running work and kthread_destroy_worker()
    never need a free work slot (kernel: the flush marker is on the flusher's
    stack, kthread_flush_work), so a full table never makes them fail."""
    w = kproc.kthread_create_worker(0, "kw")
    started, release = kproc.Completion(), kproc.Completion()
    running = kproc.KthreadWork(wfuncs.block, (started, release))
    assert kproc.kthread_queue_work(w, running)
    kproc.wait_for_completion(started)
    keep = _fill_work_table(rt)
    assert len(keep) == 16 - 1
    flusher = _run_waiting(ffuncs.flush_work, (running,), "flusher")
    canceller = _run_waiting(ffuncs.cancel_work, (running,), "canceller")
    kproc.complete_all(release)
    assert kproc.kthread_stop(flusher) == 0
    assert kproc.kthread_stop(canceller) == 0        # it was running, not pending
    kproc.kthread_flush_worker(w)
    kproc.kthread_destroy_worker(w)
    with pytest.raises(kproc.KthreadError) as ei:    # the user's limit is unchanged
        kproc.KthreadWork(wfuncs.noop)
    assert ei.value.errno == errno.ENOMEM
    del keep
