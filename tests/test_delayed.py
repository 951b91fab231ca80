"""Delayed works: timers, mod, cancel, flush, and the 2021 mod/cancel race fixes."""

import time

import pytest

import kproc
from fns import work as wfuncs
from fns.work import read_lines
from helpers import wait_until


@pytest.fixture
def log_path(tmp_path):
    return str(tmp_path / "log")


@pytest.fixture
def worker(rt):
    w = kproc.kthread_create_worker(0, "kdw")
    yield w
    if w.task is not None:
        kproc.kthread_destroy_worker(w)


def blocked(worker):
    started, release = kproc.Completion(), kproc.Completion()
    kproc.kthread_queue_work(worker, kproc.KthreadWork(wfuncs.block, (started, release)))
    kproc.wait_for_completion(started)
    return release


def wait_past(t):
    """Wait until the monotonic clock passes ``t`` (the property under test is time)."""
    wait_until(lambda: time.monotonic() > t, timeout=5.0, interval=0.001)


def test_delay_zero_queues_at_once(worker, log_path):
    release = blocked(worker)
    dwork = kproc.KthreadDelayedWork(wfuncs.log, (log_path, "d"))
    assert kproc.kthread_queue_delayed_work(worker, dwork, 0) is True
    assert worker.queued == 1 and worker.delayed == 0
    assert kproc.kthread_queue_delayed_work(worker, dwork, 0) is False
    kproc.complete(release)
    kproc.kthread_flush_worker(worker)
    assert read_lines(log_path) == ["d"]


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
