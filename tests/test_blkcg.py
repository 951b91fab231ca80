"""kthread_associate_blkcg() / kthread_blkcg() on real cgroups (SPEC §3; kthread.c 6.15
kthread_associate_blkcg(): the kthread's I/O is charged to the css; here its
process joins the cgroup directory)."""

import os

import pytest

import kproc
from kproc._kthread.blkcg import blkio_hierarchy
from fns import mm as mfuncs
from helpers import wait_until

pytestmark = pytest.mark.timeout(30)


def _cgroup_of(pid, version):
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            num, controllers, path = line.rstrip("\n").split(":", 2)
            if (version == 2 and num == "0") or \
                    (version == 1 and "blkio" in controllers.split(",")):
                return path
    return None


@pytest.fixture
def hierarchy():
    found = blkio_hierarchy()
    if found is None:
        pytest.skip("this host has no block-I/O cgroup hierarchy (v2 io or v1 blkio)")
    mount, version = found
    if not os.access(mount, os.W_OK):
        pytest.skip(f"{mount} is not writable here (needs root)")
    return mount, version


@pytest.fixture
def child_cgroup(hierarchy):
    mount, version = hierarchy
    path = os.path.join(mount, f"kproc-test-{os.getpid()}")
    os.mkdir(path)
    try:
        yield path, version
    finally:
        wait_until(lambda: _empty(path), 5)
        os.rmdir(path)


def _empty(path):
    with open(os.path.join(path, "cgroup.procs")) as f:
        return not f.read().strip()


def test_a_kthread_joins_its_blkcg_and_goes_back(rt, child_cgroup):
    """The kthread waits for ``leave`` before it ends: /proc/PID/cgroup read while it
    exits fails with ESRCH (ProcessLookupError: the flake seen once)."""
    path, version = child_cgroup
    joined, go, back, leave = (kproc.Completion() for _ in range(4))
    task = kproc.kthread_run(mfuncs.blkcg_round_trip, (path, joined, go, back, leave),
                             "blkcg")
    try:
        before = _cgroup_of(os.getpid(), version)
        kproc.wait_for_completion(joined)
        assert _cgroup_of(task.pid, version) == "/" + os.path.basename(path)
        with open(os.path.join(path, "cgroup.procs")) as f:
            assert str(task.pid) in f.read().split()
        kproc.complete(go)
        kproc.wait_for_completion(back)
        assert _cgroup_of(task.pid, version) == before
    finally:
        kproc.complete(go)          # a failed check leaves no kthread waiting
        kproc.complete(leave)
    assert kproc.kthread_stop(task) == 1


def test_v2_io_hierarchy_where_present():
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    v2 = [ln.split()[4] for ln in mounts.splitlines() if " - cgroup2 " in ln]
    if not v2:
        pytest.skip("no cgroup v2 hierarchy is mounted here")
    io = []
    for m in v2:
        with open(os.path.join(m, "cgroup.controllers")) as f:
            if "io" in f.read().split():
                io.append(m)
    if not io:
        pytest.skip(f"the cgroup v2 hierarchy at {v2[0]} has no io controller (this host "
                    "uses v1 blkio); the v1 test covers it")
    assert blkio_hierarchy() == (io[0], 2)


def test_refusals_are_clear(rt, tmp_path, hierarchy):
    mount, _ = hierarchy
    def refusal(css):
        task = kproc.kthread_run(mfuncs.blkcg_refusal, css, "blkcgbad")
        wait_until(lambda: task.exit_result is not None, 10)
        return kproc.kthread_stop(task)
    assert refusal(str(tmp_path)) == 1            # not a cgroup directory: ValueError
    assert refusal(42) == 2                       # TypeError
    with pytest.raises(RuntimeError, match="must be called from a kthread"):
        kproc.kthread_associate_blkcg(mount)
    assert kproc.kthread_blkcg() is None
