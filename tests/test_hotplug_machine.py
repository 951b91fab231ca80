"""The hotplug state machine (kproc/_hotplug/machine.py, ap_thread.py, callbacks.py,
cpuhp.py; kernel/cpu.c): the order of the states, where AP and BP callbacks
run, rollback, cpuhp_setup_state/cpuhp_remove_state over the CPUs, affinities
following hotplug, faults of the cpuhp kthread and of callers.

Every test runs on a fake sysfs tree, and again on the real /sys when this
runs as root with a writable ``cpuN/online``; each brings every CPU back.
"""

import errno
import os
import signal
import time

import psutil
import pytest

import kproc
from kproc._hotplug import record as hprecord
from fns import hotplug as hpfuncs
from helpers import HP_MODES, all_online, hotplug_env, live_kthreads, wait_until

pytestmark = pytest.mark.timeout(60)

hp = pytest.fixture(params=HP_MODES)(hotplug_env)
AP, BP = kproc.CPUHP_AP_ONLINE_DYN, kproc.CPUHP_BP_PREPARE_DYN


def _states(hp, section=AP):
    a = kproc.cpuhp_setup_state(section, "test:a", hpfuncs.up_a, hpfuncs.down_a)
    b = kproc.cpuhp_setup_state(section, "test:b", hpfuncs.up_b, hpfuncs.down_b)
    c = kproc.cpuhp_setup_state(section, "test:c", hpfuncs.up_c, hpfuncs.down_c)
    assert a >= section and b > a and c > b
    hp.clear()
    return a, b, c


def _where(hp, what):
    """{field: value} of each where() line for ``what``."""
    out = []
    for entry in hp.log():
        if entry[0] == what:
            fields = dict(f.split("=") for f in entry[3:])
            out.append((int(entry[1]), entry[2] == "1", int(fields["on"]),
                        set(map(int, fields["aff"].split(","))), int(fields["pid"])))
    return out


# -- order ----------------------------------------------------------------------------

def test_teardown_in_reverse_before_write_startup_in_order_after(hp):
    """cpu.c cpuhp_down_callbacks(): "for (; st->state > target; st->state--)";
    cpuhp_up_callbacks(): "while (st->state < target) { st->state++; ...}": AP
    teardowns newest state first while the CPU is online, startups oldest first
    once it is online again."""
    _states(hp)
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        assert not hp.online() and hp.cpu not in kproc.cpu_online_mask()
        assert hp.log() == [("down_c", str(hp.cpu), "1"), ("down_b", str(hp.cpu), "1"),
                            ("down_a", str(hp.cpu), "1")]
        hp.clear()
        assert kproc.cpu_up(hp.cpu) == 0
        assert hp.online()
        assert hp.log() == [("up_a", str(hp.cpu), "1"), ("up_b", str(hp.cpu), "1"),
                            ("up_c", str(hp.cpu), "1")]
    finally:
        all_online(hp.root)


def test_bp_states_run_before_bringup_and_after_death_around_the_ap_states(hp):
    """cpuhotplug.h: PREPARE states come before CPUHP_BRINGUP_CPU ("invoked on a
    control CPU ... before the CPU is brought up"; their teardown "after the CPU
    is dead"), ONLINE states after: up = bp startups, write, ap startups; down =
    ap teardowns, write, bp teardowns."""
    kproc.cpuhp_setup_state(AP, "test:ap", hpfuncs.ap_up, hpfuncs.ap_down)
    kproc.cpuhp_setup_state(BP, "test:bp", hpfuncs.bp_up, hpfuncs.bp_down)
    hp.clear()
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        assert [(w, on) for w, _c, on, *_ in hp.log()] == [("ap_down", "1"), ("bp_down", "0")]
        hp.clear()
        assert kproc.cpu_up(hp.cpu) == 0
        assert [(w, on) for w, _c, on, *_ in hp.log()] == [("bp_up", "0"), ("ap_up", "1")]
    finally:
        all_online(hp.root)


def test_ap_callbacks_run_on_their_cpu_bp_callbacks_on_the_control_side(hp):
    """Issue #10 item 3 (all callbacks ran in one cpuhp kthread with affinity
    {0,1}); cpuhotplug.h: ONLINE-section callbacks "are invoked on the hotplugged
    CPU from the per CPU hotplug thread", PREPARE ones "on a control CPU"."""
    kproc.cpuhp_setup_state(AP, "test:ap", hpfuncs.ap_up, hpfuncs.ap_down)
    kproc.cpuhp_setup_state(BP, "test:bp", hpfuncs.bp_up, hpfuncs.bp_down)
    host = hp.rt.topology.host_online()
    ap = _where(hp, "ap_up")
    assert sorted(cpu for cpu, *_ in ap) == sorted(kproc.cpu_online_mask())
    for cpu, online, on, aff, pid in ap:
        assert online
        if cpu in host:                     # a modelled CPU has no real binding
            assert on == cpu and aff == {cpu}, (cpu, on, aff)
    assert len({pid for *_, pid in ap}) == len(ap)          # one cpuhp/N per CPU
    bp = _where(hp, "bp_up")
    assert len({pid for *_, pid in bp}) == 1 and bp[0][4] not in {p for *_, p in ap}
    hp.clear()
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        [(cpu, online, on, aff, _)] = _where(hp, "ap_down")
        assert cpu == hp.cpu and online
        if cpu in host:
            assert on == cpu and aff == {cpu}
        [(cpu, online, *_)] = _where(hp, "bp_down")
        assert cpu == hp.cpu and not online
    finally:
        all_online(hp.root)


# -- rollback ------------------------------------------------------------------------

def test_teardown_failure_rolls_back_and_keeps_cpu_online(hp):
    _states(hp)
    hp.fail("down_b", hp.cpu)
    assert kproc.cpu_down(hp.cpu) == -errno.EINVAL
    assert hp.online()
    assert [w for w, *_ in hp.log()] == ["down_c", "down_b", "up_c"]


def test_startup_failure_rolls_back_and_offlines(hp):
    _states(hp)
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        hp.clear()
        hp.fail("up_b", hp.cpu)
        assert kproc.cpu_up(hp.cpu) == -errno.EINVAL
        assert [w for w, *_ in hp.log()] == ["up_a", "up_b", "down_a"]
        assert not hp.online()
    finally:
        all_online(hp.root)


def test_bp_startup_failure_writes_nothing(hp):
    _states(hp, BP)
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        hp.clear()
        hp.fail("up_b", hp.cpu)
        assert kproc.cpu_up(hp.cpu) == -errno.EINVAL
        assert [w for w, *_ in hp.log()] == ["up_a", "up_b", "down_a"]
        assert not hp.online()
    finally:
        all_online(hp.root)


@pytest.mark.parametrize("section", [AP, BP])
def test_setup_state_rolls_back_in_ascending_cpu_order(hp, section):
    """Issue #10 item 7: the rollback tore down in descending CPU order; cpu.c
    cpuhp_rollback_install() walks for_each_present_cpu (ascending) and stops at
    the failed CPU; __cpuhp_remove_state_cpuslocked() walks for_each_present_cpu
    too."""
    online = sorted(kproc.cpu_online_mask())
    a = kproc.cpuhp_setup_state(section, "test:a", hpfuncs.up_a, hpfuncs.down_a)
    assert [(w, c) for w, c in hp.what()] == [("up_a", c) for c in online]
    hp.clear()
    hp.fail("up_b", online[-1])
    assert kproc.cpuhp_setup_state(section, "test:b", hpfuncs.up_b, hpfuncs.down_b) == \
        -errno.EINVAL
    assert hp.what() == [("up_b", c) for c in online] + [("down_b", c) for c in online[:-1]]
    hp.clear()
    kproc.cpuhp_remove_state(a)
    assert hp.what() == [("down_a", c) for c in online]
    with pytest.raises(ValueError):
        kproc.cpuhp_remove_state(a)


def test_callback_that_raises_fails_with_efault(hp):
    assert kproc.cpuhp_setup_state(AP, "test:raise", hpfuncs.raises, None) == -errno.EFAULT


# -- affinities ----------------------------------------------------------------------

def test_preferred_affinity_follows_hotplug(hp):
    started = kproc.Completion()
    task = kproc.kthread_create(hpfuncs.preferred_loop, started, "pref")
    assert kproc.kthread_affine_preferred(task, {hp.cpu}) == 0
    kproc.wake_up_process(task)
    kproc.wait_for_completion(started)
    try:
        assert os.sched_getaffinity(task.pid) == {hp.cpu}
        assert kproc.cpu_down(hp.cpu) == 0
        assert hp.cpu not in os.sched_getaffinity(task.pid)
        assert kproc.cpu_up(hp.cpu) == 0
        assert os.sched_getaffinity(task.pid) == {hp.cpu}
    finally:
        all_online(hp.root)
        kproc.kthread_stop(task)


def test_node_affinity_follows_hotplug(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=2, nodes={0: {0}, 1: {1}})
    with kproc.start(sysfs_root=root):
        started = kproc.Completion()
        task = kproc.kthread_create_on_node(hpfuncs.preferred_loop, started, 1, "node1")
        kproc.wake_up_process(task)
        kproc.wait_for_completion(started)
        wait_until(lambda: os.sched_getaffinity(task.pid) == {1})
        assert kproc.cpu_down(1) == 0
        assert os.sched_getaffinity(task.pid) == {0}
        assert kproc.cpu_up(1) == 0
        assert os.sched_getaffinity(task.pid) == {1}
        kproc.kthread_stop(task)


# -- faults ---------------------------------------------------------------------------

def test_killed_cpuhp_is_replaced(hp):
    assert kproc.cpuhp_setup_state(AP, "test:a", hpfuncs.up_a, hpfuncs.down_a) > 0
    pid = kproc._core.layout.unpack_field(hp.rt.buf, hprecord.cpuhp_task_base(hp.rt),
                                          kproc._core.layout.TASK, "pid")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: hprecord.cpuhp_dead(hp.rt))
    try:
        assert kproc.cpu_down(hp.cpu) == 0      # a fresh cpuhp, without the old states
        assert kproc.cpu_up(hp.cpu) == 0
    finally:
        all_online(hp.root)
    assert [w for w, *_ in hp.log()] == ["up_a"] * len(kproc.cpu_online_mask())


def test_caller_killed_mid_request_leaves_hotplug_usable(hp):
    task = kproc.kthread_run(hpfuncs.hotplug_forever, hp.cpu, "hpcaller")
    owner = hprecord.hp_base(hp.rt) + hprecord.H.owner
    wait_until(lambda: hp.rt.mem.load32(owner) == task.pid,
               10.0, interval=0.0002)
    os.kill(task.pid, signal.SIGKILL)
    try:
        assert kproc.kthread_stop(task) == -errno.EOWNERDEAD
        kproc.cpu_up(hp.cpu)                  # steals the dead caller's lock
        assert hp.online() and kproc.cpu_down(hp.cpu) == 0 and kproc.cpu_up(hp.cpu) == 0
    finally:
        all_online(hp.root)


def test_killed_kthreadd_ends_a_hotplug_call(hp):
    """SPEC §5: kthreadd's death ends a hotplug call with an error within 1 s.

    The cpuhp kthread dies of PDEATHSIG a moment after kthreadd; a call made in
    that moment may still complete, so the call is made once it is gone.
    """
    assert kproc.cpuhp_setup_state(AP, "test:a", hpfuncs.up_a, hpfuncs.down_a) > 0
    kthreads = live_kthreads(hp.rt)
    os.kill(hp.rt.kthreadd_pid, signal.SIGKILL)
    psutil.wait_procs(kthreads, timeout=5)
    t0 = time.monotonic()
    with pytest.raises(kproc.KthreadError):
        kproc.cpu_down(hp.cpu)
    assert time.monotonic() - t0 < 1.5
