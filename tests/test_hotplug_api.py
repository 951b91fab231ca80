"""The caller side of CPU hotplug (kproc/_hotplug/api.py, cpumask.py; SPEC §3 "CPU
topology and hotplug", §4 "Hotplug"): masks, argument checks, the state
constants and numbers, cpu_down/cpu_up of a CPU already there, hotplug calls
from inside a callback (-EDEADLK) and from several threads and processes at
once (serialised, as the kernel's cpu_add_remove_lock).

Every test runs on a fake sysfs tree, and again on the real /sys when this
runs as root with a writable ``cpuN/online``; each brings every CPU back.
"""

import errno
import os
import threading

import pytest

import kproc
from fns import hotplug as hpfuncs
from helpers import HP_MODES, all_online, hotplug_env, wait_until

pytestmark = pytest.mark.timeout(60)

hp = pytest.fixture(params=HP_MODES)(hotplug_env)


def test_masks_and_hotpluggable(hp):
    assert kproc.cpu_online_mask() <= kproc.cpu_present_mask() <= kproc.cpu_possible_mask()
    assert hp.cpu in kproc.cpu_online_mask()
    assert kproc.housekeeping_cpumask() <= kproc.cpu_online_mask()
    node = kproc.cpu_to_node(hp.cpu)
    assert hp.cpu in kproc.cpumask_of_node(node)
    assert not hp.rt.topology.hotpluggable(0)


def test_isolated_and_nohz_full_leave_housekeeping(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=4, isolated={2}, nohz_full={3},
                            nodes={0: {0, 1}, 1: {2, 3}})
    with kproc.start(sysfs_root=root):
        assert kproc.housekeeping_cpumask() <= {0, 1}
        assert kproc.cpu_to_node(3) == 1 and kproc.cpumask_of_node(1) == {2, 3}


def test_dynamic_state_numbers_are_in_their_section(hp):
    """cpu.c cpuhp_reserve_state(): a dynamic state is the first free number of
    its range, CPUHP_AP_ONLINE_DYN.. or CPUHP_BP_PREPARE_DYN.., so >= the
    constant; a removed number is handed out again."""
    ap, bp = kproc.CPUHP_AP_ONLINE_DYN, kproc.CPUHP_BP_PREPARE_DYN
    assert bp < ap
    a1 = kproc.cpuhp_setup_state(ap, "test:a1", hpfuncs.up_a, None)
    a2 = kproc.cpuhp_setup_state_nocalls(ap, "test:a2", hpfuncs.up_b, None)
    b1 = kproc.cpuhp_setup_state(bp, "test:b1", None, None)
    assert (a1, a2, b1) == (ap, ap + 1, bp)
    assert kproc.cpuhp_remove_state_nocalls(a1) is None
    assert kproc.cpuhp_setup_state(ap, "test:a3", None, None) == ap
    with pytest.raises(ValueError):
        kproc.cpuhp_remove_state(bp + 1)


def test_nocalls_runs_no_callback(hp):
    """cpuhotplug.h cpuhp_setup_state_nocalls / cpuhp_remove_state_nocalls:
    __cpuhp_setup_state(..., invoke=false, ...): no startup, no teardown."""
    state = kproc.cpuhp_setup_state_nocalls(kproc.CPUHP_AP_ONLINE_DYN, "test:a",
                                            hpfuncs.up_a, hpfuncs.down_a)
    assert state >= kproc.CPUHP_AP_ONLINE_DYN and hp.log() == []
    kproc.cpuhp_remove_state_nocalls(state)
    assert hp.log() == []


def test_section_full_is_enospc(hp):
    """cpu.c cpuhp_reserve_state(): "WARN(1, ...); return -ENOSPC" when no dynamic
    slot of the range is free (20 BP_PREPARE_DYN states)."""
    got = [kproc.cpuhp_setup_state_nocalls(kproc.CPUHP_BP_PREPARE_DYN, f"t:{i}", None, None)
           for i in range(21)]
    assert got[:20] == list(range(kproc.CPUHP_BP_PREPARE_DYN, kproc.CPUHP_BP_PREPARE_DYN + 20))
    assert got[20] == -errno.ENOSPC


def test_already_in_that_state_returns_0_and_calls_nothing(hp):
    """SPEC §4: cpu_down/cpu_up of a CPU already in that state return 0 (cpu.c
    _cpu_up(): "if (st->state >= target) goto out" with ret = 0; _cpu_down() the
    same with cpu_present/!cpu_online) and run no callback."""
    kproc.cpuhp_setup_state(kproc.CPUHP_AP_ONLINE_DYN, "test:a", hpfuncs.up_a, hpfuncs.down_a)
    hp.clear()
    assert kproc.cpu_up(hp.cpu) == 0
    assert hp.log() == []
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        hp.clear()
        assert kproc.cpu_down(hp.cpu) == 0
        assert hp.log() == []
    finally:
        all_online(hp.root)


def test_bad_input_raises_before_anything_changes(hp):
    ap = kproc.CPUHP_AP_ONLINE_DYN
    with pytest.raises(ValueError, match="not possible"):
        kproc.cpu_down(4096)
    with pytest.raises(ValueError, match="not hot-pluggable"):
        kproc.cpu_down(0)
    with pytest.raises(TypeError):
        kproc.cpu_up(True)
    with pytest.raises(TypeError):
        kproc.cpu_up("1")
    with pytest.raises(TypeError, match="module level"):
        kproc.cpuhp_setup_state(ap, "x", lambda cpu: 0, None)
    with pytest.raises(TypeError):
        kproc.cpuhp_setup_state(ap, "", hpfuncs.up_a, None)
    with pytest.raises(TypeError):
        kproc.cpuhp_setup_state("test:old-form", hpfuncs.up_a, hpfuncs.down_a)
    with pytest.raises(ValueError, match="CPUHP_AP_ONLINE_DYN"):
        kproc.cpuhp_setup_state(ap + 1, "x", hpfuncs.up_a, None)
    with pytest.raises(TypeError):
        kproc.cpuhp_remove_state("1000")
    with pytest.raises(ValueError, match="%u"):
        kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "name")
    with pytest.raises(TypeError):
        kproc.SmpHotplugThread(hpfuncs.never, 3, "x/%u")
    with pytest.raises(TypeError):
        kproc.smpboot_register_percpu_thread(object())
    assert hp.log() == [] and hp.online()


def test_refuses_to_offline_the_last_online_cpu(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=2, online={0, 1})
    with open(os.path.join(root, "devices/system/cpu/cpu0/online"), "w") as f:
        f.write("0")       # a tree where cpu0 is hot-pluggable, and offline
    kproc._core.topology.Topology(root)._rewrite_online()
    with kproc.start(sysfs_root=root):
        with pytest.raises(ValueError, match="last online CPU"):
            kproc.cpu_down(1)


def test_real_sysfs_needs_root():
    """Not root: a clear PermissionError and no change.  As root, the caller drops its
    effective uid to nobody's for the call (the real uid stays root to take it back)."""
    with kproc.start():
        online = kproc.cpu_online_mask()
        was_root = os.geteuid() == 0
        if was_root:
            os.seteuid(65534)
        try:
            with pytest.raises(PermissionError, match="root"):
                kproc.cpu_down(max(online))
        finally:
            if was_root:
                os.seteuid(0)
        assert kproc.cpu_online_mask() == online


# -- hotplug calls from inside a callback: -EDEADLK ------------------------------------

def _nested(hp):
    path = os.path.join(hp.logdir, "nested")
    with open(path) as f:
        return [int(x) for x in f.read().split()]


@pytest.mark.parametrize("state", ["AP", "BP"])
def test_hotplug_call_from_a_callback_is_edeadlk(hp, state):
    """SPEC §3: a hotplug call made from inside a hotplug callback returns -EDEADLK:
    in the kernel the callback runs with cpu_add_remove_lock held (cpu.c
    cpu_maps_update_begin() in _cpu_up/_cpu_down and __cpuhp_setup_state), so
    cpu_down() from it would deadlock.  The outer call goes on."""
    section = getattr(kproc, f"CPUHP_{state}_{'ONLINE' if state == 'AP' else 'PREPARE'}_DYN")
    st = kproc.cpuhp_setup_state(section, "test:nested", hpfuncs.nested_down, None)
    assert st >= section
    assert _nested(hp) == [-errno.EDEADLK] * len(kproc.cpu_online_mask())
    st2 = kproc.cpuhp_setup_state(section, "test:nested2", hpfuncs.nested_setup, None)
    assert st2 > st and _nested(hp)[-1] == -errno.EDEADLK
    assert hp.online()


def test_hotplug_call_from_an_smpboot_park_callback_is_edeadlk(hp):
    """smpboot.c smpboot_thread_fn(): ht->park() runs while cpu_down() waits for
    the park (kthread_park in smpboot_park_threads, under the hotplug lock)."""
    ht = kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hpnest/%u",
                                setup=hpfuncs.setup, park=hpfuncs.nested_park)
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    try:
        wait_until(lambda: ("setup", str(hp.cpu), "1") in hp.log())
        assert kproc.cpu_down(hp.cpu) == 0
        assert _nested(hp) == [-errno.EDEADLK]
    finally:
        all_online(hp.root)
        kproc.smpboot_unregister_percpu_thread(ht)


# -- concurrency: every other caller waits its turn ------------------------------------

def test_two_threads_of_one_process_are_serialised(hp):
    """Issue #10 item 8: the lock was owned by pid, so a second thread of the
    caller got EDEADLK; cpu.c serialises every caller on cpu_add_remove_lock
    (cpu_maps_update_begin: mutex_lock), none is refused."""
    kproc.cpuhp_setup_state(kproc.CPUHP_AP_ONLINE_DYN, "test:a", hpfuncs.up_a, hpfuncs.down_a)
    errors, results = [], []

    def slow():
        try:
            results.append(kproc.cpuhp_setup_state(kproc.CPUHP_BP_PREPARE_DYN, "test:slow",
                                                   hpfuncs.slow_up, None))
        except Exception as exc:
            errors.append(exc)
    t = threading.Thread(target=slow)
    t.start()
    try:
        for _ in range(3):
            assert kproc.cpu_down(hp.cpu) == 0
            assert kproc.cpu_up(hp.cpu) == 0
    finally:
        t.join(20)
        all_online(hp.root)
    assert errors == [] and results == [kproc.CPUHP_BP_PREPARE_DYN]
    assert hp.what().count(("down_a", hp.cpu)) == 3


def test_two_processes_are_serialised(hp):
    """cpu_add_remove_lock across processes: a kthread cycling the CPU and the
    caller adding and removing states meanwhile; every call succeeds and the
    log pairs each teardown with a startup."""
    kproc.cpuhp_setup_state(kproc.CPUHP_AP_ONLINE_DYN, "test:a", hpfuncs.up_a, hpfuncs.down_a)
    hp.clear()
    started = kproc.Completion()
    task = kproc.kthread_run(hpfuncs.hotplug_n_times, (hp.cpu, 3, started), "hpcycler")
    kproc.wait_for_completion(started)
    try:
        for i in range(5):
            st = kproc.cpuhp_setup_state(kproc.CPUHP_BP_PREPARE_DYN, f"t:{i}", None, None)
            assert st == kproc.CPUHP_BP_PREPARE_DYN
            assert kproc.cpuhp_remove_state(st) is None
        assert kproc.kthread_stop(task) == 0
    finally:
        all_online(hp.root)
    downs = [e for e in hp.what() if e[0] == "down_a"]
    ups = [e for e in hp.what() if e[0] == "up_a"]
    assert len(downs) == 3 and len(ups) == 3
