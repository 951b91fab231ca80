"""Creating and destroying kthread workers: kthread_create_worker*, kthread_init_worker +
kthread_worker_fn as a threadfn, kthread_init_work, kthread_destroy_worker
(kproc/_workqueue/worker.py; kernel/kthread.c 6.15)."""

import errno
import os

import psutil
import pytest

import kproc
from fns import work as wfuncs
from fns.work import read_lines
from helpers import blocked, live_kthreads, process_gone, wait_until


def test_create_worker_runs_a_named_kthread(worker):
    task = worker.task
    assert task.name == "kw/3"
    assert psutil.Process(task.pid).name() == "kw/3"
    assert kproc.kthread_func(task) is kproc.kthread_worker_fn
    assert worker.flags == 0 and worker.queued == 0 and worker.executed == 0


def test_create_worker_on_cpu_takes_a_name_without_a_conversion(rt):
    """kthread.c 6.15 kthread_create_worker_on_cpu() passes cpu to a printf-style
    format; vsnprintf ignores an argument the format does not use, so "plain"
    (and "100%%") are valid names (issue #10 item 6)."""
    cpu = max(kproc.cpu_online_mask())
    for fmt, name in (("plain", "plain"), ("100%%", "100%")):
        w = kproc.kthread_create_worker_on_cpu(cpu, 0, fmt)
        try:
            assert w.task.name == name
            assert os.sched_getaffinity(w.task.pid) == {cpu}
        finally:
            kproc.kthread_destroy_worker(w)


def test_create_worker_on_cpu_is_bound_and_named_with_the_cpu(rt):
    cpu = max(kproc.cpu_online_mask())
    w = kproc.kthread_create_worker_on_cpu(cpu, 0, "kw_cpu/%u")
    try:
        assert w.task.name == f"kw_cpu/{cpu}"
        assert os.sched_getaffinity(w.task.pid) == {cpu}
        assert kproc.kthread_bind(w.task, cpu) is None or True  # already woken: warns
    except kproc.KernelWarning:
        pass
    finally:
        kproc.kthread_destroy_worker(w)


def test_create_worker_on_node_uses_the_node(rt):
    w = kproc.kthread_create_worker_on_node(0, 0, "kw_node")
    try:
        expected = kproc.cpumask_of_node(0) & kproc.housekeeping_cpumask()
        wait_until(lambda: os.sched_getaffinity(w.task.pid) == expected)
    finally:
        kproc.kthread_destroy_worker(w)


def test_init_worker_and_worker_fn_as_a_threadfn(rt, log_path):
    w = kproc.KthreadWorker()
    kproc.kthread_init_worker(w)
    task = kproc.kthread_run(kproc.kthread_worker_fn, w, "byhand")
    wait_until(lambda: w.task == task)
    assert kproc.kthread_queue_work(w, kproc.KthreadWork(wfuncs.log, (log_path, "a")))
    kproc.kthread_flush_worker(w)
    assert read_lines(log_path) == ["a"]
    with pytest.raises(kproc.KthreadError) as exc:
        kproc.kthread_init_worker(w)
    assert exc.value.errno == errno.EBUSY
    assert kproc.kthread_stop(task) == 0
    assert w.task is None


def test_bad_worker_arguments_raise_before_anything_is_created(rt):
    with pytest.raises(ValueError):
        kproc.kthread_create_worker(0x100, "x")
    with pytest.raises(TypeError):
        kproc.kthread_create_worker("0", "x")
    with pytest.raises(ValueError):
        kproc.kthread_create_worker_on_cpu(100000, 0, "x/%u")
    with pytest.raises(TypeError):
        kproc.kthread_create_worker(0, 5)
    with pytest.raises(TypeError):
        kproc.kthread_queue_work(None, kproc.KthreadWork(wfuncs.noop))
    with pytest.raises(TypeError):
        kproc.KthreadWork(lambda w: None)
    with pytest.raises(TypeError):
        kproc.KthreadWork(42)
    with pytest.raises(TypeError):
        kproc.KthreadWork(wfuncs.noop, data=lambda: 0)
    with pytest.raises(ValueError):
        kproc.KthreadWork(wfuncs.noop, data=b"x" * 100_000)
    assert live_kthreads(rt) == []


def test_init_work_changes_func_and_refuses_a_pending_work(worker, log_path):
    release = blocked(worker)
    work = kproc.KthreadWork(wfuncs.noop, (log_path, "new"))
    kproc.kthread_queue_work(worker, work)
    with pytest.raises(kproc.KthreadError) as exc:
        kproc.kthread_init_work(work, wfuncs.log)
    assert exc.value.errno == errno.EBUSY
    kproc.complete(release)
    kproc.kthread_flush_worker(worker)
    kproc.kthread_init_work(work, wfuncs.log)
    assert work.func is wfuncs.log
    kproc.kthread_queue_work(worker, work)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["new"]


def test_destroy_worker_flushes_stops_and_invalidates(rt, log_path):
    w = kproc.kthread_create_worker(0, "kw_destroy")
    pid = w.task.pid
    release = blocked(w)
    work = kproc.KthreadWork(wfuncs.log, (log_path, "flushed"))
    kproc.kthread_queue_work(w, work)
    kproc.complete(release)
    kproc.kthread_destroy_worker(w)
    assert read_lines(log_path) == ["flushed"]
    wait_until(lambda: process_gone(pid))
    with pytest.raises(kproc.KthreadError) as exc:
        kproc.kthread_queue_work(w, kproc.KthreadWork(wfuncs.noop))
    assert exc.value.errno == errno.ESRCH
    other = kproc.kthread_create_worker(0, "kw_other")
    try:
        with pytest.raises(kproc.KthreadError, match="destroyed"):
            kproc.kthread_queue_work(other, work)     # work of a destroyed worker
    finally:
        kproc.kthread_destroy_worker(other)


def test_destroy_warns_about_delayed_works_left(rt):
    w = kproc.kthread_create_worker(0, "kw_left")
    dwork = kproc.KthreadDelayedWork(wfuncs.noop)
    kproc.kthread_queue_delayed_work(w, dwork, 100)
    with pytest.warns(kproc.KernelWarning, match="still queued or delayed"):
        kproc.kthread_destroy_worker(w)


def test_destroy_worker_without_a_kthread_warns(rt):
    w = kproc.KthreadWorker()
    with pytest.warns(kproc.KernelWarning):
        kproc.kthread_destroy_worker(w)
