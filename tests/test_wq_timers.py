"""The timer list: a delayed work is on the work list from its expiry on, in expiry order
(kproc/_workqueue/timers.py; kernel/kthread.c 6.15 kthread_delayed_work_timer_fn)."""

import time

import kproc
from fns import work as wfuncs
from fns.work import read_lines
from helpers import blocked, wait_past


def test_timer_runs_the_work_after_the_delay(worker, log_path):
    dwork = kproc.KthreadDelayedWork(wfuncs.log, (log_path, "late"))
    t0 = time.monotonic()
    assert kproc.kthread_queue_delayed_work(worker, dwork, 0.05) is True
    assert worker.delayed == 1
    assert kproc.kthread_queue_delayed_work(worker, dwork, 0.05) is False   # timer pending
    kproc.kthread_flush_work(dwork)            # waits through the timer and the run
    assert time.monotonic() - t0 >= 0.05
    assert read_lines(log_path) == ["late"] and worker.delayed == 0


def test_timer_queues_at_expiry_even_while_the_worker_is_busy(worker, log_path):
    release = blocked(worker)
    early = kproc.KthreadWork(wfuncs.log, (log_path, "queued-before-expiry"))
    dwork = kproc.KthreadDelayedWork(wfuncs.log, (log_path, "delayed"))
    late = kproc.KthreadWork(wfuncs.log, (log_path, "queued-after-expiry"))
    t0 = time.monotonic()
    kproc.kthread_queue_delayed_work(worker, dwork, 0.03)
    kproc.kthread_queue_work(worker, early)
    wait_past(t0 + 0.06)
    kproc.kthread_queue_work(worker, late)
    assert worker.queued == 3 and worker.delayed == 0
    kproc.complete(release)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["queued-before-expiry", "delayed", "queued-after-expiry"]


def test_timers_fire_in_expiry_order(worker, log_path):
    release = blocked(worker)
    t0 = time.monotonic()
    for tag, delay in (("c", 0.03), ("a", 0.01), ("b", 0.02)):
        kproc.kthread_queue_delayed_work(worker,
                                         kproc.KthreadDelayedWork(wfuncs.log, (log_path, tag)),
                                         delay)
    wait_past(t0 + 0.05)
    kproc.complete(release)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["a", "b", "c"]
