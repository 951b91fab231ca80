"""CPU hotplug (SPEC §3 "CPU topology and hotplug", §4 "Hotplug"): cpuhp states,
cpu_down/cpu_up with rollback, smpboot per-CPU threads, affinities following
hotplug, changes made by someone else.

Every test runs on a fake sysfs tree, and again on the real /sys when this
runs as root with a writable ``cpuN/online`` (``KPROC_REAL_HOTPLUG=0`` turns
that off).  Each test brings every CPU back online in ``finally``.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

import kproc
from kproc._hotplug import hotplug_threads, record as hprecord
from kproc._hotplug.uevent import attach_cpu_uevent_filter
from helpers import REAL_CPU_DIR, all_online, live_kthreads, real_hotplug_cpu, wait_until
from fns import hotplug as hpfuncs

pytestmark = pytest.mark.timeout(60)

MODES = ["fake"] + (["real"] if real_hotplug_cpu() is not None else [])


class Hotplug:
    """What a test needs: the runtime, the CPU it toggles, where callbacks log."""

    def __init__(self, rt, root, cpu, logdir):
        self.rt, self.root, self.cpu, self.logdir = rt, root, cpu, logdir

    def log(self):
        return hpfuncs.read_log(self.logdir)

    def clear(self):
        try:
            os.unlink(os.path.join(self.logdir, "log"))
        except FileNotFoundError:
            pass

    def fail(self, what, cpu):
        open(os.path.join(self.logdir, f"fail-{what}-{cpu}"), "w").close()

    def write_online(self, value):
        with open(os.path.join(self.root, f"devices/system/cpu/cpu{self.cpu}/online"),
                  "w") as f:
            f.write(str(value))

    def online(self):
        return self.rt.topology.is_online(self.cpu)


@pytest.fixture(params=MODES)
def hp(request, tmp_path, monkeypatch):
    if request.param == "real":
        root, cpu = "/sys", real_hotplug_cpu()
    else:
        root = kproc.fake_sysfs(tmp_path / "sys", possible=4)
        cpu = 1
    logdir = tmp_path / "log"
    logdir.mkdir()
    monkeypatch.setenv("KPROC_HP_DIR", str(logdir))
    monkeypatch.setenv("KPROC_HP_SYSFS", root)
    all_online(root)
    runtime = kproc.start(sysfs_root=root)
    try:
        yield Hotplug(runtime, root, cpu, str(logdir))
    finally:
        try:
            runtime.shutdown()
        finally:
            all_online(root)


def _state(task):
    return kproc.task_state(task)


def _states(hp):
    a = kproc.cpuhp_setup_state("test:a", hpfuncs.up_a, hpfuncs.down_a)
    b = kproc.cpuhp_setup_state("test:b", hpfuncs.up_b, hpfuncs.down_b)
    c = kproc.cpuhp_setup_state("test:c", hpfuncs.up_c, hpfuncs.down_c)
    assert a > 0 and b > a and c > b
    hp.clear()
    return a, b, c


# -- topology --------------------------------------------------------------------------

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


# -- cpu_down / cpu_up and states --------------------------------------------------------

def test_teardown_in_reverse_before_write_startup_in_order_after(hp):
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


def test_already_in_that_state_returns_1(hp):
    assert kproc.cpu_up(hp.cpu) == 1
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        assert kproc.cpu_down(hp.cpu) == 1
    finally:
        all_online(hp.root)


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


def test_setup_state_runs_startup_on_online_cpus_and_rolls_back(hp):
    online = sorted(kproc.cpu_online_mask())
    a = kproc.cpuhp_setup_state("test:a", hpfuncs.up_a, hpfuncs.down_a)
    assert [int(c) for w, c, _ in hp.log()] == online
    hp.clear()
    hp.fail("up_b", online[-1])
    assert kproc.cpuhp_setup_state("test:b", hpfuncs.up_b, hpfuncs.down_b) == -errno.EINVAL
    assert [(w, int(c)) for w, c, _ in hp.log()] == \
        [("up_b", c) for c in online] + [("down_b", c) for c in reversed(online[:-1])]
    hp.clear()
    kproc.cpuhp_remove_state(a)
    assert [(w, int(c)) for w, c, _ in hp.log()] == [("down_a", c) for c in reversed(online)]
    with pytest.raises(ValueError):
        kproc.cpuhp_remove_state(a)


def test_callback_that_raises_fails_with_efault(hp):
    assert kproc.cpuhp_setup_state("test:raise", hpfuncs.raises, None) == -errno.EFAULT


def test_bad_input_raises_before_anything_changes(hp):
    with pytest.raises(ValueError, match="not possible"):
        kproc.cpu_down(4096)
    with pytest.raises(ValueError, match="not hot-pluggable"):
        kproc.cpu_down(0)
    with pytest.raises(TypeError):
        kproc.cpu_up(True)
    with pytest.raises(TypeError):
        kproc.cpu_up("1")
    with pytest.raises(TypeError, match="module level"):
        kproc.cpuhp_setup_state("x", lambda cpu: 0, None)
    with pytest.raises(TypeError):
        kproc.cpuhp_setup_state("", hpfuncs.up_a, None)
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


# -- smpboot ------------------------------------------------------------------------

def _ht(**kw):
    return kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hptest/%u",
                                  setup=hpfuncs.setup, cleanup=hpfuncs.cleanup,
                                  park=hpfuncs.park, unpark=hpfuncs.unpark, **kw)


def test_percpu_threads_park_on_down_and_come_back_bound(hp):
    ht = _ht(create=hpfuncs.create)
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    try:
        for cpu in kproc.cpu_online_mask():
            task = ht.task(cpu)
            assert task is not None and kproc.kthread_is_per_cpu(task)
            assert task.comm == f"hptest/{cpu}"
            wait_until(lambda: ("setup", str(cpu), "1") in hp.log())
            if cpu in hp.rt.topology.host_online():      # not a modelled CPU
                assert os.sched_getaffinity(task.pid) == {cpu}
        task = ht.task(hp.cpu)
        assert kproc.cpu_down(hp.cpu) == 0
        assert _state(task) == kproc.TASK_PARKED
        assert ("park", str(hp.cpu), "1") in hp.log()
        assert kproc.cpu_up(hp.cpu) == 0
        assert ht.task(hp.cpu) == task
        assert os.sched_getaffinity(task.pid) == {hp.cpu}
        wait_until(lambda: ("unpark", str(hp.cpu), "1") in hp.log())
        wait_until(lambda: _state(task) == kproc.TASK_INTERRUPTIBLE)
    finally:
        all_online(hp.root)
        kproc.smpboot_unregister_percpu_thread(ht)
    assert ("cleanup1", str(hp.cpu), "1") in hp.log()
    assert ht.task(hp.cpu) is None
    wait_until(lambda: _state(task) == kproc.TASK_DEAD)


def test_cpu_coming_up_later_gets_its_thread(hp):
    ht = _ht()
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        assert kproc.smpboot_register_percpu_thread(ht) == 0
        assert ht.task(hp.cpu) is None
        assert kproc.cpu_up(hp.cpu) == 0
        task = ht.task(hp.cpu)
        assert task is not None and os.sched_getaffinity(task.pid) == {hp.cpu}
        wait_until(lambda: ("setup", str(hp.cpu), "1") in hp.log())
    finally:
        all_online(hp.root)
        kproc.smpboot_unregister_percpu_thread(ht)


def test_register_twice_and_unregister_unknown(hp):
    ht = _ht()
    with pytest.raises(ValueError):
        kproc.smpboot_unregister_percpu_thread(ht)
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    with pytest.raises(kproc.KthreadError):
        kproc.smpboot_register_percpu_thread(ht)
    kproc.smpboot_unregister_percpu_thread(ht)


def test_unregister_stops_a_parked_thread_of_an_offline_cpu(hp):
    ht = _ht()
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    task = ht.task(hp.cpu)
    try:
        # setup has run, so cleanup is due (the kernel skips cleanup for a thread
        # parked again before its loop ever ran: status HP_THREAD_NONE)
        wait_until(lambda: ("setup", str(hp.cpu), "1") in hp.log())
        assert kproc.cpu_down(hp.cpu) == 0
        kproc.smpboot_unregister_percpu_thread(ht)
        assert ("cleanup0", str(hp.cpu), "0") in hp.log()
        assert _state(task) == kproc.TASK_DEAD
    finally:
        all_online(hp.root)


def test_smpboot_walks_registrations_newest_first_and_parks_oldest_first(hp, monkeypatch):
    """smpboot.c's orders: smpboot_register_percpu_thread() list_add()s, so the
    newest registration heads hotplug_threads; smpboot_create_threads() and
    smpboot_unpark_threads() walk it with list_for_each_entry (newest first),
    smpboot_park_threads() with list_for_each_entry_reverse (oldest first).

    The walks of the registrations cpuhp keeps, run here in the test process
    with their kthread calls recorded (a thread's own unpark callback runs
    whenever it gets the CPU, so only the calls show the order).
    """
    calls = []
    for name in ("kthread_create_on_cpu", "kthread_park", "kthread_unpark"):
        real = getattr(hotplug_threads, name)

        def record(*args, _name=name, _real=real):
            ret = _real(*args)
            task = ret if _name == "kthread_create_on_cpu" else args[0]
            calls.append((_name[len("kthread_"):], task.comm))
            return ret
        monkeypatch.setattr(hotplug_threads, name, record)
    threads = hotplug_threads.HotplugThreads(hp.rt)
    old = kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hpold/%u")
    new = kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hpnew/%u")
    others = kproc.cpu_online_mask() - {hp.cpu}
    reg_old = threads.register(old, others)
    reg_new = threads.register(new, others)
    try:
        del calls[:]
        assert threads.startup(hp.cpu) == 0
        names = [f"hpnew/{hp.cpu}", f"hpold/{hp.cpu}"]
        assert [c for c in calls if c[0] == "create_on_cpu"] == \
            [("create_on_cpu", n) for n in names]
        assert [c for c in calls if c[0] == "unpark"] == [("unpark", n) for n in names]
        del calls[:]
        assert threads.teardown(hp.cpu) == 0
        assert calls == [("park", n) for n in reversed(names)]
    finally:
        threads.unregister(reg_new)
        threads.unregister(reg_old)


def test_cpu_up_creates_newest_registration_first_cpu_down_parks_oldest_first(hp):
    """The same orders end to end, through cpuhp: smpboot_create_threads() runs
    the ``create`` callbacks newest first (in cpuhp, as each thread is made);
    smpboot_park_threads() parks oldest first (each ``park`` callback has run
    when kthread_park() returns)."""
    old = kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hpold/%u",
                                 create=hpfuncs.create_old, park=hpfuncs.park_old)
    new = kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, "hpnew/%u",
                                 create=hpfuncs.create_new, park=hpfuncs.park_new)
    try:
        assert kproc.cpu_down(hp.cpu) == 0
        assert kproc.smpboot_register_percpu_thread(old) == 0
        assert kproc.smpboot_register_percpu_thread(new) == 0
        hp.clear()
        assert kproc.cpu_up(hp.cpu) == 0
        assert [w for w, *_ in hp.log()] == ["create_new", "create_old"]
        tasks = [old.task(hp.cpu), new.task(hp.cpu)]
        # asleep in the loop: setup has run, so each park callback is due
        wait_until(lambda: all(_state(t) == kproc.TASK_INTERRUPTIBLE for t in tasks))
        hp.clear()
        assert kproc.cpu_down(hp.cpu) == 0
        assert [w for w, *_ in hp.log()] == ["park_old", "park_new"]
    finally:
        all_online(hp.root)
        for ht in (new, old):
            if ht.task(0) is not None:
                kproc.smpboot_unregister_percpu_thread(ht)


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


# -- changes made by someone else -------------------------------------------------------

def test_external_offline_parks_and_online_rebinds(hp):
    _states(hp)
    ht = _ht()
    assert kproc.smpboot_register_percpu_thread(ht) == 0
    task = ht.task(hp.cpu)
    try:
        # the loop has run (status ACTIVE), so the park callback is due
        wait_until(lambda: ("setup", str(hp.cpu), "1") in hp.log())
        hp.clear()
        hp.write_online(0)
        if hp.root != "/sys":
            hp.rt.topology._rewrite_online()
        wait_until(lambda: _state(task) == kproc.TASK_PARKED, 2.0)
        wait_until(lambda: [w for w, *_ in hp.log() if w != "setup"][:4] ==
                   ["down_c", "down_b", "down_a", "park"],
                   message=lambda: f"log: {hp.log()}")
        hp.clear()
        hp.write_online(1)
        wait_until(lambda: _state(task) == kproc.TASK_INTERRUPTIBLE and
                   ("unpark", str(hp.cpu), "1") in hp.log() and
                   ("up_c", str(hp.cpu), "1") in hp.log(), 2.0)
        assert os.sched_getaffinity(task.pid) == {hp.cpu}
        assert [w for w, *_ in hp.log() if w.startswith("up_")] == ["up_a", "up_b", "up_c"]
        wait_until(lambda: hprecord.hotplug_stats()["events"] >= 2)   # counted at the pass's end
    finally:
        all_online(hp.root)
        kproc.smpboot_unregister_percpu_thread(ht)


# -- faults ---------------------------------------------------------------------------

def test_killed_cpuhp_is_replaced(hp):
    assert kproc.cpuhp_setup_state("test:a", hpfuncs.up_a, hpfuncs.down_a) > 0
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
    assert kproc.cpuhp_setup_state("test:a", hpfuncs.up_a, hpfuncs.down_a) > 0
    kthreads = live_kthreads(hp.rt)
    os.kill(hp.rt.kthreadd_pid, signal.SIGKILL)
    psutil.wait_procs(kthreads, timeout=5)
    t0 = time.monotonic()
    with pytest.raises(kproc.KthreadError):
        kproc.cpu_down(hp.cpu)
    assert time.monotonic() - t0 < 1.5


# -- kproc hotplug -------------------------------------------------------------------

def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(kproc.__file__)))
    return subprocess.Popen([sys.executable, "-m", "kproc", "hotplug"] + args, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_cycle_prints_percentiles_and_leaves_cpus_online(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=2)
    out, err = _cli(["cycle", "1", "--count", "3", "--threads", "2", "--preferred", "1",
                     "--sysfs-root", root, "--json"]).communicate(timeout=50)
    data = json.loads(out)
    assert data["ms"]["down"]["n"] == 3 and data["ms"]["back"]["n"] == 6, err
    assert data["ms"]["up"]["p50"] > 0 and data["ms"]["lost"] == 0
    assert kproc._core.topology.Topology(root).online() == {0, 1}
    out, _ = _cli(["status", "--sysfs-root", root, "--json"]).communicate(timeout=50)
    assert [c["hotpluggable"] for c in json.loads(out)["cpus"]] == [False, True]


def test_cli_ctrl_c_brings_the_cpu_back_online(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=2)
    topo = kproc._core.topology.Topology(root)
    proc = _cli(["cycle", "1", "--count", "100000", "--sysfs-root", root])
    try:
        wait_until(lambda: not topo.is_online(1), 20.0, interval=0.0005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert topo.online() == {0, 1}


def test_cli_rejects_cpu0_and_missing_cpu(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=2)
    proc = _cli(["down", "0", "--sysfs-root", root])
    _, err = proc.communicate(timeout=50)
    assert proc.returncode == 1 and "not hot-pluggable" in err
    proc = _cli(["down", "--sysfs-root", root])
    proc.communicate(timeout=50)
    assert proc.returncode == 2


def test_cli_cycle_settles_before_each_action_and_refuses_bad_settle(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=2)
    t0 = time.monotonic()
    out, err = _cli(["cycle", "1", "--count", "2", "--settle", "150", "--sysfs-root", root,
                     "--json"]).communicate(timeout=50)
    assert json.loads(out)["ms"]["down"]["n"] == 2, err
    assert time.monotonic() - t0 >= 4 * 0.150       # two pauses per cycle
    for bad in ("-1", "20000"):
        proc = _cli(["cycle", "1", "--settle", bad, "--sysfs-root", root])
        _, err = proc.communicate(timeout=50)
        assert proc.returncode == 2 and "--settle" in err


# -- the uevent filter ---------------------------------------------------------------

def test_uevent_filter_passes_only_cpu_online_and_offline():
    """The classic BPF program, run by the kernel on a datagram socket pair."""
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        attach_cpu_uevent_filter(rx)
        rx.settimeout(0.5)
        sent = [b"add@/devices/virtual/cpuid/cpu1\0ACTION=add",
                b"online@/devices/system/cpu/cpu1\0ACTION=online",
                b"online@/devices/system/memory/memory3\0ACTION=online",
                b"offline@/devices/system/cpu/cpu12\0ACTION=offline",
                b"offline@/devices/system/cp",
                b"remove@/devices/virtual/msr/msr1\0ACTION=remove"]
        for msg in sent:
            tx.send(msg)
        got = []
        try:
            while True:
                got.append(rx.recv(256))
        except socket.timeout:
            pass
        assert got == [sent[1], sent[3]]
    finally:
        rx.close()
        tx.close()


def test_cpuhp_outlives_a_failing_catch_up(tmp_path, monkeypatch):
    """A sysfs read failing while cpuhp catches up with an outside change (seen for
    real: EPERM from a node's cpulist under stress-ng) must not end cpuhp."""
    root = kproc.fake_sysfs(tmp_path / "sys", possible=4, nodes={0: {0, 1, 2, 3}})
    logdir = tmp_path / "log"
    logdir.mkdir()
    monkeypatch.setenv("KPROC_HP_DIR", str(logdir))
    monkeypatch.setenv("KPROC_HP_SYSFS", root)
    cpulist = os.path.join(root, "devices/system/node/node0/cpulist")
    topo = kproc._core.topology.Topology(root)
    with kproc.start(sysfs_root=root):
        ht = _ht()
        assert kproc.smpboot_register_percpu_thread(ht) == 0
        task = ht.task(1)
        try:
            os.rename(cpulist, cpulist + ".saved")
            os.mkdir(cpulist)                       # reading it now fails (EISDIR)
            with open(os.path.join(root, "devices/system/cpu/cpu1/online"), "w") as f:
                f.write("0")
            topo._rewrite_online()
            wait_until(lambda: _state(task) == kproc.TASK_PARKED, 2.0)
            time.sleep(0.05)                        # several failing passes
            assert hprecord.hotplug_stats()["running"]
            os.rmdir(cpulist)
            os.rename(cpulist + ".saved", cpulist)
            assert kproc.cpu_up(1) == 0             # cpuhp still serves
            wait_until(lambda: _state(task) == kproc.TASK_INTERRUPTIBLE, 2.0)
        finally:
            if os.path.isdir(cpulist):
                os.rmdir(cpulist)
                os.rename(cpulist + ".saved", cpulist)
            all_online(root)
            kproc.smpboot_unregister_percpu_thread(ht)


@pytest.mark.skipif(real_hotplug_cpu() is None, reason="needs real hotplug (root, cpuN/online)")
def test_a_quick_outside_down_and_up_is_not_missed(tmp_path, monkeypatch):
    """Taken down and brought back while cpuhp is busy, with no per-CPU thread to
    show it: the offline uevent, numbered after cpuhp last saw the CPU offline, still
    gets the CPU its teardowns and startups after the fact."""
    monkeypatch.setenv("KPROC_HP_DIR", str(tmp_path))
    monkeypatch.setenv("KPROC_HP_SYSFS", "/sys")
    cpu = real_hotplug_cpu()
    online_file = f"{REAL_CPU_DIR}/cpu{cpu}/online"
    all_online("/sys")
    with kproc.start():
        try:
            assert kproc.cpuhp_setup_state("test:a", hpfuncs.up_a, hpfuncs.down_a) > 0
            busy = threading.Thread(target=kproc.cpuhp_setup_state,
                                    args=("test:slow", hpfuncs.slow_up, None))
            busy.start()
            time.sleep(0.1)                       # cpuhp is inside slow_up now
            for value in ("0", "1"):
                with open(online_file, "w") as f:
                    f.write(value)
            busy.join(10)
            def bounce():
                entries = [(w, c) for w, c, _ in hpfuncs.read_log(str(tmp_path))]
                down = ("down_a", str(cpu))
                return down in entries and ("up_a", str(cpu)) in entries[entries.index(down):]
            wait_until(bounce, 5.0,
                       message=lambda: f"log: {hpfuncs.read_log(str(tmp_path))}")
        finally:
            all_online("/sys")
