"""``kproc hotplug cycle`` (SPEC §6): ``--duration`` besides ``--count``, the
min/mean/max and raw samples, a refusal of an offline CPU, every CPU left as
it was found.  On a fake sysfs tree (``kproc.fake_sysfs``); no timing is
asserted."""

import json
import os
import subprocess
import sys

import pytest

import kproc
from kproc._core.topology import Topology

pytestmark = pytest.mark.timeout(60)


def _cli(args):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(kproc.__file__)))
    return subprocess.run([sys.executable, "-m", "kproc", "hotplug"] + args, env=env,
                          capture_output=True, text=True, timeout=50)


def test_cycle_for_a_duration_reports_min_mean_max_and_raw_samples(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=2)
    out = _cli(["cycle", "1", "--duration", "0.5", "--sysfs-root", root, "--json"])
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    n = data["count"]
    assert n >= 1 and data["duration"] == 0.5
    down = data["ms"]["down"]
    assert down["n"] == n and down["min"] <= down["mean"] <= down["max"]
    assert down["min"] <= down["p50"] <= down["p99"] <= down["max"]
    assert len(data["samples_ns"]["down"]) == n == len(data["samples_ns"]["up"])
    assert all(isinstance(x, int) and x > 0 for x in data["samples_ns"]["up"])
    assert Topology(root).online() == {0, 1}


def test_count_and_duration_end_at_whichever_comes_first(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=2)
    out = _cli(["cycle", "1", "--count", "2", "--duration", "30", "--sysfs-root", root,
                "--json"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["count"] == 2


def test_cycle_table_shows_min_mean_max_beside_p50_p99(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=2)
    out = _cli(["cycle", "1", "--count", "2", "--sysfs-root", root])
    assert out.returncode == 0, out.stderr
    header = next(ln for ln in out.stdout.splitlines() if "p50" in ln).split()
    assert header == ["ms", "min", "mean", "p50", "p99", "max", "n"]


def test_cycle_refuses_an_offline_cpu_and_changes_nothing(tmp_path):
    """Before: cpu_down of the offline CPU returned 1, the command failed with
    "[Errno 0] cpu_down(2) returned 1" and its restore brought CPU 2 online."""
    root = kproc.fake_sysfs(tmp_path / "sys", possible=3)
    topo = Topology(root)
    topo.set_online(2, False)
    out = _cli(["cycle", "2", "--count", "3", "--sysfs-root", root])
    assert out.returncode == 2
    assert "CPU 2 is offline" in out.stderr and "kproc hotplug up 2" in out.stderr
    assert "Errno" not in out.stderr
    assert topo.online() == {0, 1}
    out = _cli(["cycle", "7", "--sysfs-root", root])
    assert out.returncode == 2 and "CPU 7 does not exist" in out.stderr


def test_cycle_leaves_every_cpu_as_it_found_it(tmp_path):
    """An offline CPU the command did not cycle stays offline, and the cycled
    CPU is online again."""
    root = kproc.fake_sysfs(tmp_path / "sys", possible=3)
    topo = Topology(root)
    topo.set_online(2, False)
    out = _cli(["cycle", "1", "--count", "2", "--sysfs-root", root])
    assert out.returncode == 0, out.stderr
    assert topo.online() == {0, 1}


def test_bad_duration_is_refused(tmp_path):
    root = kproc.fake_sysfs(tmp_path / "sys", possible=2)
    for bad in ("0", "-1"):
        out = _cli(["cycle", "1", "--duration", bad, "--sysfs-root", root])
        assert out.returncode == 2 and "--duration" in out.stderr
