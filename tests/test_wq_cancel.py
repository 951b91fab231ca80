"""kthread_cancel_work_sync() and kthread_cancel_delayed_work_sync(): return values, waiting
for a running work, self-requeueing works (kproc/_workqueue/cancel.py; kernel/kthread.c 6.15
__kthread_cancel_work_sync)."""

import time

import pytest

import kproc
from fns import work as wfuncs
from fns.work import read_lines
from helpers import blocked, wait_past, wait_until


def test_cancel_work_sync_return_values(worker, log_path):
    work = kproc.KthreadWork(wfuncs.log, (log_path, "never"))
    assert kproc.kthread_cancel_work_sync(work) is False        # never queued
    release = blocked(worker)
    kproc.kthread_queue_work(worker, work)
    assert kproc.kthread_cancel_work_sync(work) is True         # pending
    assert kproc.kthread_cancel_work_sync(work) is False        # idle
    assert worker.queued == 0
    kproc.complete(release)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == [] and work.runs == 0


def test_cancel_sync_of_a_running_work_waits_and_blocks_queueing(worker, log_path):
    started, release = kproc.Completion(), kproc.Completion()
    work = kproc.KthreadWork(wfuncs.block_then_log, (log_path, "ran", started, release))
    kproc.kthread_queue_work(worker, work)
    kproc.wait_for_completion(started)
    canceler_started = kproc.Completion()
    canceler = kproc.kthread_run(wfuncs.cancel_from_kthread, (work, canceler_started),
                                 "canceler")
    kproc.wait_for_completion(canceler_started)
    wait_until(lambda: kproc.task_state(canceler) == kproc.TASK_UNINTERRUPTIBLE)
    assert kproc.kthread_queue_work(worker, work) is False     # canceling blocks queueing
    kproc.complete_all(release)
    assert kproc.kthread_stop(canceler) == 0                   # running, not pending
    assert read_lines(log_path) == ["ran"]
    assert worker.current_work is None and worker.queued == 0
    assert kproc.kthread_queue_work(worker, work) is True      # allowed again
    kproc.kthread_flush_worker(worker)


def test_cancel_sync_stops_a_self_requeueing_work(worker, log_path):
    work = kproc.KthreadWork(wfuncs.requeue_self, log_path)
    kproc.kthread_queue_work(worker, work)
    wait_until(lambda: len(read_lines(log_path)) >= 3)
    kproc.kthread_cancel_work_sync(work)
    runs = work.runs
    assert worker.current_work is None and worker.queued == 0
    kproc.kthread_flush_worker(worker)
    assert work.runs == runs
    assert len(read_lines(log_path)) == runs


def test_cancel_delayed_work_sync_return_values(worker, log_path):
    dwork = kproc.KthreadDelayedWork(wfuncs.log, (log_path, "never"))
    assert kproc.kthread_cancel_delayed_work_sync(dwork) is False          # never queued
    t0 = time.monotonic()
    kproc.kthread_queue_delayed_work(worker, dwork, 0.03)
    assert kproc.kthread_cancel_delayed_work_sync(dwork) is True           # timer pending
    assert kproc.kthread_cancel_delayed_work_sync(dwork) is False          # idle
    wait_past(t0 + 0.06)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == [] and dwork.runs == 0
    with pytest.raises(TypeError):
        kproc.kthread_cancel_delayed_work_sync(kproc.KthreadWork(wfuncs.noop))
