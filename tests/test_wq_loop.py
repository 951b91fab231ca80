"""The worker loop: works run in order in the worker's process, current_work, a work
that raises (kproc/_workqueue/loop.py; kernel/kthread.c 6.15 kthread_worker_fn)."""

import kproc
from fns import work as wfuncs
from fns.work import read_lines
from helpers import blocked


def test_works_run_in_fifo_order_in_the_worker_process(worker, log_path):
    release = blocked(worker)
    works = [kproc.KthreadWork(wfuncs.log_pid, (log_path, str(i))) for i in range(20)]
    assert all(kproc.kthread_queue_work(worker, w) for w in works)
    kproc.complete(release)
    kproc.kthread_flush_worker(worker)
    pid = worker.task.pid
    assert read_lines(log_path) == [f"{i}:{pid}" for i in range(20)]
    assert worker.executed == 21


def test_current_work_is_the_running_work(worker, log_path):
    work = kproc.KthreadWork(wfuncs.mark_current, (log_path, "m"))
    kproc.kthread_queue_work(worker, work)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["m:True"]
    assert worker.current_work is None


def test_an_exception_in_a_work_is_reported_and_the_worker_goes_on(worker, log_path):
    bad = kproc.KthreadWork(wfuncs.boom, "payload")
    good = kproc.KthreadWork(wfuncs.log, (log_path, "after"))
    kproc.kthread_queue_work(worker, bad)
    kproc.kthread_queue_work(worker, good)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["after"]
    assert "ValueError: boom payload" in bad.exception
    assert "kw/3" in bad.exception
    assert good.exception is None
    assert worker.errors == 1 and worker.task is not None
