"""Soak: CPUs taken down and brought up behind kproc's back, as fast as they go,
beside 4 SmpHotplugThread registrations (one, on the stress loop, runs every
~2 ms and checks where it runs), an AP state and a BP state
(kproc/_hotplug/cpuhp.py, machine.py, uevent.py, smpboot_thread.py).

Two drivers, one test each: ``stress-ng --cpu-online`` and a loop of
back-to-back ``echo 0`` / ``echo 1`` to ``cpuN/online`` (the kernel's
tools/testing/selftests/cpu-hotplug/cpu-on-off-test.sh does that).  Afterwards
every real change, as counted by the test's own uevent listener, has run
each state's callback exactly once per CPU (SPEC §4: "exactly one teardown
and one startup per callback and CPU: never a storm"), every per-CPU thread
is parked exactly when its CPU is offline (sampled during the run: each sample
waits up to STALL_S for an instant where all agree, since cpuhp replays outside
changes after the fact and, with both CPUs saturated beside the storm, lags it by
more than a second) and bound to it when online, and no run of the stress
thread started off its CPU.

``KPROC_HP_STRESS_SECONDS`` sets each driver's length (30 s by default;
``make test`` runs 10 s, ``make soak`` 60 s).  Needs real hotplug (root, a
writable ``cpuN/online``); the stress-ng test needs stress-ng (``make
stress-ng``).
"""

import os
import shutil
import subprocess
import threading
import time

import pytest

import kproc
from kproc._hotplug import record as hprecord
from fns import hotplug as hpfuncs
from helpers import UeventCounter, REAL_CPU_DIR, all_online, real_hotplug_cpu, wait_until

SECONDS = float(os.environ.get("KPROC_HP_STRESS_SECONDS", "30"))
STALL_S = 3.0          # s: the replay of a backlog making no progress at all

pytestmark = [
    pytest.mark.timeout(SECONDS + 90),
    pytest.mark.skipif(real_hotplug_cpu() is None,
                       reason="needs root and a writable /sys/devices/system/cpu/cpuN/online"),
]


_last_seen = []


def _consistent(hts, cpus):
    """Each thread parked iff its CPU is offline, and bound to it when online."""
    online = kproc.cpu_online_mask()
    for ht in hts:
        for cpu in cpus:
            task = ht.task(cpu)
            state = kproc.task_state(task)
            parked = state == kproc.TASK_PARKED
            aff = os.sched_getaffinity(task.pid) if cpu in online else None
            _last_seen[:] = [f"{task.comm}: online {cpu in online}, state {state!r}, "
                             f"affinity {aff}"]
            if (cpu in online) == parked:
                return False
            if cpu in online and aff != {cpu}:
                return False
    return True


def _seen():
    known = hprecord.read_known(kproc._core.runtime.get_runtime())
    return (f"; last seen: {''.join(_last_seen)}; cpuhp known {sorted(known)}, "
            f"stats {hprecord.hotplug_stats()}")


def _counts(logdir, cpu):
    log = [(w, c) for w, c, *_ in hpfuncs.read_log(logdir) if c == str(cpu)]
    return {w: log.count((w, str(cpu))) for w in ("ap_up", "ap_down", "bp_up", "bp_down")}


def _wait_replayed(logdir, cpu, want):
    """Wait until ``cpu``'s callbacks reach ``want`` (the real changes).

    cpuhp replays outside changes after the fact (SPEC §4), and while a storm
    lasts each replay waits behind the kernel's own hotplug (the callbacks here
    read ``cpuN/online``, whose show waits for the device lock the writer holds:
    ~45 ms p50 in an echo loop), so a backlog builds up and drains once the
    storm ends: the wait goes on while the counts move.  It fails once they
    stall short of ``want`` for STALL_S, and at once if any passes it (a change
    run twice)."""
    last, moved = None, time.monotonic()
    while True:
        got = _counts(logdir, cpu)
        if got == want:
            return
        detail = f"CPU {cpu}: callbacks {got}, real changes (+1 startup at setup) {want}"
        if any(got[k] > want[k] for k in want):
            raise AssertionError("more callbacks than real changes: " + detail + _seen())
        if got != last:
            last, moved = got, time.monotonic()
        elif time.monotonic() - moved > STALL_S:
            raise AssertionError(f"the replay stalled for {STALL_S} s: " + detail + _seen())
        time.sleep(0.02)


def _echo_loop(cpu, seconds):
    """Back-to-back echo 0 / echo 1, as cpu-on-off-test.sh, for ``seconds``."""
    path = f"{REAL_CPU_DIR}/cpu{cpu}/online"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for value in ("0", "1"):
            try:
                with open(path, "w") as f:
                    f.write(value)
            except OSError:
                pass            # EBUSY while the kernel is still busy with the CPU


def _soak(tmp_path, monkeypatch, drive):
    monkeypatch.setenv("KPROC_HP_DIR", str(tmp_path))
    monkeypatch.setenv("KPROC_HP_SYSFS", "/sys")
    all_online("/sys")
    cpus = sorted(kproc._core.topology.Topology().online())
    stress = kproc.SmpHotplugThread(hpfuncs.always, hpfuncs.where_am_i, "hpstress/%u",
                                    park=hpfuncs.save_runs, cleanup=hpfuncs.save_runs)
    hts = [stress] + [kproc.SmpHotplugThread(hpfuncs.never, hpfuncs.nothing, f"hpsoak{i}/%u")
                      for i in range(3)]
    counter = None
    try:
        with kproc.start():
            counter = UeventCounter()
            for ht in hts:
                assert kproc.smpboot_register_percpu_thread(ht) == 0
            kproc.cpuhp_setup_state(kproc.CPUHP_AP_ONLINE_DYN, "soak:ap", hpfuncs.ap_up,
                                    hpfuncs.ap_down)
            kproc.cpuhp_setup_state(kproc.CPUHP_BP_PREPARE_DYN, "soak:bp", hpfuncs.bp_up,
                                    hpfuncs.bp_down)
            samples = 0
            done = drive()
            while not done():
                try:
                    wait_until(lambda: _consistent(hts, cpus), STALL_S)
                except AssertionError:
                    raise AssertionError("a per-CPU thread's state does not follow its "
                                         "CPU" + _seen()) from None
                samples += 1
                time.sleep(0.1)
            all_online("/sys")
            time.sleep(0.3)                 # the last uevents reach both listeners
            assert not counter.lost, "the test's own uevent listener overran"
            for cpu in cpus:
                want = {"ap_up": counter.count(cpu, True) + 1,
                        "ap_down": counter.count(cpu, False),
                        "bp_up": counter.count(cpu, True) + 1,
                        "bp_down": counter.count(cpu, False)}
                _wait_replayed(str(tmp_path), cpu, want)
            try:
                wait_until(lambda: _consistent(hts, cpus), 2.0)
            except AssertionError:
                raise AssertionError("per-CPU threads did not come back after "
                                     "the run" + _seen()) from None
            changes = len(counter.notes)
            offlines = {cpu: counter.count(cpu, False) for cpu in cpus}
            for ht in hts:
                kproc.smpboot_unregister_percpu_thread(ht)
    finally:
        if counter is not None:
            counter.close()
        all_online("/sys")
    # smpboot.c has BUG_ON(td->cpu != smp_processor_id()): the loop never *starts* a
    # thread_fn off its CPU (it waits to be parked), but a CPU taken away from outside
    # between that check and thread_fn's first line migrates a run already under way:
    # at most one such run per offline of that CPU, never a stream of them.
    wrong = {name: (tmp_path / name).read_text().splitlines() for name in os.listdir(tmp_path)
             if name.startswith("wrong-")}
    for name, lines in wrong.items():
        cpu = int(name.partition("-")[2])
        assert len(lines) <= offlines.get(cpu, 0), \
            f"runs off CPU {cpu} beyond one per outside offline ({offlines}): {lines}"
    runs = {cpu: int((tmp_path / f"runs-{cpu}").read_text()) for cpu in cpus}
    assert all(n > 0 for n in runs.values()), runs
    assert changes >= 4 and samples > 0


@pytest.mark.skipif(shutil.which("stress-ng") is None,
                    reason="stress-ng is not installed (make stress-ng)")
def test_stress_ng_cpu_online_runs_each_callback_once_per_change(tmp_path, monkeypatch,
                                                                 foreign_hotplug):
    procs = []

    def drive():
        procs.append(subprocess.Popen(
            ["stress-ng", "--pathological", "--cpu-online", "1", "--timeout",
             f"{SECONDS:g}s", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return lambda: procs[0].poll() is not None
    try:
        _soak(tmp_path, monkeypatch, drive)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        all_online("/sys")


def test_echo_loop_runs_each_callback_once_per_change(tmp_path, monkeypatch, foreign_hotplug):
    cpu = real_hotplug_cpu()
    threads = []

    def drive():
        t = threading.Thread(target=_echo_loop, args=(cpu, SECONDS), daemon=True)
        t.start()
        threads.append(t)
        return lambda: not t.is_alive()
    try:
        _soak(tmp_path, monkeypatch, drive)
    finally:
        for t in threads:
            t.join(SECONDS + 10)
        all_online("/sys")
