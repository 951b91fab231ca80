"""CPU topology from sysfs and fake sysfs trees (SPEC §3 "CPU topology")."""

import os

import pytest

from kproc._core.fakesys import fake_sysfs
from kproc._core.topology import Topology, format_cpulist, parse_cpulist

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("text,cpus", [("0-3,5", {0, 1, 2, 3, 5}), ("", set()),
                                       ("(null)\n", set()), ("7", {7}),
                                       ("0-7:2/4", {0, 1, 4, 5})])
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("bad", ["a", "3-1", "1,,2", "-1"])
def test_parse_cpulist_rejects_garbage(bad):
    with pytest.raises(ValueError):
        parse_cpulist(bad)


def test_format_cpulist_round_trips():
    assert format_cpulist({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert parse_cpulist(format_cpulist({3, 4, 9})) == {3, 4, 9}


def test_fake_tree_masks_nodes_and_housekeeping(tmp_path):
    root = fake_sysfs(tmp_path / "sys", possible=8, online={0, 1, 2, 3, 6},
                      nodes={0: {0, 1, 2, 3}, 1: {4, 5, 6, 7}}, isolated={2},
                      nohz_full={3})
    topo = Topology(root)
    assert topo.possible() == set(range(8))
    assert topo.online() == {0, 1, 2, 3, 6}
    assert topo.housekeeping() == {0, 1, 6}
    assert topo.housekeeping({0, 6}) == {0, 6}
    assert topo.cpu_to_node(5) == 1 and topo.cpumask_of_node(1) == {4, 5, 6, 7}
    assert not topo.hotpluggable(0) and topo.hotpluggable(7)
    with pytest.raises(ValueError):
        topo.cpumask_of_node(3)


def test_fake_tree_follows_direct_writes_and_set_online(tmp_path):
    topo = Topology(fake_sysfs(tmp_path / "sys", possible=4))
    with open(topo.online_file(2), "w") as f:         # as a shell would
        f.write("0")
    assert topo.online() == {0, 1, 3}
    assert topo.set_online(2, True) is True
    assert topo.set_online(2, True) is False
    assert topo.set_online(3, False) is True
    with open(os.path.join(topo.cpu_dir, "online")) as f:
        assert parse_cpulist(f.read()) == {0, 1, 2}


def test_set_online_refusals(tmp_path):
    topo = Topology(fake_sysfs(tmp_path / "sys", possible=2))
    with pytest.raises(ValueError, match="not hot-pluggable"):
        topo.set_online(0, False)
    with pytest.raises(ValueError, match="not possible"):
        topo.set_online(5, False)
    topo.set_online(1, False)
    assert topo.online() == {0}


def test_modelled_cpus_are_recorded_not_applied(tmp_path):
    topo = Topology(fake_sysfs(tmp_path / "sys", possible=64))
    host = Topology().online()
    assert topo.applicable(range(64)) == host


def test_fake_sysfs_argument_checks(tmp_path):
    with pytest.raises(ValueError):
        fake_sysfs(tmp_path / "a", possible=4, nodes={0: {0, 1}})
    with pytest.raises(ValueError):
        fake_sysfs(tmp_path / "b", possible=4, online={9})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        fake_sysfs(tmp_path / "c", possible=2)


def test_real_sysfs_agrees_with_the_os():
    topo = Topology()
    assert topo.online() == set(os.sched_getaffinity(0)) | topo.online()
    assert len(topo.possible()) >= os.cpu_count()
