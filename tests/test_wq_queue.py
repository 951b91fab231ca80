"""kthread_queue_work(): pending works are not queued twice, a work is tied to one worker,
any process may queue (kproc/_workqueue/queue.py; kernel/kthread.c 6.15
kthread_queue_work, queuing_blocked, kthread_insert_work)."""

import pytest

import kproc
from fns import work as wfuncs
from fns.work import read_lines
from helpers import blocked, wait_until


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
