"""Work and worker handles: pickling, equality, stale copies of a freed slot
(kproc/_workqueue/handles.py on kproc/_core/handle.py)."""

import errno
import gc
import pickle

import pytest

import kproc
from fns import work as wfuncs
from fns.work import read_lines


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


def test_handles_are_picklable_and_survive_the_trip(worker, log_path):
    work = kproc.KthreadWork(wfuncs.log, (log_path, "p"))
    w2, work2 = pickle.loads(pickle.dumps((worker, work)))
    assert w2 == worker and work2 == work and work2.data == (log_path, "p")
    assert kproc.kthread_queue_work(w2, work2)
    kproc.kthread_flush_work(work)
    assert read_lines(log_path) == ["p"]
