"""Park, unpark, bind, per-CPU and preferred affinity (SPEC §4 "Lifecycle")."""

import errno
import os

import pytest

import kproc
from fns import kthread as kfuncs
from helpers import wait_until

pytestmark = pytest.mark.timeout(30)


def _running_loop(name="parker"):
    started = kproc.Completion()
    task = kproc.kthread_run(kfuncs.park_loop, (started,), name)
    kproc.wait_for_completion(started)
    return task


def test_park_waits_until_parked_and_unpark_resumes(rt):
    task = _running_loop()
    assert kproc.kthread_park(task) == 0
    assert kproc.task_state(task) == kproc.TASK_PARKED
    assert rt.mem.load32(task._base + kproc._core.layout.TASK.sleeping) == 1
    kproc.kthread_unpark(task)
    wait_until(lambda: kproc.task_state(task) != kproc.TASK_PARKED)
    assert kproc.kthread_park(task) == 0           # parks again after an unpark
    kproc.kthread_unpark(task)
    assert kproc.kthread_stop(task) == 3


def test_park_twice_returns_ebusy(rt):
    task = _running_loop()
    assert kproc.kthread_park(task) == 0
    with pytest.warns(kproc.KernelWarning):
        assert kproc.kthread_park(task) == -errno.EBUSY
    assert kproc.kthread_stop(task) == 3


def test_park_of_exited_kthread_returns_enosys(rt):
    task = kproc.kthread_run(kfuncs.ret_value, 0, "gone")
    kproc.kthread_stop(task)
    with pytest.warns(kproc.KernelWarning):
        assert kproc.kthread_park(task) == -errno.ENOSYS


def test_parking_a_never_woken_kthread_does_not_call_threadfn(rt):
    done = kproc.Completion()
    task = kproc.kthread_create(kfuncs.complete_then_return, (done, 4), "newpark")
    assert kproc.kthread_park(task) == 0
    assert kproc.task_state(task) == kproc.TASK_PARKED
    assert not kproc.completion_done(done)
    kproc.kthread_unpark(task)
    kproc.wait_for_completion(done)
    assert kproc.kthread_stop(task) == 4


def test_stop_of_parked_kthread_unparks_and_stops(rt):
    task = _running_loop()
    assert kproc.kthread_park(task) == 0
    assert kproc.kthread_stop(task) == 3


def test_park_from_the_kthread_itself_only_sets_the_bit(rt):
    comp = kproc.Completion()
    task = kproc.kthread_run(kfuncs.park_self, (comp,), "selfpark")
    kproc.wait_for_completion(comp)
    assert kproc.kthread_stop(task) == 1        # rc 0, should_park True


def test_unpark_without_park_is_a_noop(rt):
    task = _running_loop()
    kproc.kthread_unpark(task)
    assert kproc.kthread_stop(task) == 3


def test_bind_before_wake_sets_affinity_and_no_setaffinity(rt):
    cpu = max(rt.topology.applicable(rt.housekeeping()))
    started = kproc.Completion()
    task = kproc.kthread_create(kfuncs.affinity_mask, started, "bound")
    kproc.kthread_bind(task, cpu)
    assert os.sched_getaffinity(task.pid) == {cpu}
    kproc.wake_up_process(task)
    kproc.wait_for_completion(started)
    assert kproc.kthread_stop(task) == 1 << cpu    # not re-affined to its node


def test_bind_after_wake_warns_and_changes_nothing(rt):
    started = kproc.Completion()
    task = kproc.kthread_run(kfuncs.affinity_mask, started, "late")
    kproc.wait_for_completion(started)
    before = os.sched_getaffinity(task.pid)
    with pytest.warns(kproc.KernelWarning):
        kproc.kthread_bind(task, 0)
    assert os.sched_getaffinity(task.pid) == before
    kproc.kthread_stop(task)


def test_bind_mask(rt):
    cpus = rt.topology.applicable(rt.housekeeping())
    started = kproc.Completion()
    task = kproc.kthread_create(kfuncs.affinity_mask, started, "bm")
    kproc.kthread_bind_mask(task, cpus)
    kproc.wake_up_process(task)
    kproc.wait_for_completion(started)
    mask = kproc.kthread_stop(task)
    assert {c for c in range(8) if mask >> c & 1} == set(cpus)


def test_create_on_cpu_binds_and_names_with_cpu(rt):
    cpu = max(rt.topology.applicable(rt.housekeeping()))
    started = kproc.Completion()
    task = kproc.kthread_create_on_cpu(kfuncs.affinity_mask, started, cpu, "percpu/%u")
    assert task.comm == f"percpu/{cpu}"
    assert task.cpu == cpu
    kproc.wake_up_process(task)
    kproc.wait_for_completion(started)
    assert kproc.kthread_stop(task) == 1 << cpu


def test_run_on_cpu(rt):
    started = kproc.Completion()
    task = kproc.kthread_run_on_cpu(kfuncs.affinity_mask, started, 0, "r/%u")
    kproc.wait_for_completion(started)
    assert kproc.kthread_stop(task) == 1


def test_set_per_cpu_and_is_per_cpu(rt):
    task = kproc.kthread_create_on_cpu(kfuncs.ret_value, 0, 0, "pc/%u")
    assert kproc.kthread_is_per_cpu(task) is False
    kproc.kthread_set_per_cpu(task, 0)
    assert kproc.kthread_is_per_cpu(task) is True
    kproc.kthread_set_per_cpu(task, -1)
    assert kproc.kthread_is_per_cpu(task) is False
    kproc.kthread_stop(task)


def test_set_per_cpu_on_unbound_kthread_warns(rt):
    task = kproc.kthread_create(kfuncs.ret_value, 0, "unbound")
    with pytest.warns(kproc.KernelWarning):
        kproc.kthread_set_per_cpu(task, 0)
    kproc.kthread_stop(task)


def test_unpark_rebinds_a_per_cpu_kthread(rt):
    """kthread.c 6.15 ``kthread_unpark``: a per-CPU kthread is bound to its CPU
    again (``__kthread_bind``) before it is woken.  The kthread parks before its
    threadfn ran and then runs ``park_loop``, which stays alive until stopped."""
    started = kproc.Completion()
    task = kproc.kthread_create_on_cpu(kfuncs.park_loop, (started,), 0, "rebind/%u")
    kproc.kthread_set_per_cpu(task, 0)
    assert kproc.kthread_park(task) == 0
    os.sched_setaffinity(task.pid, rt.topology.applicable(rt.housekeeping()))
    kproc.kthread_unpark(task)
    kproc.wait_for_completion(started)
    assert os.sched_getaffinity(task.pid) == {0}
    assert kproc.kthread_stop(task) == 3


def test_affine_preferred_before_wake(rt):
    started = kproc.Completion()
    task = kproc.kthread_create(kfuncs.affinity_mask, started, "pref")
    assert kproc.kthread_affine_preferred(task, {0}) == 0
    kproc.wake_up_process(task)
    kproc.wait_for_completion(started)
    assert kproc.kthread_stop(task) == 1


def test_affine_preferred_after_wake_is_einval(rt):
    started = kproc.Completion()
    task = kproc.kthread_run(kfuncs.affinity_mask, started, "pref2")
    kproc.wait_for_completion(started)
    with pytest.warns(kproc.KernelWarning):
        assert kproc.kthread_affine_preferred(task, {0}) == -errno.EINVAL
    kproc.kthread_stop(task)


def test_create_on_node_affines_to_node_cpus_after_wake(rt):
    started = kproc.Completion()
    task = kproc.kthread_create_on_node(kfuncs.affinity_mask, started, 0, "node0")
    kproc.wake_up_process(task)
    kproc.wait_for_completion(started)
    mask = kproc.kthread_stop(task)
    expected = rt.topology.applicable(rt.topology.cpumask_of_node(0) & rt.housekeeping())
    assert {c for c in range(64) if mask >> c & 1} == set(expected)


def test_get_and_put_task_struct(rt):
    task = kproc.kthread_run(kfuncs.ret_value, 1, "ref")
    assert kproc.get_task_struct(task) is task
    wait_until(lambda: kproc.task_state(task) == kproc.TASK_DEAD)
    assert kproc.kthread_stop_put(task) == 1
    with pytest.warns(kproc.KernelWarning):
        kproc.put_task_struct(task)
