"""kthread_worker: creation, queueing, flushing, cancelling, destroying (kthread.c 6.15)."""

import errno
import gc
import os
import pickle
import signal

import psutil
import pytest

import kproc
from fns import work as wfuncs
from fns.work import read_lines
from helpers import wait_until, live_kthreads


@pytest.fixture
def log_path(tmp_path):
    return str(tmp_path / "log")


@pytest.fixture
def worker(rt):
    w = kproc.kthread_create_worker(0, "kw/%d", 3)
    yield w
    try:
        if w.task is not None:
            kproc.kthread_destroy_worker(w)
    except kproc.KthreadError:
        pass


def blocked(worker):
    """Queue a work that blocks the worker; return the Completion releasing it."""
    started, release = kproc.Completion(), kproc.Completion()
    kproc.kthread_queue_work(worker, kproc.KthreadWork(wfuncs.block, (started, release)))
    kproc.wait_for_completion(started)
    return release


# -- creation ------------------------------------------------------------------------

def test_create_worker_runs_a_named_kthread(worker):
    task = worker.task
    assert task.name == "kw/3"
    assert psutil.Process(task.pid).name() == "kw/3"
    assert kproc.kthread_func(task) is kproc.kthread_worker_fn
    assert worker.flags == 0 and worker.queued == 0 and worker.executed == 0


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


# -- queueing ------------------------------------------------------------------------

def test_queue_returns_false_while_pending(worker, log_path):
    release = blocked(worker)
    work = kproc.KthreadWork(wfuncs.log, (log_path, "x"))
    assert kproc.kthread_queue_work(worker, work) is True
    assert kproc.kthread_queue_work(worker, work) is False
    assert worker.queued == 1
    kproc.complete(release)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["x"]
    assert kproc.kthread_queue_work(worker, work) is True     # idle again
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["x", "x"] and work.runs == 2


def test_works_run_in_fifo_order_in_the_worker_process(worker, log_path):
    release = blocked(worker)
    works = [kproc.KthreadWork(wfuncs.log_pid, (log_path, str(i))) for i in range(20)]
    assert all(kproc.kthread_queue_work(worker, w) for w in works)
    kproc.complete(release)
    kproc.kthread_flush_worker(worker)
    pid = worker.task.pid
    assert read_lines(log_path) == [f"{i}:{pid}" for i in range(20)]
    assert worker.executed == 21


def test_a_running_work_can_be_queued_again(worker, log_path):
    started, release = kproc.Completion(), kproc.Completion()
    work = kproc.KthreadWork(wfuncs.block_then_log, (log_path, "b", started, release))
    assert kproc.kthread_queue_work(worker, work)
    kproc.wait_for_completion(started)
    assert worker.current_work == work
    assert kproc.kthread_queue_work(worker, work) is True
    kproc.complete_all(release)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["b", "b"]


def test_current_work_is_the_running_work(worker, log_path):
    work = kproc.KthreadWork(wfuncs.mark_current, (log_path, "m"))
    kproc.kthread_queue_work(worker, work)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["m:True"]
    assert worker.current_work is None


def test_a_work_is_tied_to_one_worker(rt, worker):
    other = kproc.kthread_create_worker(0, "kw_other")
    try:
        work = kproc.KthreadWork(wfuncs.noop)
        assert kproc.kthread_queue_work(worker, work)
        kproc.kthread_flush_worker(worker)
        with pytest.warns(kproc.KernelWarning, match="another worker"):
            assert kproc.kthread_queue_work(other, work) is False
        assert work.worker == worker
        kproc.kthread_init_work(work, wfuncs.noop)          # unties it
        assert work.worker is None
        assert kproc.kthread_queue_work(other, work) is True
        kproc.kthread_flush_worker(other)
        assert work.runs == 2
    finally:
        kproc.kthread_destroy_worker(other)


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


def test_any_process_can_queue(worker, log_path):
    work = kproc.KthreadWork(wfuncs.log, (log_path, "from-kthread"))
    t = kproc.kthread_run(wfuncs.queue_from_kthread, (worker, work), "queuer")
    wait_until(lambda: kproc.task_state(t) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(t) == 1
    kproc.kthread_flush_worker(worker)
    inner = kproc.KthreadWork(wfuncs.log, (log_path, "from-work"))
    kproc.kthread_queue_work(worker, kproc.KthreadWork(wfuncs.queue_other, (worker, inner)))
    kproc.kthread_flush_worker(worker)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["from-kthread", "from-work"]


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


# -- flushing ------------------------------------------------------------------------

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


# -- cancelling ----------------------------------------------------------------------

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


# -- destroying, slots, stale handles ------------------------------------------------

def test_destroy_worker_flushes_stops_and_invalidates(rt, log_path):
    w = kproc.kthread_create_worker(0, "kw_destroy")
    pid = w.task.pid
    release = blocked(w)
    work = kproc.KthreadWork(wfuncs.log, (log_path, "flushed"))
    kproc.kthread_queue_work(w, work)
    kproc.complete(release)
    kproc.kthread_destroy_worker(w)
    assert read_lines(log_path) == ["flushed"]
    wait_until(lambda: not psutil.pid_exists(pid) or
               psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
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


def test_a_copy_of_a_freed_work_is_stale(rt):
    work = kproc.KthreadWork(wfuncs.noop)
    copy = pickle.loads(pickle.dumps(work))
    assert copy == work
    del work
    gc.collect()
    kproc.KthreadWork(wfuncs.noop)        # allocation drains deferred frees
    with pytest.raises(kproc.KthreadError) as exc:
        copy.data
    assert exc.value.errno == errno.ESRCH


@pytest.mark.runtime(max_works=32)
def test_dropped_works_are_recycled_in_bounded_memory(rt, log_path):
    w = kproc.kthread_create_worker(0, "kw_churn")
    try:
        for i in range(3000):
            kproc.KthreadWork(wfuncs.noop, i)                 # dropped at once
        for i in range(300):                                  # queue and forget
            kproc.kthread_queue_work(w, kproc.KthreadWork(wfuncs.log, (log_path, str(i))))
            if i % 10 == 9:
                kproc.kthread_flush_worker(w)
        kproc.kthread_flush_worker(w)
        assert read_lines(log_path) == [str(i) for i in range(300)]
    finally:
        kproc.kthread_destroy_worker(w)


@pytest.mark.runtime(max_works=8)
def test_a_full_work_table_raises_enomem(rt):
    keep = [kproc.KthreadWork(wfuncs.noop) for _ in range(8)]
    with pytest.raises(kproc.KthreadError) as exc:
        kproc.KthreadWork(wfuncs.noop)
    assert exc.value.errno == errno.ENOMEM
    assert "max_works" in str(exc.value)
    del keep


def test_handles_are_picklable_and_survive_the_trip(worker, log_path):
    work = kproc.KthreadWork(wfuncs.log, (log_path, "p"))
    w2, work2 = pickle.loads(pickle.dumps((worker, work)))
    assert w2 == worker and work2 == work and work2.data == (log_path, "p")
    assert kproc.kthread_queue_work(w2, work2)
    kproc.kthread_flush_work(work)
    assert read_lines(log_path) == ["p"]
