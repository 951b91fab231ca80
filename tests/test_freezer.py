"""The freezer: freeze_kthreads / thaw_kthreads, set_freezable, try_to_freeze,
kthread_freezable_should_stop, KTW_FREEZABLE workers."""

import errno

import pytest

import kproc
from fns import work as wfuncs
from fns.work import read_lines
from helpers import wait_until


def count(path):
    return len(read_lines(path))


def test_freeze_stops_freezable_kthreads_only(rt, tmp_path):
    fpath, ppath = str(tmp_path / "f"), str(tmp_path / "p")
    s1, s2 = kproc.Completion(), kproc.Completion()
    frz = kproc.kthread_run(wfuncs.freezable_counter, (fpath, s1), "frz")
    plain = kproc.kthread_run(wfuncs.plain_counter, (ppath, s2), "plain")
    kproc.wait_for_completion(s1)
    kproc.wait_for_completion(s2)
    try:
        kproc.freeze_kthreads(timeout=5)
        assert kproc.task_state(frz) == kproc.TASK_FROZEN
        frozen_at, plain_at = count(fpath), count(ppath)
        wait_until(lambda: count(ppath) >= plain_at + 5)       # the other one runs on
        assert count(fpath) == frozen_at
        assert kproc.task_state(frz) == kproc.TASK_FROZEN
    finally:
        kproc.thaw_kthreads()
    wait_until(lambda: count(fpath) >= frozen_at + 3)
    assert kproc.kthread_stop(frz) == 0
    assert kproc.kthread_stop(plain) == 0


def test_freeze_timeout_names_the_kthreads_and_thaws(rt, tmp_path):
    fpath = str(tmp_path / "f")
    s1, s2 = kproc.Completion(), kproc.Completion()
    stuck = kproc.kthread_run(wfuncs.freezable_but_stuck, s1, "stuck")
    good = kproc.kthread_run(wfuncs.freezable_counter, (fpath, s2), "good")
    kproc.wait_for_completion(s1)
    kproc.wait_for_completion(s2)
    with pytest.raises(kproc.KthreadError) as exc:
        kproc.freeze_kthreads(timeout=0.3)
    assert exc.value.errno == errno.EBUSY
    assert "stuck" in str(exc.value) and "good" not in str(exc.value)
    at = count(fpath)
    wait_until(lambda: count(fpath) >= at + 3)       # thawed after the failure
    assert kproc.kthread_stop(stuck) == 0
    assert kproc.kthread_stop(good) == 0


def test_freezable_worker_runs_nothing_while_frozen(rt, tmp_path):
    path = str(tmp_path / "log")
    w = kproc.kthread_create_worker(kproc.KTW_FREEZABLE, "kfrz")
    try:
        assert w.flags == kproc.KTW_FREEZABLE
        kproc.freeze_kthreads(timeout=5)
        assert kproc.task_state(w.task) == kproc.TASK_FROZEN
        work = kproc.KthreadWork(wfuncs.log, (path, "w"))
        assert kproc.kthread_queue_work(w, work)
        wait_until(lambda: kproc.task_state(w.task) == kproc.TASK_FROZEN)
        assert read_lines(path) == [] and w.queued == 1
        kproc.thaw_kthreads()
        kproc.kthread_flush_worker(w)
        assert read_lines(path) == ["w"]
    finally:
        kproc.thaw_kthreads()
        kproc.kthread_destroy_worker(w)


def test_a_plain_worker_is_not_frozen(rt, tmp_path):
    path = str(tmp_path / "log")
    w = kproc.kthread_create_worker(0, "knofrz")
    try:
        kproc.freeze_kthreads(timeout=5)
        kproc.kthread_queue_work(w, kproc.KthreadWork(wfuncs.log, (path, "ran")))
        kproc.kthread_flush_worker(w)
        assert read_lines(path) == ["ran"]
    finally:
        kproc.thaw_kthreads()
        kproc.kthread_destroy_worker(w)


def test_freezable_should_stop_reports_was_frozen_and_stop_ends_a_freeze(rt, tmp_path):
    path = str(tmp_path / "log")
    started = kproc.Completion()
    t = kproc.kthread_run(wfuncs.freezable_should_stop_loop, (path, started), "fss")
    kproc.wait_for_completion(started)
    kproc.freeze_kthreads(timeout=5)
    kproc.thaw_kthreads()
    wait_until(lambda: read_lines(path) == ["was_frozen"])
    kproc.freeze_kthreads(timeout=5)
    try:
        assert kproc.kthread_stop(t) == 7      # leaves the refrigerator to stop
    finally:
        kproc.thaw_kthreads()


def test_freezer_calls_in_a_kthread_outside_a_freeze(rt):
    started = kproc.Completion()
    t = kproc.kthread_run(wfuncs.in_kthread_freezer_calls, started, "calls")
    kproc.wait_for_completion(started)
    wait_until(lambda: kproc.task_state(t) == kproc.TASK_DEAD)
    assert kproc.kthread_stop(t) == 0          # set_freezable, freezing, try_to_freeze: False


def test_freezer_calls_outside_a_kthread_raise(rt):
    for fn in (kproc.set_freezable, kproc.freezing, kproc.try_to_freeze,
               kproc.kthread_freezable_should_stop):
        with pytest.raises(RuntimeError, match="kthread"):
            fn()
    with pytest.raises(ValueError):
        kproc.freeze_kthreads(timeout=-1)
    with pytest.raises(TypeError):
        kproc.freeze_kthreads(timeout="1")
