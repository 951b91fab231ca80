"""kthread_flush_work() and kthread_flush_worker(): flush markers and what ends their wait
(kproc/_workqueue/flush.py; kernel/kthread.c 6.15 kthread_flush_work, kthread_flush_worker)."""

import errno
import os
import signal

import pytest

import kproc
from fns import work as wfuncs
from fns.work import read_lines
from helpers import blocked, wait_until


def test_flush_work_of_an_idle_work_returns_at_once(worker):
    work = kproc.KthreadWork(wfuncs.noop)
    assert kproc.kthread_flush_work(work) is None               # never queued
    release = blocked(worker)
    kproc.kthread_queue_work(worker, work)
    kproc.complete(release)
    kproc.kthread_flush_work(work)
    assert work.runs == 1
    assert kproc.kthread_flush_work(work) is None               # idle again


def test_flush_work_waits_only_for_that_work(worker, log_path):
    release = blocked(worker)
    a = kproc.KthreadWork(wfuncs.log, (log_path, "a"))
    started, release_b = kproc.Completion(), kproc.Completion()
    b = kproc.KthreadWork(wfuncs.block_then_log, (log_path, "b", started, release_b))
    kproc.kthread_queue_work(worker, a)
    kproc.kthread_queue_work(worker, b)
    kproc.complete(release)
    kproc.kthread_flush_work(a)           # returns although b (queued after) blocks
    assert read_lines(log_path) == ["a"]
    kproc.wait_for_completion(started)
    kproc.complete(release_b)
    kproc.kthread_flush_work(b)            # b is running: the marker goes at the head
    assert read_lines(log_path) == ["a", "b"]


def test_flush_worker_waits_for_everything_queued_so_far(worker, log_path):
    release = blocked(worker)
    for i in range(5):
        kproc.kthread_queue_work(worker, kproc.KthreadWork(wfuncs.log, (log_path, str(i))))
    kproc.complete(release)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == [str(i) for i in range(5)]


def test_flush_from_the_worker_itself_warns_instead_of_hanging(worker, log_path):
    kproc.kthread_queue_work(worker, kproc.KthreadWork(wfuncs.flush_own_worker, log_path))
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["returned:KernelWarning"]


def test_flush_ends_when_the_worker_is_killed(worker):
    release = blocked(worker)
    work = kproc.KthreadWork(wfuncs.noop)
    kproc.kthread_queue_work(worker, work)
    os.kill(worker.task.pid, signal.SIGKILL)
    with pytest.raises(kproc.KthreadError) as exc:
        kproc.kthread_flush_work(work)
    assert exc.value.errno == errno.ESRCH
    kproc.complete(release)
    with pytest.warns(kproc.KernelWarning, match="still queued"):
        kproc.kthread_destroy_worker(worker)


def test_a_flush_waiting_on_a_timer_returns_when_the_timer_is_cancelled(worker):
    dwork = kproc.KthreadDelayedWork(wfuncs.noop)
    kproc.kthread_queue_delayed_work(worker, dwork, 100)
    started = kproc.Completion()
    flusher = kproc.kthread_run(wfuncs.flush_from_kthread, (dwork, started), "flusher")
    kproc.wait_for_completion(started)
    wait_until(lambda: kproc.task_state(flusher) == kproc.TASK_UNINTERRUPTIBLE)
    assert kproc.kthread_cancel_delayed_work_sync(dwork) is True
    wait_until(lambda: kproc.task_state(flusher) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(flusher) == 1
    assert dwork.runs == 0
