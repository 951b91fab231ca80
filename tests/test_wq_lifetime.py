"""Work slot lifetime: dropped works are recycled, a full table raises ENOMEM
(kproc/_workqueue/lifetime.py)."""

import errno

import pytest

import kproc
from fns import work as wfuncs
from fns.work import read_lines


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
