"""The AP job as cpuup shaped it (kproc/_hotplug/ap_thread.py, machine.py): whole
AP sections numbered by the states' generation and kept by cpuhp/N, the plan of
a CPU coming up, and the fake tree's online files that cpuhp rewrites.

Every hotplug test runs on a fake sysfs tree, and again on the real /sys when
this runs as root with a writable ``cpuN/online``; each brings every CPU back.
"""

import os
import time

import pytest

import kproc
from kproc._core import safefs
from kproc._core.fakesys import fake_sysfs
from kproc._core.topology import Topology
from fns import hotplug as hpfuncs
from helpers import HP_MODES, all_online, hotplug_env, wait_until

pytestmark = pytest.mark.timeout(60)

hp = pytest.fixture(params=HP_MODES)(hotplug_env)
AP = kproc.CPUHP_AP_ONLINE_DYN


def _names(hp):
    return [entry[0] for entry in hp.log()]


def _cycle(hp):
    assert kproc.cpu_down(hp.cpu) == 0
    assert kproc.cpu_up(hp.cpu) == 0


def test_states_changed_between_cycles_are_walked_as_they_are_now(hp):
    """cpu.c cpuhp_down_callbacks()/cpuhp_up_callbacks() walk cpuhp_hp_states as
    they are at each cpu_down/cpu_up: a state set up after some cycles runs in
    the next one, a removed state no more.  cpuhp/N keeps the steps of each
    numbered job it unpickled, so a number not renewed when the states change
    would replay the old list."""
    a = kproc.cpuhp_setup_state(AP, "test:a", hpfuncs.up_a, hpfuncs.down_a)
    try:
        hp.clear()
        _cycle(hp)
        assert _names(hp) == ["down_a", "up_a"]
        b = kproc.cpuhp_setup_state(AP, "test:b", hpfuncs.up_b, hpfuncs.down_b)
        assert b > a
        hp.clear()
        _cycle(hp)
        assert _names(hp) == ["down_b", "down_a", "up_a", "up_b"]
        kproc.cpuhp_remove_state(a)
        hp.clear()
        _cycle(hp)
        assert _names(hp) == ["down_b", "up_b"]
    finally:
        all_online(hp.root)


def test_cycles_keep_running_every_startup_on_its_cpu(hp):
    """include/linux/cpuhotplug.h: ONLINE-section callbacks "are invoked on the
    hotplugged CPU from the per CPU hotplug thread": also the second and later
    times cpuhp/N runs the same numbered job (from its cache), with the plan of
    the built-in states in between."""
    kproc.cpuhp_setup_state(AP, "test:where", hpfuncs.ap_up, hpfuncs.ap_down)
    try:
        for _ in range(3):
            hp.clear()
            _cycle(hp)
            ups = [e for e in hp.log() if e[0] == "ap_up"]
            assert len(ups) == 1
            fields = dict(f.split("=") for f in ups[0][3:])
            if hp.root == "/sys":
                assert int(fields["on"]) == hp.cpu and fields["aff"] == str(hp.cpu)
    finally:
        all_online(hp.root)


def test_fake_online_file_is_never_missing_while_rewritten(tmp_path):
    """A fake cpuN/online rewritten by cpuhp must be there for a caller who looks
    at that moment (api's check_hotpluggable; an online file a fake tree lacks
    reads as online): it was unlinked and created again, and a caller's
    cpu_up() made while cpuhp wrote raised "CPU 1 is not hot-pluggable"
    (test_caller_killed_mid_request_leaves_hotplug_usable, once)."""
    topo = Topology(fake_sysfs(tmp_path / "sys", possible=2))
    path = topo.online_file(1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                  # the writer: cpuhp's rewrites, back to back
        os.close(r)
        try:
            os.write(w, b"go")
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                safefs.write_file(path, "1")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 2) == b"go"
    os.close(r)
    looks = missing = 0
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            looks += 1
            missing += not os.path.exists(path)
    finally:
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 5.0)
    assert looks > 100 and missing == 0
    assert sorted(os.listdir(os.path.dirname(path))) == ["online"]
