"""``kproc hotplug`` (kproc/_cli/hotplug.py over kproc/_hotplug/experiment.py):
the timed cycle, status, Ctrl-C bringing the CPU back, bad arguments; on a
fake sysfs tree.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import kproc
from helpers import wait_until

pytestmark = pytest.mark.timeout(60)


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
