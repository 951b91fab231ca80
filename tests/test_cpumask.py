"""CPU masks of a runtime, on a fake sysfs tree and on the real one (SPEC §3)."""

import os

import pytest

import kproc
from fns import kthread as kfuncs

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fake_rt(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=8, online={0, 1, 2, 3, 5},
                            nodes={0: {0, 1, 2, 3}, 1: {4, 5, 6, 7}}, isolated={2})
    with kproc.start(sysfs_root=root) as rt:
        yield rt


def test_masks_follow_the_fake_tree(fake_rt):
    assert kproc.cpu_possible_mask() == frozenset(range(8))
    assert kproc.cpu_present_mask() == frozenset(range(8))
    assert kproc.cpu_online_mask() == {0, 1, 2, 3, 5}
    # housekeeping: online − isolated, within what kthreadd may use (host CPUs plus
    # the CPUs the host lacks, which are modelled)
    assert kproc.housekeeping_cpumask() == {0, 1, 3, 5} & (
        set(os.sched_getaffinity(0)) | set(range(2, 8)))
    assert kproc.cpu_to_node(5) == 1
    assert kproc.cpumask_of_node(1) == {4, 5, 6, 7}
    assert kproc.cpumask_of_node(kproc.NUMA_NO_NODE) == {0, 1, 2, 3, 5}


def test_mask_function_errors(fake_rt):
    with pytest.raises(ValueError):
        kproc.cpu_to_node(8)
    with pytest.raises(ValueError):
        kproc.cpumask_of_node(2)
    with pytest.raises(TypeError):
        kproc.cpumask_of_node("1")


def test_binding_to_a_modelled_cpu_is_recorded_not_applied(fake_rt):
    host = set(os.sched_getaffinity(0))
    modelled = max(set(range(8)) - host - {0})
    task = kproc.kthread_create(kfuncs.affinity_mask, None, "modelled")
    kproc.kthread_bind(task, modelled)                      # possible: accepted
    assert kproc._kthread.affinity.recorded_mask(fake_rt, task._base, "bound") == {modelled}
    assert os.sched_getaffinity(task.pid) <= host           # nothing impossible applied
    kproc.kthread_stop(task)


def test_node_affinity_on_the_fake_tree(fake_rt):
    started = kproc.Completion()
    task = kproc.kthread_create_on_node(kfuncs.affinity_mask, started, 0, "n0")
    kproc.wake_up_process(task)
    kproc.wait_for_completion(started)
    bits = kproc.kthread_stop(task)
    expected = fake_rt.topology.applicable(kproc.cpumask_of_node(0) &
                                           kproc.housekeeping_cpumask())
    assert expected and {c for c in range(64) if bits >> c & 1} == expected


def test_real_masks_agree_with_the_os(rt):
    assert kproc.cpu_online_mask() >= set(os.sched_getaffinity(0))
    assert kproc.housekeeping_cpumask() <= kproc.cpu_online_mask()
    assert kproc.cpu_possible_mask() >= kproc.cpu_online_mask()
