"""sched_set_fifo(), sched_set_fifo_low(), sched_set_normal() (SPEC §3; kernel/sched/
syscalls.c: FIFO at MAX_RT_PRIO / 2 = 50, low at 1, normal at a nice level)."""

import os

import pytest

import kproc
from fns import kthread as kfuncs

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def task(rt):
    started = kproc.Completion()
    t = kproc.kthread_run(kfuncs.loop_until_stop, started, "policy")
    kproc.wait_for_completion(started)
    yield t
    kproc.kthread_stop(t)


def _can_rt():
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


needs_rt = pytest.mark.skipif(not _can_rt(), reason="SCHED_FIFO needs CAP_SYS_NICE here")


@needs_rt
def test_sched_set_fifo_is_fifo_at_half_max_rt_prio(task):
    kproc.sched_set_fifo(task)
    assert os.sched_getscheduler(task.pid) == os.SCHED_FIFO
    assert os.sched_getparam(task.pid).sched_priority == 50


@needs_rt
def test_sched_set_fifo_low_is_fifo_at_1(task):
    kproc.sched_set_fifo_low(task)
    assert os.sched_getscheduler(task.pid) == os.SCHED_FIFO
    assert os.sched_getparam(task.pid).sched_priority == 1


@needs_rt
def test_sched_set_normal_goes_back_at_a_nice_level(task):
    kproc.sched_set_fifo(task)
    kproc.sched_set_normal(task, 5)
    assert os.sched_getscheduler(task.pid) == os.SCHED_OTHER
    assert os.getpriority(os.PRIO_PROCESS, task.pid) == 5


def test_bad_arguments_are_refused_before_anything_changes(task):
    with pytest.raises(TypeError):
        kproc.sched_set_fifo(os.getpid())
    for bad, exc in ((20, ValueError), (-21, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc):
            kproc.sched_set_normal(task, bad)
    assert os.sched_getscheduler(task.pid) == os.SCHED_OTHER
