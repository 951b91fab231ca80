"""The worker loop: works run in order in the worker's process, current_work, a work
that raises (kproc/_workqueue/loop.py; kernel/kthread.c 6.15 kthread_worker_fn)."""

import pytest

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
    exc = bad.exception
    assert type(exc) is ValueError and exc.args == ("boom payload",)
    remote = exc.__cause__
    assert "ValueError: boom payload" in str(remote) and "kw/3" in str(remote)
    assert "in boom" in remote.tb                  # the worker's frames
    assert good.exception is None
    assert worker.errors == 1 and worker.task is not None


def test_a_failed_work_keeps_its_exception_as_concurrent_futures_does(worker):
    """The exception object re-raised on the caller's side, chained to the remote
    traceback (concurrent.futures.process's _RemoteTraceback), not a string."""
    bad = kproc.KthreadWork(wfuncs.boom, 7)
    kproc.kthread_queue_work(worker, bad)
    kproc.kthread_flush_work(bad)
    with pytest.raises(ValueError, match="boom 7") as info:
        raise bad.exception
    assert "Traceback" in str(info.value.__cause__)
    assert bad.exception is not bad.exception       # a fresh object each read


def test_an_unpicklable_exception_is_kept_as_a_runtime_error_naming_it(worker):
    bad = kproc.KthreadWork(wfuncs.boom_unpicklable, "x")
    kproc.kthread_queue_work(worker, bad)
    kproc.kthread_flush_work(bad)
    exc = bad.exception
    assert type(exc) is RuntimeError
    assert "Unpicklable: cannot travel x" in str(exc)
    assert "Unpicklable: cannot travel x" in str(exc.__cause__)
