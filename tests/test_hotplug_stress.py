"""Stress: ``stress-ng --cpu-online`` takes CPUs down and up behind kproc's back
while one per-CPU thread per CPU runs every ~2 ms and checks where it runs.

Afterwards (and on samples during the run) every per-CPU thread is parked
exactly when its CPU is offline and bound to it when online, and no run
started off its CPU.  ``KPROC_HP_STRESS_SECONDS`` sets the length (30 s by
default; ``make test`` runs 10 s).  Needs real hotplug (root, a writable
``cpuN/online``) and stress-ng (``make stress-ng``).
"""

import os
import shutil
import subprocess
import time

import pytest

import kproc
from kproc._hotplug import record as hprecord
from fns import hotplug as hpfuncs
from helpers import all_online, real_hotplug_cpu, wait_until

SECONDS = float(os.environ.get("KPROC_HP_STRESS_SECONDS", "30"))

pytestmark = [
    pytest.mark.timeout(SECONDS + 60),
    pytest.mark.skipif(real_hotplug_cpu() is None,
                       reason="needs root and a writable /sys/devices/system/cpu/cpuN/online"),
    pytest.mark.skipif(shutil.which("stress-ng") is None,
                       reason="stress-ng is not installed (make stress-ng)"),
]


_last_seen = []


def _consistent(ht, cpus):
    """Each thread parked iff its CPU is offline, and bound to it when online."""
    online = kproc.cpu_online_mask()
    for cpu in cpus:
        task = ht.task(cpu)
        state = kproc.task_state(task)
        parked = state == kproc.TASK_PARKED
        aff = os.sched_getaffinity(task.pid) if cpu in online else None
        _last_seen[:] = [f"cpu {cpu}: online {cpu in online}, state {state!r}, "
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


def test_percpu_threads_follow_stress_ng_cpu_online(tmp_path, monkeypatch, foreign_hotplug):
    monkeypatch.setenv("KPROC_HP_DIR", str(tmp_path))
    all_online("/sys")
    cpus = sorted(kproc._core.topology.Topology().online())
    ht = kproc.SmpHotplugThread(hpfuncs.always, hpfuncs.where_am_i, "hpstress/%u",
                                park=hpfuncs.save_runs, cleanup=hpfuncs.save_runs)
    stress = None
    try:
        with kproc.start():
            assert kproc.smpboot_register_percpu_thread(ht) == 0
            stress = subprocess.Popen(
                ["stress-ng", "--pathological", "--cpu-online", "1", "--timeout",
                 f"{SECONDS:g}s", "--quiet"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            samples = 0
            while stress.poll() is None:
                try:
                    wait_until(lambda: _consistent(ht, cpus), 1.0)
                except AssertionError:
                    raise AssertionError("a per-CPU thread's state does not follow its "
                                         "CPU" + _seen()) from None
                samples += 1
                time.sleep(0.1)
            all_online("/sys")
            try:
                wait_until(lambda: _consistent(ht, cpus), 2.0)
            except AssertionError:
                raise AssertionError("per-CPU threads did not come back after "
                                     "stress-ng" + _seen()) from None
            events = hprecord.hotplug_stats()["events"]
            kproc.smpboot_unregister_percpu_thread(ht)
    finally:
        if stress is not None and stress.poll() is None:
            stress.kill()
            stress.wait()
        all_online("/sys")
    wrong = {name: (tmp_path / name).read_text() for name in os.listdir(tmp_path)
             if name.startswith("wrong-")}
    assert wrong == {}, f"runs off their CPU: {wrong}"
    runs = {cpu: int((tmp_path / f"runs-{cpu}").read_text()) for cpu in cpus}
    assert all(n > 0 for n in runs.values()), runs
    assert events >= 2 and samples > 0
