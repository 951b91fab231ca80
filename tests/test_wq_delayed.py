"""kthread_queue_delayed_work() and kthread_mod_delayed_work(), and the 2021 mod/cancel race
fixes (kproc/_workqueue/delayed.py; kernel/kthread.c 6.15 kthread_queue_delayed_work,
kthread_mod_delayed_work)."""

import pytest

import kproc
from fns import work as wfuncs
from fns.work import read_lines
from helpers import blocked, wait_until


def test_delay_zero_queues_at_once(worker, log_path):
    release = blocked(worker)
    dwork = kproc.KthreadDelayedWork(wfuncs.log, (log_path, "d"))
    assert kproc.kthread_queue_delayed_work(worker, dwork, 0) is True
    assert worker.queued == 1 and worker.delayed == 0
    assert kproc.kthread_queue_delayed_work(worker, dwork, 0) is False
    kproc.complete(release)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["d"]


def test_mod_delayed_work_return_values(worker, log_path):
    dwork = kproc.KthreadDelayedWork(wfuncs.log, (log_path, "m"))
    assert kproc.kthread_mod_delayed_work(worker, dwork, 100) is False   # idle: queued
    assert worker.delayed == 1
    assert kproc.kthread_mod_delayed_work(worker, dwork, 100) is True    # timer pending
    assert kproc.kthread_mod_delayed_work(worker, dwork, 0) is True      # re-armed to now
    kproc.kthread_flush_work(dwork)
    assert read_lines(log_path) == ["m"]
    release = blocked(worker)
    kproc.kthread_queue_delayed_work(worker, dwork, 0)                    # on the list
    assert kproc.kthread_mod_delayed_work(worker, dwork, 100) is True    # taken off it
    assert worker.queued == 0 and worker.delayed == 1
    kproc.complete(release)
    assert kproc.kthread_cancel_delayed_work_sync(dwork) is True
    assert read_lines(log_path) == ["m"]


def test_mod_while_a_cancel_is_in_progress_returns_true_and_leaves_it(worker, log_path):
    started, release = kproc.Completion(), kproc.Completion()
    dwork = kproc.KthreadDelayedWork(wfuncs.block_then_log, (log_path, "ran", started, release))
    kproc.kthread_queue_delayed_work(worker, dwork, 0)
    kproc.wait_for_completion(started)
    cstarted = kproc.Completion()
    canceler = kproc.kthread_run(wfuncs.cancel_from_kthread, (dwork, cstarted), "canceler")
    kproc.wait_for_completion(cstarted)
    wait_until(lambda: kproc.task_state(canceler) == kproc.TASK_UNINTERRUPTIBLE)
    assert kproc.kthread_mod_delayed_work(worker, dwork, 0) is True
    assert worker.queued == 0 and worker.delayed == 0
    kproc.complete_all(release)
    kproc.kthread_stop(canceler)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["ran"]


def test_bad_delays_raise_before_anything_changes(worker):
    dwork = kproc.KthreadDelayedWork(wfuncs.noop)
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            kproc.kthread_queue_delayed_work(worker, dwork, bad)
        with pytest.raises(ValueError):
            kproc.kthread_mod_delayed_work(worker, dwork, bad)
    with pytest.raises(TypeError):
        kproc.kthread_queue_delayed_work(worker, dwork, "1")
    with pytest.raises(TypeError):
        kproc.kthread_queue_delayed_work(worker, kproc.KthreadWork(wfuncs.noop), 1)
    assert worker.delayed == 0 and worker.queued == 0


def test_mod_cancel_race_hammer_from_two_processes(worker, log_path):
    """Regression for the 2021 fixes: mod_delayed_work racing cancel_delayed_work_sync
    (from the caller and from a kthread) neither deadlocks nor leaves the work pending."""
    dwork = kproc.KthreadDelayedWork(wfuncs.noop)
    go = kproc.Completion()
    n = 1500
    other = kproc.kthread_run(wfuncs.hammer_mod_cancel, (worker, dwork, n, go), "hammer")
    kproc.complete(go)
    for i in range(n):
        if i % 2:
            kproc.kthread_mod_delayed_work(worker, dwork, 0.0005 * (i % 3))
        else:
            assert kproc.kthread_cancel_delayed_work_sync(dwork) in (True, False)
    wait_until(lambda: kproc.task_state(other) == kproc.TASK_DEAD, timeout=30)
    assert kproc.kthread_stop(other) == n
    kproc.kthread_cancel_delayed_work_sync(dwork)
    assert worker.queued == 0 and worker.delayed == 0 and worker.current_work is None
    runs = dwork.runs
    kproc.kthread_flush_worker(worker)
    assert dwork.runs == runs
    assert kproc.kthread_queue_delayed_work(worker, dwork, 0) is True     # still usable
    kproc.kthread_flush_work(dwork)
    assert dwork.runs == runs + 1
